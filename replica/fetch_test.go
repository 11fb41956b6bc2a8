package replica

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/strata-storage/strata/cdp"
)

// A site answers a block fetch with the version whose checksum is asked
// for, also an older one; it refuses a bad token and answers "not found"
// for a checksum, volume or offset it holds no good version of.
func TestFetchBlock(t *testing.T) {
	s := newSite(t)
	if _, err := s.pool.CreateVolume("v", 1<<20); err != nil {
		t.Fatal(err)
	}
	h, err := s.pool.OpenVolume("v")
	if err != nil {
		t.Fatal(err)
	}
	old, cur := bytes.Repeat([]byte{1}, 4096), bytes.Repeat([]byte{2}, 4096)
	for _, b := range [][]byte{old, cur} {
		if _, err := h.WriteAt(b, 8192); err != nil {
			t.Fatal(err)
		}
	}
	h.Close()
	ctx := context.Background()
	r := NewRemote(RemoteOptions{Addr: s.addr, Token: testToken})
	for _, want := range [][]byte{old, cur} {
		got, err := r.FetchBlock(ctx, "v", 8192, cdp.Checksum(want))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("fetch: %v", err)
		}
	}
	for _, c := range []struct {
		vol string
		off int64
		crc uint32
	}{{"v", 8192, cdp.Checksum(bytes.Repeat([]byte{3}, 4096))}, {"nope", 8192, cdp.Checksum(cur)}, {"v", 4096, cdp.Checksum(cur)}} {
		if _, err := r.FetchBlock(ctx, c.vol, c.off, c.crc); !errors.Is(err, ErrNotFound) {
			t.Fatalf("fetch %+v: want ErrNotFound, got %v", c, err)
		}
	}
	if _, err := r.FetchBlock(ctx, "v", 100, cdp.Checksum(cur)); err == nil {
		t.Fatal("an unaligned offset was answered")
	}
	bad := NewRemote(RemoteOptions{Addr: s.addr, Token: "wrong-token"})
	if _, err := bad.FetchBlock(ctx, "v", 8192, cdp.Checksum(cur)); !errors.Is(err, ErrAuth) {
		t.Fatalf("bad token: want ErrAuth, got %v", err)
	}
}
