package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
)

// exitBusy is the exit status of a run that found another one active
// (EX_TEMPFAIL: cron may simply try again later).
const exitBusy = 75

// exitError carries an exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// busyExit gives a run that found another one active exit status 75.
func busyExit(err error) error {
	var ce *control.Error
	if errors.As(err, &ce) && ce.Code == control.CodeBusy {
		return &exitError{code: exitBusy, err: err}
	}
	return err
}

func targetFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "to", Required: true, Usage: "target: strata://HOST:PORT[/REMOTEVOL] (another site's serve --replica-listen) or s3://BUCKET/PREFIX (comma-separated list with --ec)"},
		&cli.StringFlag{Name: "token-file", Usage: "file holding the shared token (strata:// targets; the target's --replica-token-file)"},
		&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA that signed the target's certificate (strata:// over TLS)"},
		&cli.BoolFlag{Name: "insecure", Usage: "allow plaintext to a strata:// target off loopback"},
		&cli.StringFlag{Name: "ec", Usage: "erasure coding K+M over K+M S3 targets, e.g. 2+1: any M of them may be lost"},
		&cli.StringFlag{Name: "bwlimit", Usage: "cap on bandwidth, e.g. 50MiB/s (default: none)"},
	}
}

// retentionFlags set an S3 target's retention policy.
func retentionFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "keep-history", Usage: "S3 targets: keep every point of this long, e.g. 7d; older history is compacted into a base copy (default: keep everything)"},
		&cli.StringFlag{Name: "keep", Usage: "S3 targets: also keep these older points, as snapshot schedules thin, e.g. daily=14,weekly=8,monthly=12"},
	}
}

func readTargetSpec(c *cli.Context) (control.TargetSpec, error) {
	t := control.TargetSpec{To: c.String("to"), TokenFile: c.String("token-file"), TLSCA: c.String("tls-ca"), Insecure: c.Bool("insecure"), EC: c.String("ec")}
	if kh := c.String("keep-history"); kh != "" {
		d, err := units.ParseDuration(kh)
		if err != nil || d < time.Second {
			return t, fmt.Errorf("--keep-history %q: use a duration such as 7d or 36h", kh)
		}
		t.KeepHistory = d
	}
	if k := c.String("keep"); k != "" {
		keep, err := control.ParseKeep(k)
		if err != nil {
			return t, fmt.Errorf("--keep: %w", err)
		}
		t.Keep = &keep
	}
	if bw := c.String("bwlimit"); bw != "" {
		n, err := units.ParseSize(strings.TrimSuffix(strings.TrimSuffix(bw, "/s"), "ps"))
		if err != nil || n <= 0 {
			return t, fmt.Errorf("--bwlimit %q: use a rate such as 50MiB/s", bw)
		}
		t.BWLimit = n
	}
	// The daemon reads these files: give it absolute paths.
	for _, p := range []*string{&t.TokenFile, &t.TLSCA} {
		if *p != "" {
			abs, err := absPath(*p)
			if err != nil {
				return t, err
			}
			*p = abs
		}
	}
	return t, nil
}

// progressPrinter draws a bar on a terminal and plain lines otherwise.
type progressPrinter struct {
	tty   bool
	start time.Time
	last  time.Time
	drawn bool
}

func newProgressPrinter() *progressPrinter {
	return &progressPrinter{tty: isTerminal(os.Stderr), start: time.Now()}
}

func (p *progressPrinter) show(pr control.Progress) {
	el := time.Since(p.start)
	rate := float64(pr.DataBytes) / max(el.Seconds(), 0.001)
	if p.tty {
		frac := 0.0
		if pr.Upto > pr.Start {
			frac = float64(pr.Acked-pr.Start) / float64(pr.Upto-pr.Start)
		}
		if pr.Phase != "records" {
			frac = -1
		}
		bar := ""
		if frac >= 0 {
			n := int(frac * 30)
			bar = "[" + strings.Repeat("=", n) + strings.Repeat(" ", 30-n) + "] "
		}
		fmt.Fprintf(os.Stderr, "\r%s%s %s %s, %s/s, %s   ", bar, pr.Phase, units.FormatSize(pr.DataBytes), progressVerb(pr), units.FormatSize(int64(rate)), progressSeq(pr))
		p.drawn = true
		return
	}
	if time.Since(p.last) < 2*time.Second {
		return
	}
	p.last = time.Now()
	fmt.Fprintf(os.Stderr, "progress: %s: %s %s in %s, %s, %s/s\n", pr.Phase, units.FormatSize(pr.DataBytes), progressVerb(pr), plural(pr.Batches, "batch", "batches"), progressSeq(pr), units.FormatSize(int64(rate)))
}

