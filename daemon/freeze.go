package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/qga"
)

// Error classes of app-consistent snapshots.
var (
	// errFreeze: the freeze failed (the command exited non-zero, the guest
	// agent refused): no snapshot was taken, and the thaw ran.
	errFreeze = errors.New("freeze failed")
	// errThaw: the thaw failed after the snapshot: the application or
	// guest may still be frozen.
	errThaw = errors.New("thaw failed")
)

// freezer quiesces an application or guest. Freeze and Thaw are bounded by
// their context; Thaw is safe to call when nothing is frozen.
type freezer interface {
	Freeze(ctx context.Context) error
	Thaw(ctx context.Context) error
}

func newFreezer(q *control.Quiesce) freezer {
	if q.QGA != "" {
		return qgaFreezer(q.QGA)
	}
	return cmdFreezer{freeze: q.FreezeCmd, thaw: q.ThawCmd}
}

// cmdFreezer runs commands (exec, no shell: the user asks for one with
// sh -c).
type cmdFreezer struct{ freeze, thaw []string }

func (f cmdFreezer) Freeze(ctx context.Context) error { return runCmd(ctx, f.freeze) }
func (f cmdFreezer) Thaw(ctx context.Context) error   { return runCmd(ctx, f.thaw) }

func runCmd(ctx context.Context, argv []string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// A child that keeps the output open past the kill must not hold
	// the snapshot.
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	msg := strings.TrimSpace(out.String())
	if len(msg) > 512 {
		msg = msg[:512] + "..."
	}
	if msg != "" {
		return fmt.Errorf("%q: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return fmt.Errorf("%q: %w", strings.Join(argv, " "), err)
}

// qgaFreezer freezes a VM's filesystems through its QEMU guest agent.
type qgaFreezer string

func (f qgaFreezer) Freeze(ctx context.Context) error {
	_, err := qga.Freeze(ctx, string(f))
	return err
}

// Thaw thaws, then asks the agent whether anything is still frozen: the
// guest must not be left frozen by a thaw that half-worked.
func (f qgaFreezer) Thaw(ctx context.Context) error {
	if _, err := qga.Thaw(ctx, string(f)); err != nil {
		return err
	}
	st, err := qga.Status(ctx, string(f))
	if err != nil {
		return err
	}
	if st != "thawed" {
		return fmt.Errorf("the guest agent at %s says its filesystems are %q after the thaw", string(f), st)
	}
	return nil
}

// snapshotter is what snapshots need of the pool.
type snapshotter interface {
	Volumes() []cow.VolumeInfo
	Snapshots(vol string) ([]cow.Snapshot, error)
	CreateSnapshotWith(vol, name string, o cow.SnapshotOptions) (cow.Snapshot, error)
	DeleteSnapshot(vol, name string) error
}

// quiescedSnapshot takes snapshot vol@name, frozen by q if q is set: freeze,
// snapshot (app-consistent), thaw. A freeze still running after q's
// timeout is abandoned: the thaw runs, the snapshot is taken
// crash-consistent, and warning says so. A freeze that fails takes no
// snapshot (errFreeze), after a thaw, since a freeze may fail half-way. A
// thaw that fails after the snapshot returns the snapshot with errThaw.
func quiescedSnapshot(ctx context.Context, pool snapshotter, log *slog.Logger, vol, name string, o cow.SnapshotOptions, q *control.Quiesce) (sn cow.Snapshot, warning string, err error) {
	if q == nil {
		sn, err = pool.CreateSnapshotWith(vol, name, o)
		return sn, "", err
	}
	// Nothing is frozen for a snapshot that cannot be taken.
	if err := cow.ValidateName(name); err != nil {
		return cow.Snapshot{}, "", fmt.Errorf("snapshot name: %w", err)
	}
	snaps, err := pool.Snapshots(vol)
	if err != nil {
		return cow.Snapshot{}, "", err
	}
	for _, sn := range snaps {
		if sn.Name == name {
			return cow.Snapshot{}, "", fmt.Errorf("snapshot %s@%s %w", vol, name, cow.ErrExists)
		}
	}
	f := newFreezer(q)
	timeout := q.Timeout
	if timeout == 0 {
		timeout = control.DefaultFreezeTimeout
	}
	thaw := func() error {
		// The thaw runs even when the request was cancelled: a frozen
		// guest must not stay frozen.
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		return f.Thaw(tctx)
	}
	fctx, cancel := context.WithTimeout(ctx, timeout)
	start := time.Now()
	ferr := f.Freeze(fctx)
	timedOut := ferr != nil && errors.Is(fctx.Err(), context.DeadlineExceeded)
	cancel()
	switch {
	case ferr == nil:
		o.AppConsistent = true
		log.Info("froze for a snapshot", "volume", vol, "snapshot", name, "took", time.Since(start).Round(time.Millisecond))
	case timedOut:
		warning = fmt.Sprintf("the freeze did not finish within %s (%v): thawed, and the snapshot is crash-consistent", timeout, ferr)
		log.Warn("freeze timed out; taking a crash-consistent snapshot", "volume", vol, "snapshot", name, "timeout", timeout, "err", ferr)
	default:
		err = fmt.Errorf("%w for %s@%s, no snapshot taken: %v", errFreeze, vol, name, ferr)
		if terr := thaw(); terr != nil {
			err = fmt.Errorf("%w; the thaw after it failed too: %v", err, terr)
		}
		return cow.Snapshot{}, "", err
	}
	sn, err = pool.CreateSnapshotWith(vol, name, o)
	terr := thaw()
	switch {
	case err != nil && terr != nil:
		return cow.Snapshot{}, "", fmt.Errorf("%w (and %w: %v)", err, errThaw, terr)
	case err != nil:
		return cow.Snapshot{}, "", err
	case terr != nil:
		return sn, warning, fmt.Errorf("%w after snapshot %s@%s was taken: %v: the application may still be frozen", errThaw, vol, name, terr)
	}
	return sn, warning, nil
}
