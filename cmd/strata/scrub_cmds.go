package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/replica"
)

// exitDamage is the exit status of a scrub that left damage unrepaired
// (as fsck's "errors left uncorrected").
const exitDamage = 4

func scrubCommand() *cli.Command {
	return &cli.Command{
		Name:      "scrub",
		Usage:     "check every block the pool keeps against its checksum, and heal damage from a replica site",
		UsageText: "strata scrub [--now [VOL] [--rate RATE] [--from strata://HOST:PORT[/VOL] --token-file F]] [--json]\n   strata scrub --target s3://BUCKET/PREFIX[,...] [--ec K+M] [VOL...] [--no-repair] [--json]",
		Description: `A scrub pass reads every record of the journal and checks its checksums,
then checks every block version the index holds: that the record it points
at exists and its block checksums. A damaged block is reported with what it
affects: the volume and byte offset, the points that read it (from the write
that made it to the next write of that block, or the head), the snapshots
and clones among them.

Where a replica site holds the block (a strata:// target the volume
replicates to with strata replication add, the other host of its mirror, or
a site --from names), the pass fetches it, checks it against the block's own
checksum and writes it back: reads return the right data again. Otherwise
reads of the block keep failing with an I/O error (never wrong data) and the
report says what to restore.

The daemon runs a pass in the background every --scrub-interval (default
weekly) at --scrub-rate (default 64MiB/s); strata status shows its progress.

Without --now: shows the last pass's report, and the pass running if any.
With --now: runs one pass now, with progress, and prints its report; Ctrl-C
stops the pass.

S3 targets (strata scrub --target s3://...): checks, from this host, every
volume's manifest on every target and every batch object (with --ec, every
shard) against its checksum, and rebuilds damaged or missing shards from the
good ones. Credentials and endpoint as for strata replicate: the AWS
environment variables or ~/.aws files, AWS_ENDPOINT_URL or ?endpoint=. A
damaged plain object (no --ec) can only be reported. No daemon is needed.

Exit status: 0 no damage left; 4 damage left unrepaired (reads of those blocks
fail); 75 a pass is already running; 1 any other failure.

Examples:
   strata scrub
   strata scrub --now
   strata scrub --now vol0 --rate max
   strata scrub --now --from strata://dr-site:10810 --token-file /etc/strata/token
   strata scrub --target s3://bk1/strata,s3://bk2/strata,s3://bk3/strata --ec 2+1`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "now", Usage: "run one pass now, in the foreground"},
			&cli.StringFlag{Name: "rate", Usage: "with --now: bound on reads, e.g. 200MiB/s, or max (default: the daemon's --scrub-rate)"},
			&cli.StringSliceFlag{Name: "from", Usage: "with --now: a strata:// site (another site's serve --replica-listen) to heal damaged blocks from, besides the volumes' replication targets (repeatable)"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the token of the --from sites (their --replica-token-file)"},
			&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA that signed the --from sites' certificates"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow plaintext to a --from site off loopback"},
			&cli.BoolFlag{Name: "no-repair", Usage: "with --now or --target: only report damage"},
			&cli.StringFlag{Name: "target", Usage: "scrub an S3 target instead of the pool: s3://BUCKET/PREFIX (comma-separated list with --ec), as strata replicate --to names it"},
			&cli.StringFlag{Name: "ec", Usage: "with --target: the erasure coding K+M the target was shipped with"},
			&cli.BoolFlag{Name: "json", Usage: "print the report as JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.IsSet("target") {
				return scrubS3(c)
			}
			if c.IsSet("ec") {
				return fmt.Errorf("--ec goes with --target")
			}
			if !c.Bool("now") {
				if c.NArg() > 0 || c.IsSet("rate") || c.IsSet("from") || c.IsSet("no-repair") {
					return fmt.Errorf("a volume, --rate, --from and --no-repair go with --now (strata scrub --now VOL)")
				}
				st, err := client(c).ScrubStatus(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return printJSON(st)
				}
				printScrubStatus(&st)
				if st.Last != nil && st.Last.Unrepaired() > 0 {
					return &exitError{code: exitDamage, err: fmt.Errorf("the last scrub pass left %s unrepaired", plural(st.Last.Unrepaired(), "damaged block", "damaged blocks"))}
				}
				return nil
			}
			if c.NArg() > 1 {
				return fmt.Errorf("name at most one volume: strata scrub --now [VOL]")
			}
			req := control.ScrubRequest{Volume: c.Args().First(), NoRepair: c.Bool("no-repair")}
			if r := c.String("rate"); r != "" {
				n, err := parseRate("--rate", r)
				if err != nil {
					return err
				}
				req.Rate = -1 // max
				if n > 0 {
					req.Rate = n
				}
			}
			for _, f := range c.StringSlice("from") {
				if !strings.HasPrefix(f, "strata://") {
					return fmt.Errorf("--from %s: give a strata://HOST:PORT[/VOL] site", f)
				}
				t := control.TargetSpec{To: f, TokenFile: c.String("token-file"), TLSCA: c.String("tls-ca"), Insecure: c.Bool("insecure")}
				for _, p := range []*string{&t.TokenFile, &t.TLSCA} {
					if *p != "" {
						abs, err := absPath(*p)
						if err != nil {
							return err
						}
						*p = abs
					}
				}
				req.From = append(req.From, t)
			}
			pp := newProgressPrinter()
			pp.last = time.Now() // a line after 2 s, not for a short pass
			rep, err := client(c).Scrub(c.Context, req, func(p control.ScrubProgress) {
				if c.Bool("json") {
					return
				}
				msg := fmt.Sprintf("scrub: %s: %s of %s checked", p.Phase, units.FormatSize(p.BytesChecked), units.FormatSize(p.BytesTotal))
				if p.BytesTotal > 0 {
					msg += fmt.Sprintf(" (%d%%)", min(100, p.BytesChecked*100/p.BytesTotal))
				}
				msg += ", " + plural(p.ErrorsFound, "error", "errors")
				pp.line(msg)
			})
			pp.done()
			if err != nil {
				return busyExit(err)
			}
			if err := printJSONOr(c.Bool("json"), rep, func() { printScrubReport("pass:", &rep) }); err != nil {
				return err
			}
			if n := rep.Unrepaired(); n > 0 {
				return &exitError{code: exitDamage, err: fmt.Errorf("%s left unrepaired: reads of them fail with an I/O error until they are restored", plural(n, "damaged block", "damaged blocks"))}
			}
			return nil
		},
	}
}

