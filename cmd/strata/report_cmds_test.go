package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// What status and report print of the forecast: nothing known yet, not
// filling, full in N days, and the warning under 14 days.
func TestPrintForecast(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		fc   control.Forecast
		want []string
		not  string
	}{
		{control.Forecast{UsedBytes: 1 << 30, FreeBytes: 10 << 30}, []string{"capacity: 1 GiB used by the pool, 10 GiB free on its filesystem", "not known until the daemon has a day of history"}, "WARNING"},
		{control.Forecast{Growth7d: f(-1 << 20), Growth30d: f(0)}, []string{"-1 MiB/day over 7 days, 0 B/day over 30 days: not filling"}, "WARNING"},
		{control.Forecast{Growth7d: f(1 << 30), Growth30d: f(512 << 20), DaysUntilFull: f(365.4)}, []string{"1 GiB/day over 7 days, 512 MiB/day over 30 days: full in 365 days at the faster rate"}, "WARNING"},
		{control.Forecast{Growth7d: f(1 << 30), DaysUntilFull: f(9.25), Warning: true}, []string{"full in 9.2 days", "WARNING:  the pool's filesystem is full in 9.2 days"}, ""},
	} {
		var b bytes.Buffer
		printForecast(&b, tc.fc)
		for _, w := range tc.want {
			if !strings.Contains(b.String(), w) {
				t.Errorf("%+v: want %q in:\n%s", tc.fc, w, b.String())
			}
		}
		if tc.not != "" && strings.Contains(b.String(), tc.not) {
			t.Errorf("%+v: %q in:\n%s", tc.fc, tc.not, b.String())
		}
	}
}

func TestLabelMatch(t *testing.T) {
	l := map[string]string{"team": "web", "env": "prod"}
	for _, tc := range []struct {
		want []string
		ok   bool
	}{
		{nil, true}, {[]string{"team=web"}, true}, {[]string{"team=web", "env"}, true},
		{[]string{"team=db"}, false}, {[]string{"tier"}, false}, {[]string{"team=web", "env=dev"}, false}, {[]string{"team="}, false},
	} {
		if got := labelMatch(l, tc.want); got != tc.ok {
			t.Errorf("labelMatch(%v) = %v", tc.want, got)
		}
	}
	if dateText(time.Date(2027, 1, 31, 0, 0, 0, 0, time.UTC)) != "2027-01-31" || dateText(time.Time{}) != "-" {
		t.Error("dateText")
	}
}
