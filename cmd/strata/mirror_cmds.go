package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/units"
)

func mirrorAddFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "to", Required: true, Usage: "the secondary: strata://HOST:PORT (the other host's serve --replica-listen)"},
		&cli.StringFlag{Name: "token-file", Required: true, Usage: "file holding the token both hosts' --replica-token-file hold (and the witness's, unless --witness-token-file)"},
		&cli.StringFlag{Name: "self", Usage: "strata://HOST:PORT where the secondary reaches this host's --replica-listen, to ship back after it takes over (default: this daemon's --replica-listen when it names a host)"},
		&cli.StringFlag{Name: "witness", Usage: "HOST:PORT of a strata witness: with one, the secondary takes over by itself when the primary is lost (without, failover is by hand)"},
		&cli.StringFlag{Name: "witness-token-file", Usage: "file holding the witness's --token-file token (default: --token-file)"},
		&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA that signed the secondary's certificate (streams over TLS)"},
		&cli.BoolFlag{Name: "insecure", Usage: "allow a plaintext stream to a secondary off loopback"},
	}
}

func readMirrorAdd(c *cli.Context) (control.MirrorAddRequest, error) {
	req := control.MirrorAddRequest{Volume: c.Args().First(), To: c.String("to"), Self: c.String("self"), TokenFile: c.String("token-file"),
		TLSCA: c.String("tls-ca"), Insecure: c.Bool("insecure"), Witness: c.String("witness"), WitnessTokenFile: c.String("witness-token-file")}
	// The daemon reads these files: give it absolute paths.
	for _, p := range []*string{&req.TokenFile, &req.TLSCA, &req.WitnessTokenFile} {
		if *p != "" {
			abs, err := absPath(*p)
			if err != nil {
				return req, err
			}
			*p = abs
		}
	}
	return req, nil
}

func mirrorCommand() *cli.Command {
	return &cli.Command{
		Name:  "mirror",
		Usage: "keep a volume on two hosts at once (synchronous mirror, automatic failover with a witness)",
		Description: `A mirrored volume is served by its primary; every FLUSH (and FUA write)
completes only once the secondary holds it durably too, so losing a host
loses no flushed write. Reads are served by the primary alone.

With a witness (strata witness), the primary serves only while it holds a
lease there; when it is lost, the secondary takes over by itself within
seconds, and a floating address (serve --vip) follows it. When the
secondary is lost, the primary goes on alone (degraded) once the witness
has recorded that the secondary misses writes, and resyncs it from the
journal when it returns: only what it missed travels.

Both hosts run strata serve with --replica-listen and the same
--replica-token-file. See docs/ha.md.`,
		Subcommands: []*cli.Command{
			{
				Name:      "add",
				Usage:     "start mirroring a volume to another host",
				UsageText: "strata mirror add VOL --to strata://HOST:PORT --token-file F [--witness HOST:PORT] [--self strata://MYHOST:PORT]",
				Description: `The secondary receives a full copy in the background (snapshots and
retained history included) while the volume stays in use, then follows
synchronously; strata mirror status shows the progress. Example:
   strata mirror add vol0 --to strata://10.0.0.2:10810 --self strata://10.0.0.1:10810 \
       --token-file /etc/strata/token --witness 10.0.0.3:10820`,
				Flags: mirrorAddFlags(),
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("name one volume: strata mirror add VOL --to strata://HOST:PORT --token-file F")
					}
					req, err := readMirrorAdd(c)
					if err != nil {
						return err
					}
					st, err := client(c).AddMirror(c.Context, req)
					if err != nil {
						return err
					}
					fmt.Printf("mirroring %s to %s (group %s, epoch %d); state: %s\n", st.Volume, st.PeerURL, st.Group, st.Epoch, st.State)
					fmt.Printf("strata mirror status %s shows the copy's progress\n", st.Volume)
					return nil
				},
			},
			{
				Name:      "list",
				Usage:     "list mirrored volumes with their role and state",
				UsageText: "strata mirror list [--json]",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					list, err := client(c).Mirrors(c.Context)
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(list)
					}
					printMirrors(os.Stdout, list)
					return nil
				},
			},
			{
				Name:      "status",
				Usage:     "show one mirrored volume in detail",
				UsageText: "strata mirror status VOL [--json]",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("name one volume: strata mirror status VOL")
					}
					st, err := mirrorStatus(c.Context, client(c), c.Args().First())
					if err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(st)
					}
					printMirrorDetail(os.Stdout, st)
					return nil
				},
			},
			{
				Name:      "remove",
				Usage:     "stop mirroring a volume on this host (the other host keeps its copy)",
				UsageText: "strata mirror remove VOL",
				Description: `Run it on both hosts to end a mirror. On the primary the volume goes on
unmirrored; on the secondary the copy stays as a read-only replica
(strata promote makes it writable).`,
				Action: func(c *cli.Context) error {
					if c.NArg() != 1 {
						return fmt.Errorf("name one volume: strata mirror remove VOL")
					}
					if err := client(c).RemoveMirror(c.Context, c.Args().First()); err != nil {
						return err
					}
					fmt.Printf("%s is no longer mirrored on this host\n", c.Args().First())
					return nil
				},
			},
			switchoverCommand("switchover", "hand the primary role to the secondary (planned; clients see a pause, no errors)"),
			switchoverCommand("failback", "after a failover, hand the primary role back to the host that had it (a switchover run on the current primary)"),
		},
	}
}

