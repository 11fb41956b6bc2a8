package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cdp"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/units"
)

// The control API's handlers; package control documents the API.

var errBadRequest = errors.New("bad request")

// errorClass is an error class and the API's status and code for it.
type errorClass struct {
	err    error
	status int
	code   string
}

// errorClasses classify errors for the API (and so the CLI's exit), the
// first that matches winning.
var errorClasses = []errorClass{
	{blockdev.ErrNotFound, http.StatusNotFound, control.CodeNotFound},
	{cow.ErrExists, http.StatusConflict, control.CodeExists},
	{cow.ErrBusy, http.StatusConflict, control.CodeBusy},
	{cow.ErrShrinkData, http.StatusConflict, control.CodeShrinkData},
	{cow.ErrPoint, http.StatusUnprocessableEntity, control.CodePoint},
	{cow.ErrInvalidName, http.StatusBadRequest, control.CodeInvalid},
	{cow.ErrInvalidSize, http.StatusBadRequest, control.CodeInvalid},
	{errBadRequest, http.StatusBadRequest, control.CodeInvalid},
	{control.ErrBadSpec, http.StatusBadRequest, control.CodeInvalid},
	{errFreeze, http.StatusBadGateway, control.CodeRefused},
	{errThaw, http.StatusBadGateway, control.CodeRefused},
	{blockdev.ErrNoSpace, http.StatusInsufficientStorage, control.CodeNoSpace},
	{cdp.ErrFailed, http.StatusInternalServerError, control.CodeIO},
	{blockdev.ErrIO, http.StatusInternalServerError, control.CodeIO},
}

func errorCode(err error, classes []errorClass) (int, string) {
	for _, c := range classes {
		if errors.Is(err, c.err) {
			return c.status, c.code
		}
	}
	return http.StatusInternalServerError, control.CodeInternal
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) { writeClassified(w, err, errorClasses) }

func writeClassified(w http.ResponseWriter, err error, classes []errorClass) {
	status, code := errorCode(err, classes)
	writeJSON(w, status, control.Error{Message: control.UserMessage(err), Code: code})
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return nil
}