func progressVerb(pr control.Progress) string {
	if pr.Phase == "restore" {
		return "restored"
	}
	return "shipped"
}

// progressSeq says where a run is: "acked seq 7 of 14" when its end is
// known, "at seq 7" otherwise (a restore).
func progressSeq(pr control.Progress) string {
	if pr.Upto == 0 {
		return fmt.Sprintf("at seq %d", pr.Acked)
	}
	return fmt.Sprintf("acked seq %d of %d", pr.Acked, pr.Upto)
}

// plural prints n with the singular or plural noun.
func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

// line shows a free-form progress line: redrawn in place on a terminal,
// every 2 s otherwise.
func (p *progressPrinter) line(msg string) {
	if p.tty {
		fmt.Fprintf(os.Stderr, "\r%s   ", msg)
		p.drawn = true
		return
	}
	if time.Since(p.last) < 2*time.Second {
		return
	}
	p.last = time.Now()
	fmt.Fprintln(os.Stderr, "progress: "+msg)
}

func (p *progressPrinter) done() {
	if p.drawn {
		fmt.Fprint(os.Stderr, "\r\033[K")
	}
}

func replicateCommand() *cli.Command {
	return &cli.Command{
		Name:      "replicate",
		Usage:     "ship a volume's journal to a remote Strata site or to S3, once (for cron)",
		UsageText: "strata replicate VOL --to TARGET --once [--token-file F] [--ec K+M] [--bwlimit RATE]",
		Description: `Ships everything up to the point the run starts at (a consistent point of
the volume) past what the target already holds, waits until the target has
made it durable, prints what travelled, and exits 0. The first run copies
the volume; later runs send only the journal records written since, so the
replica has every point in between. A run that is interrupted (killed, the
network cut) resumes where it stopped. A second run of the same volume and
target while one is active exits at once with status 75.

Targets:
   strata://HOST:PORT[/REMOTEVOL]   another site's strata serve --replica-listen
                                    (token from --token-file; TLS with --tls-ca)
   s3://BUCKET/PREFIX               S3-compatible storage; credentials from the
                                    AWS environment variables or ~/.aws files,
                                    endpoint from AWS_ENDPOINT_URL or ?endpoint=
   s3://B1/P,s3://B2/P,s3://B3/P --ec 2+1
                                    erasure coded: any one of the three may be lost

Examples:
   strata replicate vol0 --to strata://dr-site:10810 --token-file /etc/strata/token --once
   */5 * * * *  strata replicate vol0 --to s3://backups/strata --once
   strata replicate vol0 --to s3://b1/s,s3://b2/s,s3://b3/s --ec 2+1 --once --bwlimit 50MiB/s
   strata replicate vol0 --to s3://backups/strata --once --keep-history 7d --keep daily=30

History retention (S3): --keep-history 7d keeps every point of the last 7
days (the window moves in steps of a seventh of it, so up to 8 days stay);
--keep RULES also keeps older points as snapshot schedules thin them. After
each run the history before the oldest point kept is merged into a base
(a full copy at that point) and the points between kept ones into one
object each; the objects they replace are deleted. Restores at points no
longer kept are refused. See also strata s3 compact.

For continuous shipping by the daemon, see strata replication add.`,
		Flags: append(append(targetFlags(), retentionFlags()...),
			&cli.BoolFlag{Name: "once", Usage: "ship up to now and exit (required: continuous shipping is `strata replication add`)"},
			&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
		),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one volume: strata replicate VOL --to TARGET --once")
			}
			if !c.Bool("once") {
				return fmt.Errorf("say --once to ship up to now and exit; for continuous shipping use `strata replication add %s --to %s`", c.Args().First(), c.String("to"))
			}
			t, err := readTargetSpec(c)
			if err != nil {
				return err
			}
			pp := newProgressPrinter()
			res, err := client(c).Replicate(c.Context, control.ReplicateRequest{Volume: c.Args().First(), TargetSpec: t}, func(p control.Progress) {
				if !c.Bool("json") {
					pp.show(p)
				}
			})
			pp.done()
			if err != nil {
				return busyExit(err)
			}
			if c.Bool("json") {
				return printJSON(res)
			}
			printShipResult(c.Args().First(), t, &res)
			return nil
		},
	}
}

