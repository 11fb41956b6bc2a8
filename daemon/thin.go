package daemon

import (
	"sort"
	"time"

	"github.com/strata-storage/strata/control"
)

// thin decides which scheduled snapshots a keep policy keeps: given their
// times (any order), it returns keep[i] for each. The newest always stays;
// Frequent keeps the newest N; every other rule keeps the newest snapshot
// of each of the N most recent periods (UTC hours, days, weeks from
// Monday, months, years) that hold one. Counting periods that hold a
// snapshot, rather than the last N periods of the clock, means a daemon
// that was down, or a replica that receives late, never loses history to
// the gap.
func thin(times []time.Time, k control.Keep) []bool {
	keep := make([]bool, len(times))
	order := make([]int, len(times))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return times[order[a]].After(times[order[b]]) })
	for n, i := range order {
		if n < max(k.Frequent, 1) {
			keep[i] = true
		}
	}
	rules := []struct {
		n      int
		period func(time.Time) time.Time
	}{
		{k.Hourly, func(t time.Time) time.Time { return t.Truncate(time.Hour) }},
		{k.Daily, startOfDay},
		{k.Weekly, func(t time.Time) time.Time { return startOfDay(t).AddDate(0, 0, -(int(t.Weekday())+6)%7) }},
		{k.Monthly, func(t time.Time) time.Time { return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC) }},
		{k.Yearly, func(t time.Time) time.Time { return time.Date(t.Year(), 1, 1, 0, 0, 0, 0, time.UTC) }},
	}
	for _, r := range rules {
		kept := 0
		var last time.Time
		for _, i := range order {
			if kept >= r.n {
				break
			}
			// Newest first: the first snapshot met in a period is its newest.
			if p := r.period(times[i].UTC()); kept == 0 || !p.Equal(last) {
				keep[i] = true
				kept++
				last = p
			}
		}
	}
	return keep
}

func startOfDay(t time.Time) time.Time {
	return time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
}
