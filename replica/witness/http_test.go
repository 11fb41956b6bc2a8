package witness

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveHTTP serves s on a loopback port and returns a client of it.
func serveHTTP(t *testing.T, s *Server, token string) (*Client, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	c := NewClient(ClientOptions{Addr: ln.Addr().String(), Token: token, Timeout: 5 * time.Second})
	t.Cleanup(c.CloseIdleConnections)
	return c, ln.Addr().String()
}

func TestClientServer(t *testing.T) {
	clk := newClock()
	s := openServer(t, t.TempDir(), clk)
	c, _ := serveHTTP(t, s, "test-token")
	ctx := context.Background()

	before := time.Now()
	g, err := c.Acquire(ctx, "vol0", "a", "b", 0)
	after := time.Now()
	if err != nil || !g.Granted || g.Epoch != 1 || g.Holder != "a" || g.Outdated != "b" || g.Lease != testLease {
		t.Fatalf("acquire: %+v %v", g, err)
	}
	margin := testLease - testLease/10
	if g.ValidUntil.Before(before.Add(margin)) || g.ValidUntil.After(after.Add(margin)) {
		t.Fatalf("ValidUntil %v not within [%v, %v] + %s", g.ValidUntil, before, after, margin)
	}
	g, err = c.Acquire(ctx, "vol0", "b", "a", 0)
	if err != nil || g.Granted || !g.ValidUntil.IsZero() || g.Holder != "a" || !strings.Contains(g.Reason, "lease runs") {
		t.Fatalf("refusal: %+v %v", g, err)
	}
	if g, err = c.SetOutdated(ctx, "vol0", "a", 1, "b", false); err != nil || !g.Granted || g.Outdated != "" || !g.ValidUntil.IsZero() {
		t.Fatalf("set up to date: %+v %v", g, err)
	}
	// The handover's lease is b's, not the caller's.
	if g, err = c.Handover(ctx, "vol0", "a", 1, "b"); err != nil || !g.Granted || g.Holder != "b" || g.Epoch != 2 || !g.ValidUntil.IsZero() {
		t.Fatalf("handover: %+v %v", g, err)
	}
	if g, err = c.Release(ctx, "vol0", "b", 2); err != nil || !g.Granted || g.Holder != "" {
		t.Fatalf("release: %+v %v", g, err)
	}
	if g, err = c.Acquire(ctx, "vol0", "a", "b", 1); err != nil || !g.Granted || g.Epoch != 3 || g.ValidUntil.IsZero() {
		t.Fatalf("acquire after release: %+v %v", g, err)
	}
	clk.advance(time.Second)
	st, err := c.Status(ctx, "vol0")
	if err != nil || st.Epoch != 3 || st.Holder != "a" || st.Members != [2]string{"a", "b"} || st.LeaseLeft != testLease-time.Second {
		t.Fatalf("status: %+v %v", st, err)
	}
	if _, err := c.Status(ctx, "vol9"); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("status of an unknown group: %v", err)
	}
	if _, err := c.Acquire(ctx, "vol1", "x", "y", 0); err != nil {
		t.Fatal(err)
	}
	l, err := c.List(ctx)
	if err != nil || len(l) != 2 || l[0].Group != "vol0" || l[1].Group != "vol1" {
		t.Fatalf("list: %+v %v", l, err)
	}
	if _, err := c.Acquire(ctx, "", "a", "b", 0); !errors.Is(err, ErrBadRequest) || strings.Count(err.Error(), "bad request") != 1 {
		t.Fatalf("bad group over HTTP: %v", err)
	}
}

// TestRaceOverHTTP: two members race through the real client after a
// release; exactly one wins, at the next epoch.
func TestRaceOverHTTP(t *testing.T) {
	s := openServer(t, t.TempDir(), newClock())
	c, _ := serveHTTP(t, s, "test-token")
	ctx := context.Background()
	mustGrant(t)(c.Acquire(ctx, "vol0", "a", "b", 0))
	epoch := uint64(1)
	mustGrant(t)(c.SetOutdated(ctx, "vol0", "a", epoch, "b", false))
	holder := "a"
	for round := 0; round < 10; round++ {
		mustGrant(t)(c.Release(ctx, "vol0", holder, epoch))
		var wg sync.WaitGroup
		grants := make([]Grant, 2)
		for i, n := range []string{"a", "b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g, err := c.Acquire(ctx, "vol0", n, "", epoch)
				if err != nil {
					t.Error(err)
				}
				grants[i] = g
			}()
		}
		wg.Wait()
		if grants[0].Granted == grants[1].Granted {
			t.Fatalf("round %d: both or neither: %+v", round, grants)
		}
		for _, g := range grants {
			if g.Epoch != epoch+1 {
				t.Fatalf("round %d: epoch %d, want %d: %+v", round, g.Epoch, epoch+1, grants)
			}
			if g.Granted {
				holder = g.Holder
			}
		}
		epoch++
	}
}

func TestBadToken(t *testing.T) {
	s := openServer(t, t.TempDir(), newClock())
	_, addr := serveHTTP(t, s, "test-token")
	ctx := context.Background()
	for _, tok := range []string{"", "wrong", "test-token2", "test-toke"} {
		c := NewClient(ClientOptions{Addr: addr, Token: tok})
		if _, err := c.Acquire(ctx, "vol0", "a", "b", 0); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("token %q: acquire: %v", tok, err)
		}
		if _, err := c.List(ctx); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("token %q: list: %v", tok, err)
		}
		c.CloseIdleConnections()
	}
	if l, _ := s.List(ctx); len(l) != 0 {
		t.Fatalf("unauthorized requests changed state: %+v", l)
	}
}

