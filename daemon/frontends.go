package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/blockdev/ublk"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/units"
)

// startNBD serves the pool's volumes over NBD on the socket and the TCP
// address the options name.
func (d *Daemon) startNBD() error {
	o := d.opts
	var err error
	if d.nbd, err = nbd.NewServer(d.exporter(), nbd.Options{Logger: o.Logger, TLS: o.TLS, RequireTLS: o.RequireTLS}); err != nil {
		return err
	}
	if d.mirrors != nil {
		d.mirrors.nbd.Store(d.nbd)
	}
	if o.NBDSocket != "" {
		l, err := listenUnix(o.NBDSocket, 0o660)
		if err != nil {
			return err
		}
		d.serveNBD(l)
		d.socks = append(d.socks, o.NBDSocket)
	}
	if o.NBDListen != "" {
		l, err := net.Listen("tcp", o.NBDListen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", o.NBDListen, err)
		}
		if o.Allow != nil {
			l = &allowListener{Listener: l, allow: o.Allow, log: o.Logger}
		}
		d.serveNBD(l)
	}
	return nil
}

func (d *Daemon) serveNBD(l net.Listener) {
	d.lns = append(d.lns, l)
	go func() {
		if err := d.nbd.Serve(l); err != nil {
			d.opts.Logger.Error("NBD listener stopped", "addr", l.Addr().String(), "err", err)
		}
	}()
}

// exporter serves the pool's volumes as NBD exports, one per volume, named
// after it. The empty (default) name means the only volume, if there is one.
// The head of a volume is metered (its I/O shows in the metrics).
type exporter struct {
	p       *cow.Pool
	io      *ioMetrics
	mirrors *mirrorManager
	access  *accessManager // nil: every client may use every volume
	// capacity notes each open of a volume's head (nil: not noted).
	capacity *capacity
	qos      *qosManager
}

// exporter is what the NBD server opens volumes through.
func (d *Daemon) exporter() exporter {
	return exporter{p: d.pool, io: d.io, mirrors: d.mirrors, access: d.access, capacity: d.capacity, qos: d.qos}
}

func (e exporter) Open(name string) (nbd.Export, error) {
	if vol, point, ok := cow.ParsePoint(name); ok {
		// VOL@POINT: the volume as it was then, read-only.
		v, err := e.p.OpenVolumeAt(vol, point)
		if err != nil {
			return nil, plainError{err}
		}
		return newThrottledVolume(v, e.qos.forVolume(vol)), nil // its reads count against the volume's limits
	}
	if name == "" {
		vols := e.p.Volumes()
		if len(vols) != 1 {
			return nil, fmt.Errorf("%w: no default export (the pool has %d volumes): name one", blockdev.ErrNotFound, len(vols))
		}
		name = vols[0].Name
	}
	mr := e.mirrors.get(name)
	if mr != nil {
		if me := mr.entry(); me.Role != control.RolePrimary || !mr.primary.Load() || mr.fenced.Load() {
			// Refused at the handshake: a reconnecting client tries again
			// a moment later, and finds the address at the new primary.
			return nil, plainError{fmt.Errorf("%w: this host is not serving mirrored volume %q now (%s, %s); its peer is %s", blockdev.ErrNotFound, name, me.Role, mr.stateName(), me.PeerURL)}
		}
	}
	v, err := e.p.OpenVolume(name)
	if err != nil {
		return nil, err
	}
	if e.capacity != nil {
		e.capacity.attached(name)
	}
	var x headExport = &meteredVolume{Volume: v, ops: e.io.forVolume(name)}
	if e.mirrors != nil {
		x = &mirroredVolume{meteredVolume: x.(*meteredVolume), vol: name, slot: e.mirrors.slot(name)}
	}
	return newThrottledVolume(x, e.qos.forVolume(name)), nil
}

func (e exporter) List() ([]nbd.ExportInfo, error) {
	var out []nbd.ExportInfo
	for _, v := range e.p.Volumes() {
		out = append(out, nbd.ExportInfo{Name: v.Name, Description: fmt.Sprintf("strata volume, %s", units.FormatSize(v.Size))})
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

func (e plainError) Error() string { return control.UserMessage(e.err) }
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

// startUblk serves the ublk volumes as /dev/ublkbN devices.
func (d *Daemon) startUblk() error {
	if len(d.opts.UblkVolumes) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.ublkStop = cancel
	for _, name := range d.opts.UblkVolumes {
		v, err := d.pool.OpenVolume(name)
		if err != nil {
			return fmt.Errorf("--ublk %s: %w", name, err)
		}
		d.ublkWG.Add(1)
		go func() {
			defer d.ublkWG.Done()
			defer v.Close()
			err := ublk.Serve(ctx, newThrottledVolume(v, d.qos.forVolume(name)), d.opts.Ublk, func(path string) {
				d.opts.Logger.Info("serving volume over ublk", "volume", name, "device", path)
			})
			if err != nil {
				d.opts.Logger.Error("ublk device stopped", "volume", name, "err", err)
			}
		}()
	}
	return nil
}