func (d *Daemon) controlHandler() http.Handler {
	log := d.opts.Logger
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.pool.Volumes())
	})
	mux.HandleFunc("GET /v1/access", func(w http.ResponseWriter, r *http.Request) {
		out := map[string]control.Access{}
		for _, v := range d.pool.Volumes() {
			if a := d.access.rules(v.Name); a != nil {
				out[v.Name] = *a
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /v1/qos", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.qos.all())
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req control.CreateVolumeRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if err := checkMeta(req.MetaChange, d.opts.Clock.Now()); err != nil {
			writeErr(w, err)
			return
		}
		info, err := d.pool.CreateVolume(req.Name, req.Size)
		if err != nil {
			writeErr(w, err)
			return
		}
		if !req.MetaChange.Empty() {
			if err := d.capacity.setMeta(req.Name, req.MetaChange); err != nil {
				writeErr(w, fmt.Errorf("volume %s created, but its owner, labels or expiry were not saved: %w", req.Name, err))
				return
			}
		}
		log.Info("created volume", "name", req.Name, "size", units.FormatSize(req.Size))
		d.defaultQoS(req.Name)
		writeJSON(w, http.StatusCreated, info)
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		force := r.URL.Query().Get("force") == "1"
		var n int
		if force {
			// Connections go first (the volume's and its VOL@POINT
			// readers'): their in-flight requests finish or fail with
			// "gone", never write into a deleted volume.
			n = d.nbd.DisconnectExport(name)
			seen := map[string]bool{}
			for _, c := range d.nbd.Connections() {
				if strings.HasPrefix(c.Export, name+"@") && !seen[c.Export] {
					seen[c.Export] = true
					n += d.nbd.DisconnectExport(c.Export)
				}
			}
		}
		if err := d.pool.DeleteVolume(name, force); err != nil {
			writeErr(w, err)
			return
		}
		d.sched.forget(name)
		if err := d.access.forget(name); err != nil {
			log.Error("dropping a deleted volume's access rules", "volume", name, "err", err)
		}
		if err := d.capacity.forget(name); err != nil {
			log.Error("dropping a deleted volume's labels and activity", "volume", name, "err", err)
		}
		if err := d.qos.forget(name); err != nil {
			log.Error("dropping a deleted volume's QoS limits", "volume", name, "err", err)
		}
		log.Info("deleted volume", "name", name, "disconnected", n)
		writeJSON(w, http.StatusOK, control.DeleteReply{Disconnected: n})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/resize", func(w http.ResponseWriter, r *http.Request) {
		var req control.ResizeRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		name := r.PathValue("name")
		if err := d.pool.ResizeVolume(name, req.Size, req.Force); err != nil {
			writeErr(w, err)
			return
		}
		info, err := d.pool.VolumeInfo(name)
		if err != nil {
			writeErr(w, err)
			return
		}
		log.Info("resized volume", "name", name, "size", units.FormatSize(req.Size))
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		conns := d.nbd.Connections()
		if conns == nil {
			conns = []control.Connection{}
		}
		o := d.opts
		writeJSON(w, http.StatusOK, control.Status{
			Version: o.Version, PID: os.Getpid(), DataDir: o.Dir, Started: d.started,
			NBDSocket: o.NBDSocket, NBDListen: o.NBDListen, Control: o.ControlSocket,
			Pool: d.pool.Stats(), Volumes: d.pool.Volumes(), Connections: conns,
			Retention: o.Pool.RetentionTime, RetainSize: o.Pool.RetentionSize,
			HistoryCut: d.pool.HistoryCut(), LastGC: d.lastGC(), Replication: d.repl.statuses(r.Context()),
			Capacity: new(d.capacity.forecast()),
			Scrub:    d.scrub.status(),
			QoS:      d.qos.all(),
		})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		var req control.SnapshotRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if req.Quiesce != nil {
			if err := req.Quiesce.Validate(); err != nil {
				writeErr(w, err)
				return
			}
		}
		sn, warning, err := quiescedSnapshot(r.Context(), d.pool, log, r.PathValue("name"), req.Name, cow.SnapshotOptions{Label: req.Label}, req.Quiesce)
		if err != nil {
			writeErr(w, err)
			return
		}
		log.Info("created snapshot", "volume", r.PathValue("name"), "name", sn.Name, "seq", sn.Seq, "app_consistent", sn.AppConsistent)
		writeJSON(w, http.StatusCreated, control.SnapshotCreated{Snapshot: sn, Warning: warning})
	})
	mux.HandleFunc("GET /v1/volumes/{name}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		snaps, err := d.pool.Snapshots(name)
		if err != nil {
			writeErr(w, err)
			return
		}
		out := make([]control.SnapshotInfo, 0, len(snaps))
		var excl map[string]int64
		if len(snaps) > 0 && r.URL.Query().Get("space") != "0" {
			sp, err := d.pool.Space()
			if err != nil {
				writeErr(w, err)
				return
			}
			for _, vs := range sp.Volumes {
				if vs.Name == name {
					excl = vs.SnapshotExclusive
				}
			}
		}
		for _, sn := range snaps {
			out = append(out, control.SnapshotInfo{Snapshot: sn, Exclusive: excl[sn.Name]})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}/snapshots/{snap}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.pool.DeleteSnapshot(r.PathValue("name"), r.PathValue("snap")); err != nil {
			writeErr(w, err)
			return
		}
		log.Info("deleted snapshot", "volume", r.PathValue("name"), "name", r.PathValue("snap"))
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/rollback", func(w http.ResponseWriter, r *http.Request) {
		var req control.RollbackRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		pt, err := d.pool.Rollback(r.PathValue("name"), req.To, req.Force)
		if err != nil {
			writeErr(w, err)
			return
		}
		log.Info("rolled back volume", "volume", r.PathValue("name"), "to", req.To, "seq", pt.Seq)
		writeJSON(w, http.StatusOK, pt)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/settings", func(w http.ResponseWriter, r *http.Request) {
		var req control.SettingsRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if req.Allow != nil || req.AllowCert != nil {
			if err := d.setAccess(r.PathValue("name"), req.Allow, req.AllowCert); err != nil {
				writeErr(w, err)
				return
			}
			log.Info("set volume access", "volume", r.PathValue("name"), "rules", d.access.rules(r.PathValue("name")))
		}
		if !req.MetaChange.Empty() {
			if _, err := d.pool.VolumeInfo(r.PathValue("name")); err != nil {
				writeErr(w, err)
				return
			}
			if err := d.capacity.setMeta(r.PathValue("name"), req.MetaChange); err != nil {
				writeErr(w, err)
				return
			}
		}
		if req.QoS != nil {
			q, err := d.setQoS(r.PathValue("name"), *req.QoS)
			if err != nil {
				writeErr(w, err)
				return
			}
			log.Info("set volume QoS", "volume", r.PathValue("name"), "limits", q)
		}
		if req.Retention != nil {
			if err := d.pool.SetRetention(r.PathValue("name"), *req.Retention); err != nil {
				writeErr(w, err)
				return
			}
		}
		if req.ReadOnly != nil {
			if err := d.pool.SetReadOnly(r.PathValue("name"), *req.ReadOnly); err != nil {
				writeErr(w, err)
				return
			}
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("GET /v1/volumes/{name}/history", func(w http.ResponseWriter, r *http.Request) {
		n, _ := strconv.Atoi(r.URL.Query().Get("buckets"))
		h, err := d.pool.History(r.PathValue("name"), n)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, h)
	})
	mux.HandleFunc("POST /v1/clones", func(w http.ResponseWriter, r *http.Request) {
		var req control.CloneRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		vol, point, ok := cow.ParsePoint(req.Source)
		if !ok {
			writeErr(w, fmt.Errorf("%w: the source must be VOL@POINT (a snapshot, an RFC 3339 time or seq:N), got %q", errBadRequest, req.Source))
			return
		}
		info, err := d.pool.Clone(vol, point, req.Name)
		if err != nil {
			writeErr(w, err)
			return
		}
		if err := d.capacity.inherit(vol, req.Name); err != nil {
			log.Error("giving a clone its source's owner and labels", "volume", req.Name, "err", err)
		}
		log.Info("cloned volume", "source", req.Source, "name", req.Name)
		d.defaultQoS(req.Name)
		writeJSON(w, http.StatusCreated, info)
	})
	mux.HandleFunc("GET /v1/df", func(w http.ResponseWriter, r *http.Request) {
		sp, err := d.pool.Space()
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, sp)
	})
	mux.HandleFunc("POST /v1/gc", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.pool.GC(r.Context())
		d.noteGC(st, err)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, st)
	})
	d.replicationHandlers(mux)
	d.mirrorHandlers(mux)
	d.scheduleHandlers(mux)
	d.capacityHandlers(mux)
	d.scrubHandlers(mux)
	mux.Handle("GET /metrics", d.metricsHandler())
	// Profiles of the running daemon, for performance work:
	// curl --unix-socket DATA/control.sock http://strata/debug/pprof/profile?seconds=10 > cpu.prof
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

func (d *Daemon) noteGC(st cow.GCStats, err error) {
	r := &control.GCReport{At: time.Now().UTC(), Stats: st}
	if err != nil {
		r.Error = control.UserMessage(err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.gc = r
}

// lastGC is the newer of the last background and manual passes.
func (d *Daemon) lastGC() *control.GCReport {
	d.mu.Lock()
	defer d.mu.Unlock()
	if g := d.pool.LastGC(); g != nil && (d.mu.gc == nil || g.At.After(d.mu.gc.At)) {
		return &control.GCReport{At: g.At, Stats: g.Stats, Error: g.Error}
	}
	return d.mu.gc
}
