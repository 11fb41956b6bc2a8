package qga_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/strata-storage/strata/internal/qga"
	"github.com/strata-storage/strata/internal/qga/qgatest"
)

func TestFreezeThaw(t *testing.T) {
	a := qgatest.Start(t, qgatest.Obey)
	ctx := context.Background()
	if n, err := qga.Freeze(ctx, a.Socket); err != nil || n != 2 || !a.Frozen() {
		t.Fatalf("freeze: %d %v, frozen %v", n, err, a.Frozen())
	}
	if s, err := qga.Status(ctx, a.Socket); err != nil || s != "frozen" {
		t.Fatalf("status: %q %v", s, err)
	}
	if n, err := qga.Thaw(ctx, a.Socket); err != nil || n != 2 || a.Frozen() {
		t.Fatalf("thaw: %d %v, frozen %v", n, err, a.Frozen())
	}
	want := []string{"guest-sync-delimited", "guest-fsfreeze-freeze", "guest-sync-delimited", "guest-fsfreeze-status", "guest-sync-delimited", "guest-fsfreeze-thaw"}
	if got := a.Commands(); !slices.Equal(got, want) {
		t.Fatalf("commands %v, want %v", got, want)
	}
}

func TestRefusedAndHung(t *testing.T) {
	ctx := context.Background()
	r := qgatest.Start(t, qgatest.Refuse)
	if _, err := qga.Freeze(ctx, r.Socket); !errors.Is(err, qga.ErrAgent) {
		t.Fatalf("a refused freeze: %v, want ErrAgent", err)
	}
	h := qgatest.Start(t, qgatest.Hang)
	tctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := qga.Freeze(tctx, h.Socket); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hung freeze: %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("a hung freeze returned after %s", d)
	}
	// The next call, on a new connection, is answered.
	if _, err := qga.Thaw(ctx, h.Socket); err != nil || h.Frozen() {
		t.Fatalf("thaw after a hung freeze: %v, frozen %v", err, h.Frozen())
	}
	if _, err := qga.Freeze(ctx, t.TempDir()+"/none.sock"); err == nil {
		t.Fatal("freeze through a missing socket succeeded")
	}
}
