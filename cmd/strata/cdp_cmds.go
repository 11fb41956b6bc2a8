package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
)

const pointHelp = `POINT is a snapshot name, an RFC 3339 time (2026-11-21T10:04:05Z, with an
optional fraction and offset: the newest write at or before it), or seq:N
(the point right after the record with sequence number N). ` + "`strata pit VOL`" + `
shows which points are available.`

func snapshotCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "name points in a volume's history (O(1), no data copied)",
		UsageText: `strata snapshot create VOL NAME [--label TEXT] [--freeze-cmd CMD --thaw-cmd CMD | --qga SOCKET]
strata snapshot list VOL
strata snapshot delete VOL NAME

Examples:
   strata snapshot create vm1 before-upgrade --label "kernel 6.12"
   strata snapshot create db1 consistent --freeze-cmd "fsfreeze -f /srv/db" --thaw-cmd "fsfreeze -u /srv/db"
   strata snapshot list vm1
   nbdinfo nbd://127.0.0.1:10809/vm1@before-upgrade     # read it, read-only`,
		Description: `A snapshot names the volume's current point; it stays readable (as the
read-only NBD export VOL@NAME, for clones and rollbacks) until deleted,
whatever the retention window. Names follow the volume name rules.`,
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "snapshot a volume now (optionally with the application frozen)",
				ArgsUsage: "VOL NAME",
				UsageText: `strata snapshot create VOL NAME [--label TEXT] [--freeze-cmd CMD --thaw-cmd CMD | --qga SOCKET] [--freeze-timeout 10s]

Examples:
   strata snapshot create vm1 nightly-2026-11-21
   strata snapshot create db1 before-migration --freeze-cmd "fsfreeze -f /srv/db" --thaw-cmd "fsfreeze -u /srv/db"
   strata snapshot create db1 flushed --freeze-cmd "sh -c 'psql -c CHECKPOINT && fsfreeze -f /srv/db'" --thaw-cmd "fsfreeze -u /srv/db"
   strata snapshot create vm2 quiesced --qga /run/qemu/vm2-qga.sock`,
				Description: `With a freeze, the daemon (not the CLI, so schedules can do the same) runs
the freeze command, or asks the VM's QEMU guest agent to freeze its
filesystems, takes the snapshot and thaws: the snapshot is app-consistent.
Commands run without a shell (give sh -c '...' to have one), as the daemon's
user, from its directory. A freeze still running after --freeze-timeout is
abandoned: the thaw runs anyway and the snapshot is taken crash-consistent
(a warning says so). A freeze that fails takes no snapshot; the thaw runs
in case it froze part of the application. snapshot list shows which is which.`,
				Flags: append([]cli.Flag{&cli.StringFlag{Name: "label", Usage: "free text kept with the snapshot"}}, quiesceFlags()...),
				Action: func(c *cli.Context) error {
					args, err := nArgs(c, "VOL NAME", 2)
					if err != nil {
						return err
					}
					q, err := readQuiesce(c)
					if err != nil {
						return err
					}
					sn, err := client(c).CreateSnapshotQuiesced(c.Context, args[0], control.SnapshotRequest{Name: args[1], Label: c.String("label"), Quiesce: q})
					if err != nil {
						return err
					}
					if sn.Warning != "" {
						fmt.Fprintf(os.Stderr, "warning: %s\n", sn.Warning)
					}
					fmt.Printf("created snapshot %s@%s (seq:%d, %s, %s-consistent)\n", args[0], sn.Name, sn.Seq, sn.Time.Format(time.RFC3339), consistency(sn.Snapshot))
					return nil
				},
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list a volume's snapshots with the space each holds alone",
				ArgsUsage: "VOL",
				UsageText: "strata snapshot list VOL [--json]\n\nExample:\n   strata snapshot list vm1",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					vol, err := oneArg(c, "VOL")
					if err != nil {
						return err
					}
					snaps, err := client(c).Snapshots(c.Context, vol)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(snaps)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "NAME\tPOINT\tTIME\tEXCLUSIVE\tTAKEN BY\tCONSISTENT\tLABEL")
					for _, sn := range snaps {
						fmt.Fprintf(w, "%s\tseq:%d\t%s\t%s\t%s\t%s\t%s\n", sn.Name, sn.Seq, sn.Time.Format(time.RFC3339), units.FormatSize(sn.Exclusive),
							takenBy(sn.Snapshot), consistency(sn.Snapshot), sn.Label)
					}
					return w.Flush()
				},
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete a snapshot (its exclusive space returns through GC)",
				ArgsUsage: "VOL NAME",
				UsageText: "strata snapshot delete VOL NAME\n\nExample:\n   strata snapshot delete vm1 nightly-2026-11-20",
				Action: func(c *cli.Context) error {
					args, err := nArgs(c, "VOL NAME", 2)
					if err != nil {
						return err
					}
					if err := client(c).DeleteSnapshot(c.Context, args[0], args[1]); err != nil {
						return err
					}
					fmt.Printf("deleted snapshot %s@%s\n", args[0], args[1])
					return nil
				},
			},
		},
	}
}

