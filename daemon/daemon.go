// Package daemon is what `strata serve` runs: it owns a data directory
// while it runs (an exclusive lock on it), the pool's life, the frontends'
// listeners (NBD on a Unix socket and TCP, with TLS and access lists; ublk
// devices), the control API (HTTP on the control socket, see package
// control), the replication manager (configured continuous and interval
// shipping, --once runs, the listener for other sites' streams), the
// snapshot schedules (schedule.go; app-consistent snapshots in freeze.go),
// the synchronous mirrors (mirror.go: the gate in front of a mirrored
// volume, leases at the witness, takeover, step-down, switchover; the
// floating address and hook in mirror_api.go), the capacity and sprawl
// report (capacity.go: volume owners, labels, expiry, activity and the
// pool's growth), the metrics and the web console (the control API over
// HTTP behind a login, with its pages). Start runs one, Close stops it;
// tests can run one in-process.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/blockdev/ublk"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/dirlock"
	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/internal/vip"
	"github.com/strata-storage/strata/replica"
)

// Options is what a daemon runs with. Errors about an option name the
// `strata serve` flag that sets it.
type Options struct {
	// Dir is the data directory (required): the pool, the lock file and,
	// by default, the sockets.
	Dir string
	// ControlSocket is the control API's Unix socket (default
	// Dir/control.sock).
	ControlSocket string
	// NBDSocket is the NBD Unix socket ("": none).
	NBDSocket string
	// NBDListen is the NBD TCP address ("": none). Off loopback it takes
	// TLS or an Allow list, unless NBDInsecure: otherwise every volume
	// would be served in the clear to any host that reaches it.
	NBDListen   string
	NBDInsecure bool
	// TLS serves NBD over TLS (NBD_OPT_STARTTLS) when set; RequireTLS
	// refuses clients that do not upgrade.
	TLS        *tls.Config
	RequireTLS bool
	// DefaultQoS is the limits a new volume starts with (volume create,
	// clone, Volumes created at start); the zero value: none.
	DefaultQoS control.QoS
	// Allow lists the networks TCP clients may come from (nil: all).
	Allow []*net.IPNet
	// UblkVolumes are also served as ublk block devices, with Ublk's
	// settings.
	UblkVolumes []string
	Ublk        ublk.Options
	// MetricsListen serves Prometheus metrics on TCP ("": only on the
	// control socket).
	MetricsListen string
	// ReplicaListen accepts replication streams from other sites ("":
	// none); shippers present the token in ReplicaTokenFile. Off loopback
	// it takes TLS, unless ReplicaInsecure.
	ReplicaListen    string
	ReplicaTokenFile string
	ReplicaInsecure  bool
	// ConsoleListen serves the web console on this TCP address ("": off;
	// see ConsoleAddr for the host's default). Its login token is in
	// ConsoleTokenFile (default Dir/console.token, created with a random
	// token when missing); ConsoleReadOnly refuses every change from it.
	ConsoleListen    string
	ConsoleTokenFile string
	ConsoleReadOnly  bool
	// VIP is an address (ADDR/PREFIX) this host holds on VIPDev while it
	// is the primary of a mirrored volume; OnPromote is a shell command
	// run when it becomes primary or secondary of one (docs/ha.md).
	VIP       string
	VIPDev    string
	OnPromote string
	// Volumes are created at start unless they exist.
	Volumes []VolumeSpec
	// Pool configures the pool; Dir and Logger are the daemon's.
	Pool cow.Options
	// Schedule is the pool-wide default snapshot schedule, which volumes
	// without one of their own follow (nil: none; Volume is ignored).
	Schedule *control.Schedule
	// ScrubInterval is how often a background scrub pass runs (0: never;
	// strata serve defaults to DefaultScrubInterval); ScrubRate bounds its
	// reads, bytes a second (0: unbounded).
	ScrubInterval time.Duration
	ScrubRate     int64
	// Clock runs the schedules and times volume activity, expiry and the
	// capacity forecast (default the wall clock).
	Clock Clock
	// Logger (default slog.Default()).
	Logger *slog.Logger
	// Version is what status reports.
	Version string
}

