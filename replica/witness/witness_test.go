package witness

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testLease = 3 * time.Second

// clock is the injected clock of the tests.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openServer(t *testing.T, dir string, c *clock) *Server {
	t.Helper()
	s, err := NewServer(Options{Dir: dir, Lease: testLease, Token: "test-token", Now: c.Now, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// step is one request of a rule test and what it must answer.
type step struct {
	op      string // acquire, outdated, uptodate, release, handover, wait
	node    string
	peer    string // acquire: peer; outdated/uptodate: peer; handover: to
	epoch   uint64
	wait    time.Duration
	granted bool
	// wantEpoch, wantHolder: the group as the grant reports it.
	wantEpoch  uint64
	wantHolder string
	reason     string // a refusal's reason contains it
}

func (st step) run(t *testing.T, s *Server, c *clock) {
	t.Helper()
	ctx := context.Background()
	var g Grant
	var err error
	switch st.op {
	case "wait":
		c.advance(st.wait)
		return
	case "acquire":
		g, err = s.Acquire(ctx, "vol0", st.node, st.peer, st.epoch)
	case "outdated", "uptodate":
		g, err = s.SetOutdated(ctx, "vol0", st.node, st.epoch, st.peer, st.op == "outdated")
	case "release":
		g, err = s.Release(ctx, "vol0", st.node, st.epoch)
	case "handover":
		g, err = s.Handover(ctx, "vol0", st.node, st.epoch, st.peer)
	default:
		t.Fatalf("unknown op %q", st.op)
	}
	if err != nil {
		t.Fatalf("%s by %s: %v", st.op, st.node, err)
	}
	if g.Granted != st.granted {
		t.Fatalf("%s by %s epoch %d: granted %v, want %v (%+v)", st.op, st.node, st.epoch, g.Granted, st.granted, g)
	}
	if st.wantEpoch != 0 && g.Epoch != st.wantEpoch {
		t.Fatalf("%s by %s: epoch %d, want %d (%+v)", st.op, st.node, g.Epoch, st.wantEpoch, g)
	}
	if st.wantHolder != "" && g.Holder != st.wantHolder {
		t.Fatalf("%s by %s: holder %q, want %q (%+v)", st.op, st.node, g.Holder, st.wantHolder, g)
	}
	if !st.granted && (g.Reason == "" || !strings.Contains(g.Reason, st.reason)) {
		t.Fatalf("%s by %s: reason %q, want one containing %q", st.op, st.node, g.Reason, st.reason)
	}
	if st.granted && g.Reason != "" {
		t.Fatalf("%s by %s: granted with reason %q", st.op, st.node, g.Reason)
	}
}

// expire lets the lease run out.
var expire = step{op: "wait", wait: testLease + time.Millisecond}

func TestRules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"create grants the first caller and marks the peer outdated", []step{
			{op: "acquire", node: "a", peer: "b", granted: true, wantEpoch: 1, wantHolder: "a"},
			{op: "acquire", node: "b", peer: "a", reason: "lease runs", wantEpoch: 1, wantHolder: "a"},
			expire,
			{op: "acquire", node: "b", peer: "a", reason: "this member is outdated", wantEpoch: 1, wantHolder: "a"},
		}},
		{"create keeps a caller's higher epoch", []step{
			{op: "acquire", node: "a", peer: "b", epoch: 7, granted: true, wantEpoch: 7, wantHolder: "a"},
			{op: "acquire", node: "a", epoch: 7, granted: true, wantEpoch: 7},
		}},
		{"the holder renews with its epoch, even after expiry", []step{
			{op: "acquire", node: "a", peer: "b", granted: true, wantEpoch: 1},
			{op: "wait", wait: 2 * time.Second},
			{op: "acquire", node: "a", peer: "b", epoch: 1, granted: true, wantEpoch: 1},
			{op: "wait", wait: 2 * time.Second},
			{op: "acquire", node: "b", peer: "a", reason: "lease runs 1000 ms more"},
			expire,
			{op: "acquire", node: "a", epoch: 1, granted: true, wantEpoch: 1, wantHolder: "a"},
		}},
		{"an in-sync peer takes over after expiry and fences the old holder", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true},
			{op: "acquire", node: "b", peer: "a", reason: "lease runs"},
			expire,
			{op: "acquire", node: "b", peer: "a", epoch: 1, granted: true, wantEpoch: 2, wantHolder: "b"},
			{op: "acquire", node: "a", peer: "b", epoch: 1, reason: "lease runs", wantEpoch: 2, wantHolder: "b"},
			expire,
			// a's epoch is stale but it is a non-holder member: it may take
			// over, at the next epoch, once b's lease is gone.
			{op: "acquire", node: "a", peer: "b", epoch: 1, granted: true, wantEpoch: 3, wantHolder: "a"},
		}},
		{"a holder whose epoch was passed is fenced", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true},
			{op: "handover", node: "a", peer: "b", epoch: 1, granted: true, wantEpoch: 2, wantHolder: "b"},
			{op: "handover", node: "b", peer: "a", epoch: 2, granted: true, wantEpoch: 3, wantHolder: "a"},
			// an old process of a still presents epoch 1
			{op: "acquire", node: "a", peer: "b", epoch: 1, reason: "epoch 1 is fenced", wantEpoch: 3, wantHolder: "a"},
			{op: "acquire", node: "a", peer: "b", epoch: 4, reason: "ahead of", wantEpoch: 3},
			{op: "acquire", node: "a", peer: "b", epoch: 3, granted: true, wantEpoch: 3},
		}},
		{"not a member, or the wrong peer", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "acquire", node: "c", peer: "a", reason: "not a member"},
			expire,
			{op: "acquire", node: "c", peer: "b", reason: "not a member"},
			{op: "acquire", node: "a", peer: "c", epoch: 1, reason: "pairs a with b"},
		}},
		{"only the valid holder marks its peer", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "uptodate", node: "b", peer: "a", epoch: 1, reason: "does not hold"},
			{op: "uptodate", node: "a", peer: "b", epoch: 2, reason: "not the group's epoch"},
			{op: "uptodate", node: "a", peer: "a", epoch: 1, reason: "not a's peer"},
			{op: "uptodate", node: "a", peer: "c", epoch: 1, reason: "not a's peer"},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true, wantHolder: "a"},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true},
			{op: "outdated", node: "a", peer: "b", epoch: 1, granted: true},
			expire,
			{op: "uptodate", node: "a", peer: "b", epoch: 1, reason: "lease has expired"},
			{op: "acquire", node: "b", peer: "a", reason: "outdated"},
			{op: "acquire", node: "a", epoch: 1, granted: true},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true},
			expire,
			{op: "acquire", node: "b", granted: true, wantEpoch: 2, wantHolder: "b"},
		}},
		{"release lets the in-sync peer acquire at once", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "release", node: "b", epoch: 1, reason: "does not hold", wantHolder: "a"},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true},
			{op: "release", node: "a", epoch: 2, reason: "not the group's epoch"},
			{op: "release", node: "a", epoch: 1, granted: true, wantEpoch: 1},
			{op: "acquire", node: "b", granted: true, wantEpoch: 2, wantHolder: "b"},
		}},
		{"release does not let an outdated peer in; the releaser may come back", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "release", node: "a", epoch: 1, granted: true},
			{op: "acquire", node: "b", reason: "outdated"},
			{op: "acquire", node: "a", epoch: 1, granted: true, wantEpoch: 2, wantHolder: "a"},
		}},
		{"handover", []step{
			{op: "acquire", node: "a", peer: "b", granted: true},
			{op: "handover", node: "a", peer: "b", epoch: 1, reason: "b is outdated"},
			{op: "uptodate", node: "a", peer: "b", epoch: 1, granted: true},
			{op: "handover", node: "b", peer: "a", epoch: 1, reason: "does not hold"},
			{op: "handover", node: "a", peer: "c", epoch: 1, reason: "not a's peer"},
			{op: "handover", node: "a", peer: "b", epoch: 1, granted: true, wantEpoch: 2, wantHolder: "b"},
			// b's lease is fresh: a cannot take it back
			{op: "acquire", node: "a", epoch: 1, reason: "lease runs", wantHolder: "b"},
			{op: "acquire", node: "b", epoch: 2, granted: true, wantEpoch: 2},
			expire,
			{op: "handover", node: "b", peer: "a", epoch: 2, reason: "lease has expired"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClock()
			s := openServer(t, t.TempDir(), c)
			for i, st := range tc.steps {
				t.Logf("step %d: %s %s", i, st.op, st.node)
				st.run(t, s, c)
			}
		})
	}
}