func rollbackCommand() *cli.Command {
	return &cli.Command{
		Name:      "rollback",
		Usage:     "make a volume's head the content it had at a point (O(1), destroys nothing)",
		ArgsUsage: "VOL",
		UsageText: `strata rollback VOL --to POINT [--force]

Examples:
   strata rollback vm1 --to before-upgrade
   strata rollback vm1 --to 2026-11-21T10:04:05Z
   strata rollback vm1 --to seq:123456          # e.g. undo a rollback: the head before it`,
		Description: `The volume's head becomes the content at POINT at once, whatever its size.
Nothing is destroyed: snapshots taken after POINT and all history in the
retention window stay readable, and a rollback is undone by rolling back
again to a point after it (strata pit VOL shows them).

` + pointHelp + `

A volume attached read-write is refused unless --force. With --force,
connected clients see the new content from their next request on; a request
in flight finishes against the old or the new content, never a mix within
one block. Their caches (page cache, filesystem) still hold the old content:
unmount or detach them first when you can.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Required: true, Usage: "the POINT to roll back to"},
			&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "roll back even while clients are attached read-write"},
		},
		Action: func(c *cli.Context) error {
			vol, err := oneArg(c, "VOL")
			if err != nil {
				return err
			}
			pt, err := client(c).Rollback(c.Context, vol, control.RollbackRequest{To: c.String("to"), Force: c.Bool("force")})
			if err != nil {
				return err
			}
			fmt.Printf("rolled back %s to %s (seq:%d, %s)\n", vol, c.String("to"), pt.Seq, pt.Time.Format(time.RFC3339Nano))
			return nil
		},
	}
}

func cloneCommand() *cli.Command {
	return &cli.Command{
		Name:      "clone",
		Usage:     "create a writable volume from any point of another (O(1), shares all blocks)",
		ArgsUsage: "VOL@POINT NEWVOL",
		UsageText: `strata clone VOL@POINT NEWVOL

Examples:
   strata clone vm1@before-upgrade vm1-test
   strata clone vm1@2026-11-21T10:04:05Z vm1-forensics`,
		Description: `The clone is an ordinary volume: writes to it never show in the source and
the other way round. Deleting the source keeps clones working.

` + pointHelp,
		Action: func(c *cli.Context) error {
			args, err := nArgs(c, "VOL@POINT NEWVOL", 2)
			if err != nil {
				return err
			}
			info, err := client(c).Clone(c.Context, control.CloneRequest{Source: args[0], Name: args[1]})
			if err != nil {
				return err
			}
			fmt.Printf("created volume %s (%s) from %s\n", info.Name, units.FormatSize(info.Size), args[0])
			return nil
		},
	}
}

func pitCommand() *cli.Command {
	return &cli.Command{
		Name:      "pit",
		Aliases:   []string{"history"},
		Usage:     "show the points in time a volume can be read at, its snapshots and write activity",
		ArgsUsage: "VOL",
		UsageText: `strata pit VOL [--buckets N] [--json]

Example:
   strata pit vm1        # then: nbdinfo 'nbd://127.0.0.1:10809/vm1@2026-11-21T10:04:05Z'`,
		Description: `Every moment from the oldest point to now can be read (export VOL@TIME),
cloned or rolled back to. The histogram shows when the volume was written, to
help pick the moment before an incident.`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "buckets", Value: 24, Usage: "histogram rows"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *cli.Context) error {
			vol, err := oneArg(c, "VOL")
			if err != nil {
				return err
			}
			h, err := client(c).History(c.Context, vol, c.Int("buckets"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(h)
			}
			fmt.Printf("volume %s, retention %s\n", h.Volume, h.Retention)
			fmt.Printf("oldest point: %s (seq:%d)\n", h.Oldest.Time.Format(time.RFC3339Nano), h.Oldest.Seq)
			fmt.Printf("newest point: %s (seq:%d)\n", h.Newest.Time.Format(time.RFC3339Nano), h.Newest.Seq)
			if !h.HistoryCut.IsZero() {
				fmt.Printf("warning: the pool's --retention-size cap discarded history early (last at %s)\n", h.HistoryCut.Format(time.RFC3339))
			}
			if len(h.Snapshots) > 0 {
				fmt.Println("snapshots:")
				for _, sn := range h.Snapshots {
					fmt.Printf("  %-24s seq:%-10d %s %s\n", sn.Name, sn.Seq, sn.Time.Format(time.RFC3339), sn.Label)
				}
			}
			if len(h.Branches) > 0 {
				fmt.Println("branches:")
				for _, b := range h.Branches {
					fmt.Printf("  %s\n", branchText(h.Volume, b))
				}
			}
			var peak int64
			for _, b := range h.Activity {
				peak = max(peak, b.Writes)
			}
			fmt.Println("writes:")
			for _, b := range h.Activity {
				bar := 0
				if peak > 0 {
					bar = int(b.Writes * 40 / peak)
				}
				if b.Writes > 0 && bar == 0 {
					bar = 1
				}
				fmt.Printf("  %s %-40s %d\n", b.Start.Format("2006-01-02 15:04:05"), strings.Repeat("#", bar), b.Writes)
			}
			return nil
		},
	}
}

