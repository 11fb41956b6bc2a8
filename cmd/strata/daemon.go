package main

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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/blockdev/ublk"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/replica"
)

// maxSocketPath is the longest path a Unix socket address holds on Linux.
const maxSocketPath = 107

// daemonConfig is what `strata serve` runs with.
type daemonConfig struct {
	dataDir       string
	nbdSocket     string // "" disables
	listen        string // "" disables
	controlSocket string
	metricsListen string // "" disables
	replicaListen string // "" disables
	replicaToken  string
	tls           *tls.Config // NBD over TLS (nil: off)
	requireTLS    bool
	allow         []*net.IPNet // TCP clients allowed (nil: all)
	ublkVolumes   []string     // volumes to serve as /dev/ublkbN
	ublkOpts      ublk.Options
	volumes       []volumeSpec // created at start when missing
	pool          cow.Options
	log           *slog.Logger
}

type volumeSpec struct {
	name string
	size int64
}

// daemon owns a data directory while it runs.
type daemon struct {
	cfg        daemonConfig
	lock       *os.File
	pool       *cow.Pool
	nbd        *nbd.Server
	control    *http.Server
	metricsSrv *http.Server
	lns        []net.Listener
	socks      []string
	started    time.Time
	gc         *gcReport // last manual pass
	io         *ioMetrics
	ublkStop   context.CancelFunc
	ublkWG     sync.WaitGroup
	repl       *replManager
	replSrv    *replica.Server
}

// errDataInUse: another serve holds the data directory.
var errDataInUse = errors.New("data directory in use")