func TestBadInput(t *testing.T) {
	s := openServer(t, t.TempDir(), newClock())
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		call func() (Grant, error)
	}{
		{"empty group", func() (Grant, error) { return s.Acquire(ctx, "", "a", "b", 0) }},
		{"empty node", func() (Grant, error) { return s.Acquire(ctx, "g", "", "b", 0) }},
		{"space in node", func() (Grant, error) { return s.Acquire(ctx, "g", "a b", "b", 0) }},
		{"long group", func() (Grant, error) { return s.Acquire(ctx, strings.Repeat("g", 129), "a", "b", 0) }},
		{"new group without peer", func() (Grant, error) { return s.Acquire(ctx, "g", "a", "", 0) }},
		{"peer is node", func() (Grant, error) { return s.Acquire(ctx, "g", "a", "a", 0) }},
		{"outdated without peer", func() (Grant, error) { return s.SetOutdated(ctx, "g", "a", 1, "", true) }},
		{"handover without to", func() (Grant, error) { return s.Handover(ctx, "g", "a", 1, "") }},
		{"release with bad node", func() (Grant, error) { return s.Release(ctx, "g", "a\n", 1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.call(); !errors.Is(err, ErrBadRequest) {
				t.Fatalf("err %v, want ErrBadRequest", err)
			}
		})
	}
	if _, err := s.Status(ctx, "nope"); !errors.Is(err, ErrUnknownGroup) {
		t.Fatalf("status of unknown group: %v", err)
	}
	if l, _ := s.List(ctx); len(l) != 0 {
		t.Fatalf("bad requests created groups: %+v", l)
	}
}

