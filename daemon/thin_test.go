package daemon

import (
	"slices"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// every returns the times from start (RFC 3339) every step, n of them.
func every(start string, step time.Duration, n int) []string {
	t, _ := time.Parse(time.RFC3339, start)
	var out []string
	for i := 0; i < n; i++ {
		out = append(out, t.Add(time.Duration(i)*step).Format(time.RFC3339))
	}
	return out
}

func TestThin(t *testing.T) {
	for _, tc := range []struct {
		name  string
		times []string
		keep  string
		want  []string
	}{
		{"empty", nil, "hourly=24", nil},
		{"the newest always stays", []string{"2026-11-30T10:15:00Z"}, "daily=1", []string{"2026-11-30T10:15:00Z"}},
		{"frequent keeps the newest N", every("2026-11-30T10:00:00Z", 15*time.Minute, 6), "frequent=3",
			[]string{"2026-11-30T10:45:00Z", "2026-11-30T11:00:00Z", "2026-11-30T11:15:00Z"}},
		{"hourly keeps each hour's newest", every("2026-11-30T10:00:00Z", 15*time.Minute, 12), "hourly=2",
			[]string{"2026-11-30T11:45:00Z", "2026-11-30T12:45:00Z"}},
		{"hourly and frequent together", every("2026-11-30T10:00:00Z", 15*time.Minute, 12), "frequent=2,hourly=3",
			[]string{"2026-11-30T10:45:00Z", "2026-11-30T11:45:00Z", "2026-11-30T12:30:00Z", "2026-11-30T12:45:00Z"}},
		{"daily counts days that hold a snapshot, across a gap",
			[]string{"2026-11-01T08:00:00Z", "2026-11-05T08:00:00Z", "2026-11-05T20:00:00Z", "2026-11-09T08:00:00Z"}, "daily=2",
			[]string{"2026-11-05T20:00:00Z", "2026-11-09T08:00:00Z"}},
		{"weeks start on Monday (UTC)",
			[]string{"2026-11-28T12:00:00Z", "2026-11-29T23:00:00Z", "2026-11-30T00:30:00Z", "2026-11-30T06:00:00Z"}, "weekly=2",
			[]string{"2026-11-29T23:00:00Z", "2026-11-30T06:00:00Z"}},
		{"monthly across a year's end",
			[]string{"2025-11-30T12:00:00Z", "2025-12-01T00:00:00Z", "2025-12-31T23:59:59Z", "2026-01-01T00:00:00Z", "2026-01-15T00:00:00Z"}, "monthly=2",
			[]string{"2025-12-31T23:59:59Z", "2026-01-15T00:00:00Z"}},
		{"yearly", []string{"2024-06-01T00:00:00Z", "2024-12-01T00:00:00Z", "2025-03-01T00:00:00Z", "2026-01-01T00:00:00Z"}, "yearly=2",
			[]string{"2025-03-01T00:00:00Z", "2026-01-01T00:00:00Z"}},
		{"order of the input does not matter",
			[]string{"2026-11-30T12:45:00Z", "2026-11-30T10:15:00Z", "2026-11-30T11:30:00Z", "2026-11-30T10:45:00Z", "2026-11-30T11:50:00Z"}, "hourly=2",
			[]string{"2026-11-30T11:50:00Z", "2026-11-30T12:45:00Z"}},
		{"times in another zone count in UTC",
			[]string{"2026-11-30T23:30:00-02:00", "2026-12-01T00:30:00+02:00", "2026-12-01T05:00:00Z"}, "daily=3",
			[]string{"2026-12-01T00:30:00+02:00", "2026-12-01T05:00:00Z"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := control.ParseKeep(tc.keep)
			if err != nil {
				t.Fatal(err)
			}
			var times []time.Time
			for _, s := range tc.times {
				tm, err := time.Parse(time.RFC3339, s)
				if err != nil {
					t.Fatal(err)
				}
				times = append(times, tm)
			}
			var got []string
			for i, kept := range thin(times, k) {
				if kept {
					got = append(got, tc.times[i])
				}
			}
			slices.Sort(got)
			want := slices.Clone(tc.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("kept %v, want %v", got, want)
			}
		})
	}
}
