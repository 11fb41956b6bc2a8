package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/daemon"
	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/replica"
)

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
   strata serve --listen 0.0.0.0:10809 --allow 10.0.0.0/24   # serve NBD beyond loopback, to one network
   strata serve --listen ""                          # Unix socket only
   strata serve --listen 0.0.0.0:10809 --tls-cert server-cert.pem --tls-key server-key.pem --tls=require
   strata serve --schedule-every 15m --schedule-keep hourly=24,daily=14,weekly=8,monthly=12
   strata serve --console 8080                       # web console on http://127.0.0.1:8080/
   strata serve --default-iops-limit 2000 --default-bw-limit 200MiB/s   # QoS of new volumes`,
		Description: `Serves every volume as an NBD export named after it, on a Unix socket
(DATA/nbd.sock) and on TCP (127.0.0.1:10809). A flush on any connection
makes every completed write durable. Stop with SIGTERM or Ctrl-C: in-flight
requests finish, the journal is synced, the lock is released.

The --default-* QoS limits are given to each volume created afterwards
(volume create, clone, --volume); strata volume set changes them per
volume.

Where transparent huge pages are "madvise" (Debian's default), serve starts
itself again once (same PID) with GLIBC_TUNABLES=glibc.malloc.hugetlb=1, so
the index's memory sits in huge pages (faster random writes); set
GLIBC_TUNABLES=glibc.malloc.hugetlb=0 to keep it off.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "socket", Usage: "NBD Unix socket (default DATA/nbd.sock; \"\" disables)"},
			&cli.StringFlag{Name: "listen", Value: "127.0.0.1:10809", Usage: "NBD TCP address (\"\" disables)"},
			&cli.StringSliceFlag{Name: "volume", Usage: "create volume NAME of SIZE at start unless it exists (repeatable), e.g. vol0=10GiB"},
			&cli.StringFlag{Name: "cache-size", Value: "256MiB", Usage: "memory for reads of data: fifteen sixteenths keep the most recent writes as written, the rest caches blocks read from older data that the page cache lost (0 turns both off); with --index-cache it bounds the daemon's memory"},
			&cli.StringFlag{Name: "index-cache", Value: "64MiB", Usage: "memory for the block index: three quarters keep where each volume's newest blocks are (the head map), the rest caches the index's blocks"},
			&cli.StringFlag{Name: "retention", Value: "24h", Usage: "how long every write stays readable as a point in time (90m, 24h, 7d); volumes may override it"},
			&cli.StringFlag{Name: "retention-size", Value: "0", Usage: "cap on the journal (e.g. 20GiB; 0: none): history older than fits is discarded early, and status says so"},
			&cli.StringFlag{Name: "gc-interval", Value: "1m", Usage: "how often garbage collection runs in the background (0 disables it)"},
			&cli.BoolFlag{Name: "no-defrag", Usage: "garbage collection does not rewrite volume ranges written at random (and then left alone for an interval) in block order; sequential reads of them stay scattered"},
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
			&cli.BoolFlag{Name: "insecure", Usage: "allow --listen off loopback with neither TLS nor --allow, and --replica-listen off loopback without TLS: plaintext to anyone who reaches the address"},
			&cli.StringFlag{Name: "vip", Usage: "floating address ADDR/PREFIX (e.g. 10.0.0.100/24) this host holds while it is the primary of a mirrored volume; clients attach to it (needs --vip-dev)"},
			&cli.StringFlag{Name: "vip-dev", Usage: "network device that carries --vip (e.g. eth0)"},
			&cli.StringFlag{Name: "on-promote", Usage: "shell command run when this host becomes primary or secondary of a mirrored volume (env STRATA_VOLUME, STRATA_ROLE, STRATA_EPOCH)"},
			&cli.StringFlag{Name: "schedule-every", Usage: "default snapshot schedule of every volume without its own (strata schedule add): interval, e.g. 1h; needs --schedule-keep"},
			&cli.StringFlag{Name: "scrub-interval", Value: "7d", Usage: "how often a background scrub pass checks every block against its checksum and heals damage from replica sites (0: never; strata scrub --now runs one)"},
			&cli.StringFlag{Name: "scrub-rate", Value: "64MiB/s", Usage: "bound on a background scrub pass's reads (max: unbounded)"},
			&cli.StringFlag{Name: "schedule-keep", Usage: "the default schedule's thinning, e.g. hourly=24,daily=14,weekly=8,monthly=12 (alone: replicas and volumes are only thinned)"},
			&cli.StringFlag{Name: "console", Usage: "serve the web console at http://ADDR/ (e.g. 8080 or :8080 for 127.0.0.1:8080, or 0.0.0.0:8080; default off)"},
			&cli.StringFlag{Name: "console-token-file", Usage: "file holding the console's login token (default DATA/console.token, created with a random token when missing)"},
			&cli.BoolFlag{Name: "console-read-only", Usage: "the console shows everything and changes nothing"},
			&cli.StringFlag{Name: "segment-size", Value: "128MiB", Usage: "journal segment file size (1MiB..1GiB); smaller segments let GC free space in finer steps"},
		}, qosFlags("default-")...),
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
	reexecForHugePages(log) // returns only if serve goes on in this process
	data, err := filepath.Abs(c.String("data"))
	if err != nil {
		return fmt.Errorf("data directory %q: %w", c.String("data"), err)
	}
	o := daemon.Options{Dir: data, NBDListen: c.String("listen"), ControlSocket: controlPath(c), Logger: log,
		MetricsListen: c.String("metrics-listen"), Version: version}
	if !c.IsSet("control-socket") {
		o.ControlSocket = filepath.Join(data, "control.sock")
	}
	o.NBDSocket = filepath.Join(data, "nbd.sock")
	if c.IsSet("socket") {
		o.NBDSocket = c.String("socket")
	}
	if o.TLS, o.RequireTLS, err = tlsConfig(c); err != nil {
		return err
	}
	if o.Allow, err = parseAllow(c.String("allow")); err != nil {
		return err
	}
	if c.IsSet("console-token-file") || c.Bool("console-read-only") {
		if !c.IsSet("console") {
			return fmt.Errorf("--console-token-file and --console-read-only need --console ADDR")
		}
	}
	o.ConsoleListen, o.ConsoleTokenFile, o.ConsoleReadOnly = c.String("console"), c.String("console-token-file"), c.Bool("console-read-only")
	if c.IsSet("console") && o.ConsoleListen == "" {
		return fmt.Errorf("--console needs an address, e.g. --console 8080 (127.0.0.1:8080)")
	}
	o.ReplicaListen, o.ReplicaTokenFile, o.ReplicaInsecure = c.String("replica-listen"), c.String("replica-token-file"), c.Bool("insecure")
	o.VIP, o.VIPDev, o.OnPromote = c.String("vip"), c.String("vip-dev"), c.String("on-promote")
	o.NBDInsecure = c.Bool("insecure")
	qch, err := qosChange(c, "default-")
	if err != nil {
		return err
	}
	if qch != nil {
		o.DefaultQoS = qch.Apply(control.QoS{Burst: daemon.DefaultBurst})
	}
	if vols := c.StringSlice("ublk"); len(vols) > 0 {
		o.UblkVolumes = vols
		o.Ublk.Queues, o.Ublk.QueueDepth = uint16(c.Int("ublk-queues")), uint16(c.Int("ublk-depth"))
	}
	if o.Pool.CacheSize, err = units.ParseSize(c.String("cache-size")); err != nil {
		return fmt.Errorf("--cache-size: %w", err)
	}
	if o.Pool.IndexCacheSize, err = units.ParseSize(c.String("index-cache")); err != nil {
		return fmt.Errorf("--index-cache: %w", err)
	}
	if o.Pool.RetentionTime, err = units.ParseDuration(c.String("retention")); err != nil {
		return fmt.Errorf("--retention: %w", err)
	}
	if o.Pool.RetentionTime == 0 {
		return fmt.Errorf("--retention must be more than 0")
	}
	if o.Pool.RetentionSize, err = units.ParseSize(c.String("retention-size")); err != nil {
		return fmt.Errorf("--retention-size: %w", err)
	}
	if o.Pool.SegmentSize, err = units.ParseSize(c.String("segment-size")); err != nil {
		return fmt.Errorf("--segment-size: %w", err)
	}
	if o.Pool.SegmentSize < 1<<20 || o.Pool.SegmentSize > 1<<30 {
		return fmt.Errorf("--segment-size %s is outside 1MiB..1GiB", c.String("segment-size"))
	}
	gcEvery, err := units.ParseDuration(c.String("gc-interval"))
	if err != nil {
		return fmt.Errorf("--gc-interval: %w", err)
	}
	o.Pool.GCInterval = gcEvery
	o.Pool.NoDefrag = c.Bool("no-defrag")
	if gcEvery == 0 {
		o.Pool.GCInterval = -1
	}
	if o.Schedule, err = defaultSchedule(c); err != nil {
		return err
	}
	if o.ScrubInterval, err = units.ParseDuration(c.String("scrub-interval")); err != nil {
		return fmt.Errorf("--scrub-interval %q: give a duration such as 7d or 24h, or 0 for no background passes", c.String("scrub-interval"))
	}
	if o.ScrubRate, err = parseRate("--scrub-rate", c.String("scrub-rate")); err != nil {
		return err
	}
	for _, spec := range c.StringSlice("volume") {
		name, sz, ok := strings.Cut(spec, "=")
		if !ok {
			name, sz, ok = strings.Cut(spec, ":")
		}
		if !ok {
			return fmt.Errorf("--volume %q: use NAME=SIZE, e.g. vol0=10GiB", spec)
		}
		if err := control.ValidateName(name); err != nil {
			return fmt.Errorf("--volume: %s", control.UserMessage(err))
		}
		size, err := units.ParseSize(sz)
		if err != nil {
			return fmt.Errorf("--volume %s: %w", name, err)
		}
		o.Volumes = append(o.Volumes, daemon.VolumeSpec{Name: name, Size: size})
	}
	if f := os.Getenv(testClockEnv); f != "" {
		o.Clock = testClock{f}
		log.Warn("test only: the daemon's clock runs ahead of the wall clock by the duration in "+testClockEnv, "file", f)
	}
	// A backstop on the Go heap from what the flags allow, unless
	// GOMEMLIMIT says otherwise. Twice the caches: Go's collector lets the
	// heap reach twice what is live, and a limit close to the live cache
	// would make it collect without pause (measured: random reads at half
	// speed with a 1.25 GiB cache). The journal's tail (fifteen sixteenths
	// of the cache) lives outside the Go heap since it moved to huge pages
	// (cdp/chunkmem.go), so this backstop is looser than it was; it is
	// only a backstop.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(2*(o.Pool.CacheSize+o.Pool.IndexCacheSize) + 512<<20)
	}
	d, err := daemon.Start(o)
	if err != nil {
		return userErr(err)
	}
	printBanner(o, d, d.Volumes())
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
	if err := d.Close(ctx); err != nil {
		return err
	}
	log.Info("stopped cleanly")
	return nil
}

func userErr(err error) error { return fmt.Errorf("%s", control.UserMessage(err)) }

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

// whoMayConnect says, for the banner, who may use the NBD TCP listener.
func whoMayConnect(o daemon.Options) string {
	var who []string
	switch {
	case len(o.Allow) > 0:
		nets := make([]string, len(o.Allow))
		for i, n := range o.Allow {
			nets[i] = n.String()
		}
		who = append(who, "clients from "+strings.Join(nets, ","))
	case replica.IsLoopback(o.NBDListen):
		who = append(who, "this host only")
	default:
		who = append(who, "any host that reaches it")
	}
	switch {
	case o.RequireTLS:
		who = append(who, "TLS required")
	case o.TLS != nil:
		who = append(who, "TLS offered, plaintext allowed")
	default:
		who = append(who, "plaintext")
	}
	if o.TLS != nil && o.TLS.ClientAuth == tls.RequireAndVerifyClientCert {
		who = append(who, "client certificates required over TLS")
	}
	return strings.Join(who, ", ")
}

func printBanner(o daemon.Options, d *daemon.Daemon, vols []control.VolumeInfo) {
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil {
			return a
		}
		return p
	}
	var b strings.Builder
	fmt.Fprintf(&b, "strata %s serving %s (pid %d)\n", version, abs(o.Dir), os.Getpid())
	if o.NBDSocket != "" {
		fmt.Fprintf(&b, "  NBD socket:     %s\n", abs(o.NBDSocket))
	}
	if o.NBDListen != "" {
		fmt.Fprintf(&b, "  NBD TCP:        %s (%s)\n", o.NBDListen, whoMayConnect(o))
	}
	if o.ReplicaListen != "" {
		security := "plaintext"
		if o.TLS != nil {
			security = "TLS"
		}
		host, port, err := net.SplitHostPort(o.ReplicaListen)
		if ip := net.ParseIP(host); err != nil || host == "" || (ip != nil && ip.IsUnspecified()) {
			host = "HOST" // a wildcard listen: the name shippers reach this machine by
		}
		fmt.Fprintf(&b, "  replication:    %s (%s; ship here with strata replicate VOL --to strata://%s --token-file FILE)\n",
			o.ReplicaListen, security, net.JoinHostPort(host, port))
	}
	fmt.Fprintf(&b, "  control socket: %s\n", abs(o.ControlSocket))
	if addr := d.ConsoleAddr(); addr != "" {
		mode := ""
		if o.ConsoleReadOnly {
			mode = ", read-only"
		}
		fmt.Fprintf(&b, "  console:        http://%s/ (login token in %s%s)\n", addr, abs(d.ConsoleTokenFile()), mode)
	}
	for _, v := range vols {
		fmt.Fprintf(&b, "Volume %s (%s). Attach it with:\n", v.Name, units.FormatSize(v.Size))
		if o.NBDListen != "" {
			host, port := splitHostPort(o.NBDListen)
			fmt.Fprintf(&b, "  nbd-client -N %s %s %s /dev/nbd0           (kernel nbd module)\n", v.Name, host, port)
			fmt.Fprintf(&b, "  qemu-system-x86_64 -drive file=nbd://%s/%s,format=raw,if=virtio ...\n", o.NBDListen, v.Name)
		}
		if o.NBDSocket != "" {
			fmt.Fprintf(&b, "  mkdir -p /tmp/%s && nbdfuse /tmp/%s/disk 'nbd+unix:///%s?socket=%s' &   (no kernel module needed)\n", v.Name, v.Name, v.Name, abs(o.NBDSocket))
			fmt.Fprintf(&b, "  nbdinfo 'nbd+unix:///%s?socket=%s'\n", v.Name, abs(o.NBDSocket))
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

// parseAllow reads "10.0.0.0/8,192.168.1.5": networks or single addresses.
func parseAllow(s string) ([]*net.IPNet, error) {
	if s == "" {
		return nil, nil
	}
	var out []*net.IPNet
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if !strings.Contains(part, "/") {
			ip := net.ParseIP(part)
			if ip == nil {
				return nil, fmt.Errorf("--allow %q: not an address or network (use e.g. 10.0.0.0/8,192.168.1.5)", part)
			}
			bits := 32
			if ip.To4() == nil {
				bits = 128
			}
			part = fmt.Sprintf("%s/%d", part, bits)
		}
		_, n, err := net.ParseCIDR(part)
		if err != nil {
			return nil, fmt.Errorf("--allow %q: not an address or network (use e.g. 10.0.0.0/8,192.168.1.5)", part)
		}
		out = append(out, n)
	}
	return out, nil
}

// defaultSchedule is the pool-wide snapshot schedule --schedule-every and
// --schedule-keep set (nil: none).
func defaultSchedule(c *cli.Context) (*control.Schedule, error) {
	if !c.IsSet("schedule-every") && !c.IsSet("schedule-keep") {
		return nil, nil
	}
	if c.String("schedule-keep") == "" {
		return nil, fmt.Errorf("--schedule-every needs --schedule-keep (e.g. hourly=24,daily=14,weekly=8,monthly=12)")
	}
	s := &control.Schedule{}
	var err error
	if c.IsSet("schedule-every") {
		if s.Every, err = units.ParseDuration(c.String("schedule-every")); err != nil || s.Every <= 0 {
			return nil, fmt.Errorf("--schedule-every %q: give a duration such as 15m, 1h or 1d", c.String("schedule-every"))
		}
	}
	if s.Keep, err = control.ParseKeep(c.String("schedule-keep")); err != nil {
		return nil, fmt.Errorf("--schedule-keep: %s", control.UserMessage(err))
	}
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("--schedule-every/--schedule-keep: %s", control.UserMessage(err))
	}
	return s, nil
}
