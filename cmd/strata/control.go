package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/cdp"
	"github.com/strata-storage/strata/cow"
)

// The control API: JSON over HTTP on the control socket (mode 0600, so only
// the daemon's user and root can use it).
//
//	GET    /v1/volumes                      -> []cow.VolumeInfo
//	POST   /v1/volumes        {name, size}  -> cow.VolumeInfo
//	DELETE /v1/volumes/NAME?force=1
//	POST   /v1/volumes/NAME/resize {size, force}
//	GET    /v1/status                       -> statusReply
//	POST   /v1/volumes/NAME/snapshots {name, label} -> cow.Snapshot
//	GET    /v1/volumes/NAME/snapshots       -> []snapshotInfo
//	DELETE /v1/volumes/NAME/snapshots/SNAP
//	POST   /v1/volumes/NAME/rollback {to, force} -> cow.Point
//	POST   /v1/volumes/NAME/settings {retention}
//	GET    /v1/volumes/NAME/history?buckets=N -> cow.History
//	POST   /v1/clones {source: "VOL@POINT", name} -> cow.VolumeInfo
//	GET    /v1/df                           -> cow.Space
//	POST   /v1/gc                           -> cow.GCStats
//	GET    /metrics                         -> Prometheus text format
//	GET    /debug/pprof/...                 -> Go profiles (net/http/pprof)
//
// Errors are {"error": "...", "code": "..."} with a matching HTTP status.

type apiError struct {
	Error string `json:"error"`
	Code  string `json:"code"`
}

type createRequest struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
}

type resizeRequest struct {
	Size  int64 `json:"size"`
	Force bool  `json:"force"`
}

type snapshotRequest struct {
	Name  string `json:"name"`
	Label string `json:"label"`
}

type snapshotInfo struct {
	cow.Snapshot
	Exclusive int64 `json:"exclusive"` // bytes only this snapshot holds
}

type rollbackRequest struct {
	To    string `json:"to"`
	Force bool   `json:"force"`
}

type settingsRequest struct {
	Retention *time.Duration `json:"retention"`
	ReadOnly  *bool          `json:"read_only"`
}

type cloneRequest struct {
	Source string `json:"source"`
	Name   string `json:"name"`
}

type deleteReply struct {
	Disconnected int `json:"disconnected"`
}

type statusReply struct {
	Version     string           `json:"version"`
	PID         int              `json:"pid"`
	DataDir     string           `json:"data_dir"`
	Started     time.Time        `json:"started"`
	NBDSocket   string           `json:"nbd_socket,omitempty"`
	NBDListen   string           `json:"nbd_listen,omitempty"`
	Control     string           `json:"control_socket"`
	Pool        cow.Stats        `json:"pool"`
	Retention   time.Duration    `json:"retention"`
	RetainSize  int64            `json:"retention_size,omitempty"`
	HistoryCut  time.Time        `json:"history_cut,omitzero"`
	LastGC      *gcReport        `json:"last_gc,omitempty"`
	Volumes     []cow.VolumeInfo `json:"volumes"`
	Connections []nbd.ConnInfo   `json:"connections"`
	Replication []replStatus     `json:"replication,omitempty"`
}

// errorCode classifies an error for the API (and so the CLI's exit).
func errorCode(err error) (int, string) {
	switch {
	case errors.Is(err, blockdev.ErrNotFound):
		return http.StatusNotFound, "not_found"
	case errors.Is(err, cow.ErrExists):
		return http.StatusConflict, "exists"
	case errors.Is(err, cow.ErrBusy):
		return http.StatusConflict, "busy"
	case errors.Is(err, cow.ErrShrinkData):
		return http.StatusConflict, "shrink_data"
	case errors.Is(err, cow.ErrPoint):
		return http.StatusUnprocessableEntity, "point"
	case errors.Is(err, cow.ErrInvalidName), errors.Is(err, cow.ErrInvalidSize), errors.Is(err, errBadRequest):
		return http.StatusBadRequest, "invalid"
	case errors.Is(err, blockdev.ErrNoSpace):
		return http.StatusInsufficientStorage, "no_space"
	case errors.Is(err, cdp.ErrFailed), errors.Is(err, blockdev.ErrIO):
		return http.StatusInternalServerError, "io"
	}
	return http.StatusInternalServerError, "internal"
}

var errBadRequest = errors.New("bad request")

// userMessage drops the package prefixes ("cow: ", "blockdev: ") that error
// classes carry for developers; users read the rest.
func userMessage(err error) string {
	msg := err.Error()
	for _, p := range []string{"cow: ", "blockdev: ", "cdp: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return msg
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	status, code := errorCode(err)
	writeJSON(w, status, apiError{Error: userMessage(err), Code: code})
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", errBadRequest, err)
	}
	return nil
}

