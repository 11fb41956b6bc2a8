// Command strata is Strata's one binary: `strata serve` runs the daemon that
// owns a data directory and serves its volumes over NBD; the other commands
// (volume, status) talk to it over its control socket.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/blockdev/ublk"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/replica"
)

var version = "0.1.0-dev"

func main() {
	app := newApp()
	if err := app.Run(permuteArgs(app, os.Args)); err != nil {
		fmt.Fprintf(os.Stderr, "strata: %s\n", oneLine(err.Error()))
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
			pitCommand(), dfCommand(), gcCommand(), attachCommand(), detachCommand(), statusCommand(),
			replicateCommand(), replicationCommand(), promoteCommand(), demoteCommand(), restoreCommand()},
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

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("invalid --log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "run the daemon: own the data directory and serve its volumes over NBD",
		UsageText: `strata serve [--data DIR] [--socket PATH] [--listen ADDR] [--volume NAME=SIZE ...]

Examples:
   strata serve --data /var/lib/strata
   strata serve --volume vol0=10GiB                  # create vol0 if missing
   strata serve --listen 0.0.0.0:10809               # serve NBD beyond loopback
   strata serve --listen ""                          # Unix socket only
   strata serve --listen 0.0.0.0:10809 --tls-cert server-cert.pem --tls-key server-key.pem --tls=require`,
		Description: `Serves every volume as an NBD export named after it, on a Unix socket
(DATA/nbd.sock) and on TCP (127.0.0.1:10809). A flush on any connection
makes every completed write durable. Stop with SIGTERM or Ctrl-C: in-flight
requests finish, the journal is synced, the lock is released.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "NBD Unix socket (default DATA/nbd.sock; \"\" disables)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "NBD TCP address (\"\" disables)"},
			&cli.StringSliceFlag{Name: "volume", Usage: "create volume NAME of SIZE at start unless it exists (repeatable), e.g. vol0=10GiB"},
			&cli.StringFlag{Name: "cache-size", Value: "256MiB", Usage: "memory for the read cache of data blocks (0 turns it off); with --index-cache it bounds the daemon's memory"},
			&cli.StringFlag{Name: "index-cache", Value: "64MiB", Usage: "memory for the block index's cache"},
			&cli.StringFlag{Name: "retention", Value: "24h", Usage: "how long every write stays readable as a point in time (90m, 24h, 7d); volumes may override it"},
			&cli.StringFlag{Name: "retention-size", Value: "0", Usage: "cap on the journal (e.g. 20GiB; 0: none): history older than fits is discarded early, and status says so"},
			&cli.StringFlag{Name: "gc-interval", Value: "1m", Usage: "how often garbage collection runs in the background (0 disables it)"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate for NBD over TLS (NBD_OPT_STARTTLS; clients use nbds:// URIs)"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key of --tls-cert"},
			&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA bundle: require client certificates signed by it"},
			&cli.StringFlag{Name: "tls", Usage: "off, on (clients may upgrade) or require (no plaintext option haggling); default: on with --tls-cert, else off"},
			&cli.StringFlag{Name: "allow", Usage: "TCP clients allowed, as networks or addresses (e.g. 10.0.0.0/24,192.168.1.5; default: all); Unix-socket clients are local"},
			&cli.StringSliceFlag{Name: "ublk", Usage: "also serve volume VOL as a ublk block device /dev/ublkbN (repeatable; needs the kernel's ublk driver)"},
			&cli.IntFlag{Name: "ublk-queues", Usage: "ublk queues per device (default: one per CPU)"},
			&cli.IntFlag{Name: "ublk-depth", Value: 128, Usage: "ublk queue depth"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9510; default off; they are always on the control socket)"},
			&cli.StringFlag{Name: "replica-listen", Usage: "accept replication streams from other sites on ADDR (e.g. 0.0.0.0:10810; TLS with --tls-cert/--tls-key)"},
			&cli.StringFlag{Name: "replica-token-file", Usage: "file holding the token shippers must present (required with --replica-listen)"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow --replica-listen off loopback without TLS"},
			&cli.StringFlag{Name: "segment-size", Value: "128MiB", Usage: "journal segment file size (1MiB..1GiB); smaller segments let GC free space in finer steps"},
		},
		Action: runServe,
	}
}

func runServe(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments (got %q); see strata serve --help", c.Args().First())
	}
	log, err := newLogger(c.String("log-level"))
	if err != nil {
		return err
	}
	data, err := filepath.Abs(c.String("data"))
	if err != nil {
		return fmt.Errorf("data directory %q: %w", c.String("data"), err)
	}
	cfg := daemonConfig{dataDir: data, listen: c.String("listen"), controlSocket: controlPath(c), log: log,
		metricsListen: c.String("metrics-listen")}
	if !c.IsSet("control-socket") {
		cfg.controlSocket = filepath.Join(data, "control.sock")
	}
	cfg.nbdSocket = filepath.Join(data, "nbd.sock")
	if c.IsSet("socket") {
		cfg.nbdSocket = c.String("socket")
	}
	if cfg.tls, cfg.requireTLS, err = tlsConfig(c); err != nil {
		return err
	}
	if cfg.allow, err = parseAllow(c.String("allow")); err != nil {
		return err
	}
	if cfg.replicaListen = c.String("replica-listen"); cfg.replicaListen != "" {
		tf := c.String("replica-token-file")
		if tf == "" {
			return fmt.Errorf("--replica-listen needs --replica-token-file (a file holding a shared token, e.g. head -c 24 /dev/urandom | base64 > token)")
		}
		if cfg.replicaToken, err = readToken(tf); err != nil {
			return fmt.Errorf("--replica-token-file: %w", err)
		}
		if cfg.tls == nil && !replica.IsLoopback(cfg.replicaListen) && !c.Bool("insecure") {
			return fmt.Errorf("--replica-listen %s is off loopback: give --tls-cert/--tls-key, or --insecure to accept plaintext streams", cfg.replicaListen)
		}
	}
	if vols := c.StringSlice("ublk"); len(vols) > 0 {
		// Before taking the data directory: fail at once where the kernel
		// has no ublk, saying what is missing.
		if err := ublk.Available(); err != nil {
			return fmt.Errorf("--ublk: %s", oneLine(err.Error()))
		}
		cfg.ublkVolumes = vols
		cfg.ublkOpts = ublk.Options{Queues: uint16(c.Int("ublk-queues")), QueueDepth: uint16(c.Int("ublk-depth"))}
	}
	if cfg.pool.CacheSize, err = parseSize(c.String("cache-size")); err != nil {
		return fmt.Errorf("--cache-size: %w", err)
	}
	if cfg.pool.IndexCacheSize, err = parseSize(c.String("index-cache")); err != nil {
		return fmt.Errorf("--index-cache: %w", err)
	}
	if cfg.pool.RetentionTime, err = parseRetention(c.String("retention")); err != nil {
		return fmt.Errorf("--retention: %w", err)
	}
	if cfg.pool.RetentionTime == 0 {
		return fmt.Errorf("--retention must be more than 0")
	}
	if cfg.pool.RetentionSize, err = parseSize(c.String("retention-size")); err != nil {
		return fmt.Errorf("--retention-size: %w", err)
	}
	if cfg.pool.SegmentSize, err = parseSize(c.String("segment-size")); err != nil {
		return fmt.Errorf("--segment-size: %w", err)
	}
	if cfg.pool.SegmentSize < 1<<20 || cfg.pool.SegmentSize > 1<<30 {
		return fmt.Errorf("--segment-size %s is outside 1MiB..1GiB", c.String("segment-size"))
	}
	gcEvery, err := parseRetention(c.String("gc-interval"))
	if err != nil {
		return fmt.Errorf("--gc-interval: %w", err)
	}
	cfg.pool.GCInterval = gcEvery
	if gcEvery == 0 {
		cfg.pool.GCInterval = -1
	}
	for _, spec := range c.StringSlice("volume") {
		name, sz, ok := strings.Cut(spec, "=")
		if !ok {
			name, sz, ok = strings.Cut(spec, ":")
		}
		if !ok {
			return fmt.Errorf("--volume %q: use NAME=SIZE, e.g. vol0=10GiB", spec)
		}
		if err := cow.ValidateName(name); err != nil {
			return fmt.Errorf("--volume: %s", userMessage(err))
		}
		size, err := parseSize(sz)
		if err != nil {
			return fmt.Errorf("--volume %s: %w", name, err)
		}
		cfg.volumes = append(cfg.volumes, volumeSpec{name, size})
	}
	// A backstop on the Go heap from what the flags allow, unless
	// GOMEMLIMIT says otherwise. Twice the caches: Go's collector lets the
	// heap reach twice what is live, and a limit close to the live cache
	// would make it collect without pause (measured: random reads at half
	// speed with a 1.25 GiB cache).
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(2*(cfg.pool.CacheSize+cfg.pool.IndexCacheSize) + 512<<20)
	}
	d, err := startDaemon(cfg)
	if err != nil {
		return userErr(err)
	}
	printBanner(d)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	s := <-sig
	log.Info("shutting down", "signal", s.String())
	go func() {
		<-sig
		log.Warn("second signal: exiting now; unflushed writes may be lost")
		os.Exit(1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := d.close(ctx); err != nil {
		return err
	}
	log.Info("stopped cleanly")
	return nil
}

func userErr(err error) error { return fmt.Errorf("%s", userMessage(err)) }

// tlsConfig builds the NBD server's TLS settings from the serve flags.
func tlsConfig(c *cli.Context) (*tls.Config, bool, error) {
	mode := c.String("tls")
	cert, key := c.String("tls-cert"), c.String("tls-key")
	if mode == "" {
		mode = "off"
		if cert != "" {
			mode = "on"
		}
	}
	switch mode {
	case "off":
		if cert != "" || c.String("tls-ca") != "" {
			return nil, false, fmt.Errorf("--tls=off with --tls-cert or --tls-ca: say --tls=on or --tls=require, or drop the certificate flags")
		}
		return nil, false, nil
	case "on", "require":
	default:
		return nil, false, fmt.Errorf("--tls %q: use off, on or require", mode)
	}
	if cert == "" || key == "" {
		return nil, false, fmt.Errorf("--tls=%s needs --tls-cert and --tls-key", mode)
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, false, fmt.Errorf("--tls-cert/--tls-key: %w", err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if ca := c.String("tls-ca"); ca != "" {
		b, err := os.ReadFile(ca)
		if err != nil {
			return nil, false, fmt.Errorf("--tls-ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, false, fmt.Errorf("--tls-ca %s: no PEM certificate in it", ca)
		}
		cfg.ClientCAs, cfg.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	return cfg, mode == "require", nil
}

func printBanner(d *daemon) {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	var b strings.Builder
	fmt.Fprintf(&b, "strata %s serving %s (pid %d)\n", version, abs(d.cfg.dataDir), os.Getpid())
	if d.cfg.nbdSocket != "" {
		fmt.Fprintf(&b, "  NBD socket:     %s\n", abs(d.cfg.nbdSocket))
	}
	if d.cfg.listen != "" {
		fmt.Fprintf(&b, "  NBD TCP:        %s\n", d.cfg.listen)
	}
	if d.cfg.replicaListen != "" {
		security := "plaintext"
		if d.cfg.tls != nil {
			security = "TLS"
		}
		host, port, err := net.SplitHostPort(d.cfg.replicaListen)
		if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "HOST" // a wildcard listen: the name shippers reach this machine by
		}
		fmt.Fprintf(&b, "  replication:    %s (%s; ship here with strata replicate VOL --to strata://%s --token-file FILE)\n",
			d.cfg.replicaListen, security, net.JoinHostPort(host, port))
	}
	fmt.Fprintf(&b, "  control socket: %s\n", abs(d.cfg.controlSocket))
	vols := d.pool.Volumes()
	for _, v := range vols {
		fmt.Fprintf(&b, "Volume %s (%s). Attach it with:\n", v.Name, formatSize(v.Size))
		if d.cfg.listen != "" {
			host, port := splitHostPort(d.cfg.listen)
			fmt.Fprintf(&b, "  nbd-client -N %s %s %s /dev/nbd0           (kernel nbd module)\n", v.Name, host, port)
			fmt.Fprintf(&b, "  qemu-system-x86_64 -drive file=nbd://%s/%s,format=raw,if=virtio ...\n", d.cfg.listen, v.Name)
		}
		if d.cfg.nbdSocket != "" {
			fmt.Fprintf(&b, "  mkdir -p /tmp/%s && nbdfuse /tmp/%s/disk 'nbd+unix:///%s?socket=%s' &   (no kernel module needed)\n", v.Name, v.Name, v.Name, abs(d.cfg.nbdSocket))
			fmt.Fprintf(&b, "  nbdinfo 'nbd+unix:///%s?socket=%s'\n", v.Name, abs(d.cfg.nbdSocket))
		}
	}
	if len(vols) == 0 {
		fmt.Fprintf(&b, "No volumes yet: strata volume create vol0 --size 10GiB\n")
	}
	fmt.Fprint(os.Stdout, b.String())
}

func splitHostPort(addr string) (string, string) {
	i := strings.LastIndex(addr, ":")
	if i < 0 {
		return addr, "10809"
	}
	return addr[:i], addr[i+1:]
}

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
Names use ` + cow.NameRules + `.`,
		Subcommands: []*cli.Command{
			volumeSetCommand(),
			{
				Name:      "create",
				Usage:     "create a thin volume",
				ArgsUsage: "NAME",
				UsageText: "strata volume create NAME --size SIZE\n\nExample:\n   strata volume create vol0 --size 10GiB",
				Description: `SIZE takes B, KiB, MiB, GiB or TiB (K, M, G, T mean the same); it must be
a multiple of 4 KiB. The volume is served at once as NBD export NAME.`,
				Flags: []cli.Flag{&cli.StringFlag{Name: "size", Aliases: []string{"s"}, Required: true, Usage: "volume size, e.g. 10GiB"}},
				Action: func(c *cli.Context) error {
					name, err := oneArg(c, "NAME")
					if err != nil {
						return err
					}
					if err := cow.ValidateName(name); err != nil {
						return userErr(err)
					}
					size, err := parseSize(c.String("size"))
					if err != nil {
						return err
					}
					var info cow.VolumeInfo
					if err := newClient(controlPath(c)).do("POST", "/v1/volumes", createRequest{Name: name, Size: size}, &info); err != nil {
						return err
					}
					fmt.Printf("created volume %s (%s)\n", info.Name, formatSize(info.Size))
					return nil
				},
			},
			{
				Name:      "list",
				Aliases:   []string{"ls"},
				Usage:     "list volumes with their size and written bytes",
				UsageText: "strata volume list [--json]\n\nExample:\n   strata volume list --json",
				Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
				Action: func(c *cli.Context) error {
					var vols []cow.VolumeInfo
					if err := newClient(controlPath(c)).do("GET", "/v1/volumes", nil, &vols); err != nil {
						return err
					}
					if c.Bool("json") {
						return printJSON(vols)
					}
					w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
					fmt.Fprintln(w, "NAME\tSIZE\tWRITTEN\tATTACHED\tMODE\tCREATED")
					for _, v := range vols {
						mode := "rw"
						if v.ReadOnly {
							mode = "ro"
						}
						fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", v.Name, formatSize(v.Size), formatSize(v.Written), v.Handles, mode, v.Created.Format(time.RFC3339))
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
					path := "/v1/volumes/" + name
					if c.Bool("force") {
						path += "?force=1"
					}
					var r deleteReply
					if err := newClient(controlPath(c)).do("DELETE", path, nil, &r); err != nil {
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
					size, err := parseSize(c.String("size"))
					if err != nil {
						return err
					}
					var info cow.VolumeInfo
					if err := newClient(controlPath(c)).do("POST", "/v1/volumes/"+name+"/resize", resizeRequest{Size: size, Force: c.Bool("force")}, &info); err != nil {
						return err
					}
					fmt.Printf("volume %s is now %s\n", info.Name, formatSize(info.Size))
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
			var st statusReply
			if err := newClient(controlPath(c)).do("GET", "/v1/status", nil, &st); err != nil {
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
				formatSize(j.Bytes), j.Segments, j.LastSeq, j.SyncedSeq, j.Fsyncs)
			fmt.Printf("index:    %s, applied through seq %d\n", formatSize(int64(st.Pool.IndexBytes)), st.Pool.AppliedSeq)
			if cs := st.Pool.Cache; cs.Enabled {
				fmt.Printf("cache:    %s of %s, hit ratio %.1f%% (%d hits, %d misses), %d evictions\n",
					formatSize(cs.Bytes), formatSize(cs.MaxBytes), 100*cs.HitRatio, cs.Hits, cs.Misses, cs.Evictions)
			} else {
				fmt.Println("cache:    off")
			}
			if st.Pool.JournalError != "" {
				fmt.Printf("FAILED:   %s\n", st.Pool.JournalError)
			}
			var written, size int64
			for _, v := range st.Volumes {
				written += v.Written
				size += v.Size
			}
			fmt.Printf("volumes:  %d, %s provisioned, %s written\n", len(st.Volumes), formatSize(size), formatSize(written))
			fmt.Printf("history:  retention %s", st.Retention)
			if st.RetainSize > 0 {
				fmt.Printf(", journal capped at %s", formatSize(st.RetainSize))
			}
			fmt.Println()
			if !st.HistoryCut.IsZero() {
				fmt.Printf("WARNING:  the retention size cap discarded history before its retention time (last at %s)\n", st.HistoryCut.Format(time.RFC3339))
			}
			if g := st.LastGC; g != nil {
				fmt.Printf("gc:       last pass %s: freed %s, relocated %s", g.At.Format(time.RFC3339), formatSize(g.Stats.BytesFreed), formatSize(g.Stats.BytesRelocated))
				if g.Error != "" {
					fmt.Printf(", FAILED: %s", g.Error)
				}
				fmt.Println()
			}
			fmt.Printf("clients:  %d\n", len(st.Connections))
			for _, cn := range st.Connections {
				fmt.Printf("  %s from %s since %s\n", cn.Export, cn.Remote, cn.Since.Format(time.RFC3339))
			}
			if len(st.Replication) > 0 {
				fmt.Println("replication:")
				printReplStatus(os.Stdout, st.Replication)
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