// VolumeSpec is a volume to create at start.
type VolumeSpec struct {
	Name string
	Size int64
}

// ErrDataInUse: another daemon holds the data directory.
var ErrDataInUse = errors.New("data directory in use")

// maxSocketPath is the longest path a Unix socket address holds on Linux.
const maxSocketPath = 107

// Daemon owns a data directory while it runs.
type Daemon struct {
	opts       Options
	lock       *os.File
	pool       *cow.Pool
	nbd        *nbd.Server
	control    *http.Server
	metricsSrv *http.Server
	consoleSrv *http.Server
	consoleAt  string
	lns        []net.Listener
	socks      []string
	started    time.Time
	io         *ioMetrics
	reg        *prometheus.Registry
	ublkStop   context.CancelFunc
	ublkWG     sync.WaitGroup
	repl       *replManager
	mirrors    *mirrorManager
	vip        *vip.VIP // the floating address (nil: none)
	vipMu      sync.Mutex
	sched      *scheduleManager
	scrub      *scrubManager
	access     *accessManager
	capacity   *capacity
	qos        *qosManager
	replSrv    *replica.Server
	closeOnce  sync.Once
	closeErr   error

	mu struct {
		sync.Mutex
		gc *control.GCReport // last manual pass
	}
}

// Start takes the data directory, opens the pool and serves it until Close.
func Start(o Options) (*Daemon, error) {
	replicaToken, err := o.fill()
	if err != nil {
		return nil, err
	}
	d := &Daemon{opts: o, started: time.Now()}
	if d.lock, err = lockDataDir(o.Dir); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Close(context.Background())
		}
	}()
	po := o.Pool
	po.Dir, po.Logger = o.Dir, o.Logger
	pool, err := cow.Open(po)
	if err != nil {
		return nil, fmt.Errorf("open pool in %s: %w", o.Dir, err)
	}
	d.pool = pool
	d.io = newIOMetrics()
	if d.capacity, err = newCapacity(filepath.Join(o.Dir, "volmeta.json"), filepath.Join(o.Dir, "activity.json"), o.Clock, o.Logger, pool, d.io); err != nil {
		return nil, fmt.Errorf("capacity report: %w", err)
	}
	if d.qos, err = newQoSManager(filepath.Join(o.Dir, "qos.json"), realClock{}); err != nil {
		return nil, fmt.Errorf("qos: %w", err)
	}
	if d.reg, err = d.newRegistry(); err != nil {
		return nil, err
	}
	for _, v := range o.Volumes {
		if _, err := pool.VolumeInfo(v.Name); err == nil {
			continue
		}
		if _, err := pool.CreateVolume(v.Name, v.Size); err != nil {
			return nil, fmt.Errorf("create volume %s: %w", v.Name, err)
		}
		o.Logger.Info("created volume", "name", v.Name, "size", units.FormatSize(v.Size))
		d.defaultQoS(v.Name)
	}

	if o.VIP != "" || o.VIPDev != "" {
		v, err := vip.Parse(o.VIP, o.VIPDev)
		if err != nil {
			return nil, fmt.Errorf("--vip/--vip-dev: %w", err)
		}
		d.vip = &v
	}
	if d.access, err = newAccessManager(filepath.Join(o.Dir, "access.json"), o.Logger); err != nil {
		return nil, fmt.Errorf("access: %w", err)
	}
	if d.mirrors, err = newMirrorManager(d, filepath.Join(o.Dir, "mirror.json")); err != nil {
		return nil, fmt.Errorf("mirror: %w", err)
	}
	// Mirrors start before any frontend serves: a volume's gate (lease,
	// role) is in place before its first request.
	d.mirrors.start()
	if err := d.startNBD(); err != nil {
		return nil, err
	}
	if err := d.startUblk(); err != nil {
		return nil, err
	}
	if d.repl, err = newReplManager(pool, o.Logger, filepath.Join(o.Dir, "replication.json")); err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	if d.sched, err = newScheduleManager(pool, o.Logger, o.Clock, filepath.Join(o.Dir, "schedules.json"), o.Schedule); err != nil {
		return nil, fmt.Errorf("schedules: %w", err)
	}
	d.sched.start()
	d.capacity.start()
	if d.scrub, err = newScrubManager(pool, d.scrubSites, o.Logger, filepath.Join(o.Dir, "scrub.json"), o.ScrubInterval, o.ScrubRate); err != nil {
		return nil, fmt.Errorf("scrub: %w", err)
	}
	d.scrub.start()
	if o.ReplicaListen != "" {
		l, err := net.Listen("tcp", o.ReplicaListen)
		if err != nil {
			return nil, fmt.Errorf("--replica-listen %s: %w", o.ReplicaListen, err)
		}
		d.lns = append(d.lns, l)
		d.replSrv = &replica.Server{Receiver: replica.NewReceiver(pool, o.Logger), Token: replicaToken, Logger: o.Logger}
		d.replSrv.Receiver.CheckHello = d.mirrors.checkHello
		d.replSrv.Receiver.BeforeDiscard = d.mirrors.beforeDiscard
		d.replSrv.Receiver.LocalValid = d.mirrors.localValid
		d.mirrors.recv.Store(d.replSrv.Receiver)
		if o.TLS != nil {
			// Shippers authenticate with the token; --tls-ca's client
			// certificates are for NBD clients.
			rt := o.TLS.Clone()
			rt.ClientAuth, rt.ClientCAs = tls.NoClientCert, nil
			d.replSrv.TLS = rt
		}
		go d.replSrv.Serve(l)
	}

	cl, err := listenUnix(o.ControlSocket, 0o600)
	if err != nil {
		return nil, err
	}
	d.socks = append(d.socks, o.ControlSocket)
	api := d.controlHandler()
	d.control = &http.Server{Handler: api, ReadHeaderTimeout: 10 * time.Second}
	go d.control.Serve(cl)
	if o.MetricsListen != "" {
		ml, err := net.Listen("tcp", o.MetricsListen)
		if err != nil {
			return nil, fmt.Errorf("--metrics-listen %s: %w", o.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", d.metricsHandler())
		d.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go d.metricsSrv.Serve(ml)
	}
	if err := d.startConsole(api); err != nil {
		return nil, err
	}
	ok = true
	return d, nil
}

// fill sets defaults and checks what can be checked before the data
// directory is taken; it returns the replication token.
func (o *Options) fill() (string, error) {
	if o.Dir == "" {
		return "", errors.New("daemon: Options.Dir is required")
	}
	if o.ControlSocket == "" {
		o.ControlSocket = filepath.Join(o.Dir, "control.sock")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = wallClock{}
	}
	if o.ConsoleListen != "" {
		o.ConsoleListen = ConsoleAddr(o.ConsoleListen)
		if o.ConsoleTokenFile == "" {
			o.ConsoleTokenFile = filepath.Join(o.Dir, "console.token")
		}
	}
	if o.NBDListen != "" && !replica.IsLoopback(o.NBDListen) && o.TLS == nil && len(o.Allow) == 0 && !o.NBDInsecure {
		return "", fmt.Errorf("--listen %s is off loopback and would serve every volume in the clear to any host that reaches it: "+
			"give --tls-cert/--tls-key (clients use nbds://), --allow with the networks that may connect, or --insecure to serve anyone anyway", o.NBDListen)
	}
	var token string
	if o.ReplicaListen != "" {
		if o.ReplicaTokenFile == "" {
			return "", fmt.Errorf("--replica-listen needs --replica-token-file (a file holding a shared token, e.g. head -c 24 /dev/urandom | base64 > token)")
		}
		var err error
		if token, err = readToken(o.ReplicaTokenFile); err != nil {
			return "", fmt.Errorf("--replica-token-file: %w", err)
		}
		if o.TLS == nil && !replica.IsLoopback(o.ReplicaListen) && !o.ReplicaInsecure {
			return "", fmt.Errorf("--replica-listen %s is off loopback: give --tls-cert/--tls-key, or --insecure to accept plaintext streams", o.ReplicaListen)
		}
	}
	if len(o.UblkVolumes) > 0 {
		// Fail at once where the kernel has no ublk, saying what is
		// missing, before the data directory is created or taken.
		if err := ublk.Available(); err != nil {
			return "", fmt.Errorf("--ublk: %w", err)
		}
	}
	return token, nil
}

// Volumes lists the pool's volumes.
func (d *Daemon) Volumes() []control.VolumeInfo { return d.pool.Volumes() }

// Close shuts down in order: stop taking requests, finish in-flight ones
// (until ctx ends), sync and close the pool, remove the sockets, release the
// lock. Later calls return the first's result.
func (d *Daemon) Close(ctx context.Context) error {
	d.closeOnce.Do(func() { d.closeErr = d.close(ctx) })
	return d.closeErr
}

func (d *Daemon) close(ctx context.Context) error {
	var firstErr error
	if d.scrub != nil {
		// First: a --now pass is a control request Shutdown would wait
		// for, and it must end before the pool closes.
		d.scrub.close()
	}
	if d.control != nil {
		d.control.Shutdown(ctx)
	}
	if d.metricsSrv != nil {
		d.metricsSrv.Shutdown(ctx)
	}
	if d.consoleSrv != nil {
		d.consoleSrv.Shutdown(ctx)
	}
	if d.qos != nil {
		d.qos.release() // requests waiting for a limit finish now
	}
	if d.ublkStop != nil {
		d.ublkStop()
		d.ublkWG.Wait()
	}
	if d.nbd != nil {
		if err := d.nbd.Shutdown(ctx); err != nil {
			d.opts.Logger.Warn("NBD shutdown", "err", err)
		}
	}
	for _, l := range d.lns {
		l.Close()
	}
	if d.mirrors != nil {
		d.mirrors.close()
	}
	if d.sched != nil {
		d.sched.close()
	}
	if d.repl != nil {
		d.repl.close()
	}
	if d.replSrv != nil {
		d.replSrv.Close()
	}
	if d.capacity != nil {
		if err := d.capacity.close(); err != nil {
			d.opts.Logger.Error("saving volume activity", "err", err)
		}
	}
	if d.pool != nil {
		if err := d.pool.Close(); err != nil {
			firstErr = fmt.Errorf("close pool: %w", err)
		}
	}
	for _, s := range d.socks {
		os.Remove(s)
	}
	if d.lock != nil {
		d.lock.Close()
	}
	return firstErr
}

// lockDataDir takes an exclusive flock on DATA/strata.lock and writes our
// pid into it, so a second serve fails clearly and names the holder.
func lockDataDir(dir string) (*os.File, error) {
	f, holder, err := dirlock.Lock(dir, "strata.lock")
	if errors.Is(err, dirlock.ErrLocked) {
		return nil, fmt.Errorf("%w: %s is used by another strata serve (pid %s); stop it first or use another --data", ErrDataInUse, dir, holder)
	}
	return f, err
}

// listenUnix listens on a Unix socket path, replacing a stale socket file
// that a crashed serve left behind (we hold the data directory's lock, so no
// live serve owns it). A non-socket file at the path is never removed.
func listenUnix(path string, mode fs.FileMode) (net.Listener, error) {
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("socket path %s is %d bytes long; Unix sockets allow %d: choose a shorter path", path, len(path), maxSocketPath)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&fs.ModeSocket == 0 {
			return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	}
	old := syscall.Umask(int(0o777 &^ uint32(mode)))
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w (some filesystems, such as FUSE or NFS, cannot hold sockets: use --socket/--control-socket to put it elsewhere)", path, err)
	}
	return l, nil
}
