package replica

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/strata-storage/strata/cdp"
)

// sumsTarget takes a shipper's batches and checks what the first copy's
// writes carry.
type sumsTarget struct {
	t               *testing.T
	writes, without int
	data            int64
}

func (s *sumsTarget) Open(context.Context, Hello) (State, error) { return State{}, nil }
func (s *sumsTarget) Close() error                               { return nil }
func (s *sumsTarget) String() string                             { return "sums test target" }
func (s *sumsTarget) Send(_ context.Context, b *Batch) error {
	for _, op := range b.Ops {
		if op.Kind != OpWrite || !b.Diff {
			continue
		}
		s.writes++
		s.data += int64(len(op.Data))
		if len(op.Sums) != sumsLen(len(op.Data)) {
			s.without++
			continue
		}
		for k := 0; k*cdp.BlockSize < len(op.Data); k++ {
			blk := op.Data[k*cdp.BlockSize : min((k+1)*cdp.BlockSize, len(op.Data))]
			if got, want := binary.LittleEndian.Uint32(op.Sums[4*k:]), cdp.Checksum(blk); got != want {
				s.t.Errorf("write at %d, block %d: sum %08x, its data's %08x", op.Offset, k, got, want)
			}
		}
	}
	return nil
}

// A first copy's writes carry their blocks' checksums from the index (the
// frame then makes none from the data, and the target checks the data read
// from the source's memory against its records), and they are right.
func TestFirstCopyCarriesSums(t *testing.T) {
	a := newSite(t)
	rng := seed(t)
	if _, err := a.pool.CreateVolume("v", 16<<20); err != nil {
		t.Fatal(err)
	}
	scribble(t, a.pool, "v", rng, 200)
	fillRandom(t, a.pool, "v", 6<<20, rng)
	tgt := &sumsTarget{t: t}
	if _, err := Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: tgt, BatchBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	if tgt.writes == 0 || tgt.data < 6<<20 {
		t.Fatalf("the first copy sent %d writes, %d bytes: not the volume's data", tgt.writes, tgt.data)
	}
	if tgt.without != 0 {
		t.Fatalf("%d of the first copy's %d writes carry no checksums", tgt.without, tgt.writes)
	}
}
