package control

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// fakeDaemon answers the control API on a Unix socket with handler.
func fakeDaemon(t *testing.T, handler http.HandlerFunc) *Client {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "control.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: handler}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return NewClient(sock)
}

func TestClientErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		status int
		body   string
		call   func(*Client) error
		want   string // the error's text
		code   string // its code, when it is an *Error
	}{
		{"api error", 409, `{"error":"volume v is attached","code":"busy"}`,
			func(c *Client) error { _, err := c.DeleteVolume(ctx, "v", false); return err }, "volume v is attached", CodeBusy},
		{"not json", 502, "bad gateway",
			func(c *Client) error { _, err := c.Volumes(ctx); return err }, "daemon answered 502 Bad Gateway", ""},
		{"stream error before streaming", 404, `{"error":"volume v not found","code":"not_found"}`,
			func(c *Client) error { _, err := c.Replicate(ctx, ReplicateRequest{Volume: "v"}, nil); return err }, "volume v not found", CodeNotFound},
		{"stream error event", 200, `{"progress":{"acked":1}}` + "\n" + `{"error":"a replication of v is running","code":"busy"}` + "\n",
			func(c *Client) error { _, err := c.Replicate(ctx, ReplicateRequest{Volume: "v"}, nil); return err }, "a replication of v is running", CodeBusy},
		{"stream without result", 200, `{"progress":{"acked":1}}` + "\n",
			func(c *Client) error { _, err := c.Restore(ctx, RestoreRequest{}, nil); return err }, "the daemon ended the restore without a result", ""},
		{"bad stream", 200, "{oops\n",
			func(c *Client) error { _, err := c.Replicate(ctx, ReplicateRequest{}, nil); return err }, "bad reply from the daemon", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tc.status)
				w.Write([]byte(tc.body))
			})
			err := tc.call(c)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			var ce *Error
			if got := errors.As(err, &ce); got != (tc.code != "") || (got && ce.Code != tc.code) {
				t.Fatalf("error %#v, want code %q", err, tc.code)
			}
		})
	}
}

func TestClientPathsAndStream(t *testing.T) {
	var paths []string
	c := fakeDaemon(t, func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.EscapedPath()+"?"+r.URL.RawQuery)
		switch r.URL.Path {
		case "/v1/replicate":
			w.Write([]byte(`{"progress":{"acked":3,"upto":9}}` + "\n" + `{"result":{"acked":9,"records":4}}` + "\n"))
		default:
			w.Write([]byte("{}"))
		}
	})
	ctx := context.Background()
	if _, err := c.DeleteVolume(ctx, "a b", true); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteSnapshot(ctx, "v", "s/1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.History(ctx, "v", 12); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveReplication(ctx, ReplicationID("v", TargetSpec{To: "s3://b/p"})); err != nil {
		t.Fatal(err)
	}
	var seen []Progress
	res, err := c.Replicate(ctx, ReplicateRequest{Volume: "v"}, func(p Progress) { seen = append(seen, p) })
	if err != nil || res.Acked != 9 || res.Records != 4 || len(seen) != 1 || seen[0].Upto != 9 {
		t.Fatalf("Replicate: %+v, %v, progress %+v", res, err, seen)
	}
	want := []string{
		"DELETE /v1/volumes/a%20b?force=1",
		"DELETE /v1/volumes/v/snapshots/s%2F1?",
		"GET /v1/volumes/v/history?buckets=12",
		"DELETE /v1/replication?id=v+-%3E+s3%3A%2F%2Fb%2Fp",
		"POST /v1/replicate?",
	}
	if strings.Join(paths, "\n") != strings.Join(want, "\n") {
		t.Fatalf("requests:\n%s\nwant:\n%s", strings.Join(paths, "\n"), strings.Join(want, "\n"))
	}
}

func TestNoDaemon(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "control.sock")
	_, err := NewClient(sock).Status(context.Background())
	if !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("Status without a daemon: %v", err)
	}
}

func TestRedacted(t *testing.T) {
	for in, want := range map[string]string{
		"strata://dr:10810/vol":                      "strata://dr:10810/vol",
		"s3://KEY:SECRET@bucket/p?endpoint=http://x": "s3://bucket/p",
		"s3://a:b@b1/p,s3://b2/p?region=x":           "s3://b1/p,s3://b2/p",
	} {
		if got := (TargetSpec{To: in}).Redacted(); got != want {
			t.Errorf("Redacted(%q) = %q, want %q", in, got, want)
		}
	}
	if got := ReplicationID("v", TargetSpec{To: "s3://k:s@b/p"}); got != "v -> s3://b/p" {
		t.Errorf("ReplicationID = %q", got)
	}
}