func printShipResult(vol string, t control.TargetSpec, r *control.ShipResult) {
	if r.Message != "" {
		fmt.Println(r.Message)
	}
	defer func() {
		if r.Compacted != nil {
			printCompacted(r.Compacted)
		}
	}()
	if r.Batches == 0 {
		fmt.Printf("%s: %s already holds seq %d; nothing to ship\n", vol, t.Redacted(), r.Acked)
	} else {
		kind := "records"
		if r.Full {
			kind = "full copy + records"
		}
		ratio := 0.0
		if r.StoredBytes > 0 {
			ratio = float64(r.RawBytes) / float64(r.StoredBytes)
		}
		rate := float64(r.DataBytes) / max(r.Duration.Seconds(), 0.001)
		fmt.Printf("%s -> %s: shipped seq %d..%d (%s): %s, %s of data in %s\n", vol, t.Redacted(), r.Start, r.Acked, kind,
			plural(int(r.Records), "record", "records"), units.FormatSize(r.DataBytes), plural(r.Batches, "batch", "batches"))
		fmt.Printf("  %s before compression, %s sent (%.2fx), in %s (%s/s)\n", units.FormatSize(r.RawBytes), units.FormatSize(r.StoredBytes), ratio,
			r.Duration.Round(time.Millisecond), units.FormatSize(int64(rate)))
	}
	if r.LagSeq > 0 {
		fmt.Printf("  lag: the volume was written during the run; %s newer than seq %d left for the next run\n", plural(int(r.LagSeq), "sequence number", "sequence numbers"), r.Acked)
	} else {
		fmt.Println("  lag: none (the target holds the volume's newest point)")
	}
}

func replicationCommand() *cli.Command {
	return &cli.Command{
		Name:  "replication",
		Usage: "configure continuous or interval shipping by the daemon",
		Description: `The daemon ships continuously (within about a second of each write: RPO
of seconds) or every --every. strata status shows each target's lag in
sequence numbers, bytes and seconds, and its last error. Unshipped records
stay in the journal (garbage collection keeps them) until the target has
them, or until the replication is removed.`,
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "ship a volume continuously (or on an interval)",
				UsageText: "strata replication add VOL --to TARGET [--mode continuous|interval --every 5m] [target flags]",
				Description: `Examples:
   strata replication add vol0 --to strata://dr-site:10810 --token-file /etc/strata/token
   strata replication add vol0 --to s3://backups/strata --mode interval --every 15m`,
				Flags: append(append(targetFlags(), retentionFlags()...),
					&cli.StringFlag{Name: "mode", Value: "continuous", Usage: "continuous or interval"},
					&cli.StringFlag{Name: "every", Usage: "interval between runs in interval mode, e.g. 5m"},
				),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("name one volume: strata replication add VOL --to TARGET")
					}
					t, err := readTargetSpec(c)
					if err != nil {
						return err
					}
					e, err := client(c).AddReplication(c.Context, control.AddReplicationRequest{Volume: c.Args().First(), TargetSpec: t, Mode: c.String("mode"), Every: c.String("every")})
					if err != nil {
						return err
					}
					fmt.Printf("replicating %s to %s (%s", e.Volume, e.Redacted(), e.Mode)
					if e.Mode == "interval" {
						fmt.Printf(", every %s", e.Every)
					}
					if e.HasRetention() {
						fmt.Printf("; history %s", e.RetentionPolicy())
					}
					fmt.Println("); strata status shows its lag")
					return nil
				},
			},
			{
				Name:      "list",
				Usage:     "list replication targets with their lag",
				UsageText: "strata replication list [--json]",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					list, err := client(c).Replications(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(list)
					}
					printReplStatus(os.Stdout, list)
					return nil
				},
			},
			{
				Name:      "remove",
				Usage:     "stop a replication and release the journal it keeps",
				UsageText: "strata replication remove VOL --to TARGET",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "to", Required: true, Usage: "the target, as given to add (or to replicate --once)"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("name one volume: strata replication remove VOL --to TARGET")
					}
					id := control.ReplicationID(c.Args().First(), control.TargetSpec{To: c.String("to")})
					if err := client(c).RemoveReplication(c.Context, id); err != nil {
						return err
					}
					fmt.Printf("removed %s\n", id)
					return nil
				},
			},
		},
	}
}

