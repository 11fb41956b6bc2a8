package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/strata-storage/strata/internal/metricstest"
)

// Background passes run on the interval; the last report survives a
// restart, and the next pass is due an interval after it; the metrics
// count what the passes read.
func TestScrubBackground(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, c := start(t, dir, func(o *Options) { o.ScrubInterval = 300 * time.Millisecond; o.Volumes = []VolumeSpec{{"v", 1 << 20}} })
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.ScrubStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Last != nil {
			if st.Last.ErrorsFound() != 0 || st.Last.Segments == 0 || st.Interval != 300*time.Millisecond {
				t.Fatalf("background pass: %+v", st)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no background pass within 10 s of a 300 ms interval")
		}
		time.Sleep(50 * time.Millisecond)
	}
	text, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fams.Value("strata_scrub_bytes_checked_total"); err != nil || v <= 0 {
		t.Fatalf("strata_scrub_bytes_checked_total = %v (%v)", v, err)
	}
	if v, err := fams.Value("strata_scrub_last_completed_timestamp_seconds"); err != nil || v < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Fatalf("strata_scrub_last_completed_timestamp_seconds = %v (%v)", v, err)
	}
	d.Close(ctx)

	// After a restart with a long interval: the report is kept and the
	// next pass counts from it.
	_, c = start(t, dir, func(o *Options) { o.ScrubInterval = time.Hour })
	st, err := c.ScrubStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Last == nil || st.Running != nil || !st.Next.Equal(st.Last.Finished.Add(time.Hour)) {
		t.Fatalf("after a restart: %+v", st)
	}
}
