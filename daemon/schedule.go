package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
)

// Clock is the time schedules run on: the wall clock in the daemon, a fake
// one in tests (a month of schedule in a second). After's channel fires
// once Now has reached d from now.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// scheduledPrefix starts the names of scheduled snapshots, which end in
// the UTC time they were taken (auto-20261130T231500Z): thinning goes by
// that time, which a replica's copy keeps (its own record time is when it
// was received).
const (
	scheduledPrefix = "auto-"
	scheduledLayout = "20060102T150405Z"
)

func scheduledName(t time.Time) string { return scheduledPrefix + t.UTC().Format(scheduledLayout) }

// snapTime is when a scheduled snapshot was taken.
func snapTime(sn cow.Snapshot) time.Time {
	if s, ok := strings.CutPrefix(sn.Name, scheduledPrefix); ok {
		if t, err := time.Parse(scheduledLayout, s); err == nil {
			return t
		}
	}
	return sn.Time
}

// scheduleManager takes and thins scheduled snapshots: every volume with a
// schedule of its own (DATA/schedules.json) or, failing that, the
// pool-wide default. A pass snapshots each volume whose current slot
// (the time truncated to its interval) has no scheduled snapshot yet, so
// after a stop only one snapshot is taken for all the slots missed, then
// thins. Replicas are only thinned.
type scheduleManager struct {
	pool  snapshotter
	log   *slog.Logger
	clock Clock
	path  string            // DATA/schedules.json
	def   *control.Schedule // the pool-wide default (nil: none)
	kick  chan struct{}
	stop  context.CancelFunc
	done  chan struct{}

	mu struct {
		sync.Mutex
		entries map[string]*control.Schedule
		state   map[string]*scheduleState
	}
}

type scheduleState struct {
	last, next time.Time
	scheduled  int
	pruned     int64
	err        string
}

func newScheduleManager(pool snapshotter, log *slog.Logger, clock Clock, path string, def *control.Schedule) (*scheduleManager, error) {
	m := &scheduleManager{pool: pool, log: log, clock: clock, path: path, def: def, kick: make(chan struct{}, 1)}
	m.mu.state = map[string]*scheduleState{}
	if def != nil {
		if err := def.Validate(); err != nil {
			return nil, fmt.Errorf("--schedule-every/--schedule-keep: %w", err)
		}
	}
	var err error
	if m.mu.entries, err = loadEntries(path, func(s *control.Schedule) string { return s.Volume }); err != nil {
		return nil, fmt.Errorf("read schedules: %w", err)
	}
	return m, nil
}

// start runs passes until close.
func (m *scheduleManager) start() {
	ctx, cancel := context.WithCancel(context.Background())
	m.stop, m.done = cancel, make(chan struct{})
	go func() {
		defer close(m.done)
		for {
			next := m.pass(ctx)
			select {
			case <-ctx.Done():
				return
			case <-m.kick:
			case <-m.clock.After(next.Sub(m.clock.Now())):
			}
		}
	}()
}

func (m *scheduleManager) close() {
	if m.stop != nil {
		m.stop()
		<-m.done
	}
}

// wake makes the manager run a pass now (a schedule changed).
func (m *scheduleManager) wake() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// saveLocked writes the volumes' schedules durably.
func (m *scheduleManager) saveLocked() error { return saveEntries(m.path, m.mu.entries) }

// set adds or replaces a volume's schedule.
func (m *scheduleManager) set(s control.Schedule) error {
	if s.Volume == "" {
		return fmt.Errorf("%w: name the volume (the pool-wide default is strata serve --schedule-every/--schedule-keep)", control.ErrBadSpec)
	}
	if err := s.Validate(); err != nil {
		return err
	}
	found := false
	for _, v := range m.pool.Volumes() {
		found = found || v.Name == s.Volume
	}
	if !found {
		return fmt.Errorf("%w: volume %q does not exist", blockdev.ErrNotFound, s.Volume)
	}
	m.mu.Lock()
	old := m.mu.entries[s.Volume]
	m.mu.entries[s.Volume] = &s
	err := m.saveLocked()
	if err != nil {
		if old != nil {
			m.mu.entries[s.Volume] = old
		} else {
			delete(m.mu.entries, s.Volume)
		}
	}
	m.mu.Unlock()
	if err == nil {
		m.wake()
	}
	return err
}