func printReplStatus(w io.Writer, list []control.ReplicationStatus) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no replication targets")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tTARGET\tMODE\tACKED\tLAG RECORDS\tLAG BYTES\tLAG\tLAST OK\tLAST ERROR")
	for _, s := range list {
		ok := "-"
		if !s.LastOK.IsZero() {
			ok = s.LastOK.Format(time.RFC3339)
		}
		mode := s.Mode
		if s.Running {
			mode += " (running)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\tseq:%d\t%d\t%s\t%s\t%s\t%s\n", s.Volume, s.Target, mode, s.Acked, s.LagRecords, units.FormatSize(s.LagBytes),
			(time.Duration(s.LagSeconds * float64(time.Second))).Round(time.Millisecond), ok, s.LastError)
	}
	tw.Flush()
}

func promoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "promote",
		Usage:     "make a replica writable (failover)",
		UsageText: "strata promote VOL",
		Description: `Run on the replica's site. The replica stops following its source and
serves read-write. If a batch was being applied, the replica first goes
back to its last complete point. Failback: replicate it back to the old
primary (strata replicate VOL --to strata://OLD-PRIMARY --once); only what
was written since the last common point travels.`,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one volume: strata promote VOL")
			}
			st, err := client(c).Promote(c.Context, c.Args().First())
			if err != nil {
				return err
			}
			fmt.Printf("%s is writable; it holds %s up to source seq %d (the last point in common)\n", c.Args().First(), st.SourceName, st.Acked)
			return nil
		},
	}
}

func demoteCommand() *cli.Command {
	return &cli.Command{
		Name:      "demote",
		Usage:     "make a volume follow its replication partner again (after a failover)",
		UsageText: "strata demote VOL [--discard-local]",
		Description: `On a promoted replica: it follows its source again. On an old primary:
it waits, read-only, for the failback stream from the promoted replica.
Writes made since the last common point are refused (split brain) unless
--discard-local, which rolls the head back; they stay readable as points
in time (VOL@seq:N) within the retention window.`,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "discard-local", Usage: "pick the other side: roll back this side's writes since the last common point"}},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one volume: strata demote VOL [--discard-local]")
			}
			r, err := client(c).Demote(c.Context, c.Args().First(), control.DemoteRequest{DiscardLocal: c.Bool("discard-local")})
			if err != nil {
				return err
			}
			fmt.Println(r.Message)
			return nil
		},
	}
}

func printCompacted(c *control.Compacted) {
	fmt.Printf("  history (%s): %s (%s) -> %s (%s); wrote %d and deleted %d batch objects",
		c.Policy, plural(c.BatchesBefore, "batch object", "batch objects"), units.FormatSize(c.BytesBefore),
		plural(c.BatchesAfter, "batch object", "batch objects"), units.FormatSize(c.BytesAfter), c.Written, c.Deleted)
	if c.Leftovers > 0 {
		fmt.Printf("; cleaned %d object(s) an interrupted run left", c.Leftovers)
	}
	fmt.Printf("\n  oldest point kept: seq:%d (%s); %s restorable\n", c.OldestSeq, c.OldestTime.Format(time.RFC3339), plural(c.Points, "point", "points"))
}

