package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
)

// quiesceFlags freeze an application or guest around a snapshot.
func quiesceFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "freeze-cmd", Usage: "command the daemon runs to freeze the application before the snapshot (no shell: write sh -c '...' for one)"},
		&cli.StringFlag{Name: "thaw-cmd", Usage: "command the daemon runs to thaw it after the snapshot (always runs, also after a failed or timed-out freeze)"},
		&cli.StringFlag{Name: "qga", Usage: "freeze the VM's filesystems through its QEMU guest agent socket instead (guest-fsfreeze-freeze/-thaw)"},
		&cli.StringFlag{Name: "freeze-timeout", Value: "10s", Usage: "a freeze not done by then is abandoned: the thaw runs and the snapshot is crash-consistent"},
	}
}

// readQuiesce returns the freeze the flags ask for (nil: none).
func readQuiesce(c *cli.Context) (*control.Quiesce, error) {
	if !c.IsSet("freeze-cmd") && !c.IsSet("thaw-cmd") && !c.IsSet("qga") {
		if c.IsSet("freeze-timeout") {
			return nil, fmt.Errorf("--freeze-timeout goes with --freeze-cmd/--thaw-cmd or --qga")
		}
		return nil, nil
	}
	q := &control.Quiesce{}
	var err error
	if s := c.String("freeze-cmd"); s != "" {
		if q.FreezeCmd, err = control.SplitCommand(s); err != nil {
			return nil, fmt.Errorf("--freeze-cmd: %w", err)
		}
	}
	if s := c.String("thaw-cmd"); s != "" {
		if q.ThawCmd, err = control.SplitCommand(s); err != nil {
			return nil, fmt.Errorf("--thaw-cmd: %w", err)
		}
	}
	if s := c.String("qga"); s != "" {
		// The daemon opens it, from its own directory.
		if q.QGA, err = absPath(s); err != nil {
			return nil, fmt.Errorf("--qga: %w", err)
		}
	}
	if q.Timeout, err = units.ParseDuration(c.String("freeze-timeout")); err != nil || q.Timeout <= 0 {
		return nil, fmt.Errorf("--freeze-timeout %q: give a duration such as 10s", c.String("freeze-timeout"))
	}
	if err := q.Validate(); err != nil {
		return nil, userErr(err)
	}
	return q, nil
}

// consistency is how a snapshot list names what a snapshot holds.
func consistency(sn control.Snapshot) string {
	if sn.AppConsistent {
		return "app"
	}
	return "crash"
}

func takenBy(sn control.Snapshot) string {
	if sn.Scheduled {
		return "schedule"
	}
	return "hand"
}

