package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/replica"
)

// The scrubber runs cow's scrub passes: in the background every
// --scrub-interval at --scrub-rate, and when asked (`strata scrub --now`).
// A damaged block is healed from a replica site that holds it: the
// strata:// targets its volume replicates to, and the sites a --now pass
// names. The last pass's report is kept in DATA/scrub.json, so `strata
// scrub` shows it after a restart and the schedule counts from it.

// Scrub defaults.
const (
	DefaultScrubInterval = 7 * 24 * time.Hour
	DefaultScrubRate     = 64 << 20
)

type scrubManager struct {
	pool *cow.Pool
	// sites are the strata:// sites that hold a volume: its replication
	// targets and its mirror's other host.
	sites    func(vol string) []control.TargetSpec
	log      *slog.Logger
	path     string
	interval time.Duration
	rate     int64
	started  time.Time

	mu struct {
		sync.Mutex
		running *cow.ScrubProgress
		last    *cow.ScrubReport
		// The last pass that failed (not cancelled), if after last.
		failedAt time.Time
		failure  string
		// closing: close has begun; no pass starts any more.
		closing bool
	}
	// Since the daemon started, for the metrics.
	bytes, found, repaired atomic.Int64

	// wg counts the background loop and every pass running (background
	// or --now); ctx ends them all when the daemon shuts down.
	wg   sync.WaitGroup
	ctx  context.Context
	quit context.CancelFunc
}

func newScrubManager(pool *cow.Pool, sites func(string) []control.TargetSpec, log *slog.Logger, path string, interval time.Duration, rate int64) (*scrubManager, error) {
	m := &scrubManager{pool: pool, sites: sites, log: log, path: path, interval: interval, rate: rate, started: time.Now()}
	m.ctx, m.quit = context.WithCancel(context.Background())
	b, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	if len(b) > 0 {
		var r cow.ScrubReport
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		m.mu.last = &r
	}
	return m, nil
}

// start runs background passes every interval (none when it is 0).
func (m *scrubManager) start() {
	if m.interval <= 0 {
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		for {
			t := time.NewTimer(time.Until(m.next()))
			select {
			case <-m.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if _, err := m.run(m.ctx, control.ScrubRequest{}, nil); err != nil && m.ctx.Err() == nil {
				m.log.Warn("scrub: background pass failed", "err", err)
			}
		}
	}()
}

// next is when the next background pass is due: an interval after the last
// pass ended (or after the daemon started, when none has run).
func (m *scrubManager) next() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	from := m.started
	if m.mu.last != nil && !m.mu.last.Finished.IsZero() {
		from = m.mu.last.Finished
	}
	if m.mu.failedAt.After(from) {
		from = m.mu.failedAt // not at once again: an interval later (or --now)
	}
	return from.Add(m.interval)
}

// close cancels every pass, --now ones too (an HTTP server's Shutdown
// does not cancel its requests' contexts), and waits for them: the pool
// closes after.
func (m *scrubManager) close() {
	m.mu.Lock()
	m.mu.closing = true
	m.mu.Unlock()
	m.quit()
	m.wg.Wait()
}

func (m *scrubManager) status() *control.ScrubStatus {
	st := &control.ScrubStatus{Interval: m.interval, Rate: m.rate}
	if m.interval > 0 {
		st.Next = m.next().UTC()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mu.running != nil {
		p := *m.mu.running
		st.Running = &p
	}
	st.Last = m.mu.last
	if !m.mu.failedAt.IsZero() {
		st.LastError, st.LastErrorAt = m.mu.failure, m.mu.failedAt
	}
	return st
}

// run runs one pass; one at a time.
func (m *scrubManager) run(ctx context.Context, req control.ScrubRequest, progress func(cow.ScrubProgress)) (*cow.ScrubReport, error) {
	m.mu.Lock()
	if m.mu.closing {
		m.mu.Unlock()
		return nil, errScrubShutdown
	}
	if m.mu.running != nil {
		checked := m.mu.running.BytesChecked
		m.mu.Unlock()
		return nil, fmt.Errorf("%w: a scrub pass is running (%s checked so far); wait for it (strata scrub shows it)", cow.ErrBusy, units.FormatSize(checked))
	}
	m.mu.running = &cow.ScrubProgress{Phase: "starting"}
	m.wg.Add(1) // under mu, before close can wait
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.mu.running = nil
		m.mu.Unlock()
		m.wg.Done()
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(m.ctx, cancel)()
	rate := req.Rate
	switch {
	case rate == 0:
		rate = m.rate
	case rate < 0:
		rate = 0
	}
	var counted int64 // bytes added to the counter so far
	o := cow.ScrubOptions{Volume: req.Volume, Rate: rate, Progress: func(p cow.ScrubProgress) {
		m.bytes.Add(p.BytesChecked - counted)
		counted = p.BytesChecked
		m.mu.Lock()
		m.mu.running = &p
		m.mu.Unlock()
		if progress != nil {
			progress(p)
		}
	}}
	if !req.NoRepair {
		o.Fetch = m.fetcher(req.From)
	}
	m.log.Info("scrub: pass started", "volume", req.Volume, "rate", units.FormatSize(rate)+"/s")
	rep, err := m.pool.Scrub(ctx, o)
	if err != nil && m.ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", errScrubShutdown, err)
	}
	m.mu.Lock()
	if err != nil && ctx.Err() == nil {
		m.mu.failedAt, m.mu.failure = time.Now().UTC(), control.UserMessage(err)
	} else if err == nil {
		m.mu.failedAt, m.mu.failure = time.Time{}, ""
	}
	m.mu.Unlock()
	if rep == nil {
		return nil, err
	}
	m.bytes.Add(rep.BytesChecked - counted)
	m.found.Add(int64(rep.ErrorsFound()))
	m.repaired.Add(int64(rep.Repaired()))
	for _, d := range rep.Damaged {
		if d.Repaired {
			continue
		}
		m.log.Warn("scrub: damaged block: reads of it fail with an I/O error", "volume", d.Volume, "offset", d.Offset,
			"seq", d.Seq, "head", d.Head, "snapshots", strings.Join(d.Snapshots, ","), "why_not_repaired", d.RepairError)
	}
	m.log.Info("scrub: pass ended", "checked", units.FormatSize(rep.BytesChecked), "errors", rep.ErrorsFound(),
		"repaired", rep.Repaired(), "unrepaired", rep.Unrepaired(), "canceled", rep.Canceled)
	if err == nil && !rep.Canceled { // a partial pass is not a report
		m.mu.Lock()
		m.mu.last = rep
		m.mu.Unlock()
		if b, jerr := json.MarshalIndent(rep, "", "  "); jerr == nil {
			if serr := writeFileDurable(m.path, b); serr != nil {
				m.log.Warn("scrub: saving the report failed", "err", serr)
			}
		}
	}
	return rep, err
}

