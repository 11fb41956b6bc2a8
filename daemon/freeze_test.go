package daemon

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/qga/qgatest"
)

func TestQuiescedSnapshotQGA(t *testing.T) {
	clk := newFakeClock("2026-12-01T12:00:00Z")
	p := memPool(t, clk, "vm")
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()

	ok := qgatest.Start(t, qgatest.Obey)
	sn, warning, err := quiescedSnapshot(ctx, p, log, "vm", "app", cow.SnapshotOptions{}, &control.Quiesce{QGA: ok.Socket})
	if err != nil || warning != "" || !sn.AppConsistent || ok.Frozen() {
		t.Fatalf("obeying agent: %+v %q %v, frozen %v", sn, warning, err, ok.Frozen())
	}
	if got := ok.Commands(); !slices.Equal(got, []string{"guest-sync-delimited", "guest-fsfreeze-freeze", "guest-sync-delimited", "guest-fsfreeze-thaw", "guest-sync-delimited", "guest-fsfreeze-status"}) {
		t.Fatalf("agent saw %v", got)
	}

	// A hung freeze: the timeout thaws, and the snapshot is crash-consistent.
	hang := qgatest.Start(t, qgatest.Hang)
	start := time.Now()
	sn, warning, err = quiescedSnapshot(ctx, p, log, "vm", "hung", cow.SnapshotOptions{}, &control.Quiesce{QGA: hang.Socket, Timeout: 300 * time.Millisecond})
	if err != nil || sn.AppConsistent || !strings.Contains(warning, "crash-consistent") || hang.Frozen() {
		t.Fatalf("hung agent: %+v %q %v, frozen %v", sn, warning, err, hang.Frozen())
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 3*time.Second {
		t.Fatalf("hung agent: returned after %s with a 300ms timeout", d)
	}

	// A refused freeze: an error, no snapshot, and nothing left frozen
	// (the agent froze part of the guest before it failed).
	refuse := qgatest.Start(t, qgatest.Refuse)
	_, _, err = quiescedSnapshot(ctx, p, log, "vm", "refused", cow.SnapshotOptions{}, &control.Quiesce{QGA: refuse.Socket})
	if !errors.Is(err, errFreeze) || refuse.Frozen() {
		t.Fatalf("refusing agent: %v, frozen %v", err, refuse.Frozen())
	}
	// A thaw that leaves the guest frozen: the snapshot is there, and the
	// error says the guest may still be frozen.
	stuck := qgatest.Start(t, qgatest.StayFrozen)
	sn, _, err = quiescedSnapshot(ctx, p, log, "vm", "stuck", cow.SnapshotOptions{}, &control.Quiesce{QGA: stuck.Socket})
	if !errors.Is(err, errThaw) || sn.Name != "stuck" || !strings.Contains(err.Error(), `"frozen"`) {
		t.Fatalf("an agent that stays frozen: %+v %v", sn, err)
	}
	if got := snapNames(t, p, "vm", false); !slices.Equal(got, []string{"app", "hung", "stuck"}) {
		t.Fatalf("snapshots: %v", got)
	}
}

func TestQuiescedSnapshotCommands(t *testing.T) {
	clk := newFakeClock("2026-12-01T12:00:00Z")
	p := memPool(t, clk, "vm")
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	dir := t.TempDir()
	marks := filepath.Join(dir, "marks")
	// The freeze and thaw append to a file; the snapshot must come between.
	q := func(freeze string) *control.Quiesce {
		return &control.Quiesce{FreezeCmd: []string{"sh", "-c", freeze}, ThawCmd: []string{"sh", "-c", "echo thaw >> " + marks}, Timeout: 500 * time.Millisecond}
	}
	read := func() string {
		b, _ := os.ReadFile(marks)
		os.Remove(marks)
		return strings.Join(strings.Fields(string(b)), " ")
	}
	sn, warning, err := quiescedSnapshot(ctx, p, log, "vm", "app", cow.SnapshotOptions{Label: "db"}, q("echo freeze >> "+marks))
	if err != nil || warning != "" || !sn.AppConsistent || sn.Label != "db" || read() != "freeze thaw" {
		t.Fatalf("freeze command: %+v %q %v", sn, warning, err)
	}
	sn, warning, err = quiescedSnapshot(ctx, p, log, "vm", "slow", cow.SnapshotOptions{}, q("sleep 30"))
	if err != nil || sn.AppConsistent || warning == "" || read() != "thaw" {
		t.Fatalf("a freeze past its timeout: %+v %q %v", sn, warning, err)
	}
	_, _, err = quiescedSnapshot(ctx, p, log, "vm", "failed", cow.SnapshotOptions{}, q("echo cannot freeze >&2; exit 3"))
	if !errors.Is(err, errFreeze) || !strings.Contains(err.Error(), "cannot freeze") || read() != "thaw" {
		t.Fatalf("a failing freeze: %v", err)
	}
	// A snapshot that cannot be taken freezes nothing.
	for _, c := range []struct{ vol, name string }{{"vm", "app"}, {"nope", "x"}, {"vm", "bad/name"}} {
		if _, _, err := quiescedSnapshot(ctx, p, log, c.vol, c.name, cow.SnapshotOptions{}, q("echo freeze >> "+marks)); err == nil || read() != "" {
			t.Fatalf("%s@%s: %v, and the freeze ran", c.vol, c.name, err)
		}
	}
	// No shell unless asked for: the words are the command's arguments.
	argv, err := control.SplitCommand(`touch "` + dir + `/x;y" '` + dir + `/$HOME'`)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err = quiescedSnapshot(ctx, p, log, "vm", "noshell", cow.SnapshotOptions{}, &control.Quiesce{FreezeCmd: argv, ThawCmd: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"x;y", "$HOME"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("the freeze command went through a shell: %v", err)
		}
	}
}

// A scheduled snapshot whose freeze is refused is still taken, as
// crash-consistent, and the schedule's status says why.
func TestScheduleFreezeRefused(t *testing.T) {
	clk := newFakeClock("2026-12-01T12:00:00Z")
	p := memPool(t, clk, "vm")
	refuse := qgatest.Start(t, qgatest.Refuse)
	m, err := newScheduleManager(p, slog.New(slog.DiscardHandler), clk, filepath.Join(t.TempDir(), "s.json"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.set(control.Schedule{Volume: "vm", Every: time.Hour, Keep: mustKeep(t, "daily=7"), Quiesce: &control.Quiesce{QGA: refuse.Socket}}); err != nil {
		t.Fatal(err)
	}
	m.pass(context.Background())
	snaps, _ := p.Snapshots("vm")
	if len(snaps) != 1 || !snaps[0].Scheduled || snaps[0].AppConsistent || refuse.Frozen() {
		t.Fatalf("snapshots %+v, frozen %v", snaps, refuse.Frozen())
	}
	if st := m.statuses(); len(st) != 1 || !strings.Contains(st[0].LastError, "crash-consistent") {
		t.Fatalf("status: %+v", st)
	}
}