func printScrubStatus(st *control.ScrubStatus) {
	if st.Interval > 0 {
		rate := "unbounded"
		if st.Rate > 0 {
			rate = units.FormatSize(st.Rate) + "/s"
		}
		fmt.Printf("schedule: every %s at %s; next pass %s\n", everyString(st.Interval), rate, st.Next.Format(time.RFC3339))
	} else {
		fmt.Println("schedule: no background passes (serve --scrub-interval 0)")
	}
	if p := st.Running; p != nil {
		fmt.Printf("running:  %s: %s of %s checked, %s so far\n", p.Phase, units.FormatSize(p.BytesChecked), units.FormatSize(p.BytesTotal), plural(p.ErrorsFound, "error", "errors"))
	}
	if st.LastError != "" {
		fmt.Printf("FAILED:   the pass at %s: %s\n", st.LastErrorAt.Format(time.RFC3339), st.LastError)
	}
	if st.Last == nil {
		fmt.Println("last:     no pass has run yet (strata scrub --now runs one)")
		return
	}
	printScrubReport("last:", st.Last)
}

func printScrubReport(label string, r *control.ScrubReport) {
	what := "the pool"
	if r.Volume != "" {
		what = "volume " + r.Volume
	}
	fmt.Printf("%-9s %s, ended %s (took %s): %s checked, %s, %s, %s\n", label, what, r.Finished.Format(time.RFC3339),
		r.Finished.Sub(r.Started).Round(time.Millisecond), units.FormatSize(r.BytesChecked),
		plural(r.Segments, "segment", "segments"), plural(int(r.Records), "record", "records"), plural(int(r.Versions), "block version", "block versions"))
	if r.ErrorsFound() == 0 {
		fmt.Println("result:   no damage found")
		return
	}
	fmt.Printf("result:   %s found, %d repaired, %d left\n", plural(r.ErrorsFound(), "error", "errors"), r.Repaired(), r.Unrepaired())
	for _, d := range r.Damaged {
		seen := "the head"
		if !d.Head {
			seen = fmt.Sprintf("points seq:%d..seq:%d (not the head)", d.Seq, d.VisibleUntil-1)
		} else {
			seen = fmt.Sprintf("points seq:%d..the head", d.Seq)
		}
		if len(d.Snapshots) > 0 {
			seen += ", snapshots " + strings.Join(d.Snapshots, ", ")
		}
		if len(d.Clones) > 0 {
			seen += ", clones " + strings.Join(d.Clones, ", ")
		}
		if d.Repaired {
			fmt.Printf("REPAIRED: %s offset %d (4 KiB, written at seq:%d), read by %s: healed from %s\n", d.Volume, d.Offset, d.Seq, seen, d.RepairedFrom)
			continue
		}
		fmt.Printf("DAMAGED:  %s offset %d (4 KiB, written at seq:%d), read by %s: reads fail with an I/O error\n", d.Volume, d.Offset, d.Seq, seen)
		fmt.Printf("          restore: bytes %d..%d of %s as they were at seq:%d, from a backup or replica; not healed: %s\n", d.Offset, d.Offset+4095, d.Volume, d.Seq, d.RepairError)
	}
	for _, b := range r.BadRecords {
		fmt.Printf("DAMAGED:  record framing at segment %d offset %d (%s): the blocks after it in that segment are checked through the index above\n", b.Segment, b.Offset, b.Reason)
	}
	for _, b := range r.Unreferenced {
		fmt.Printf("harmless: a damaged copy in segment %d offset %d (%s record seq %d) that nothing reads any more (superseded or repaired); garbage collection drops it\n", b.Segment, b.Offset, b.Kind, b.Seq)
	}
}