// branchText says what a fork of vol's history is.
func branchText(vol string, b control.Branch) string {
	at := func(t time.Time) string { return t.Format(time.RFC3339) }
	switch b.Kind {
	case control.BranchOrigin:
		return fmt.Sprintf("%s  cloned from %s@seq:%d (%s)", at(b.Time), b.Volume, b.BaseSeq, at(b.BaseTime))
	case control.BranchRollback:
		return fmt.Sprintf("%s  rolled back to %s@seq:%d (%s)", at(b.Time), vol, b.BaseSeq, at(b.BaseTime))
	default:
		return fmt.Sprintf("%s  clone %s made of %s@seq:%d (%s)", at(b.Time), b.Volume, vol, b.BaseSeq, at(b.BaseTime))
	}
}

func dfCommand() *cli.Command {
	return &cli.Command{
		Name:      "df",
		Usage:     "show what uses space: per volume and for the pool",
		UsageText: "strata df [--json]\n\nExample:\n   strata df",
		Description: `Per volume: PROVISIONED (size), WRITTEN (data at the head, including what a
clone shows of its origin), EXCLUSIVE (head data in the volume's own records
that no snapshot holds), SHARED (head data that snapshots hold too), HISTORY
(old versions only the retention window keeps), SNAPSHOTS (old data only
snapshots keep: deleting them frees it; strata snapshot list shows what each
one holds alone) and ORIGIN (old data kept because clones or rollbacks start
from it). For the pool: journal on disk, live data, index, free space. Space
becomes free when garbage collection runs (strata gc --now).`,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			sp, err := client(c).Space(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(sp)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "VOLUME\tPROVISIONED\tWRITTEN\tEXCLUSIVE\tSHARED\tHISTORY\tSNAPSHOTS\tORIGIN")
			for _, v := range sp.Volumes {
				snaps := v.SnapshotsShared
				for _, b := range v.SnapshotExclusive {
					snaps += b
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, units.FormatSize(v.Provisioned), units.FormatSize(v.Written),
					units.FormatSize(v.Exclusive), units.FormatSize(v.Shared), units.FormatSize(v.History), units.FormatSize(snaps), units.FormatSize(v.Origin))
			}
			w.Flush()
			fmt.Printf("\njournal %s on disk, %s of it live; index %s; %s free on the filesystem\n",
				units.FormatSize(sp.JournalBytes), units.FormatSize(sp.LiveBytes), units.FormatSize(int64(sp.IndexBytes)), units.FormatSize(sp.FreeBytes))
			if sp.Deleted > 0 {
				fmt.Printf("deleted volumes: %s still shown by their clones\n", units.FormatSize(sp.Deleted))
			}
			if !sp.HistoryCut.IsZero() {
				fmt.Printf("warning: the --retention-size cap discarded history early (last at %s)\n", sp.HistoryCut.Format(time.RFC3339))
			}
			return nil
		},
	}
}