// TestRaceAfterRelease: both members ask at once after a release; exactly
// one wins and the epoch rises by one.
func TestRaceAfterRelease(t *testing.T) {
	for round := 0; round < 20; round++ {
		c := newClock()
		s := openServer(t, t.TempDir(), c)
		ctx := context.Background()
		mustGrant(t)(s.Acquire(ctx, "vol0", "a", "b", 4))
		mustGrant(t)(s.SetOutdated(ctx, "vol0", "a", 4, "b", false))
		mustGrant(t)(s.Release(ctx, "vol0", "a", 4))
		var wg sync.WaitGroup
		grants := make([]Grant, 2)
		for i, n := range []string{"a", "b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g, err := s.Acquire(ctx, "vol0", n, "", 4)
				if err != nil {
					t.Error(err)
				}
				grants[i] = g
			}()
		}
		wg.Wait()
		if grants[0].Granted == grants[1].Granted {
			t.Fatalf("round %d: both or neither granted: %+v", round, grants)
		}
		winner, loser := grants[0], grants[1]
		if !winner.Granted {
			winner, loser = loser, winner
		}
		if winner.Epoch != 5 || loser.Epoch != 5 || loser.Holder != winner.Holder || !strings.Contains(loser.Reason, "lease runs") {
			t.Fatalf("round %d: winner %+v loser %+v", round, winner, loser)
		}
		s.Close()
	}
}

