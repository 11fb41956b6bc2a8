package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/replica"
)

// openTarget makes the target t names, and says the volume's name there.
func openTarget(t control.TargetSpec, vol string) (replica.Target, string, error) {
	switch {
	case strings.HasPrefix(t.To, "strata://"):
		addr, remote, err := replica.ParseStrataURL(t.To)
		if err != nil {
			return nil, "", err
		}
		if remote == "" {
			remote = vol
		}
		if t.TokenFile == "" {
			return nil, "", fmt.Errorf("%w: strata:// targets need --token-file (a file holding the token the target's --replica-token-file holds)", errBadRequest)
		}
		token, err := readToken(t.TokenFile)
		if err != nil {
			return nil, "", err
		}
		o := replica.RemoteOptions{Addr: addr, Token: token}
		switch {
		case t.TLSCA != "":
			b, err := os.ReadFile(t.TLSCA)
			if err != nil {
				return nil, "", fmt.Errorf("--tls-ca: %w", err)
			}
			roots := x509.NewCertPool()
			if !roots.AppendCertsFromPEM(b) {
				return nil, "", fmt.Errorf("--tls-ca %s: no PEM certificate in it", t.TLSCA)
			}
			host := addr
			if i := strings.LastIndex(addr, ":"); i >= 0 {
				host = strings.Trim(addr[:i], "[]")
			}
			o.TLS = &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
		case replica.IsLoopback(addr) || t.Insecure:
			// Plaintext: loopback, or the user said so.
		default:
			host := addr[:strings.LastIndex(addr, ":")]
			o.TLS = &tls.Config{ServerName: strings.Trim(host, "[]"), MinVersion: tls.VersionTLS12}
		}
		return replica.NewRemote(o), remote, nil
	case strings.HasPrefix(t.To, "s3://"):
		s3, err := replica.ParseS3Targets(t.To, t.EC)
		if err != nil {
			return nil, "", err
		}
		return s3, vol, nil
	}
	return nil, "", fmt.Errorf("%w: target %q: use strata://HOST:PORT[/VOLUME] or s3://BUCKET/PREFIX[,s3://...]", errBadRequest, t.To)
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 8 {
		return "", fmt.Errorf("token file %s holds %d characters; use at least 8 (e.g. head -c 24 /dev/urandom | base64 > %s)", path, len(tok), path)
	}
	return tok, nil
}

// replManager runs shipping for the daemon: --once runs and configured
// continuous or interval replications.
type replManager struct {
	pool *cow.Pool
	log  *slog.Logger
	path string // DATA/replication.json

	mu      sync.Mutex
	running map[string]*shipRun // by pin id
	entries map[string]*control.Replication
	status  map[string]*control.ReplicationStatus
	stops   map[string]context.CancelFunc
	wg      sync.WaitGroup
}

func newReplManager(pool *cow.Pool, log *slog.Logger, path string) (*replManager, error) {
	m := &replManager{pool: pool, log: log, path: path, running: map[string]*shipRun{},
		status: map[string]*control.ReplicationStatus{}, stops: map[string]context.CancelFunc{}}
	var err error
	if m.entries, err = loadEntries(path, func(e *control.Replication) string { return e.ID }); err != nil {
		return nil, err
	}
	for _, e := range m.entries {
		m.start(e)
	}
	return m, nil
}

// saveLocked writes the entries: temp file, fsync, rename, fsync the
// directory.
func (m *replManager) saveLocked() error { return saveEntries(m.path, m.entries) }

