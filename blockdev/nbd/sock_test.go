//go:build unix

package nbd

import (
	"io"
	"runtime"
	"testing"
)

// TestProbeBacksOff checks the reader's probe: it reads what the socket
// holds, stops probing after probeMisses probes in a row found nothing
// (a queue-depth-1 client), and probes again probeSkip reads later.
func TestProbeBacksOff(t *testing.T) {
	srv, cli := socketPair(t)
	defer srv.Close()
	defer cli.Close()
	s := newSockConn(srv)
	if s.raw == nil {
		t.Skip("no non-blocking reads on this platform")
	}
	buf := make([]byte, 16)
	send := func() {
		t.Helper()
		if _, err := cli.Write([]byte("abcd")); err != nil {
			t.Fatal(err)
		}
	}

	// A probe that finds data reads it.
	send()
	if n, err := s.probe(buf); err != nil || n != 4 {
		t.Fatalf("probe with data waiting: n=%d err=%v", n, err)
	}
	// probeMisses-1 empty probes, then one that finds data: the count
	// starts over, so probing goes on.
	for range probeMisses - 1 {
		if _, err := s.probe(buf); err != errWouldBlock {
			t.Fatalf("empty probe: %v", err)
		}
	}
	send()
	if n, err := s.probe(buf); err != nil || n != 4 {
		t.Fatalf("probe after %d misses: n=%d err=%v", probeMisses-1, n, err)
	}
	// probeMisses empty probes in a row: the next probeSkip reads do not
	// look at the socket, even with data waiting.
	for range probeMisses {
		if _, err := s.probe(buf); err != errWouldBlock {
			t.Fatalf("empty probe: %v", err)
		}
	}
	send()
	for i := range probeSkip {
		if n, err := s.probe(buf); err != errWouldBlock {
			t.Fatalf("skipped probe %d read n=%d err=%v", i, n, err)
		}
	}
	if n, err := s.probe(buf); err != nil || n != 4 {
		t.Fatalf("probe after the skipped ones: n=%d err=%v", n, err)
	}
}

// queued sees bytes the client sent that the reader has not read, and
// only those.
func TestSockQueued(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("queued cannot tell here (SIOCINQ is Linux's)")
	}
	srv, cli := socketPair(t)
	defer srv.Close()
	defer cli.Close()
	s := newSockConn(srv)
	if s.queued() {
		t.Fatal("queued before the client sent anything")
	}
	if _, err := cli.Write(make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	if !s.queued() {
		t.Fatal("100 bytes sent, none seen as queued")
	}
	if _, err := io.ReadFull(s, make([]byte, 99)); err != nil {
		t.Fatal(err)
	}
	if !s.queued() {
		t.Fatal("1 byte left unread, none seen as queued")
	}
	if _, err := io.ReadFull(s, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if s.queued() {
		t.Fatal("everything read, still seen as queued")
	}
}