func gcCommand() *cli.Command {
	return &cli.Command{
		Name:      "gc",
		Usage:     "run garbage collection now and report what it freed",
		UsageText: "strata gc --now [--json]\n\nExample:\n   strata gc --now",
		Description: `Garbage collection also runs in the background (strata serve
--gc-interval). It frees journal segments no retained point needs (heads,
snapshots, clones' origins, the retention window), copying the live part of
mostly dead ones forward first, and rewrites the newest data of volume
ranges written at random in block order, so sequential reads of them read
sequentially again (defragmentation; strata serve --no-defrag turns it off).
It never changes what any point reads.`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "now", Usage: "run a pass now (required)"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *cli.Context) error {
			if !c.Bool("now") {
				return fmt.Errorf("say --now to run a pass (GC runs in the background anyway); see strata gc --help")
			}
			cl := client(c)
			st, err := cl.GC(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(st)
			}
			if st.ExtentsRewritten > 0 {
				fmt.Printf("defragmented %d of %d MiB range(s) examined: rewrote %s in block order\n",
					st.ExtentsRewritten, st.ExtentsExamined, units.FormatSize(st.BytesDefragmented))
			}
			if st.SegmentsExamined == 0 {
				fmt.Printf("nothing to free yet: every journal segment holds points inside the retention window (journal %s)\n", units.FormatSize(st.JournalBytes))
			} else {
				fmt.Printf("freed %s in %d segment(s), relocated %s, dropped %d dead block versions in %s\n",
					units.FormatSize(st.BytesFreed), st.SegmentsRemoved, units.FormatSize(st.BytesRelocated), st.DeadVersions, st.Duration.Round(time.Millisecond))
				fmt.Printf("journal now %s for %s of live data\n", units.FormatSize(st.JournalBytes), units.FormatSize(st.LiveBytes))
			}
			if st.HistoryCut {
				fmt.Println("warning: the --retention-size cap discarded history before its retention time")
			}
			// Unshipped records are kept whatever the retention: say so.
			if repl, err := cl.Replications(c.Context); err == nil {
				for _, r := range repl {
					if r.LagRecords > 0 {
						fmt.Printf("kept for replication: %s of %s not yet shipped to %s (%s); they stay until it takes them or `strata replication remove %s --to TARGET`\n",
							plural(int(r.LagRecords), "record", "records"), r.Volume, r.Target, units.FormatSize(r.LagBytes), r.Volume)
					}
				}
			}
			return nil
		},
	}
}

