// Command strata is Strata's one binary: `strata serve` runs the daemon
// (package daemon) that owns a data directory and serves its volumes over
// NBD; the other commands are calls of the daemon's control API (package
// control) over its control socket. This package holds flags, output and
// exit codes.
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/replica/witness"
)

var version = "0.1.0-dev"

func main() {
	app := newApp()
	if err := app.Run(permuteArgs(app, os.Args)); err != nil {
		msg := err.Error()
		if errors.Is(err, control.ErrNoDaemon) {
			msg += "; start one with `strata serve`, or point at it with --data, --control-socket or STRATA_CONTROL"
		}
		if errors.Is(err, witness.ErrUnreachable) {
			msg += "; is `strata witness` running there, and is --witness its --listen address?"
		}
		fmt.Fprintf(os.Stderr, "strata: %s\n", oneLine(msg))
		var ee *exitError
		if errors.As(err, &ee) {
			os.Exit(ee.code)
		}
		os.Exit(1)
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func newApp() *cli.App {
	app := &cli.App{
		Name:    "strata",
		Usage:   "thin, copy-on-write block volumes with continuous data protection, served over NBD",
		Version: version,
		Description: `Strata keeps every write in a journal and serves volumes to hypervisors
over NBD. Example: start the daemon on a data directory, create a volume,
attach it:

   strata serve --data /var/lib/strata &
   strata volume create vol0 --size 10GiB
   nbdinfo nbd://127.0.0.1:10809/vol0

Every command finds the data directory from --data or $STRATA_DATA
(default ./strata-data), and the daemon through DATA/control.sock (or
--control-socket / $STRATA_CONTROL).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data", Aliases: []string{"d"}, Value: "./strata-data", EnvVars: []string{"STRATA_DATA"},
				Usage: "data directory (journal, index, sockets)"},
			&cli.StringFlag{Name: "control-socket", EnvVars: []string{"STRATA_CONTROL"},
				Usage: "control socket path (default DATA/control.sock; set it where DATA cannot hold sockets, e.g. FUSE or NFS)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "log level: debug, info, warn, error"},
		},
		Commands: []*cli.Command{serveCommand(), volumeCommand(), snapshotCommand(), rollbackCommand(), cloneCommand(),
			pitCommand(), dfCommand(), reportCommand(), gcCommand(), attachCommand(), detachCommand(), statusCommand(),
			replicateCommand(), replicationCommand(), promoteCommand(), demoteCommand(), restoreCommand(), s3Command(), scheduleCommand(), scrubCommand(), mirrorCommand(), migrateCommand(), witnessCommand()},
		// Usage errors print one line too, with where to look.
		OnUsageError: func(c *cli.Context, err error, isSub bool) error {
			return fmt.Errorf("%v (see strata --help)", err)
		},
		ExitErrHandler: func(*cli.Context, error) {},
	}
	setUsageErrors(app.Commands)
	return app
}

// setUsageErrors makes every command's usage error one line that says where
// help is, instead of the whole help text.
func setUsageErrors(cmds []*cli.Command) {
	for _, c := range cmds {
		c.OnUsageError = func(ctx *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%v (see strata %s --help)", err, ctx.Command.FullName())
		}
		setUsageErrors(c.Subcommands)
	}
}

func controlPath(c *cli.Context) string {
	if s := c.String("control-socket"); s != "" {
		return s
	}
	return filepath.Join(c.String("data"), "control.sock")
}

// client is the control API client of the daemon the flags point at.
func client(c *cli.Context) *control.Client { return control.NewClient(controlPath(c)) }

func volumeCommand() *cli.Command {
	return &cli.Command{
		Name:  "volume",
		Usage: "create, list, resize and delete volumes",
		UsageText: `strata volume COMMAND [options] NAME

Examples:
   strata volume create vol0 --size 10GiB
   strata volume list
   strata volume resize vol0 --size 20GiB
   strata volume delete vol0`,
		Description: `Volumes are thin: unwritten blocks take no space and read as zeros.
Names use ` + control.NameRules + `.`,
		Subcommands: []*cli.Command{
			volumeSetCommand(),
			{
				Name:      "create",
				Usage:     "create a thin volume",
				ArgsUsage: "NAME",
				UsageText: "strata volume create NAME --size SIZE [--owner TEXT] [--label KEY=VALUE ...] [--expires DATE|DURATION]\n\nExamples:\n   strata volume create vol0 --size 10GiB\n   strata volume create ci-42 --size 20GiB --owner ci --label team=build --expires 30d",
				Description: `SIZE takes B, KiB, MiB, GiB or TiB (K, M, G, T mean the same); it must be
a multiple of 4 KiB. The volume is served at once as NBD export NAME.`,
				Flags: append([]cli.Flag{&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Required: true, Usage: "volume size, e.g. 10GiB"}}, metaFlags()...),
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					if err := control.ValidateName(name); err != nil {
						return userErr(err)
					}
					size, err := units.ParseSize(c.String("size"))
					if err != nil {
						return err
					}
					meta, err := metaChange(c)
					if err != nil {
						return err
					}
					info, err := client(c).CreateVolume(c.Context, control.CreateVolumeRequest{Name: name, Size: size, MetaChange: meta})
					if err != nil {
						return err
					}
					fmt.Printf("created volume %s (%s)\n", info.Name, units.FormatSize(info.Size))
					return nil
				},
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list volumes with their size and written bytes",
				UsageText: "strata volume list [--label KEY=VALUE ...] [--json]\n\nExamples:\n   strata volume list --json\n   strata volume list --label team=web --label env   # both labels (env with any value)",
				Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"},
					&cli.StringSliceFlag{Name: "label", Usage: "only volumes with this `KEY=VALUE` label (or KEY: any value); repeat for several"}},
				Action: func(c *cli.Context) error {
					vols, err := client(c).Volumes(c.Context)
					if err != nil {
						return err
					}
					metas, err := client(c).VolumeMetas(c.Context)
					if err != nil {
						return err
					}
					vols = slices.DeleteFunc(vols, func(v control.VolumeInfo) bool { return !labelMatch(metas[v.Name].Labels, c.StringSlice("label")) })
					if c.Bool("json") {
						type listed struct {
							control.VolumeInfo
							control.VolumeMeta
						}
						out := []listed{}
						for _, v := range vols {
							out = append(out, listed{v, metas[v.Name]})
						}
						return printJSON(out)
					}
					access, err := client(c).Access(c.Context)
					if err != nil {
						return err
					}
					qos, err := client(c).QoS(c.Context)
					if err != nil {
						return err
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "NAME\tSIZE\tWRITTEN\tATTACHED\tMODE\tCREATED\tACCESS\tLIMITS\tOWNER\tEXPIRES\tLABELS")
					for _, v := range vols {
						mode := "rw"
						if v.ReadOnly {
							mode = "ro"
						}
						m := metas[v.Name]
						fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, units.FormatSize(v.Size), writtenText(v), v.Handles, mode, v.Created.Format(time.RFC3339), accessText(access[v.Name]),
							qosText(qos[v.Name], true), orDash(m.Owner), dateText(m.Expires), labelsText(m.Labels))
					}
					return w.Flush()
				},
			},
			{
				Name:      "delete",
				Aliases:   []string{"rm"},
				Usage:     "delete a volume",
				ArgsUsage: "NAME",
				UsageText: "strata volume delete NAME [--force]\n\nExample:\n   strata volume delete scratch",
				Description: `A volume attached over NBD is refused unless --force, which disconnects
its clients first. Space returns when the journal's garbage collection
reclaims the volume's records.`,
				Flags: []cli.Flag{&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "disconnect attached clients and delete anyway"}},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					r, err := client(c).DeleteVolume(c.Context, name, c.Bool("force"))
					if err != nil {
						return err
					}
					if r.Disconnected > 0 {
						fmt.Printf("disconnected %d client(s)\n", r.Disconnected)
					}
					fmt.Printf("deleted volume %s\n", name)
					return nil
				},
			},
			{
				Name:      "resize",
				Usage:     "grow or shrink a volume",
				ArgsUsage: "NAME",
				UsageText: "strata volume resize NAME --size SIZE [--force]\n\nExamples:\n   strata volume resize vol0 --size 20GiB\n   strata volume resize vol0 --size 5GiB --force   # discards data past 5 GiB",
				Description: `Growing always works (connected clients see the new size when they
reconnect). Shrinking is refused while written blocks lie past the new
end, unless --force, which discards them.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Required: true, Usage: "new size, e.g. 20GiB"},
					&cli.BoolFlag{Name: "force", Aliases: []string{"f"}, Usage: "shrink even if it discards written data"},
				},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					size, err := units.ParseSize(c.String("size"))
					if err != nil {
						return err
					}
					info, err := client(c).ResizeVolume(c.Context, name, control.ResizeRequest{Size: size, Force: c.Bool("force")})
					if err != nil {
						return err
					}
					fmt.Printf("volume %s is now %s\n", info.Name, units.FormatSize(info.Size))
					return nil
				},
			},
		},
	}
}

func oneArg(c *cli.Context, what string) (string, error) {
	switch c.NArg() {
	case 0:
		return "", fmt.Errorf("missing %s; see strata %s --help", what, c.Command.FullName())
	case 1:
		return c.Args().First(), nil
	}
	return "", fmt.Errorf("expected one %s, got %d arguments (%s); see strata %s --help", what, c.NArg(), strings.Join(c.Args().Slice(), " "), c.Command.FullName())
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the daemon, its pool, volumes and connections",
		UsageText: "strata status [--json]\n\nExamples:\n   strata status\n   strata --data /var/lib/strata status --json",
		Description: `Shows the daemon (pid, uptime, sockets), the journal (size, segments, the
last sequence number and how far it is durable, fsyncs so far), the index,
the volumes and the connected NBD clients.`,
		Flags: []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			st, err := client(c).Status(c.Context)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(st)
			}
			fmt.Printf("strata %s, pid %d, up %s\n", st.Version, st.PID, time.Since(st.Started).Round(time.Second))
			fmt.Printf("data:     %s\n", st.DataDir)
			if st.NBDSocket != "" {
				fmt.Printf("nbd:      %s\n", st.NBDSocket)
			}
			if st.NBDListen != "" {
				fmt.Printf("nbd tcp:  %s\n", st.NBDListen)
			}
			j := st.Pool.Journal
			fmt.Printf("journal:  %s in %d segment(s), last seq %d, durable through %d, %d fsyncs\n",
				units.FormatSize(j.Bytes), j.Segments, j.LastSeq, j.SyncedSeq, j.Fsyncs)
			im := st.Pool.IndexMemory
			fmt.Printf("index:    %s, applied through seq %d; in memory: head map %s, memtables %s, block cache %s\n",
				units.FormatSize(int64(st.Pool.IndexBytes)), st.Pool.AppliedSeq, units.FormatSize(im.HeadMapBytes),
				units.FormatSize(int64(im.MemTableBytes)), units.FormatSize(im.BlockCacheBytes))
			if cs := st.Pool.Cache; cs.Enabled {
				fmt.Printf("cache:    %s of %s, hit ratio %.1f%% (%d hits, %d misses), %d evictions\n",
					units.FormatSize(cs.Bytes), units.FormatSize(cs.MaxBytes), 100*cs.HitRatio, cs.Hits, cs.Misses, cs.Evictions)
			} else {
				fmt.Println("cache:    off")
			}
			if st.Pool.JournalError != "" {
				fmt.Printf("FAILED:   %s\n", st.Pool.JournalError)
			}
			for _, d := range st.Pool.Damaged {
				fmt.Printf("DAMAGED:  %d block(s) of %s record %d (volume id %d, segment %d offset %d) read as I/O errors; first at byte %s; rewrite or restore them\n",
					len(d.Blocks), d.Kind, d.Seq, d.Volume, d.Segment, d.Offset, d.Blocks[0])
			}
			if n := st.Pool.ReadDamaged; n > 0 {
				fmt.Printf("DAMAGED:  %d read(s) since start found a block failing its checksum (answered with I/O errors; the log names each block); rewrite or restore them\n", n)
			}
			var written, size int64
			for _, v := range st.Volumes {
				written += v.Written
				size += v.Size
			}
			fmt.Printf("volumes:  %d, %s provisioned, %s written\n", len(st.Volumes), units.FormatSize(size), units.FormatSize(written))
			fmt.Printf("history:  retention %s", st.Retention)
			if st.RetainSize > 0 {
				fmt.Printf(", journal capped at %s", units.FormatSize(st.RetainSize))
			}
			fmt.Println()
			if !st.HistoryCut.IsZero() {
				fmt.Printf("WARNING:  the retention size cap discarded history before its retention time (last at %s)\n", st.HistoryCut.Format(time.RFC3339))
			}
			if g := st.LastGC; g != nil {
				fmt.Printf("gc:       last pass %s: freed %s, relocated %s", g.At.Format(time.RFC3339), units.FormatSize(g.Stats.BytesFreed), units.FormatSize(g.Stats.BytesRelocated))
				if g.Error != "" {
					fmt.Printf(", FAILED: %s", g.Error)
				}
				fmt.Println()
			}
			if st.Capacity != nil {
				printForecast(os.Stdout, *st.Capacity)
			}
			if sc := st.Scrub; sc != nil {
				printScrubLine(sc)
			}
			for _, v := range st.Volumes {
				if q, ok := st.QoS[v.Name]; ok && q.Limited() {
					fmt.Printf("limits:   %s: %s\n", v.Name, qosText(q, ok))
				}
			}
			fmt.Printf("clients:  %d\n", len(st.Connections))
			for _, cn := range st.Connections {
				fmt.Printf("  %s from %s since %s\n", cn.Export, cn.Remote, cn.Since.Format(time.RFC3339))
			}
			if len(st.Replication) > 0 {
				fmt.Println("replication:")
				printReplStatus(os.Stdout, st.Replication)
			}
			if ms, err := client(c).Mirrors(c.Context); err == nil && len(ms) > 0 {
				fmt.Println("mirrors:")
				printMirrors(os.Stdout, ms)
			}
			for _, v := range st.Volumes {
				if r := v.Replica; r != nil && r.SourcePool != "" {
					if r.Promoted {
						fmt.Printf("%s: promoted (writable) at %s; was a replica of %s (pool %s) up to source seq %d\n",
							v.Name, time.Unix(0, r.PromotedAt).UTC().Format(time.RFC3339), r.SourceName, r.SourcePool, r.Acked)
						continue
					}
					fmt.Printf("%s: read-only replica of %s (pool %s), holds source seq %d\n", v.Name, r.SourceName, r.SourcePool, r.Acked)
				}
			}
			return nil
		},
	}
}

// writtenText is a volume's written bytes, marked while they are recounted.
func writtenText(v control.VolumeInfo) string {
	if v.Recounting {
		return units.FormatSize(v.Written) + " (counting)"
	}
	return units.FormatSize(v.Written)
}