// TestRaceAfterExpiry: the holder renewing and its in-sync peer taking
// over race; exactly one holds afterwards, and a takeover raises the epoch
// by one.
func TestRaceAfterExpiry(t *testing.T) {
	for round := 0; round < 20; round++ {
		c := newClock()
		s := openServer(t, t.TempDir(), c)
		ctx := context.Background()
		mustGrant(t)(s.Acquire(ctx, "vol0", "a", "b", 0))
		mustGrant(t)(s.SetOutdated(ctx, "vol0", "a", 1, "b", false))
		c.advance(testLease)
		var wg sync.WaitGroup
		grants := make([]Grant, 2)
		for i, n := range []string{"a", "b"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g, err := s.Acquire(ctx, "vol0", n, "", 1)
				if err != nil {
					t.Error(err)
				}
				grants[i] = g
			}()
		}
		wg.Wait()
		if grants[0].Granted == grants[1].Granted {
			t.Fatalf("round %d: both or neither granted: %+v", round, grants)
		}
		want := uint64(1)
		if grants[1].Granted {
			want = 2
		}
		st, _ := s.Status(ctx, "vol0")
		if st.Epoch != want {
			t.Fatalf("round %d: epoch %d, want %d (%+v)", round, st.Epoch, want, grants)
		}
		s.Close()
	}
}

// mustGrant(t)(call) fails t unless call was granted.
func mustGrant(t *testing.T) func(Grant, error) Grant {
	return func(g Grant, err error) Grant {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if !g.Granted {
			t.Fatalf("refused: %+v", g)
		}
		return g
	}
}

func TestRestartKeepsEpochAndHoldsLeases(t *testing.T) {
	dir := t.TempDir()
	c := newClock()
	ctx := context.Background()
	s := openServer(t, dir, c)
	mustGrant(t)(s.Acquire(ctx, "vol0", "a", "b", 0))
	mustGrant(t)(s.SetOutdated(ctx, "vol0", "a", 1, "b", false))
	c.advance(testLease + time.Millisecond)
	mustGrant(t)(s.Acquire(ctx, "vol0", "b", "a", 0)) // epoch 2, held by b
	mustGrant(t)(s.Acquire(ctx, "vol1", "x", "y", 0))
	mustGrant(t)(s.Release(ctx, "vol1", "x", 1))
	s.Close()

	// Long after every lease ran out, the witness restarts.
	c.advance(time.Hour)
	s = openServer(t, dir, c)
	st, err := s.Status(ctx, "vol0")
	if err != nil {
		t.Fatal(err)
	}
	if st.Epoch != 2 || st.Holder != "b" || st.Outdated != "" || st.Members != [2]string{"a", "b"} || st.LeaseLeft != testLease {
		t.Fatalf("after restart: %+v", st)
	}
	if st1, _ := s.Status(ctx, "vol1"); st1.Holder != "" || st1.LeaseLeft != 0 || st1.Outdated != "y" {
		t.Fatalf("released group after restart: %+v", st1)
	}
	// b may still believe it holds: a must wait one full lease.
	c.advance(testLease - time.Millisecond)
	if g, _ := s.Acquire(ctx, "vol0", "a", "b", 1); g.Granted || g.Holder != "b" || g.Epoch != 2 {
		t.Fatalf("a acquired inside the restart window: %+v", g)
	}
	c.advance(2 * time.Millisecond)
	if g := mustGrant(t)(s.Acquire(ctx, "vol0", "a", "b", 1)); g.Epoch != 3 {
		t.Fatalf("after the window: %+v", g)
	}
	// A released group is free at once after the restart.
	if g := mustGrant(t)(s.Acquire(ctx, "vol1", "x", "y", 1)); g.Epoch != 2 {
		t.Fatalf("released group: %+v", g)
	}
}

func TestSaveOrder(t *testing.T) {
	dir := t.TempDir()
	s := openServer(t, dir, newClock())
	var steps []string
	s.store.step = func(name string) error { steps = append(steps, name); return nil }
	mustGrant(t)(s.Acquire(context.Background(), "vol0", "a", "b", 0))
	if got := strings.Join(steps, ","); got != "write,sync,rename,syncdir" {
		t.Fatalf("save steps %s", got)
	}
	steps = nil
	mustGrant(t)(s.Acquire(context.Background(), "vol0", "a", "b", 1))
	if len(steps) != 0 {
		t.Fatalf("a renewal saved: %v", steps)
	}
	if _, err := os.Stat(filepath.Join(dir, tempFile)); !os.IsNotExist(err) {
		t.Fatalf("temp file left after a save: %v", err)
	}
}