func (m *replManager) close() {
	m.mu.Lock()
	for _, stop := range m.stops {
		stop()
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// shipRun is a run that holds its volume and target's slot.
type shipRun struct {
	since time.Time
	ctx   context.Context // ends when the run is cancelled: its client went away, or the daemon stops
	done  chan struct{}   // closed once the run has ended and left the slot
}

// A run whose context has ended is on its way out; a run of the same pair
// that finds it waits for it rather than answering busy. goneGrace is how
// long a run that still looks alive is given to show it is not (the daemon
// notices a client killed with kill -9 a moment after its connection
// closes); stopWait bounds the wait for a cancelled run to end.
const (
	goneGrace = 500 * time.Millisecond
	stopWait  = 30 * time.Second
)

// acquire takes the slot of the pair (vol, t) for a run that lives as long
// as ctx, waiting out a run that is ending; release gives it back. The slot
// is the pair's SlotID: one target spelled two ways is one slot.
func (m *replManager) acquire(ctx context.Context, vol string, t control.TargetSpec) (release func(), err error) {
	id := control.SlotID(vol, t)
	for {
		m.mu.Lock()
		cur := m.running[id]
		if cur == nil {
			r := &shipRun{since: time.Now(), ctx: ctx, done: make(chan struct{})}
			m.running[id] = r
			m.mu.Unlock()
			return func() {
				m.mu.Lock()
				delete(m.running, id)
				m.mu.Unlock()
				close(r.done)
			}, nil
		}
		m.mu.Unlock()
		busy := fmt.Errorf("%w: a replication of %s to %s has been running since %s", replica.ErrBusy, vol, t.Redacted(), cur.since.Format(time.RFC3339))
		select {
		case <-cur.ctx.Done():
		case <-time.After(goneGrace):
			return nil, busy
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		select {
		case <-cur.done:
		case <-time.After(stopWait):
			return nil, fmt.Errorf("%w; it was cancelled %s ago and has not stopped", busy, stopWait)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// run ships vol to t once, holding the pair's slot until it ends. The run
// lives as long as ctx: a --once run's is its request's, so a client that
// disconnects (or is killed) cancels its run, and a rerun goes on from the
// point the target holds.
func (m *replManager) run(ctx context.Context, vol string, t control.TargetSpec, progress func(replica.Progress)) (replica.Result, error) {
	if err := checkRetention(t); err != nil {
		return replica.Result{}, err
	}
	id := control.ReplicationID(vol, t)
	release, err := m.acquire(ctx, vol, t)
	if err != nil {
		return replica.Result{}, err
	}
	defer release()
	m.mu.Lock()
	st := m.statusLocked(id, vol, t, "")
	st.Running, st.LastRun = true, time.Now().UTC()
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.status[id].Running = false
		m.mu.Unlock()
	}()
	tgt, remote, err := openTarget(t, vol)
	var res replica.Result
	if err == nil {
		res, err = replica.Ship(ctx, replica.ShipOptions{Pool: m.pool, Volume: vol, RemoteName: remote, Target: tgt, PinID: id,
			BWLimit: t.BWLimit, Progress: progress, Logger: m.log})
		if s3, ok := tgt.(*replica.S3); ok && err == nil && t.HasRetention() {
			// The policy applies after every run, in the run's slot:
			// no other run writes the manifest meanwhile.
			c, cerr := s3.Compact(ctx, remote, replica.CompactOptions{Retention: retention(t)})
			switch {
			case cerr != nil:
				res.Message = strings.TrimPrefix(res.Message+"; ", "; ") + "warning: the retention policy was not applied: " + cerr.Error()
			case c.Written > 0 || c.Deleted > 0 || c.Leftovers > 0:
				res.Compacted = &c
				m.log.Info("replication: compacted S3 history", "volume", vol, "target", t.Redacted(), "policy", c.Policy,
					"objects_written", c.Written, "objects_deleted", c.Deleted, "batches", c.BatchesAfter, "bytes", c.BytesAfter,
					"oldest_seq", c.OldestSeq, "oldest_time", c.OldestTime)
			}
		}
		tgt.Close()
	}
	if res.Message != "" {
		// What the target did or found on open (a replica created, a
		// failback accepted, shards rebuilt, objects lost).
		level := slog.LevelInfo
		if strings.Contains(res.Message, "warning") || strings.Contains(res.Message, "lost") {
			level = slog.LevelWarn
		}
		m.log.Log(context.Background(), level, "replication: "+res.Message, "volume", vol, "target", t.Redacted())
	}
	m.mu.Lock()
	st = m.status[id]
	st.Shipped += res.DataBytes
	if err != nil {
		st.LastError = control.UserMessage(err)
	} else {
		st.LastError, st.LastOK = "", time.Now().UTC()
	}
	m.mu.Unlock()
	return res, err
}

func (m *replManager) statusLocked(id, vol string, t control.TargetSpec, mode string) *control.ReplicationStatus {
	st := m.status[id]
	if st == nil {
		st = &control.ReplicationStatus{ID: id, Volume: vol, Target: t.Redacted(), Mode: "once"}
		m.status[id] = st
	}
	if mode != "" {
		st.Mode = mode
	}
	return st
}

// start runs a configured replication in the background.
func (m *replManager) start(e *control.Replication) {
	ctx, cancel := context.WithCancel(context.Background())
	m.mu.Lock()
	m.stops[e.ID] = cancel
	m.statusLocked(e.ID, e.Volume, e.TargetSpec, e.Mode)
	m.mu.Unlock()
	log := m.log.With("volume", e.Volume, "target", e.Redacted())
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		backoff := time.Second
		var acked uint64 // what the last good run left the target at
		var lastRun time.Time
		failed := false
		for {
			// A run is due when the volume changed since the point the
			// target holds (not when other volumes did), and now and then
			// to move an idle volume's target along.
			last, lerr := m.pool.LastChange(e.Volume)
			var err error
			if e.Mode == "interval" || failed || lerr != nil || last > acked || time.Since(lastRun) >= replica.DefaultIdleAdvance {
				var res replica.Result
				res, err = m.run(ctx, e.Volume, e.TargetSpec, nil)
				failed = err != nil
				if err == nil {
					acked, lastRun = res.Acked, time.Now()
					backoff = time.Second
					if res.Batches > 0 {
						log.Debug("replication: shipped", "records", res.Records, "bytes", res.DataBytes, "acked", res.Acked)
					}
				} else if ctx.Err() == nil {
					log.Warn("replication failed; retrying", "err", err, "in", backoff)
				}
			}
			wait := 200 * time.Millisecond
			switch {
			case err != nil:
				wait = backoff
				backoff = min(2*backoff, 30*time.Second)
			case e.Mode == "interval":
				wait = e.Every
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
	}()
}

// statuses reports every target with its lag.
func (m *replManager) statuses(ctx context.Context) []control.ReplicationStatus {
	pins := m.pool.ShipPins()
	m.mu.Lock()
	for id := range pins {
		if m.status[id] == nil {
			vol, target, _ := strings.Cut(id, " -> ")
			m.status[id] = &control.ReplicationStatus{ID: id, Volume: vol, Target: target, Mode: "once"}
		}
	}
	out := make([]control.ReplicationStatus, 0, len(m.status))
	for _, st := range m.status {
		out = append(out, *st)
	}
	m.mu.Unlock()
	for i := range out {
		st := &out[i]
		pin, ok := pins[st.ID]
		if !ok {
			continue
		}
		st.Acked = pin.Seq
		n, b, oldest, err := m.pool.Pending(ctx, st.Volume, pin.Floor())
		if err != nil {
			if errors.Is(err, cow.ErrHistoryGone) && st.LastError == "" {
				st.LastError = "the journal no longer holds every unshipped record; the next run copies the difference"
			}
			continue
		}
		st.LagRecords, st.LagBytes = n, b
		if n > 0 {
			st.LagSeconds = time.Since(oldest).Seconds()
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out
}

func (m *replManager) add(req control.AddReplicationRequest) (*control.Replication, error) {
	if _, err := m.pool.VolumeInfo(req.Volume); err != nil {
		return nil, err
	}
	e := &control.Replication{Volume: req.Volume, TargetSpec: req.TargetSpec, Mode: req.Mode}
	switch req.Mode {
	case "", "continuous":
		e.Mode = "continuous"
	case "interval":
		d, err := units.ParseDuration(req.Every)
		if err != nil || d < time.Second {
			return nil, fmt.Errorf("%w: --every %q: use a duration of a second or more, e.g. 5m", errBadRequest, req.Every)
		}
		e.Every = d
	default:
		return nil, fmt.Errorf("%w: --mode %q: use continuous or interval", errBadRequest, req.Mode)
	}
	if err := checkRetention(req.TargetSpec); err != nil {
		return nil, err
	}
	// Check the target parses (and its token reads) before saving it.
	if t, _, err := openTarget(req.TargetSpec, req.Volume); err != nil {
		return nil, err
	} else {
		t.Close()
	}
	e.ID = control.ReplicationID(req.Volume, req.TargetSpec)
	m.mu.Lock()
	if m.entries[e.ID] != nil {
		m.mu.Unlock()
		return nil, fmt.Errorf("replication %s %w", e.ID, cow.ErrExists)
	}
	m.entries[e.ID] = e
	err := m.saveLocked()
	if err != nil {
		delete(m.entries, e.ID)
	}
	m.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("save %s: %w", m.path, err)
	}
	m.start(e)
	m.log.Info("replication added", "id", e.ID, "mode", e.Mode)
	return e, nil
}

// remove stops a configured replication and drops its pin (the journal no
// longer keeps records for it). It also drops the pin of a --once target.
func (m *replManager) remove(id string) error {
	m.mu.Lock()
	e := m.entries[id]
	_, pinned := m.pool.ShipPins()[id]
	if e == nil && !pinned && m.status[id] == nil {
		var ids []string
		for k := range m.status {
			ids = append(ids, fmt.Sprintf("%q", k))
		}
		m.mu.Unlock()
		return fmt.Errorf("%w: no replication %q; `strata replication list` shows them (%s)", blockdev.ErrNotFound, id, strings.Join(ids, ", "))
	}
	if e != nil {
		delete(m.entries, id)
		if err := m.saveLocked(); err != nil {
			m.entries[id] = e
			m.mu.Unlock()
			return err
		}
		if stop := m.stops[id]; stop != nil {
			stop()
			delete(m.stops, id)
		}
	}
	delete(m.status, id)
	m.mu.Unlock()
	return m.pool.UnpinShipped(id)
}

// The control API's replication handlers.

// replErrorClasses classify the errors of replication requests: the
// replica's classes first.
var replErrorClasses = append([]errorClass{
	{replica.ErrBusy, http.StatusConflict, control.CodeBusy},
	{replica.ErrAuth, http.StatusForbidden, control.CodeAuth},
	{replica.ErrRefused, http.StatusConflict, control.CodeRefused},
	{replica.ErrNoSpace, http.StatusInsufficientStorage, control.CodeNoSpace},
	{replica.ErrCorrupt, http.StatusBadGateway, control.CodeCorrupt},
	{replica.ErrNotFound, http.StatusNotFound, control.CodeNotFound},
}, errorClasses...)

// streamer writes NDJSON events as they happen.
type streamer struct {
	w  http.ResponseWriter
	mu sync.Mutex
}

func newStreamer(w http.ResponseWriter) *streamer {
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	return &streamer{w: w}
}

func (s *streamer) send(ev control.Event) {
	s.mu.Lock()
	defer s.mu.Unlock()
	json.NewEncoder(s.w).Encode(ev)
	if f, ok := s.w.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *streamer) fail(err error) {
	_, code := errorCode(err, replErrorClasses)
	s.send(control.Event{Error: control.UserMessage(err), Code: code})
}

func (d *Daemon) replicationHandlers(mux *http.ServeMux) {
	m, log := d.repl, d.opts.Logger
	mux.HandleFunc("POST /v1/replicate", func(w http.ResponseWriter, r *http.Request) {
		var req control.ReplicateRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if _, err := d.pool.VolumeInfo(req.Volume); err != nil {
			writeErr(w, err)
			return
		}
		s := newStreamer(w)
		last := time.Time{}
		// The run lives as long as the request: a client that goes away,
		// even killed with kill -9, cancels it and frees its slot.
		res, err := m.run(r.Context(), req.Volume, req.TargetSpec, func(p replica.Progress) {
			if time.Since(last) > 200*time.Millisecond {
				last = time.Now()
				s.send(control.Event{Progress: &p})
			}
		})
		if err != nil && r.Context().Err() != nil {
			log.Info("replicate --once cancelled: its client went away; a rerun goes on from the point the target holds",
				"volume", req.Volume, "target", req.Redacted(), "acked", res.Acked)
			return
		}
		if err != nil {
			log.Warn("replicate --once failed", "volume", req.Volume, "target", req.Redacted(), "err", err)
			s.fail(err)
			return
		}
		log.Info("replicated", "volume", req.Volume, "target", req.Redacted(), "records", res.Records, "bytes", res.DataBytes, "acked", res.Acked)
		s.send(control.Event{Result: &res})
	})
	mux.HandleFunc("POST /v1/s3/compact", func(w http.ResponseWriter, r *http.Request) {
		var req control.CompactRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		s := newStreamer(w)
		last := time.Time{}
		c, err := m.compact(r.Context(), req, func(p replica.CompactProgress) {
			if time.Since(last) > 200*time.Millisecond {
				last = time.Now()
				s.send(control.Event{Progress: &replica.Progress{Phase: "compact " + p.Step, Batches: p.Objects + p.Deleted}})
			}
		})
		if err != nil {
			s.fail(err)
			return
		}
		s.send(control.Event{Compact: &c})
	})
	mux.HandleFunc("GET /v1/replication", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.statuses(r.Context()))
	})
	mux.HandleFunc("POST /v1/replication", func(w http.ResponseWriter, r *http.Request) {
		var req control.AddReplicationRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		e, err := m.add(req)
		if err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusCreated, e)
	})
	mux.HandleFunc("DELETE /v1/replication", func(w http.ResponseWriter, r *http.Request) {
		if err := m.remove(r.URL.Query().Get("id")); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /v1/volumes/{name}/promote", func(w http.ResponseWriter, r *http.Request) {
		st, err := replica.Promote(r.Context(), d.pool, r.PathValue("name"))
		if err != nil {
			writeClassified(w, err, replErrorClasses)
			return
		}
		log.Info("promoted replica", "volume", r.PathValue("name"), "source_seq", st.Acked)
		writeJSON(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /v1/volumes/{name}/demote", func(w http.ResponseWriter, r *http.Request) {
		var req control.DemoteRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		msg, err := replica.Demote(r.Context(), d.pool, r.PathValue("name"), req.DiscardLocal)
		if err != nil {
			writeClassified(w, err, replErrorClasses)
			return
		}
		log.Info("demoted", "volume", r.PathValue("name"), "discard_local", req.DiscardLocal)
		writeJSON(w, http.StatusOK, control.DemoteReply{Message: msg})
	})
	mux.HandleFunc("POST /v1/restore", func(w http.ResponseWriter, r *http.Request) {
		var req control.RestoreRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if err := cow.ValidateName(req.New); err != nil {
			writeErr(w, err)
			return
		}
		if _, err := d.pool.VolumeInfo(req.New); err == nil {
			writeErr(w, fmt.Errorf("volume %q %w here; restore into a new name", req.New, cow.ErrExists))
			return
		}
		s := newStreamer(w)
		res, err := d.restore(r.Context(), req, func(p replica.Progress) { s.send(control.Event{Progress: &p}) })
		if err != nil {
			s.fail(err)
			return
		}
		log.Info("restored volume", "volume", req.New, "from", req.Redacted(), "at", res.Point)
		s.send(control.Event{Restore: &res})
	})
}

// retention is an S3 target's retention policy: the schedule's keep
// rules thin the points older than the window.
func retention(t control.TargetSpec) replica.Retention {
	r := replica.Retention{Window: t.KeepHistory, Policy: t.RetentionPolicy()}
	if t.Keep != nil {
		k := *t.Keep
		r.Keep = func(times []time.Time) []bool { return thin(times, k) }
	}
	return r
}

// checkRetention refuses a retention policy on a target that is not S3.
func checkRetention(t control.TargetSpec) error {
	if t.HasRetention() && !strings.HasPrefix(t.To, "s3://") {
		return fmt.Errorf("%w: --keep-history and --keep apply to s3:// targets (a strata:// site keeps its own history: its --retention and schedules)", errBadRequest)
	}
	if t.Keep != nil && t.Keep.IsZero() {
		return fmt.Errorf("%w: --keep keeps nothing", errBadRequest)
	}
	return nil
}

// compact applies an S3 target's retention policy by hand, in the slot
// of the volume and target's replication.
func (m *replManager) compact(ctx context.Context, req control.CompactRequest, progress func(replica.CompactProgress)) (replica.Compacted, error) {
	t := req.TargetSpec
	if !strings.HasPrefix(t.To, "s3://") {
		return replica.Compacted{}, fmt.Errorf("%w: compaction applies to s3:// targets, not %s", errBadRequest, t.Redacted())
	}
	id := control.ReplicationID(req.Volume, t)
	if !t.HasRetention() {
		m.mu.Lock()
		e := m.entries[id]
		m.mu.Unlock()
		if e == nil || !e.HasRetention() {
			return replica.Compacted{}, fmt.Errorf("%w: no retention policy: give --keep-history (e.g. 7d) and/or --keep (e.g. daily=14,weekly=8), or configure one with strata replication add ... --keep-history", errBadRequest)
		}
		t.KeepHistory, t.Keep = e.KeepHistory, e.Keep
	}
	if err := checkRetention(t); err != nil {
		return replica.Compacted{}, err
	}
	release, err := m.acquire(ctx, req.Volume, t)
	if err != nil {
		return replica.Compacted{}, err
	}
	defer release()
	tgt, remote, err := openTarget(t, req.Volume)
	if err != nil {
		return replica.Compacted{}, err
	}
	defer tgt.Close()
	c, err := tgt.(*replica.S3).Compact(ctx, remote, replica.CompactOptions{Retention: retention(t), Progress: progress})
	if err != nil {
		return c, err
	}
	m.log.Info("compacted S3 history", "volume", req.Volume, "target", t.Redacted(), "policy", c.Policy,
		"objects_written", c.Written, "objects_deleted", c.Deleted, "leftovers", c.Leftovers, "batches", c.BatchesAfter, "bytes", c.BytesAfter,
		"oldest_seq", c.OldestSeq, "oldest_time", c.OldestTime)
	return c, nil
}

func (d *Daemon) restore(ctx context.Context, req control.RestoreRequest, progress func(replica.Progress)) (replica.Restored, error) {
	tgt, _, err := openTarget(req.TargetSpec, req.Volume)
	if err != nil {
		return replica.Restored{}, err
	}
	defer tgt.Close()
	return replica.Restore(ctx, replica.RestoreOptions{Pool: d.pool, From: tgt, Volume: req.Volume, At: req.At, NewName: req.New, Progress: progress})
}