func switchoverCommand(name, usage string) *cli.Command {
	return &cli.Command{
		Name:      name,
		Usage:     usage,
		UsageText: "strata mirror " + name + " VOL",
		Description: `Run it on the primary, with the mirror in sync. I/O pauses while the
secondary receives the last writes and takes over; then clients are
disconnected, and reconnecting clients (nbd-client -persist, QEMU's
reconnect-delay) find the new primary at the floating address (--vip).`,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one volume: strata mirror %s VOL", name)
			}
			rep, err := client(c).Switchover(c.Context, c.Args().First(), control.MirrorSwitchoverRequest{})
			if err != nil {
				return err
			}
			fmt.Printf("%s (I/O paused %s)\n", rep.Message, rep.Paused.Round(time.Millisecond))
			return nil
		},
	}
}

func migrateCommand() *cli.Command {
	return &cli.Command{
		Name:      "migrate",
		Usage:     "move a volume to another host while it is in use",
		UsageText: "strata migrate VOL --to strata://HOST:PORT --token-file F [--self strata://MYHOST:PORT]",
		Description: `A migration is a mirror add, a wait until the copy is in sync (with
progress), a switchover and the end of the mirror: the volume, its
snapshots and its retained history move to the other host, clients
reconnect there (through a floating address or by name), and this host no
longer holds the volume afterwards.`,
		Flags: append(mirrorAddFlags(), &cli.DurationFlag{Name: "timeout", Value: 24 * time.Hour, Usage: "give up if the copy is not in sync by then"}),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("name one volume: strata migrate VOL --to strata://HOST:PORT --token-file F")
			}
			req, err := readMirrorAdd(c)
			if err != nil {
				return err
			}
			cl := client(c)
			vol := req.Volume
			st, err := cl.AddMirror(c.Context, req)
			if err != nil {
				return err
			}
			start := time.Now()
			pp := newProgressPrinter()
			for st.State != control.MirrorInSync {
				if time.Since(start) > c.Duration("timeout") {
					return fmt.Errorf("%s is not in sync after %s (state %s); the mirror stays: strata mirror status %s, or strata mirror remove %s", vol, c.Duration("timeout"), st.State, vol, vol)
				}
				time.Sleep(200 * time.Millisecond)
				if st, err = mirrorStatus(c.Context, cl, vol); err != nil {
					return err
				}
				pp.line(fmt.Sprintf("migrate: %s copied, %s to go (%s)", units.FormatSize(st.SyncedBytes), units.FormatSize(st.LagBytes), st.State))
			}
			pp.done()
			rep, err := cl.Switchover(c.Context, vol, control.MirrorSwitchoverRequest{Final: true})
			if err != nil {
				return fmt.Errorf("switchover: %w (the mirror stays; retry with strata mirror switchover %s)", err, vol)
			}
			fmt.Printf("%s in %s (I/O paused %s)\n", rep.Message, time.Since(start).Round(time.Millisecond), rep.Paused.Round(time.Millisecond))
			return nil
		},
	}
}

func mirrorStatus(ctx context.Context, cl *control.Client, vol string) (control.MirrorStatus, error) {
	list, err := cl.Mirrors(ctx)
	if err != nil {
		return control.MirrorStatus{}, err
	}
	for _, s := range list {
		if s.Volume == vol {
			return s, nil
		}
	}
	return control.MirrorStatus{}, fmt.Errorf("%s is not mirrored on this host (strata mirror list)", vol)
}

func printMirrors(w io.Writer, list []control.MirrorStatus) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no mirrored volumes")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tROLE\tSTATE\tEPOCH\tPEER\tLAG\tLEASE LEFT\tSINCE\tLAST ERROR")
	for _, s := range list {
		lag := "-"
		switch {
		case s.Role == control.RolePrimary && s.LagBytes < 0:
			lag = "unknown"
		case s.Role == control.RolePrimary:
			lag = units.FormatSize(s.LagBytes)
		}
		lease := s.LeaseLeft
		if lease == "" {
			lease = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", s.Volume, s.Role, s.State, s.Epoch, s.PeerURL, lag, lease, s.Since.Format(time.RFC3339), s.LastError)
	}
	tw.Flush()
}

func printMirrorDetail(w io.Writer, s control.MirrorStatus) {
	fmt.Fprintf(w, "volume:   %s (mirror group %s, epoch %d)\n", s.Volume, s.Group, s.Epoch)
	fmt.Fprintf(w, "role:     %s, %s since %s\n", s.Role, s.State, s.Since.Format(time.RFC3339))
	fmt.Fprintf(w, "peer:     %s\n", s.PeerURL)
	if s.SelfURL != "" {
		fmt.Fprintf(w, "self:     %s\n", s.SelfURL)
	}
	if s.Witness != "" {
		fmt.Fprintf(w, "witness:  %s (lease left: %s)\n", s.Witness, s.LeaseLeft)
	} else {
		fmt.Fprintln(w, "witness:  none (no automatic failover)")
	}
	switch {
	case s.Role == control.RolePrimary && s.LagBytes < 0:
		fmt.Fprintf(w, "secondary: not connected since this host took over; it resyncs when it returns\n")
	case s.Role == control.RolePrimary && s.Acked >= s.Head:
		fmt.Fprintf(w, "secondary holds every change (seq:%d); %s copied by this stream\n", s.Head, units.FormatSize(s.SyncedBytes))
	case s.Role == control.RolePrimary:
		fmt.Fprintf(w, "secondary holds seq:%d of seq:%d (%s behind); %s copied by this stream\n", s.Acked, s.Head, units.FormatSize(s.LagBytes), units.FormatSize(s.SyncedBytes))
	}
	if s.LastError != "" {
		fmt.Fprintf(w, "last error: %s\n", s.LastError)
	}
}