func volumeSetCommand() *cli.Command {
	return &cli.Command{
		Name:      "set",
		Usage:     "change a volume's settings",
		ArgsUsage: "VOL",
		UsageText: `strata volume set VOL [--retention DURATION] [--read-only true|false] [--allow CIDR,...] [--allow-cert NAME,...]
       [--owner TEXT] [--label KEY=VALUE]... [--unlabel KEY]... [--expires DATE|DURATION|never]

Examples:
   strata volume set vm1 --retention 7d
   strata volume set vm1 --retention 0          # back to the pool's
   strata volume set golden --read-only true    # new connections get a read-only export
   strata volume set vm1 --allow 10.0.0.0/8,192.0.2.7   # only these TCP clients see and open vm1
   strata volume set vm1 --allow-cert host1.example     # with TLS: only this client certificate (CN or SAN)
   strata volume set vm1 --allow '' --allow-cert ''     # every client again
   strata volume set vm1 --owner alice --label team=web --expires 2027-01-31
   strata volume set vm1 --unlabel team --expires never
   strata volume set vm1 --iops-limit 500 --bw-limit 100MiB/s   # QoS, live on open connections
   strata volume set vm1 --write-iops-limit 200 --burst 5       # writes only; 5 s of unused allowance
   strata volume set vm1 --iops-limit none --bw-limit 0         # no limits again

QoS limits hold across all connections of the volume: a request over a limit
waits (it is never refused); reads and writes count separately against the
--read-*/--write-* limits and together against --iops-limit and --bw-limit.
A trim or write-zeroes counts as one write operation; flushes are free.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "retention", Usage: "how long every write stays readable (90m, 24h, 7d; 0: the pool's)"},
			&cli.StringFlag{Name: "read-only", Usage: "true: serve the volume read-only (new connections; writes get EPERM); false: writable"},
			&cli.StringFlag{Name: "allow", Usage: "comma-separated CIDRs or addresses: only TCP clients from them see and open the volume (Unix-socket clients always can); '' clears"},
			&cli.StringFlag{Name: "allow-cert", Usage: "comma-separated names: only TLS clients whose verified certificate has one as CN or SAN see and open the volume (needs serve --tls-ca); '' clears"},
		}, append(metaFlags(), qosFlags("")...)...),
		Action: func(c *cli.Context) error {
			vol, err := oneArg(c, "VOL")
			if err != nil {
				return err
			}
			var req control.SettingsRequest
			if c.IsSet("retention") {
				d, err := units.ParseDuration(c.String("retention"))
				if err != nil {
					return err
				}
				req.Retention = &d
			}
			if c.IsSet("read-only") {
				ro, err := strconv.ParseBool(c.String("read-only"))
				if err != nil {
					return fmt.Errorf("--read-only %q: use true or false", c.String("read-only"))
				}
				req.ReadOnly = &ro
			}
			list := func(flag string) *[]string {
				if !c.IsSet(flag) {
					return nil
				}
				l := []string{}
				for _, s := range strings.Split(c.String(flag), ",") {
					if s = strings.TrimSpace(s); s != "" {
						l = append(l, s)
					}
				}
				return &l
			}
			req.Allow, req.AllowCert = list("allow"), list("allow-cert")
			if req.MetaChange, err = metaChange(c); err != nil {
				return err
			}
			if req.QoS, err = qosChange(c, ""); err != nil {
				return err
			}
			if req.Retention == nil && req.ReadOnly == nil && req.Allow == nil && req.AllowCert == nil && req.MetaChange.Empty() && req.QoS == nil {
				return fmt.Errorf("nothing to set: give --retention, --read-only, --allow, --allow-cert, --owner, --label, --unlabel, --expires or a QoS limit; see strata volume set --help")
			}
			if err := client(c).SetVolume(c.Context, vol, req); err != nil {
				return err
			}
			if req.Retention != nil {
				fmt.Printf("volume %s keeps history for %s\n", vol, map[bool]string{true: "the pool's retention", false: req.Retention.String()}[*req.Retention == 0])
			}
			if req.ReadOnly != nil {
				fmt.Printf("volume %s is %s for new connections\n", vol, map[bool]string{true: "read-only", false: "writable"}[*req.ReadOnly])
			}
			if req.Allow != nil || req.AllowCert != nil {
				all, err := client(c).Access(c.Context)
				if err != nil {
					return err
				}
				a, ok := all[vol]
				fmt.Printf("volume %s is open to %s\n", vol, map[bool]string{true: accessText(a), false: "every client"}[ok])
			}
			if !req.MetaChange.Empty() {
				metas, err := client(c).VolumeMetas(c.Context)
				if err != nil {
					return err
				}
				m := metas[vol]
				fmt.Printf("volume %s: owner %s, labels %s, expires %s\n", vol, orDash(m.Owner), labelsText(m.Labels), dateText(m.Expires))
			}
			if req.QoS != nil {
				all, err := client(c).QoS(c.Context)
				if err != nil {
					return err
				}
				q, ok := all[vol]
				fmt.Printf("volume %s limits: %s\n", vol, map[bool]string{true: qosText(q, ok), false: "none"}[ok && q.Limited()])
			}
			return nil
		},
	}
}

func nArgs(c *cli.Context, what string, n int) ([]string, error) {
	if c.NArg() != n {
		return nil, fmt.Errorf("expected %s, got %d argument(s); see strata %s --help", what, c.NArg(), c.Command.FullName())
	}
	return c.Args().Slice(), nil
}

// accessText is a volume's access rules in one line ("-": none).
func accessText(a control.Access) string {
	var parts []string
	if len(a.Allow) > 0 {
		parts = append(parts, strings.Join(a.Allow, ","))
	}
	if len(a.AllowCert) > 0 {
		parts = append(parts, "cert:"+strings.Join(a.AllowCert, ","))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}