func TestMalformedRequests(t *testing.T) {
	s := openServer(t, t.TempDir(), newClock())
	h := s.Handler()
	for _, tc := range []struct {
		name, method, path, auth, body string
		code                           int
		msg                            string
	}{
		{"no auth header", "POST", "/v1/acquire", "", `{}`, 401, "token-file"},
		{"basic auth", "POST", "/v1/acquire", "Basic dGVzdC10b2tlbg==", `{}`, 401, "token-file"},
		{"not json", "POST", "/v1/acquire", "Bearer test-token", `group=a`, 400, "not the JSON"},
		{"truncated", "POST", "/v1/acquire", "Bearer test-token", `{"group": "g", "node": `, 400, "not the JSON"},
		{"empty body", "POST", "/v1/release", "Bearer test-token", ``, 400, "not the JSON"},
		{"unknown field", "POST", "/v1/acquire", "Bearer test-token", `{"group":"g","node":"a","peer":"b","holder":"a"}`, 400, "unknown field"},
		{"wrong type", "POST", "/v1/acquire", "Bearer test-token", `{"group":"g","node":"a","peer":"b","epoch":-1}`, 400, "not the JSON"},
		{"array", "POST", "/v1/handover", "Bearer test-token", `[1,2]`, 400, "not the JSON"},
		{"trailing data", "POST", "/v1/acquire", "Bearer test-token", `{"group":"g","node":"a","peer":"b"} {}`, 400, "after its JSON"},
		{"too large", "POST", "/v1/acquire", "Bearer test-token", `{"group":"` + strings.Repeat("g", maxBody) + `"}`, 400, "reading the request"},
		{"missing group", "POST", "/v1/acquire", "Bearer test-token", `{"node":"a","peer":"b"}`, 400, "group is empty"},
		{"bad node", "POST", "/v1/outdated", "Bearer test-token", `{"group":"g","node":"a/../\u0000","peer":"b"}`, 400, "use letters"},
		{"status without group", "GET", "/v1/status", "Bearer test-token", ``, 400, "group is empty"},
		{"status of unknown group", "GET", "/v1/status?group=zz", "Bearer test-token", ``, 404, "zz"},
		{"GET acquire", "GET", "/v1/acquire", "Bearer test-token", ``, 405, "takes POST"},
		{"POST list", "POST", "/v1/list", "Bearer test-token", `{}`, 405, "takes GET"},
		{"unknown path", "GET", "/v2/x", "Bearer test-token", ``, 404, "no such endpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tc.code || !strings.Contains(string(body), tc.msg) {
				t.Fatalf("HTTP %d %s, want %d with %q", rec.Code, body, tc.code, tc.msg)
			}
			if rec.Header().Get("Content-Type") != "application/json" {
				t.Fatalf("content type %q", rec.Header().Get("Content-Type"))
			}
		})
	}
	if l, _ := s.List(context.Background()); len(l) != 0 {
		t.Fatalf("malformed requests created groups: %+v", l)
	}
}

func TestUnreachable(t *testing.T) {
	ctx := context.Background()
	// A listener that never answers: connections sit in its backlog.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := NewClient(ClientOptions{Addr: ln.Addr().String(), Token: "t", Timeout: 200 * time.Millisecond})
	start := time.Now()
	_, err = c.Acquire(ctx, "vol0", "a", "b", 0)
	if !errors.Is(err, ErrUnreachable) {
		t.Fatalf("silent witness: %v", err)
	}
	if d := time.Since(start); d < 150*time.Millisecond || d > 3*time.Second {
		t.Fatalf("silent witness answered after %s, timeout 200ms", d)
	}
	// Nothing listening.
	addr := ln.Addr().String()
	ln.Close()
	c = NewClient(ClientOptions{Addr: addr, Token: "t", Timeout: 200 * time.Millisecond})
	if _, err := c.List(ctx); !errors.Is(err, ErrUnreachable) {
		t.Fatalf("closed port: %v", err)
	}
	// The caller's own cancellation is not the witness's fault.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := c.List(cctx); errors.Is(err, ErrUnreachable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled context: %v", err)
	}
}

// TestFailedWitnessOverHTTP: a witness that could not save answers 503,
// which the client classifies as ErrFailed and ErrUnreachable.
func TestFailedWitnessOverHTTP(t *testing.T) {
	s := openServer(t, t.TempDir(), newClock())
	c, _ := serveHTTP(t, s, "test-token")
	s.store.step = func(string) error { return errors.New("injected fsync failure") }
	_, err := c.Acquire(context.Background(), "vol0", "a", "b", 0)
	if !errors.Is(err, ErrFailed) || !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "injected fsync failure") {
		t.Fatalf("acquire on a failing disk: %v", err)
	}
	if _, err := c.List(context.Background()); err != nil {
		t.Fatalf("list on a failed witness: %v", err)
	}
	// A raw 503 status, too.
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("POST", "/v1/acquire", strings.NewReader(`{"group":"g","node":"a","peer":"b"}`))
	req.Header.Set("Authorization", "Bearer test-token")
	s.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusServiceUnavailable {
		t.Fatalf("HTTP %d", rec.Code)
	}
}