func s3Command() *cli.Command {
	return &cli.Command{
		Name:  "s3",
		Usage: "manage what S3 targets hold",
		Subcommands: []*cli.Command{{
			Name:      "compact",
			Usage:     "apply an S3 target's history retention now",
			UsageText: "strata s3 compact VOL --to s3://BUCKET/PREFIX [--ec K+M] [--keep-history 7d] [--keep RULES] [--json]",
			Description: `Merges the history an S3 target holds of VOL (its name at the target)
before the oldest point the policy keeps into a base (a synthetic full copy
at that point, erasure coded like the rest), merges the points between kept
ones older than the window, and deletes the objects they replace. Objects
an interrupted run left behind are deleted first. Shipping runs apply the
policy by themselves; this is for a policy changed or tightened by hand.

The policy is --keep-history and/or --keep, or else the one configured with
strata replication add for VOL and the target. The daemon runs it in the
slot of VOL's replication to that target: a shipping run and a compaction
never overlap (exit status 75 if one is running).

Every step is crash-safe: new objects first, then the manifest that lists
them (one PUT per target), then the deletes. Interrupted at any point, the
target restores every point kept; the next run finishes the job.

Examples:
   strata s3 compact vol0 --to s3://backups/strata --keep-history 7d
   strata s3 compact vol0 --to s3://b1/s,s3://b2/s,s3://b3/s --ec 2+1 --keep-history 30d --keep monthly=12`,
			Flags: append([]cli.Flag{
				&cli.StringFlag{Name: "to", Required: true, Usage: "the S3 target: s3://BUCKET/PREFIX (comma-separated list with --ec)"},
				&cli.StringFlag{Name: "ec", Usage: "erasure coding K+M the target was shipped with"},
				&cli.BoolFlag{Name: "json", Usage: "print the result as JSON"},
			}, retentionFlags()...),
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					return fmt.Errorf("name one volume: strata s3 compact VOL --to s3://BUCKET/PREFIX")
				}
				t, err := readTargetSpec(c)
				if err != nil {
					return err
				}
				pp := newProgressPrinter()
				res, err := client(c).CompactS3(c.Context, control.CompactRequest{TargetSpec: t, Volume: c.Args().First()}, func(p control.Progress) {
					if !c.Bool("json") {
						pp.line(fmt.Sprintf("%s: %d objects written or deleted", p.Phase, p.Batches))
					}
				})
				pp.done()
				if err != nil {
					return busyExit(err)
				}
				if c.Bool("json") {
					return printJSON(res)
				}
				fmt.Printf("%s at %s:\n", c.Args().First(), t.Redacted())
				printCompacted(&res)
				fmt.Printf("  took %s\n", res.Duration.Round(time.Millisecond))
				return nil
			},
		}},
	}
}

func restoreCommand() *cli.Command {
	return &cli.Command{
		Name:      "restore",
		Usage:     "rebuild a volume from an S3 target or a remote site at a point",
		UsageText: "strata restore TARGET VOL [--at POINT] NEWVOL",
		Description: `VOL is the volume's name at the target; NEWVOL is created here. POINT is
a snapshot name, an RFC 3339 time, or seq:N (default: the newest shipped).

Examples:
   strata restore s3://backups/strata vol0 --at nightly-3 vol0-restored
   strata restore s3://b1/s,s3://b2/s,s3://b3/s --ec 2+1 vol0 --at 2026-11-21T10:00:00Z vol0-old
   strata restore strata://dr-site:10810 vol0 --token-file /etc/strata/token vol0-back`,
		Flags: append(targetFlags()[1:], &cli.StringFlag{Name: "at", Usage: "the point to restore (default: the newest)"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 3 {
				return fmt.Errorf("usage: strata restore TARGET VOL [--at POINT] NEWVOL")
			}
			t, err := readTargetSpec(c)
			if err != nil {
				return err
			}
			t.To = c.Args().Get(0)
			pp := newProgressPrinter()
			res, err := client(c).Restore(c.Context, control.RestoreRequest{TargetSpec: t, Volume: c.Args().Get(1), At: c.String("at"), New: c.Args().Get(2)}, pp.show)
			pp.done()
			if err != nil {
				return busyExit(err)
			}
			fmt.Printf("restored %s@%s from %s into %s: %s, %s of data from %s in %s\n", c.Args().Get(1), restoredPoint(&res), t.Redacted(), res.Volume,
				units.FormatSize(res.Size), units.FormatSize(res.DataBytes), plural(res.Batches, "batch", "batches"), res.Duration.Round(time.Millisecond))
			return nil
		},
	}
}

// restoredPoint names the point a restore reached: the one asked for, and
// the seq it came to when that is not exactly it (a time, or a seq between
// two points a retention policy kept).
func restoredPoint(res *control.Restored) string {
	if res.Nearest {
		return fmt.Sprintf("%s (the nearest kept point at or before it: seq:%d)", res.Point, res.Seq)
	}
	return res.Point
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func absPath(p string) (string, error) {
	a, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p, err)
	}
	return a, nil
}