// TestSaveFailure: a save that fails at any step is fatal: the request
// fails, nothing changes in memory, every later change and renewal is
// refused, and a restart finds the state of before the failed save (a
// crash between the temp file's write and its rename).
func TestSaveFailure(t *testing.T) {
	for _, at := range []string{"write", "sync", "rename"} {
		t.Run(at, func(t *testing.T) {
			dir := t.TempDir()
			c := newClock()
			ctx := context.Background()
			s := openServer(t, dir, c)
			mustGrant(t)(s.Acquire(ctx, "vol0", "a", "b", 0))
			mustGrant(t)(s.SetOutdated(ctx, "vol0", "a", 1, "b", false))
			boom := errors.New("injected I/O error")
			s.store.step = func(name string) error {
				if name == at {
					return boom
				}
				return nil
			}
			_, err := s.Handover(ctx, "vol0", "a", 1, "b")
			if !errors.Is(err, ErrFailed) {
				t.Fatalf("handover with a failing %s: %v", at, err)
			}
			s.store.step = nil
			if _, err := s.Acquire(ctx, "vol0", "a", "", 1); !errors.Is(err, ErrFailed) {
				t.Fatalf("renewal after the failure: %v", err)
			}
			if _, err := s.Acquire(ctx, "vol9", "a", "b", 0); !errors.Is(err, ErrFailed) {
				t.Fatalf("change after the failure: %v", err)
			}
			if st, err := s.Status(ctx, "vol0"); err != nil || st.Holder != "a" || st.Epoch != 1 {
				t.Fatalf("status after the failure: %+v %v", st, err)
			}
			s.Close()
			s = openServer(t, dir, c)
			st, err := s.Status(ctx, "vol0")
			if err != nil || st.Holder != "a" || st.Epoch != 1 || st.Outdated != "" {
				t.Fatalf("after restart: %+v %v", st, err)
			}
			if _, err := os.Stat(filepath.Join(dir, tempFile)); !os.IsNotExist(err) {
				t.Fatalf("stale temp file kept: %v", err)
			}
			if _, err := s.Status(ctx, "vol9"); !errors.Is(err, ErrUnknownGroup) {
				t.Fatalf("refused group exists: %v", err)
			}
		})
	}
}

func TestLoadRejectsBadFile(t *testing.T) {
	for name, body := range map[string]string{
		"not json":       "{",
		"future version": `{"version": 2, "groups": []}`,
		"holder not a member": `{"version": 1, "groups": [{"group": "g", "epoch": 1, "holder": "c",
			"members": ["a", "b"], "outdated": ""}]}`,
		"epoch 0":   `{"version": 1, "groups": [{"group": "g", "epoch": 0, "holder": "a", "members": ["a", "b"]}]}`,
		"duplicate": `{"version": 1, "groups": [{"group": "g", "epoch": 1, "members": ["a", "b"]}, {"group": "g", "epoch": 1, "members": ["a", "b"]}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, stateFile), []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := NewServer(Options{Dir: dir, Token: "test-token", Logger: quietLogger()})
			if err == nil {
				s.Close()
				t.Fatal("loaded a bad state file")
			}
		})
	}
}

func TestDirInUse(t *testing.T) {
	dir := t.TempDir()
	openServer(t, dir, newClock())
	_, err := NewServer(Options{Dir: dir, Token: "test-token", Logger: quietLogger()})
	if !errors.Is(err, ErrDirInUse) || !strings.Contains(err.Error(), "pid") {
		t.Fatalf("second server on the dir: %v", err)
	}
}

func TestOptions(t *testing.T) {
	if _, err := NewServer(Options{Token: "t"}); err == nil {
		t.Error("no Dir accepted")
	}
	if _, err := NewServer(Options{Dir: t.TempDir()}); err == nil {
		t.Error("no Token accepted")
	}
	if _, err := NewServer(Options{Dir: t.TempDir(), Token: "t", Lease: time.Millisecond}); err == nil {
		t.Error("1ms lease accepted")
	}
	s, err := NewServer(Options{Dir: t.TempDir(), Token: "t", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Lease() != DefaultLease {
		t.Errorf("default lease %s", s.Lease())
	}
}
