package main

import (
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
)

// metaFlags are volume create's and set's flags for who owns a volume,
// its labels and when it may go (strata report).
func metaFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{Name: "label", Usage: "`KEY=VALUE` label, for volume list --label and strata report (repeat the flag for several; KEY= removes one)"},
		&cli.StringSliceFlag{Name: "unlabel", Usage: "`KEY`: remove that label (repeatable)"},
		&cli.StringFlag{Name: "owner", Usage: "who owns the volume, any text ('' clears)"},
		&cli.StringFlag{Name: "expires", Usage: "when the volume may go: a date (2027-01-31), a duration from now (30d, 12h) or never; strata report lists it as expired from then"},
	}
}

// metaChange reads metaFlags.
func metaChange(c *cli.Context) (control.MetaChange, error) {
	var m control.MetaChange
	for _, l := range c.StringSlice("label") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return m, fmt.Errorf("--label %q: give KEY=VALUE (KEY= removes the label)", l)
		}
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	for _, k := range c.StringSlice("unlabel") {
		if m.Labels == nil {
			m.Labels = map[string]string{}
		}
		m.Labels[strings.TrimSpace(k)] = ""
	}
	if c.IsSet("owner") {
		m.Owner = new(c.String("owner"))
	}
	if c.IsSet("expires") {
		m.Expires = new(c.String("expires"))
	}
	return m, nil
}

// labelMatch: the volume's labels include every KEY=VALUE of want (a bare
// KEY: any value).
func labelMatch(labels map[string]string, want []string) bool {
	for _, w := range want {
		k, v, hasValue := strings.Cut(w, "=")
		got, ok := labels[k]
		if !ok || (hasValue && got != v) {
			return false
		}
	}
	return true
}

func labelsText(l map[string]string) string {
	if len(l) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func dateText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	if t.Equal(t.Truncate(24 * time.Hour)) {
		return t.UTC().Format("2006-01-02")
	}
	return t.UTC().Format(time.RFC3339)
}

func reportCommand() *cli.Command {
	return &cli.Command{
		Name:  "report",
		Usage: "capacity and sprawl: idle and expired volumes, what deleting each frees, growth and when the disk fills",
		UsageText: `strata report [--idle-days N] [--top N] [--json]

Examples:
   strata report
   strata report --idle-days 90 --json`,
		Description: `Lists the volumes nobody uses (IDLE: not attached and not written for
--idle-days days, default 30; a volume never used counts from its creation),
the volumes past their expiry (strata volume set VOL --expires), and the
largest consumers: FREES is what deleting the volume would free, its head,
history and snapshots together, less what other volumes' clones show of it
(strata df's reclaimable). Then the pool's growth on disk per day over the
last 7 and 30 days and the days until its filesystem is full at the faster
rate; strata status and the daemon's log warn when that is under 14 days.

The daemon samples attachments and writes every 10 seconds and keeps a
daily history (DATA/activity.json, 400 days); owners, labels and expiry are
in DATA/volmeta.json.`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "idle-days", Value: 30, Usage: "a volume neither attached nor written for this many days is idle"},
			&cli.IntFlag{Name: "top", Value: 10, Usage: "how many of the largest consumers to list (0: all)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON (every volume)"},
		},
		Action: func(c *cli.Context) error {
			if c.Int("idle-days") < 1 {
				return fmt.Errorf("--idle-days %d: give 1 or more", c.Int("idle-days"))
			}
			rep, err := client(c).Report(c.Context, c.Int("idle-days"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(rep)
			}
			printReport(os.Stdout, rep, c.Int("top"))
			return nil
		},
	}
}

