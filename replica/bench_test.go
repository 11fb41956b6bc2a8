package replica

import (
	"context"
	"math/rand"
	"testing"
)

// BenchmarkShip ships 128 MiB of incompressible 1 MiB writes between two
// pools over loopback, as a full copy (diff) and as journal records (go
// test -bench Ship -cpuprofile ...): where the time of a run goes.
func BenchmarkShip(b *testing.B) {
	for _, mode := range []string{"diff", "records"} {
		b.Run(mode, func(b *testing.B) {
			const size = 128 << 20
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				a, dst := newSiteIn(b, b.TempDir()), newSiteIn(b, b.TempDir())
				a.pool.CreateVolume("v", size)
				if mode == "records" {
					// The first run copies the (empty) volume at its
					// oldest snapshot, then ships the records.
					a.pool.CreateSnapshot("v", "base", "")
				}
				h, _ := a.pool.OpenVolume("v")
				buf := make([]byte, 1<<20)
				rng := rand.New(rand.NewSource(int64(i)))
				for off := int64(0); off < size; off += 1 << 20 {
					rng.Read(buf)
					h.WriteAt(buf, off)
				}
				h.Flush()
				h.Close()
				b.SetBytes(size)
				b.StartTimer()
				tgt := NewRemote(RemoteOptions{Addr: dst.addr, Token: testToken})
				if _, err := Ship(context.Background(), ShipOptions{Pool: a.pool, Volume: "v", Target: tgt}); err != nil {
					b.Fatal(err)
				}
				tgt.Close()
			}
		})
	}
}