// remove drops a volume's own schedule (it follows the default again, if
// there is one). Its scheduled snapshots stay.
func (m *scheduleManager) remove(vol string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	old := m.mu.entries[vol]
	if old == nil {
		return fmt.Errorf("%w: volume %q has no schedule of its own", blockdev.ErrNotFound, vol)
	}
	delete(m.mu.entries, vol)
	if err := m.saveLocked(); err != nil {
		m.mu.entries[vol] = old
		return err
	}
	delete(m.mu.state, vol)
	m.wake()
	return nil
}

// forget drops a deleted volume's schedule, so that a new volume of the
// same name does not inherit it.
func (m *scheduleManager) forget(vol string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.mu.entries[vol]; old != nil {
		delete(m.mu.entries, vol)
		if err := m.saveLocked(); err != nil {
			m.mu.entries[vol] = old
			m.log.Error("schedule: could not drop a deleted volume's schedule", "volume", vol, "err", err)
			return
		}
	}
	delete(m.mu.state, vol)
}

// effective is vol's schedule: its own, else the default (nil: none).
func (m *scheduleManager) effective(vol string) (*control.Schedule, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.mu.entries[vol]; s != nil {
		return s, false
	}
	if m.def != nil {
		d := *m.def
		d.Volume = vol
		return &d, true
	}
	return nil, false
}

func isReplica(v cow.VolumeInfo) bool { return v.Replica != nil && !v.Replica.Promoted }

// statuses lists every volume with a schedule, and own schedules of
// volumes that are gone.
func (m *scheduleManager) statuses() []control.ScheduleStatus {
	var out []control.ScheduleStatus
	seen := map[string]bool{}
	for _, v := range m.pool.Volumes() {
		s, def := m.effective(v.Name)
		if s == nil {
			continue
		}
		seen[v.Name] = true
		out = append(out, m.status(*s, def, isReplica(v)))
	}
	m.mu.Lock()
	var gone []control.Schedule
	for vol, s := range m.mu.entries {
		if !seen[vol] {
			gone = append(gone, *s)
		}
	}
	m.mu.Unlock()
	for _, s := range gone {
		st := m.status(s, false, false)
		st.LastError = "the volume does not exist"
		out = append(out, st)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Volume < out[b].Volume })
	return out
}

func (m *scheduleManager) status(s control.Schedule, def, replica bool) control.ScheduleStatus {
	st := control.ScheduleStatus{Schedule: s, Default: def, Replica: replica}
	m.mu.Lock()
	defer m.mu.Unlock()
	if x := m.mu.state[s.Volume]; x != nil {
		st.Scheduled, st.Last, st.Next, st.Pruned, st.LastError = x.scheduled, x.last, x.next, x.pruned, x.err
	}
	return st
}

// pass snapshots and thins every volume that has a schedule, and returns
// when the next pass is due.
func (m *scheduleManager) pass(ctx context.Context) time.Time {
	now := m.clock.Now()
	next := now.Add(time.Hour) // a schedule added meanwhile wakes the manager
	for _, v := range m.pool.Volumes() {
		if ctx.Err() != nil {
			break
		}
		s, _ := m.effective(v.Name)
		if s == nil {
			continue
		}
		if due := m.passVolume(ctx, v, s, now); !due.IsZero() && due.Before(next) {
			next = due
		}
	}
	return next
}

