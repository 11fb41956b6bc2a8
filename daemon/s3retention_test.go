package daemon

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// TestS3RetentionPolicy: a target's --keep rules thin S3 points exactly
// as a snapshot schedule thins snapshots, and the policy is refused on
// targets that are not S3.
func TestS3RetentionPolicy(t *testing.T) {
	keep := control.Keep{Daily: 3}
	r := retention(control.TargetSpec{To: "s3://b/p", KeepHistory: 7 * 24 * time.Hour, Keep: &keep})
	if r.Window != 7*24*time.Hour || r.Policy != "--keep-history 7d --keep daily=3" || r.Keep == nil {
		t.Fatalf("retention %+v", r)
	}
	var times []time.Time
	for _, s := range every("2026-11-01T00:00:00Z", 6*time.Hour, 20) {
		tm, _ := time.Parse(time.RFC3339, s)
		times = append(times, tm)
	}
	got := r.Keep(times)
	if !slices.Equal(got, thin(times, keep)) {
		t.Fatalf("keep %v, thin %v", got, thin(times, keep))
	}
	var kept []string
	for i, k := range got {
		if k {
			kept = append(kept, times[i].Format("01-02T15"))
		}
	}
	// The newest of each of the 3 most recent days.
	if want := []string{"11-03T18", "11-04T18", "11-05T18"}; !slices.Equal(kept, want) {
		t.Fatalf("kept %v, want %v", kept, want)
	}
	if r := retention(control.TargetSpec{To: "s3://b/p"}); !r.IsZero() {
		t.Fatalf("no flags: %+v", r)
	}
	if err := checkRetention(control.TargetSpec{To: "strata://h:1", KeepHistory: time.Hour}); !errors.Is(err, errBadRequest) {
		t.Fatalf("policy on a strata:// target: %v", err)
	}
	if err := checkRetention(control.TargetSpec{To: "s3://b/p", KeepHistory: time.Hour}); err != nil {
		t.Fatal(err)
	}
}