// errScrubShutdown: a pass was refused or ended because the daemon is
// shutting down.
var errScrubShutdown = fmt.Errorf("%w: scrub pass interrupted: the daemon is shutting down; run strata scrub --now again once it is back", blockdev.ErrGone)

// fetcher asks the sites that may hold a good copy of a damaged block: the
// strata:// targets its volume replicates to, its mirror's other host, then
// from.
func (m *scrubManager) fetcher(from []control.TargetSpec) func(context.Context, cow.DamagedBlock) ([]byte, string, error) {
	return func(ctx context.Context, d cow.DamagedBlock) ([]byte, string, error) {
		sites := append(m.sites(d.Volume), from...)
		if len(sites) == 0 {
			return nil, "", errors.New("no replica site to fetch it from (the volume replicates to no strata:// site; strata scrub --now --from strata://HOST:PORT/VOL names one)")
		}
		var errs []string
		for _, t := range sites {
			tg, remote, err := openTarget(t, d.Volume)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", t.Redacted(), err))
				continue
			}
			r, ok := tg.(*replica.Remote)
			if !ok {
				continue
			}
			data, err := r.FetchBlock(ctx, remote, d.Offset, d.CRC)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", t.Redacted(), control.UserMessage(err)))
				continue
			}
			return data, t.Redacted(), nil
		}
		return nil, "", errors.New(strings.Join(errs, "; "))
	}
}

// strataTargets are the strata:// targets vol replicates to.
func (m *replManager) strataTargets(vol string) []control.TargetSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []control.TargetSpec
	for _, e := range m.entries {
		if e.Volume == vol && strings.HasPrefix(e.To, "strata://") {
			out = append(out, e.TargetSpec)
		}
	}
	return out
}

// peerTarget is the other host of vol's mirror (none: nil).
func (m *mirrorManager) peerTarget(vol string) []control.TargetSpec {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e := m.mu.entries[vol]; e != nil && e.PeerURL != "" {
		return []control.TargetSpec{e.target()}
	}
	return nil
}

// scrubSites are the sites that hold vol, for healing.
func (d *Daemon) scrubSites(vol string) []control.TargetSpec {
	return append(d.repl.strataTargets(vol), d.mirrors.peerTarget(vol)...)
}

func (d *Daemon) scrubHandlers(mux *http.ServeMux) {
	m := d.scrub
	mux.HandleFunc("GET /v1/scrub", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.status())
	})
	mux.HandleFunc("POST /v1/scrub", func(w http.ResponseWriter, r *http.Request) {
		var req control.ScrubRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if req.Volume != "" {
			if _, err := d.pool.VolumeInfo(req.Volume); err != nil {
				writeErr(w, err)
				return
			}
		}
		for _, t := range req.From {
			if !strings.HasPrefix(t.To, "strata://") {
				writeErr(w, fmt.Errorf("%w: --from %s: scrub fetches blocks from strata:// sites", errBadRequest, t.Redacted()))
				return
			}
		}
		s := newStreamer(w)
		rep, err := m.run(r.Context(), req, func(p cow.ScrubProgress) { s.send(control.Event{Scrub: &p}) })
		if err != nil {
			_, code := errorCode(err, errorClasses)
			s.send(control.Event{Error: control.UserMessage(err), Code: code})
			return
		}
		s.send(control.Event{ScrubReport: rep})
	})
}