// everyString prints an interval in days where it is whole days ("7d").
func everyString(d time.Duration) string {
	if d >= 24*time.Hour && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// parseRate reads a rate such as 64MiB/s; "max" is 0 (unbounded).
func parseRate(flag, s string) (int64, error) {
	if s == "max" {
		return 0, nil
	}
	n, err := units.ParseSize(strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "ps"))
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%s %q: use a rate such as 64MiB/s, or max", flag, s)
	}
	return n, nil
}

// printScrubLine is the scrubber's line in strata status.
func printScrubLine(sc *control.ScrubStatus) {
	if p := sc.Running; p != nil {
		fmt.Printf("scrub:    running, %s: %s of %s checked, %s so far\n", p.Phase, units.FormatSize(p.BytesChecked), units.FormatSize(p.BytesTotal), plural(p.ErrorsFound, "error", "errors"))
	}
	switch r := sc.Last; {
	case r == nil:
		fmt.Print("scrub:    no pass yet")
	case r.ErrorsFound() == 0:
		fmt.Printf("scrub:    last pass %s: %s checked, no damage", r.Finished.Format(time.RFC3339), units.FormatSize(r.BytesChecked))
	default:
		fmt.Printf("scrub:    last pass %s: %s checked, %s found, %d repaired, %d left", r.Finished.Format(time.RFC3339),
			units.FormatSize(r.BytesChecked), plural(r.ErrorsFound(), "error", "errors"), r.Repaired(), r.Unrepaired())
		if r.Unrepaired() > 0 {
			fmt.Print(" (DAMAGED: strata scrub names them)")
		}
	}
	if sc.Interval > 0 {
		fmt.Printf("; next %s", sc.Next.Format(time.RFC3339))
	}
	fmt.Println()
	if sc.LastError != "" {
		fmt.Printf("FAILED:   scrub pass at %s: %s\n", sc.LastErrorAt.Format(time.RFC3339), sc.LastError)
	}
}

// scrubS3 checks (and heals) an S3 target from this process.
func scrubS3(c *cli.Context) error {
	if c.Bool("now") || c.IsSet("rate") || c.IsSet("from") {
		return fmt.Errorf("--now, --rate and --from are for the pool; --target scrubs an S3 target at once")
	}
	s, err := replica.ParseS3Targets(c.String("target"), c.String("ec"))
	if err != nil {
		return userErr(err)
	}
	o := replica.S3ScrubOptions{Repair: !c.Bool("no-repair")}
	if c.NArg() > 0 {
		o.Volumes = c.Args().Slice()
	}
	pp := newProgressPrinter()
	pp.last = time.Now()
	o.Progress = func(p replica.S3ScrubProgress) {
		if !c.Bool("json") {
			pp.line(fmt.Sprintf("scrub: volume %s: %d of %d objects, %s checked, %s", p.Volume, p.Objects, p.ObjectsTotal,
				units.FormatSize(p.Bytes), plural(p.ErrorsFound, "error", "errors")))
		}
	}
	rep, err := s.Scrub(c.Context, o)
	pp.done()
	if err != nil {
		return userErr(err)
	}
	if err := printJSONOr(c.Bool("json"), rep, func() { printS3ScrubReport(rep) }); err != nil {
		return err
	}
	if n := rep.Unrepaired(); n > 0 {
		return &exitError{code: exitDamage, err: fmt.Errorf("%s left unrepaired on the S3 target", plural(n, "damaged object or shard", "damaged objects or shards"))}
	}
	return nil
}

// printJSONOr prints v as JSON, or as text.
func printJSONOr(asJSON bool, v any, text func()) error {
	if asJSON {
		return printJSON(v)
	}
	text()
	return nil
}

func printS3ScrubReport(rep *replica.S3ScrubReport) {
	fmt.Printf("pass:     %s, ended %s (took %s): %s, %s, %s, %s checked\n", rep.Targets, rep.Finished.Format(time.RFC3339),
		rep.Finished.Sub(rep.Started).Round(time.Millisecond), plural(len(rep.Volumes), "volume", "volumes"),
		plural(rep.Objects, "object", "objects"), plural(rep.Shards, "shard", "shards"), units.FormatSize(rep.Bytes))
	if len(rep.Damaged) == 0 {
		fmt.Println("result:   no damage found")
	} else {
		fmt.Printf("result:   %s found, %d repaired, %d left\n", plural(len(rep.Damaged), "error", "errors"), rep.Repaired(), rep.Unrepaired())
	}
	for _, d := range rep.Damaged {
		what := "volume " + d.Volume + " " + d.Key
		if d.Shard >= 0 {
			what += fmt.Sprintf(" shard %d", d.Shard)
		}
		what += " on " + d.Target
		if d.Repaired {
			fmt.Printf("REPAIRED: %s (%s): rebuilt\n", what, d.Problem)
			continue
		}
		fmt.Printf("DAMAGED:  %s (%s)", what, d.Problem)
		if d.To != 0 {
			fmt.Printf(", carries source points %d..%d", d.From, d.To)
		}
		fmt.Printf(": %s\n", d.RepairError)
	}
}