// passVolume snapshots v if its current slot has no scheduled snapshot,
// thins its scheduled snapshots, and returns when its next slot starts
// (zero: it takes none).
func (m *scheduleManager) passVolume(ctx context.Context, v cow.VolumeInfo, s *control.Schedule, now time.Time) time.Time {
	st := &scheduleState{}
	var errs []string
	snaps, err := m.pool.Snapshots(v.Name)
	if err != nil {
		m.log.Warn("schedule: list snapshots", "volume", v.Name, "err", err)
		return time.Time{}
	}
	var sched []cow.Snapshot
	for _, sn := range snaps {
		if sn.Scheduled {
			sched = append(sched, sn)
			if t := snapTime(sn); t.After(st.last) {
				st.last = t
			}
		}
	}
	if s.Every > 0 && !isReplica(v) {
		slot := now.Truncate(s.Every)
		st.next = slot.Add(s.Every)
		if st.last.Before(slot) {
			sn, err := m.take(ctx, v.Name, scheduledName(now), s.Quiesce)
			if err != nil {
				errs = append(errs, err.Error())
			}
			if sn.Name != "" {
				sched = append(sched, sn)
				st.last = snapTime(sn)
			}
		}
	}
	times := make([]time.Time, len(sched))
	for i, sn := range sched {
		times[i] = snapTime(sn)
	}
	var pruned int64
	for i, keep := range thin(times, s.Keep) {
		if keep {
			continue
		}
		if err := m.pool.DeleteSnapshot(v.Name, sched[i].Name); err != nil && !errors.Is(err, blockdev.ErrNotFound) {
			errs = append(errs, fmt.Sprintf("prune %s: %v", sched[i].Name, err))
			continue
		}
		pruned++
	}
	st.scheduled = len(sched) - int(pruned)
	if pruned > 0 {
		m.log.Info("schedule: thinned snapshots", "volume", v.Name, "pruned", pruned, "kept", st.scheduled, "keep", s.Keep.String())
	}
	st.err = strings.Join(errs, "; ")
	m.mu.Lock()
	if old := m.mu.state[v.Name]; old != nil {
		st.pruned = old.pruned
	}
	st.pruned += pruned
	m.mu.state[v.Name] = st
	m.mu.Unlock()
	return st.next
}

// take takes a scheduled snapshot. A freeze that fails still leaves a
// crash-consistent snapshot (a schedule's point is to have one), and the
// error says so.
func (m *scheduleManager) take(ctx context.Context, vol, name string, q *control.Quiesce) (cow.Snapshot, error) {
	o := cow.SnapshotOptions{Scheduled: true}
	sn, warning, err := quiescedSnapshot(ctx, m.pool, m.log, vol, name, o, q)
	if errors.Is(err, errFreeze) {
		m.log.Warn("schedule: freeze failed; taking a crash-consistent snapshot", "volume", vol, "snapshot", name, "err", err)
		var cerr error
		if sn, cerr = m.pool.CreateSnapshotWith(vol, name, o); cerr != nil {
			return sn, fmt.Errorf("%v; snapshot: %w", err, cerr)
		}
		return sn, fmt.Errorf("%v (took a crash-consistent snapshot instead)", err)
	}
	if err != nil {
		m.log.Error("schedule: snapshot", "volume", vol, "snapshot", name, "err", err)
		return sn, err
	}
	if warning != "" {
		m.log.Warn("schedule: "+warning, "volume", vol, "snapshot", name)
		return sn, errors.New(warning)
	}
	m.log.Info("schedule: took snapshot", "volume", vol, "snapshot", name, "seq", sn.Seq, "app_consistent", sn.AppConsistent)
	return sn, nil
}

func (d *Daemon) scheduleHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/schedules", func(w http.ResponseWriter, r *http.Request) {
		list := d.sched.statuses()
		if list == nil {
			list = []control.ScheduleStatus{}
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("PUT /v1/schedules/{vol}", func(w http.ResponseWriter, r *http.Request) {
		var s control.Schedule
		if err := decodeBody(r, &s); err != nil {
			writeErr(w, err)
			return
		}
		if s.Volume != r.PathValue("vol") {
			writeErr(w, fmt.Errorf("%w: the schedule names volume %q, the path %q", errBadRequest, s.Volume, r.PathValue("vol")))
			return
		}
		if err := d.sched.set(s); err != nil {
			writeErr(w, err)
			return
		}
		d.opts.Logger.Info("set snapshot schedule", "volume", s.Volume, "every", s.Every, "keep", s.Keep.String(), "quiesce", s.Quiesce != nil)
		writeJSON(w, http.StatusOK, s)
	})
	mux.HandleFunc("DELETE /v1/schedules/{vol}", func(w http.ResponseWriter, r *http.Request) {
		if err := d.sched.remove(r.PathValue("vol")); err != nil {
			writeErr(w, err)
			return
		}
		d.opts.Logger.Info("removed snapshot schedule", "volume", r.PathValue("vol"))
		writeJSON(w, http.StatusOK, struct{}{})
	})
}
