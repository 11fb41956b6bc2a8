package qga

import (
	"bufio"
	"bytes"
	"errors"
	"testing"
)

func TestReadReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		err  error
	}{
		{"{\"return\": 3}\n", 3, nil},
		{"\n{\"event\": \"X\"}\n{\"return\": 1}\n", 1, nil},
		{"{\"error\": {\"class\": \"GenericError\", \"desc\": \"busy\"}}\n", 0, ErrAgent},
		{"not json\n", 0, ErrProtocol},
		{"{\"return\": \"frozen\"}\n", 0, ErrProtocol},
	} {
		var n int
		err := readReply(bufio.NewReader(bytes.NewReader([]byte(tc.in))), "guest-fsfreeze-thaw", &n)
		if n != tc.want || (tc.err == nil) != (err == nil) || (tc.err != nil && !errors.Is(err, tc.err)) {
			t.Errorf("%q: %d %v", tc.in, n, err)
		}
	}
	// A reply that never ends is an error, not a hang.
	var n int
	if err := readReply(bufio.NewReader(bytes.NewReader([]byte(`{"return": 1`))), "x", &n); err == nil {
		t.Error("a reply without its newline was accepted")
	}
}

// The guest controls what the agent says: no reply may panic the daemon.
func FuzzReadReply(f *testing.F) {
	f.Add([]byte("{\"return\": 3}\n"))
	f.Add([]byte("{\"error\": {\"class\": \"GenericError\", \"desc\": \"busy\"}}\n"))
	f.Add([]byte("{\"return\": null}\n{\"return\": 2}\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var n int
		readReply(bufio.NewReader(bytes.NewReader(b)), "x", &n)
		var s string
		readReply(bufio.NewReader(bytes.NewReader(b)), "x", &s)
	})
}