func (d *daemon) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.pool.Volumes())
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var req createRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		info, err := d.pool.CreateVolume(req.Name, req.Size)
		if err != nil {
			writeErr(w, err)
			return
		}
		d.cfg.log.Info("created volume", "name", req.Name, "size", formatSize(req.Size))
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
		d.cfg.log.Info("deleted volume", "name", name, "disconnected", n)
		writeJSON(w, http.StatusOK, deleteReply{Disconnected: n})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/resize", func(w http.ResponseWriter, r *http.Request) {
		var req resizeRequest
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
		d.cfg.log.Info("resized volume", "name", name, "size", formatSize(req.Size))
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		conns := d.nbd.Connections()
		if conns == nil {
			conns = []nbd.ConnInfo{}
		}
		writeJSON(w, http.StatusOK, statusReply{
			Version: version, PID: os.Getpid(), DataDir: d.cfg.dataDir, Started: d.started,
			NBDSocket: d.cfg.nbdSocket, NBDListen: d.cfg.listen, Control: d.cfg.controlSocket,
			Pool: d.pool.Stats(), Volumes: d.pool.Volumes(), Connections: conns,
			Retention: d.cfg.pool.RetentionTime, RetainSize: d.cfg.pool.RetentionSize,
			HistoryCut: d.pool.HistoryCut(), LastGC: d.lastGC(), Replication: d.repl.statuses(r.Context()),
		})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		var req snapshotRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		sn, err := d.pool.CreateSnapshot(r.PathValue("name"), req.Name, req.Label)
		if err != nil {
			writeErr(w, err)
			return
		}
		d.cfg.log.Info("created snapshot", "volume", r.PathValue("name"), "name", sn.Name, "seq", sn.Seq)
		writeJSON(w, http.StatusCreated, sn)
	})
	mux.HandleFunc("GET /v1/volumes/{name}/snapshots", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		snaps, err := d.pool.Snapshots(name)
		if err != nil {
			writeErr(w, err)
			return
		}
		out := make([]snapshotInfo, 0, len(snaps))
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
			out = append(out, snapshotInfo{Snapshot: sn, Exclusive: excl[sn.Name]})
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("DELETE /v1/volumes/{name}/snapshots/{snap}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.pool.DeleteSnapshot(r.PathValue("name"), r.PathValue("snap")); err != nil {
			writeErr(w, err)
			return
		}
		d.cfg.log.Info("deleted snapshot", "volume", r.PathValue("name"), "name", r.PathValue("snap"))
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/rollback", func(w http.ResponseWriter, r *http.Request) {
		var req rollbackRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		pt, err := d.pool.Rollback(r.PathValue("name"), req.To, req.Force)
		if err != nil {
			writeErr(w, err)
			return
		}
		d.cfg.log.Info("rolled back volume", "volume", r.PathValue("name"), "to", req.To, "seq", pt.Seq)
		writeJSON(w, http.StatusOK, pt)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/settings", func(w http.ResponseWriter, r *http.Request) {
		var req settingsRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
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
		var req cloneRequest
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
		d.cfg.log.Info("cloned volume", "source", req.Source, "name", req.Name)
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
	mux.HandleFunc("GET /metrics", d.metrics)
	// Profiles of the running daemon, for performance work:
	// curl --unix-socket DATA/control.sock http://strata/debug/pprof/profile?seconds=10 > cpu.prof
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

// client talks to a running daemon over its control socket.
type client struct {
	socket string
	http   *http.Client
}

func newClient(socket string) *client {
	return &client{socket: socket, http: &http.Client{
		Timeout: 5 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// errNoDaemon: nothing listens on the control socket.
var errNoDaemon = errors.New("strata daemon not reachable")

func (c *client) do(method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://strata"+path, rd)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: no strata serve answers on %s (%v); start one with `strata serve`, or point at it with --data, --control-socket or STRATA_CONTROL",
			errNoDaemon, c.socket, rootCause(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read reply from daemon: %w", err)
	}
	if resp.StatusCode >= 300 {
		var ae apiError
		if json.Unmarshal(b, &ae) == nil && ae.Error != "" {
			return errors.New(ae.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out != nil {
		return json.Unmarshal(b, out)
	}
	return nil
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// gcReport is the last garbage collection pass, for status.
type gcReport struct {
	At    time.Time   `json:"at"`
	Stats cow.GCStats `json:"stats"`
	Error string      `json:"error,omitempty"`
}

var gcMu sync.Mutex

func (d *daemon) noteGC(st cow.GCStats, err error) {
	gcMu.Lock()
	defer gcMu.Unlock()
	r := &gcReport{At: time.Now().UTC(), Stats: st}
	if err != nil {
		r.Error = userMessage(err)
	}
	d.gc = r
}

func (d *daemon) lastGC() *gcReport {
	gcMu.Lock()
	defer gcMu.Unlock()
	if g := d.pool.LastGC(); g != nil && (d.gc == nil || g.At.After(d.gc.At)) {
		return &gcReport{At: g.At, Stats: g.Stats, Error: g.Error}
	}
	return d.gc
}