func printReport(out io.Writer, rep control.Report, top int) {
	by := map[string]control.VolumeReport{}
	for _, v := range rep.Volumes {
		by[v.Name] = v
	}
	table := func(title string, names []string, total int64) {
		fmt.Fprintf(out, "%s: %d", title, len(names))
		if len(names) == 0 {
			fmt.Fprintln(out)
			return
		}
		fmt.Fprintf(out, ", deleting them frees %s\n", units.FormatSize(total))
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "  VOLUME\tOWNER\tLABELS\tFREES\tIDLE\tLAST ATTACH\tLAST WRITE\tEXPIRES")
		for _, n := range names {
			v := by[n]
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%.1fd\t%s\t%s\t%s\n", v.Name, orDash(v.Owner), labelsText(v.Labels), units.FormatSize(v.Reclaimable),
				v.IdleDays, dateText(v.LastAttach), dateText(v.LastWrite), dateText(v.Expires))
		}
		w.Flush()
	}
	fmt.Fprintf(out, "report at %s, %d volume(s)\n\n", rep.At.Format(time.RFC3339), len(rep.Volumes))
	table(fmt.Sprintf("idle (not attached or written for %d days)", rep.IdleDays), rep.Idle, rep.IdleBytes)
	fmt.Fprintln(out)
	table("expired", rep.Expired, rep.ExpiredBytes)
	fmt.Fprintln(out)
	vols := rep.Volumes
	if top > 0 && len(vols) > top {
		vols = vols[:top]
	}
	fmt.Fprintf(out, "top consumers:\n")
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  VOLUME\tOWNER\tSIZE\tWRITTEN\tFREES\tWRITTEN 7D\tWRITTEN 30D\tATTACHED")
	for _, v := range vols {
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", v.Name, orDash(v.Owner), units.FormatSize(v.Size), units.FormatSize(v.Written),
			units.FormatSize(v.Reclaimable), units.FormatSize(v.Written7d), units.FormatSize(v.Written30d), v.Attached)
	}
	w.Flush()
	fmt.Fprintln(out)
	printForecast(out, rep.Forecast)
}

// printForecast prints the pool's growth and fill date (status, report).
func printForecast(out io.Writer, f control.Forecast) {
	rate := func(g *float64) string {
		if g == nil {
			return "not known yet"
		}
		if *g < 0 {
			return "-" + units.FormatSize(int64(-*g)) + "/day"
		}
		return units.FormatSize(int64(*g)) + "/day"
	}
	fmt.Fprintf(out, "capacity: %s used by the pool, %s free on its filesystem\n", units.FormatSize(f.UsedBytes), units.FormatSize(f.FreeBytes))
	switch {
	case f.Growth7d == nil && f.Growth30d == nil:
		fmt.Fprintln(out, "growth:   not known until the daemon has a day of history")
	case f.DaysUntilFull == nil:
		fmt.Fprintf(out, "growth:   %s over 7 days, %s over 30 days: not filling\n", rate(f.Growth7d), rate(f.Growth30d))
	default:
		fmt.Fprintf(out, "growth:   %s over 7 days, %s over 30 days: full in %s days at the faster rate\n", rate(f.Growth7d), rate(f.Growth30d), daysText(*f.DaysUntilFull))
	}
	if f.Warning {
		fmt.Fprintf(out, "WARNING:  the pool's filesystem is full in %s days at this rate: free space, or delete idle and expired volumes (strata report)\n", daysText(*f.DaysUntilFull))
	}
}

func daysText(d float64) string {
	if d >= 100 {
		return fmt.Sprintf("%.0f", d)
	}
	return fmt.Sprintf("%.1f", d)
}

// testClockEnv names, for end-to-end tests only, a file holding a
// duration (960h) by which the daemon's clock (volume activity, expiry,
// the forecast, schedules) runs ahead of the wall clock, so a test can age
// volumes by weeks in a second. Never set it in production.
const testClockEnv = "STRATA_TEST_CLOCK_FILE"

type testClock struct{ path string }

func (c testClock) Now() time.Time {
	b, _ := os.ReadFile(c.path)
	d, _ := time.ParseDuration(strings.TrimSpace(string(b)))
	return time.Now().Add(d)
}

func (testClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