func scheduleCommand() *cli.Command {
	return &cli.Command{
		Name:  "schedule",
		Usage: "snapshot volumes on a schedule and thin them (grandfather-father-son)",
		UsageText: `strata schedule add VOL --every 15m --keep hourly=24,daily=14,weekly=8,monthly=12 [freeze flags]
strata schedule list
strata schedule remove VOL

Examples:
   strata schedule add vm1 --every 15m --keep hourly=24,daily=14,weekly=8,monthly=12
   strata schedule add db1 --every 1h --keep daily=14 --freeze-cmd "fsfreeze -f /srv/db" --thaw-cmd "fsfreeze -u /srv/db"
   strata schedule add vm2 --every 1h --keep hourly=48,daily=30 --qga /run/qemu/vm2-qga.sock
   strata schedule add vm1 --keep daily=30,monthly=12     # on a replica site: thin only
   strata serve --schedule-every 1h --schedule-keep daily=7   # a default for every volume`,
		Description: `The daemon snapshots each scheduled volume once in every --every slot
(slots are aligned to the UTC clock: 15m takes :00, :15, :30, :45), naming
the snapshot auto-YYYYMMDDTHHMMSSZ and marking it as scheduled, then thins
the scheduled snapshots by --keep: the newest always stays; frequent=N keeps
the newest N; hourly, daily, weekly (from Monday), monthly and yearly=N keep
the newest snapshot of each of the N most recent such periods (UTC) that
have one. Snapshots taken by hand are never pruned. A slot missed while the
daemon was stopped is made up by one snapshot at start, not one per slot.

A volume's own schedule overrides the pool-wide default (strata serve
--schedule-every/--schedule-keep); schedule remove goes back to it, and
keeps the snapshots. On a replica (a volume that receives replication) a
schedule takes no snapshots: it thins the copies of the source's scheduled
snapshots by its own policy, so a DR site can keep more (or less) history.
strata snapshot list shows which snapshots a schedule took.`,
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Aliases:   []string{"set"},
				Usage:     "set a volume's schedule (replacing its previous one)",
				ArgsUsage: "VOL",
				UsageText: `strata schedule add VOL --every DURATION --keep RULES [--freeze-cmd CMD --thaw-cmd CMD | --qga SOCKET]

Examples:
   strata schedule add vm1 --every 15m --keep hourly=24,daily=14,weekly=8,monthly=12
   strata schedule add db1 --every 1h --keep daily=14 --freeze-cmd "fsfreeze -f /srv/db" --thaw-cmd "fsfreeze -u /srv/db"
   strata schedule add vm1 --keep daily=30,monthly=12     # a replica: thin what the source ships`,
				Flags: append([]cli.Flag{
					&cli.StringFlag{Name: "every", Usage: "snapshot interval: 1m to 1d dividing a day (5m, 15m, 1h, 6h) or whole days (absent: thin only)"},
					&cli.StringFlag{Name: "keep", Required: true, Usage: "thinning rules: frequent, hourly, daily, weekly, monthly, yearly=N, e.g. hourly=24,daily=14,weekly=8,monthly=12"},
				}, quiesceFlags()...),
				Action: func(c *cli.Context) error {
					vol, err := oneArg(c, "VOL")
					if err != nil {
						return err
					}
					s := control.Schedule{Volume: vol}
					if c.IsSet("every") {
						if s.Every, err = units.ParseDuration(c.String("every")); err != nil || s.Every <= 0 {
							return fmt.Errorf("--every %q: give a duration such as 15m, 1h or 1d", c.String("every"))
						}
					}
					if s.Keep, err = control.ParseKeep(c.String("keep")); err != nil {
						return fmt.Errorf("--keep: %s", control.UserMessage(err))
					}
					if s.Quiesce, err = readQuiesce(c); err != nil {
						return err
					}
					if err := s.Validate(); err != nil {
						return userErr(err)
					}
					if _, err := client(c).SetSchedule(c.Context, s); err != nil {
						return err
					}
					fmt.Printf("scheduled %s: %s, keep %s%s\n", vol, everyText(s.Every), s.Keep, quiesceText(s.Quiesce))
					return nil
				},
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list volumes' schedules, their snapshots and next run",
				UsageText: "strata schedule list [--json]\n\nExample:\n   strata schedule list",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					list, err := client(c).Schedules(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(list)
					}
					if len(list) == 0 {
						fmt.Println("no schedules (strata schedule add VOL --every 15m --keep hourly=24,daily=14)")
						return nil
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "VOLUME\tEVERY\tKEEP\tFREEZE\tSNAPSHOTS\tLAST\tNEXT\tPRUNED\tLAST ERROR")
					for _, s := range list {
						every := everyText(s.Every)
						switch {
						case s.Replica:
							every = "replica: thin only"
						case s.Default:
							every += " (default)"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\n", s.Volume, every, s.Keep, freezeText(s.Quiesce), s.Scheduled,
							timeText(s.Last), timeText(s.Next), s.Pruned, s.LastError)
					}
					return w.Flush()
				},
			},
			{
				Name:      "remove",
				Aliases:   []string{"rm"},
				Usage:     "remove a volume's own schedule (its snapshots stay; the default applies again)",
				ArgsUsage: "VOL",
				UsageText: "strata schedule remove VOL\n\nExample:\n   strata schedule remove vm1",
				Action: func(c *cli.Context) error {
					vol, err := oneArg(c, "VOL")
					if err != nil {
						return err
					}
					if err := client(c).RemoveSchedule(c.Context, vol); err != nil {
						return err
					}
					fmt.Printf("removed the schedule of %s; its scheduled snapshots stay (delete them with strata snapshot delete)\n", vol)
					return nil
				},
			},
		},
	}
}

func everyText(d time.Duration) string {
	if d == 0 {
		return "thin only"
	}
	return "every " + shortDuration(d)
}

// shortDuration writes 15m, 1h, 1h30m, 2d rather than 15m0s, 1h0m0s.
func shortDuration(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func freezeText(q *control.Quiesce) string {
	switch {
	case q == nil:
		return "-"
	case q.QGA != "":
		return "qga"
	}
	return "command"
}

func quiesceText(q *control.Quiesce) string {
	switch {
	case q == nil:
		return ""
	case q.QGA != "":
		return ", frozen through the guest agent at " + q.QGA
	}
	return fmt.Sprintf(", frozen by %q", q.FreezeCmd)
}

func timeText(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