// lockDataDir takes an exclusive flock on DATA/strata.lock and writes our
// pid into it, so a second serve fails clearly and names the holder.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create data directory %s: %w", dir, err)
	}
	path := filepath.Join(dir, "strata.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		holder := strings.TrimSpace(string(b))
		if holder == "" {
			holder = "unknown"
		}
		return nil, fmt.Errorf("%w: %s is used by another strata serve (pid %s); stop it first or use another --data", errDataInUse, dir, holder)
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
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

func startDaemon(cfg daemonConfig) (*daemon, error) {
	d := &daemon{cfg: cfg, started: time.Now()}
	lock, err := lockDataDir(cfg.dataDir)
	if err != nil {
		return nil, err
	}
	d.lock = lock
	ok := false
	defer func() {
		if !ok {
			d.close(context.Background())
		}
	}()
	cfg.pool.Dir = cfg.dataDir
	cfg.pool.Logger = cfg.log
	pool, err := cow.Open(cfg.pool)
	if err != nil {
		return nil, fmt.Errorf("open pool in %s: %w", cfg.dataDir, err)
	}
	d.pool = pool
	for _, v := range cfg.volumes {
		if _, err := pool.VolumeInfo(v.name); err == nil {
			continue
		}
		if _, err := pool.CreateVolume(v.name, v.size); err != nil {
			return nil, fmt.Errorf("create volume %s: %w", v.name, err)
		}
		cfg.log.Info("created volume", "name", v.name, "size", formatSize(v.size))
	}

	d.io = &ioMetrics{}
	if d.nbd, err = nbd.NewServer(exporter{pool, d.io}, nbd.Options{Logger: cfg.log, TLS: cfg.tls, RequireTLS: cfg.requireTLS}); err != nil {
		return nil, err
	}
	if cfg.nbdSocket != "" {
		l, err := listenUnix(cfg.nbdSocket, 0o660)
		if err != nil {
			return nil, err
		}
		d.serveNBD(l)
		d.socks = append(d.socks, cfg.nbdSocket)
	}
	if cfg.listen != "" {
		l, err := net.Listen("tcp", cfg.listen)
		if err != nil {
			return nil, fmt.Errorf("listen on %s: %w", cfg.listen, err)
		}
		if cfg.allow != nil {
			l = &allowListener{Listener: l, allow: cfg.allow, log: cfg.log}
		}
		d.serveNBD(l)
	}

	if err := d.startUblk(); err != nil {
		return nil, err
	}

	if d.repl, err = newReplManager(d); err != nil {
		return nil, fmt.Errorf("replication: %w", err)
	}
	if cfg.replicaListen != "" {
		l, err := net.Listen("tcp", cfg.replicaListen)
		if err != nil {
			return nil, fmt.Errorf("--replica-listen %s: %w", cfg.replicaListen, err)
		}
		d.lns = append(d.lns, l)
		d.replSrv = &replica.Server{Receiver: replica.NewReceiver(pool, cfg.log), Token: cfg.replicaToken, Logger: cfg.log}
		if cfg.tls != nil {
			// Shippers authenticate with the token; --tls-ca's client
			// certificates are for NBD clients.
			rt := cfg.tls.Clone()
			rt.ClientAuth, rt.ClientCAs = tls.NoClientCert, nil
			d.replSrv.TLS = rt
		}
		go d.replSrv.Serve(l)
	}

	cl, err := listenUnix(cfg.controlSocket, 0o600)
	if err != nil {
		return nil, err
	}
	d.socks = append(d.socks, cfg.controlSocket)
	d.control = &http.Server{Handler: d.controlHandler(), ReadHeaderTimeout: 10 * time.Second}
	go d.control.Serve(cl)
	if cfg.metricsListen != "" {
		ml, err := net.Listen("tcp", cfg.metricsListen)
		if err != nil {
			return nil, fmt.Errorf("--metrics-listen %s: %w", cfg.metricsListen, err)
		}
		mux := http.NewServeMux()
		mux.HandleFunc("GET /metrics", d.metrics)
		d.metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go d.metricsSrv.Serve(ml)
	}
	ok = true
	return d, nil
}

func (d *daemon) serveNBD(l net.Listener) {
	d.lns = append(d.lns, l)
	go func() {
		if err := d.nbd.Serve(l); err != nil {
			d.cfg.log.Error("NBD listener stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
}

// close shuts down in order: stop taking requests, finish in-flight ones,
// sync and close the pool, remove our sockets, release the lock.
func (d *daemon) close(ctx context.Context) error {
	var firstErr error
	if d.control != nil {
		d.control.Shutdown(ctx)
	}
	if d.metricsSrv != nil {
		d.metricsSrv.Shutdown(ctx)
	}
	if d.ublkStop != nil {
		d.ublkStop()
		d.ublkWG.Wait()
	}
	if d.nbd != nil {
		if err := d.nbd.Shutdown(ctx); err != nil {
			d.cfg.log.Warn("NBD shutdown", "err", err)
		}
	}
	for _, l := range d.lns {
		l.Close()
	}
	if d.repl != nil {
		d.repl.close()
	}
	if d.replSrv != nil {
		d.replSrv.Close()
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

// exporter serves the pool's volumes as NBD exports, one per volume, named
// after it. The empty (default) name means the only volume, if there is one.
// The head of a volume is metered (its I/O shows in the metrics).
type exporter struct {
	p  *cow.Pool
	io *ioMetrics
}

func (e exporter) Open(name string) (nbd.Export, error) {
	if vol, point, ok := cow.ParsePoint(name); ok {
		// VOL@POINT: the volume as it was then, read-only.
		v, err := e.p.OpenVolumeAt(vol, point)
		if err != nil {
			return nil, plainError{err}
		}
		return v, nil
	}
	if name == "" {
		vols := e.p.Volumes()
		if len(vols) != 1 {
			return nil, fmt.Errorf("%w: no default export (the pool has %d volumes): name one", blockdev.ErrNotFound, len(vols))
		}
		name = vols[0].Name
	}
	v, err := e.p.OpenVolume(name)
	if err != nil {
		return nil, err
	}
	return &meteredVolume{Volume: v, ops: e.io.forVolume(name)}, nil
}

func (e exporter) List() ([]nbd.ExportInfo, error) {
	var out []nbd.ExportInfo
	for _, v := range e.p.Volumes() {
		out = append(out, nbd.ExportInfo{Name: v.Name, Description: fmt.Sprintf("strata volume, %s", formatSize(v.Size))})
		snaps, err := e.p.Snapshots(v.Name)
		if err != nil {
			continue // deleted meanwhile
		}
		for _, sn := range snaps {
			out = append(out, nbd.ExportInfo{Name: v.Name + "@" + sn.Name,
				Description: fmt.Sprintf("snapshot of %s at %s (read-only)", v.Name, sn.Time.Format(time.RFC3339))})
		}
	}
	return out, nil
}

// plainError keeps an error's classes (errors.Is) but shows clients the
// message without the package prefixes developers read.
type plainError struct{ err error }

func (e plainError) Error() string { return userMessage(e.err) }
func (e plainError) Unwrap() error { return e.err }

// allowListener drops TCP connections from addresses outside the allowed
// networks before a byte of NBD is exchanged.
type allowListener struct {
	net.Listener
	allow []*net.IPNet
	log   *slog.Logger
}

func (l *allowListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if a, ok := c.RemoteAddr().(*net.TCPAddr); ok && allowed(l.allow, a.IP) {
			return c, nil
		}
		l.log.Warn("NBD client refused: address not in --allow", "remote", c.RemoteAddr().String())
		c.Close()
	}
}

func allowed(nets []*net.IPNet, ip net.IP) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
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

// startUblk serves the --ublk volumes as /dev/ublkbN devices.
func (d *daemon) startUblk() error {
	if len(d.cfg.ublkVolumes) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.ublkStop = cancel
	for _, name := range d.cfg.ublkVolumes {
		v, err := d.pool.OpenVolume(name)
		if err != nil {
			return fmt.Errorf("--ublk %s: %w", name, err)
		}
		d.ublkWG.Add(1)
		go func() {
			defer d.ublkWG.Done()
			defer v.Close()
			err := ublk.Serve(ctx, v, d.cfg.ublkOpts, func(path string) {
				d.cfg.log.Info("serving volume over ublk", "volume", name, "device", path)
			})
			if err != nil {
				d.cfg.log.Error("ublk device stopped", "volume", name, "err", err)
			}
		}()
	}
	return nil
}
