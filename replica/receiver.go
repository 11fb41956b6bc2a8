package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cow"
)

// Receiver applies streams to a pool's replica volumes. A replica is
// read-only to everyone but its receiver, and at every acknowledged batch
// it reads as the source did at that batch's point.
type Receiver struct {
	Pool   *cow.Pool
	Logger *slog.Logger
	// Reserve is the free space a batch must leave in the pool's
	// filesystem (index flushes, and the rollback record that takes the
	// replica back to its last complete point if a batch fails anyway).
	Reserve int64

	// CheckHello, when set, sees every stream's hello before the volume
	// is touched; an error refuses the stream. The mirror manager fences
	// stale primaries with it and learns of new secondaries.
	CheckHello func(h Hello) error
	// BeforeDiscard, when set, is called before a failback rolls back
	// writes made here since the last common point (they stay readable as
	// points in time either way); the mirror manager keeps them as a
	// split clone.
	BeforeDiscard func(vol string, common uint64) error
	// LocalValid, when set, says up to which of its points a volume that
	// takes a failback still holds what it held before a restart (0: all
	// of it): a mirror's old primary may have lost an unflushed tail that
	// its secondary had received (see Mirror.Valid).
	LocalValid func(vol string) uint64

	freeMu sync.Mutex
	free   int64 // free space at freeAt, less what batches took since
	freeAt time.Time

	mu      sync.Mutex
	active  map[string]*Session // volumes a stream is applying to
	history map[string][]PointPair
}

// historyLen bounds the point pairs kept per volume: enough for every
// batch of the last minutes of a busy mirror.
const historyLen = 1 << 14

// History returns, oldest first, which local point of replica vol read as
// which point of its source after each batch applied since this process
// started (at most historyLen).
func (r *Receiver) History(vol string) []PointPair {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]PointPair(nil), r.history[vol]...)
}

func (r *Receiver) noteApplied(vol string, source, local uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.history == nil {
		r.history = map[string][]PointPair{}
	}
	h := r.history[vol]
	if len(h) >= historyLen {
		h = append(h[:0], h[len(h)-historyLen/2:]...)
	}
	r.history[vol] = append(h, PointPair{source, local})
}

// truncateHistory forgets vol's pairs whose source point is past valid:
// after a source lost them, its sequence numbers come back with other
// content.
func (r *Receiver) truncateHistory(vol string, valid uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	h := r.history[vol]
	n := len(h)
	for n > 0 && h[n-1][0] > valid {
		n--
	}
	r.history[vol] = h[:n]
}

// commonIn is the newest pair of points whose source point is at most
// valid.
func commonIn(points []PointPair, valid uint64) (PointPair, bool) {
	for i := len(points) - 1; i >= 0; i-- {
		if points[i][0] <= valid {
			return points[i], true
		}
	}
	return PointPair{}, false
}

// NewReceiver makes a receiver for pool.
func NewReceiver(pool *cow.Pool, log *slog.Logger) *Receiver {
	if log == nil {
		log = slog.Default()
	}
	return &Receiver{Pool: pool, Logger: log, Reserve: DefaultReserve, active: map[string]*Session{}}
}

// testHookApply runs before a batch is applied (tests fill the disk).
var testHookApply atomic.Pointer[func(b *Batch)]

// DefaultReserve is the free space a receiver keeps after each batch.
const DefaultReserve = 16 << 20

// room refuses a batch that would not fit, before any of it is applied.
// Records cost their data plus headers and block checksums (under 1/16).
func (r *Receiver) room(b *Batch) error {
	data := b.DataBytes()
	free, err := r.freeBytes(data)
	if err != nil {
		return err
	}
	need := data + data/16 + int64(len(b.Ops))*128 + r.Reserve
	if need > free {
		return fmt.Errorf("%w: the batch (source seq %d to %d) carries %s and needs %s free with the %s reserve; the replica site has %s free",
			ErrNoSpace, b.From, b.To, fmtBytes(data), fmtBytes(need), fmtBytes(r.Reserve), fmtBytes(free))
	}
	return nil
}

// freeCheckEvery: a mirror's small batches come by the thousand a second;
// the filesystem's free space is asked at most this often for them, and
// what they carry is counted against the last answer in between.
const freeCheckEvery = 100 * time.Millisecond

// freeBytes is the pool's free space, asked afresh for a large batch or
// once per freeCheckEvery, less what batches took since.
func (r *Receiver) freeBytes(data int64) (int64, error) {
	r.freeMu.Lock()
	defer r.freeMu.Unlock()
	if data < 1<<20 && time.Since(r.freeAt) < freeCheckEvery {
		r.free -= data + data/16
		return r.free + data + data/16, nil
	}
	free, err := r.Pool.FreeBytes()
	if err != nil {
		return 0, err
	}
	r.free, r.freeAt = free-data-data/16, time.Now()
	return free, nil
}

// Session is one stream into one volume.
type Session struct {
	r    *Receiver
	name string
	src  VolumeID
	st   cow.ReplicaState
	stop func()
	done chan struct{}
	// dirty: batches were applied (NoSync) since st was stored; synced is
	// the source point the replica holds durably.
	dirty  bool
	synced uint64
	last   atomic.Int64 // when the last batch arrived (Unix nanoseconds)
}

// LastBatch says when the stream into vol last delivered a batch; false
// when no stream is open. A mirror's secondary does not ask for the lease
// while its primary's stream is alive.
func (r *Receiver) LastBatch(vol string) (time.Time, bool) {
	r.mu.Lock()
	s := r.active[vol]
	r.mu.Unlock()
	if s == nil {
		return time.Time{}, false
	}
	return time.Unix(0, s.last.Load()), true
}

// Open starts a stream into volume h.Target: it creates the replica on the
// first stream, checks that an existing one follows this source, puts a
// replica interrupted mid-batch back at its last complete point, and
// accepts a failback onto the volume the source was promoted from when
// that volume has not been written since the last common point. A stream
// from the same source replaces one still open (its connection may be dead
// without either side knowing yet): stop ends the new one in turn.
func (r *Receiver) Open(ctx context.Context, h Hello, stop func()) (*Session, State, error) {
	if err := cow.ValidateName(h.Target); err != nil {
		return nil, State{}, fmt.Errorf("%w: target volume: %v", ErrRefused, err)
	}
	if r.CheckHello != nil {
		if err := r.CheckHello(h); err != nil {
			return nil, State{}, err
		}
	}
	s := &Session{r: r, name: h.Target, src: h.Source, stop: stop, done: make(chan struct{})}
	s.last.Store(time.Now().UnixNano())
	for {
		r.mu.Lock()
		old := r.active[h.Target]
		if old == nil {
			r.active[h.Target] = s
			r.mu.Unlock()
			break
		}
		r.mu.Unlock()
		if old.src != h.Source {
			return nil, State{}, fmt.Errorf("%w: a stream from %s (pool %s) into %q is running", ErrBusy, old.src.Name, old.src.Pool, h.Target)
		}
		r.Logger.Info("replication: a new stream from the same source replaces the open one", "volume", h.Target)
		if old.stop != nil {
			old.stop()
		}
		select {
		case <-old.done:
		case <-time.After(time.Minute):
			return nil, State{}, fmt.Errorf("%w: the previous stream into %q does not stop", ErrBusy, h.Target)
		case <-ctx.Done():
			return nil, State{}, ctx.Err()
		}
	}
	st, err := r.open(ctx, s, h)
	if err != nil {
		s.Close()
		return nil, State{}, err
	}
	// What the replica holds when the stream opens is stored: durable
	// as far as this stream knows.
	s.synced = s.st.Acked
	return s, st, nil
}

func (r *Receiver) open(ctx context.Context, s *Session, h Hello) (State, error) {
	p := r.Pool
	info, err := p.VolumeInfo(h.Target)
	if errors.Is(err, blockdev.ErrNotFound) {
		if _, err := p.CreateVolume(h.Target, h.Size); err != nil {
			return State{}, err
		}
		if err := p.SetReadOnly(h.Target, true); err != nil {
			return State{}, err
		}
		s.st = cow.ReplicaState{SourcePool: h.Source.Pool, SourceVol: h.Source.Vol, SourceName: h.Source.Name}
		if err := p.SetReplicaState(h.Target, &s.st); err != nil {
			return State{}, err
		}
		r.Logger.Info("replication: new replica", "volume", h.Target, "source", h.Source.Name, "source_pool", h.Source.Pool)
		return State{Message: fmt.Sprintf("created replica %s", h.Target)}, nil
	}
	if err != nil {
		return State{}, err
	}
	rs := info.Replica
	if h.Origin != nil && h.Origin.Source.Pool == p.ID() && h.Origin.Source.Vol == info.ID {
		return r.failback(ctx, s, h, info)
	}
	if rs == nil || rs.SourcePool != h.Source.Pool || rs.SourceVol != h.Source.Vol {
		return State{}, fmt.Errorf("%w: volume %q exists at the target and is not a replica of %s (pool %s); name another remote volume (strata://HOST:PORT/NAME) or delete it there",
			ErrRefused, h.Target, h.Source.Name, h.Source.Pool)
	}
	if rs.Promoted {
		return State{}, fmt.Errorf("%w: replica %q was promoted at %s and no longer follows %s; run `strata demote %s` at the target to make it follow again",
			ErrRefused, h.Target, time.Unix(0, rs.PromotedAt).UTC().Format(time.RFC3339), h.Source.Name, h.Target)
	}
	s.st = *rs
	if s.st.Diff && s.st.DiffTo != 0 {
		// The daemon stopped mid-diff: park it (a part cut off mid-way
		// lies past DiffNext, where a resumed diff rewrites it).
		if err := r.park(s); err != nil {
			return State{}, err
		}
	}
	if s.st.DiffParked != 0 {
		if _, err := p.ResolvePoint(s.name, fmt.Sprintf("seq:%d", s.st.DiffParked)); err == nil {
			return State{Acked: s.st.Acked, AckedTime: s.st.AckedTime, DiffTo: s.st.DiffTo, DiffNext: s.st.DiffNext}, nil
		}
		r.Logger.Info("replication: the parts of an interrupted diff are no longer readable here; it starts over", "volume", s.name, "diff_parked", s.st.DiffParked)
		s.st.DiffTo, s.st.DiffNext, s.st.DiffParked = 0, 0, 0
		if err := p.SetReplicaState(s.name, &s.st); err != nil {
			return State{}, err
		}
	}
	if err := r.backToLocal(ctx, s); err != nil {
		return State{}, err
	}
	if hm := h.Mirror; hm != nil && hm.Valid != 0 && s.st.Acked > hm.Valid {
		return r.rewind(ctx, s, h, hm.Valid)
	}
	return State{Acked: s.st.Acked, AckedTime: s.st.AckedTime}, nil
}

// rewind takes a replica that holds points its source lost (the source
// restarted and its journal ends at valid) back to the newest point both
// hold, or, when no such point is known here, empties it for a full copy.
// What it drops stays readable as points in time.
func (r *Receiver) rewind(ctx context.Context, s *Session, h Hello, valid uint64) (State, error) {
	p := r.Pool
	pair, ok := commonIn(r.History(s.name), valid)
	if !ok {
		return r.emptyForCopy(ctx, s, h, fmt.Sprintf("the source restarted and lost its points after seq %d, which this replica held; no point in common is known here", valid))
	}
	r.Logger.Warn("replication: the source restarted and lost points this replica held; going back to the newest point both hold",
		"volume", s.name, "source_valid", valid, "acked", s.st.Acked, "source_seq", pair[0], "local_seq", pair[1])
	r.truncateHistory(s.name, valid) // the source uses those numbers again
	if _, err := p.Rollback(s.name, fmt.Sprintf("seq:%d", pair[1]), true); err != nil {
		return State{}, fmt.Errorf("replica %q: back to seq:%d: %w", s.name, pair[1], err)
	}
	s.st.Acked, s.st.Local, s.st.Diff, s.st.DiffTo, s.st.DiffNext, s.st.DiffParked = pair[0], 0, false, 0, 0, 0
	if err := p.SetReplicaState(s.name, &s.st); err != nil {
		return State{}, err
	}
	return State{Acked: s.st.Acked, AckedTime: s.st.AckedTime,
		Message: fmt.Sprintf("%s went back to source seq:%d: the source lost the points after seq:%d in a restart", s.name, pair[0], valid)}, nil
}

// emptyForCopy makes the stream's volume an empty replica of its source
// (after BeforeDiscard sees what it held), so that the source ships a full
// copy; everything it held stays readable as points in time.
func (r *Receiver) emptyForCopy(ctx context.Context, s *Session, h Hello, why string) (State, error) {
	p := r.Pool
	r.Logger.Warn("replication: no point in common with the source; the volume takes a full copy", "volume", s.name, "reason", why)
	if r.BeforeDiscard != nil {
		if err := r.BeforeDiscard(s.name, 0); err != nil {
			return State{}, fmt.Errorf("before emptying %s for a full copy: %w", s.name, err)
		}
	}
	vh, err := p.OpenReplicaHead(s.name)
	if err != nil {
		return State{}, err
	}
	err = vh.Trim(0, vh.Size())
	vh.Close()
	if err != nil {
		return State{}, fmt.Errorf("empty %s for a full copy: %w", s.name, err)
	}
	if err := p.SetReadOnly(s.name, true); err != nil {
		return State{}, err
	}
	s.st = cow.ReplicaState{SourcePool: h.Source.Pool, SourceVol: h.Source.Vol, SourceName: h.Source.Name}
	if err := p.SetReplicaState(s.name, &s.st); err != nil {
		return State{}, err
	}
	return State{Message: fmt.Sprintf("%s takes a full copy of %s: %s", s.name, h.Source.Name, why)}, nil
}

// park ends a diff that did not get its last part: the head goes back to
// the last complete point, and the replica's own point holding the parts
// is kept so that a stream can resume the diff there. Between streams a
// replica therefore always reads as a point of its source.
func (r *Receiver) park(s *Session) error {
	p := r.Pool
	parts := p.AppliedSeq() // reads as the head does now: the parts applied
	r.Logger.Info("replication: a diff stopped before its last part; back to the last complete point, the parts kept for a resume",
		"volume", s.name, "local_seq", s.st.Local, "source_seq", s.st.Acked, "diff_to", s.st.DiffTo, "diff_next", s.st.DiffNext)
	if _, err := p.Rollback(s.name, fmt.Sprintf("seq:%d", s.st.Local), true); err != nil {
		return fmt.Errorf("replica %q: back to its last complete point: %w", s.name, err)
	}
	s.st.Diff, s.st.DiffParked = false, parts
	s.st.Local = 0 // the record storing the state marks the point now
	return p.SetReplicaState(s.name, &s.st)
}

// backToLocal rolls the replica's head back to its last complete point
// when an interrupted batch left changes after it.
func (r *Receiver) backToLocal(ctx context.Context, s *Session) error {
	p := r.Pool
	changed := s.st.Diff
	if !changed {
		var err error
		if changed, err = p.ChangedSince(ctx, s.name, s.st.Local); err != nil {
			return err
		}
	}
	if !changed {
		return nil
	}
	r.Logger.Info("replication: an interrupted batch left changes; going back to the last complete point", "volume", s.name, "local_seq", s.st.Local, "source_seq", s.st.Acked)
	if _, err := p.Rollback(s.name, fmt.Sprintf("seq:%d", s.st.Local), true); err != nil {
		return fmt.Errorf("replica %q: back to its last complete point: %w", s.name, err)
	}
	s.st.Diff, s.st.DiffTo, s.st.DiffNext, s.st.DiffParked = false, 0, 0, 0
	s.st.Local = 0 // the record storing the state marks the point now
	return p.SetReplicaState(s.name, &s.st)
}

func (r *Receiver) failback(ctx context.Context, s *Session, h Hello, info cow.VolumeInfo) (State, error) {
	p := r.Pool
	rs := info.Replica
	if rs != nil && !rs.Promoted && (rs.SourcePool != h.Source.Pool || rs.SourceVol != h.Source.Vol) {
		return State{}, fmt.Errorf("%w: volume %q follows %s; it cannot take a stream from %s", ErrRefused, h.Target, rs.SourceName, h.Source.Name)
	}
	if rs != nil && !rs.Promoted {
		// Already following the promoted side: an ordinary resume.
		s.st = *rs
		if err := r.backToLocal(ctx, s); err != nil {
			return State{}, err
		}
		return State{Acked: s.st.Acked, AckedTime: s.st.AckedTime}, nil
	}
	common, local := h.Origin.Seq, h.Origin.Local
	if r.LocalValid != nil && h.Mirror != nil {
		if valid := r.LocalValid(h.Target); valid != 0 && common > valid {
			// This host lost the points after valid (an unflushed tail,
			// before a restart) that the other side had received: the
			// newest point both still hold is older.
			pair, ok := commonIn(h.Mirror.Points, valid)
			if !ok {
				if info.Handles > 0 && !info.ReadOnly {
					return State{}, fmt.Errorf("%w: volume %q is attached here (%d connections); detach it before failing back onto it", ErrRefused, h.Target, info.Handles)
				}
				return r.emptyForCopy(ctx, s, h, fmt.Sprintf("this host lost its points after seq:%d in a restart, and %s knows no older point in common", valid, h.Source.Name))
			}
			r.Logger.Warn("replication: this host lost points the other side held; failing back from an older common point",
				"volume", h.Target, "valid", valid, "common_was", common, "common", pair[0], "there", pair[1])
			common, local = pair[0], pair[1]
		}
	}
	changed, err := p.ChangedSince(ctx, h.Target, common)
	if err != nil {
		return State{}, err
	}
	if changed && (rs == nil || !rs.DiscardLocal) {
		return State{}, fmt.Errorf("%w: split brain: %q here has been written since the last point in common with %s (seq:%d here), and %s was promoted from it; "+
			"to keep the promoted side's data, run `strata demote %s --discard-local` here (the writes since stay readable as points in time), then replicate again; "+
			"to keep this side's data instead, demote the other side with --discard-local and replicate from here",
			ErrRefused, h.Target, h.Source.Name, common, h.Source.Name, h.Target)
	}
	if info.Handles > 0 && !info.ReadOnly {
		return State{}, fmt.Errorf("%w: volume %q is attached here (%d connections); detach it before failing back onto it", ErrRefused, h.Target, info.Handles)
	}
	if changed && r.BeforeDiscard != nil {
		if err := r.BeforeDiscard(h.Target, common); err != nil {
			return State{}, fmt.Errorf("before rolling back to the common point seq:%d: %w", common, err)
		}
	}
	if changed {
		if _, err := p.Rollback(h.Target, fmt.Sprintf("seq:%d", common), true); err != nil {
			return State{}, fmt.Errorf("back to the common point seq:%d: %w", common, err)
		}
	}
	if err := p.SetReadOnly(h.Target, true); err != nil {
		return State{}, err
	}
	s.st = cow.ReplicaState{SourcePool: h.Source.Pool, SourceVol: h.Source.Vol, SourceName: h.Source.Name, Acked: local}
	if err := p.SetReplicaState(h.Target, &s.st); err != nil {
		return State{}, err
	}
	msg := fmt.Sprintf("failback: %s now follows %s from the last common point (seq:%d here, seq:%d there)", h.Target, h.Source.Name, common, local)
	if changed {
		msg += "; the writes made here since are discarded from the head and stay readable as points in time"
	}
	r.Logger.Info("replication: "+msg, "volume", h.Target)
	st, err := p.ReplicaStateOf(h.Target)
	if err != nil {
		return State{}, err
	}
	s.st = *st
	return State{Acked: s.st.Acked, AckedTime: s.st.AckedTime, Message: msg}, nil
}

// Apply applies one batch and makes it durable. On an error nothing of the
// batch stays in the head: it goes back to the last complete point.
func (s *Session) Apply(ctx context.Context, b *Batch) error {
	s.last.Store(time.Now().UnixNano())
	p := s.r.Pool
	if b.From != s.st.Acked {
		return fmt.Errorf("%w: batch starts at source seq %d but the replica holds seq %d", ErrRefused, b.From, s.st.Acked)
	}
	if b.To < b.From {
		return fmt.Errorf("%w: batch ends (seq %d) before it starts (seq %d)", ErrCorrupt, b.To, b.From)
	}
	if err := s.r.room(b); err != nil {
		return err
	}
	if hook := testHookApply.Load(); hook != nil {
		(*hook)(b)
	}
	continuation := b.Diff && s.st.DiffTo != 0 && b.To == s.st.DiffTo
	switch {
	case s.st.DiffParked != 0 && continuation:
		// Resuming a parked diff: the head takes its parts again.
		if _, err := p.Rollback(s.name, fmt.Sprintf("seq:%d", s.st.DiffParked), true); err != nil {
			return fmt.Errorf("replica %q: back to the parts of the interrupted diff: %w", s.name, err)
		}
		s.st.Diff, s.st.DiffParked = true, 0
		if err := p.SetReplicaState(s.name, &s.st); err != nil {
			return err
		}
	case s.st.DiffParked != 0:
		// Something else than the parked diff: drop it (the head is at
		// the last complete point already).
		s.st.DiffTo, s.st.DiffNext, s.st.DiffParked = 0, 0, 0
		if err := p.SetReplicaState(s.name, &s.st); err != nil {
			return err
		}
	case s.st.Diff && !continuation:
		if err := s.r.backToLocal(ctx, s); err != nil {
			return err
		}
	}
	if b.Diff && !s.st.Diff {
		s.st.Diff, s.st.DiffTo, s.st.DiffNext = true, b.To, 0
		if err := p.SetReplicaState(s.name, &s.st); err != nil {
			return err
		}
	}
	if err := applyOps(ctx, p, s.name, b, true, s.r.Logger); err != nil {
		if rerr := s.r.backToLocal(context.Background(), s); rerr != nil {
			s.r.Logger.Error("replication: could not go back to the last complete point after a failed batch", "volume", s.name, "err", rerr)
		}
		return err
	}
	if b.NoSync && !b.Diff && !b.Partial {
		// Applied, not yet durable: the next synced batch (or the end of
		// the stream) stores the state that marks this point.
		s.st.Acked, s.st.AckedTime, s.st.Local = b.To, b.Time, 0
		s.dirty = true
		s.r.noteApplied(s.name, b.To, p.AppliedSeq())
		return nil
	}
	// The state record below is appended after the batch's records, and
	// SetReplicaState's fsync makes both durable: the journal is durable
	// as a prefix (recovery cuts an unsynced tail at its first bad
	// record, and a segment is synced before the next one starts), so a
	// stored state never points past records that were lost. One fsync
	// per synced batch, not two.
	if b.Partial {
		// Record how far the diff got, so a new stream can resume it.
		s.st.DiffNext = max(s.st.DiffNext, b.extentEnd())
		return p.SetReplicaState(s.name, &s.st)
	}
	s.st.Acked, s.st.AckedTime, s.st.Diff, s.st.DiffTo, s.st.DiffNext, s.st.DiffParked, s.st.Local = b.To, b.Time, false, 0, 0, 0, 0
	local := p.AppliedSeq() // the head reads as the source at To here
	if err := p.SetReplicaState(s.name, &s.st); err != nil {
		return err
	}
	s.dirty, s.synced = false, b.To
	s.r.noteApplied(s.name, b.To, local)
	return nil
}

// applyOps applies a batch's ops to volume name's head.
func applyOps(ctx context.Context, p *cow.Pool, name string, b *Batch, replica bool, log *slog.Logger) error {
	open := p.OpenVolume
	if replica {
		open = p.OpenReplicaHead
	}
	h, err := open(name)
	if err != nil {
		return err
	}
	defer h.Close()
	// Runs of writes are written as groups: one index commit for many
	// (cow.Volume.WriteBatch), in order.
	var run []cow.BlockWrite
	runFrom := 0
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		err := h.WriteBatch(run)
		run = run[:0]
		if err != nil {
			return fmt.Errorf("apply write ops (source seq %d on) to %q: %w", b.Ops[runFrom].Seq, name, err)
		}
		return nil
	}
	for i := range b.Ops {
		op := &b.Ops[i]
		if i%64 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		if op.Kind == OpWrite {
			if uint64(len(op.Data)) != op.Length {
				return fmt.Errorf("%w: write op of %d bytes carries %d", ErrCorrupt, op.Length, len(op.Data))
			}
			if len(run) == 0 {
				runFrom = i
			}
			run = append(run, cow.BlockWrite{Off: int64(op.Offset), Data: op.Data, Sums: op.Sums})
			continue
		}
		if op.Kind == OpPoint {
			continue // nothing to apply (a stream sends one after each record)
		}
		if err := flush(); err != nil {
			return err
		}
		var err error
		switch op.Kind {
		case OpZero:
			err = h.WriteZeroes(int64(op.Offset), int64(op.Length), op.NoHole)
		case OpTrim:
			err = h.Trim(int64(op.Offset), int64(op.Length))
		case OpResize:
			if int64(op.Length) != h.Size() {
				err = p.ResizeVolume(name, int64(op.Length), true)
			}
		case OpSnapshot:
			o := cow.SnapshotOptions{Label: op.Label, Scheduled: op.Scheduled, AppConsistent: op.AppConsistent}
			if _, err = p.CreateSnapshotWith(name, op.Name, o); errors.Is(err, cow.ErrExists) {
				log.Info("replication: snapshot already exists at the target; kept", "volume", name, "snapshot", op.Name)
				err = nil
			}
		}
		if err != nil {
			return fmt.Errorf("apply %s op (source seq %d) to %q: %w", op.Kind, op.Seq, name, err)
		}
	}
	return flush()
}

// Close ends the session. A diff it left without its last part is parked
// (see park) before another stream may start.
func (s *Session) Close() {
	if s.dirty {
		// What NoSync batches applied is the replica's point now (not
		// synced: a crash of this host goes back to the last stored one).
		if err := s.r.Pool.SetReplicaState(s.name, &s.st); err != nil {
			s.r.Logger.Error("replication: could not store the point the stream reached", "volume", s.name, "err", err)
		}
		s.dirty = false
	}
	if s.st.Diff && s.st.DiffTo != 0 {
		if err := s.r.park(s); err != nil {
			s.r.Logger.Error("replication: could not put a replica left mid-diff back at its last complete point; the next stream does", "volume", s.name, "err", err)
		}
	}
	s.r.mu.Lock()
	if s.r.active[s.name] == s {
		delete(s.r.active, s.name)
	}
	s.r.mu.Unlock()
	close(s.done)
}

// Stop ends the stream applying to vol, if one is, and says whether it
// has ended (false: it did not within 10 s): a secondary that takes over
// cuts its old primary off, and must not go on before that.
func (r *Receiver) Stop(vol string) bool {
	r.mu.Lock()
	s := r.active[vol]
	r.mu.Unlock()
	if s == nil {
		return true
	}
	if s.stop != nil {
		s.stop()
	}
	select {
	case <-s.done:
		return true
	case <-time.After(10 * time.Second):
		r.Logger.Warn("replication: the stream did not stop in 10s", "volume", vol)
		return false
	}
}

// AwaitFailback makes vol read-only and ready to take a failback stream
// from the replica that was promoted in its place: a mirror's primary that
// lost its epoch steps down so. Writes made here since the last common
// point, which only that stream tells, are rolled back then (after
// BeforeDiscard; they stay readable as points in time).
func AwaitFailback(p *cow.Pool, vol string) error {
	if err := p.SetReadOnly(vol, true); err != nil {
		return err
	}
	return p.SetReplicaState(vol, &cow.ReplicaState{Promoted: true, DiscardLocal: true})
}

// Promote makes replica vol writable: failover. A replica caught in the
// middle of a batch goes back to its last complete point first. Its link
// to the source stays as the last common point, for failback.
func Promote(ctx context.Context, p *cow.Pool, vol string) (*cow.ReplicaState, error) {
	rs, err := p.ReplicaStateOf(vol)
	if err != nil {
		return nil, err
	}
	if rs == nil {
		return nil, fmt.Errorf("%w: %q is not a replica", ErrRefused, vol)
	}
	if rs.Promoted {
		return nil, fmt.Errorf("%w: %q was already promoted at %s", ErrRefused, vol, time.Unix(0, rs.PromotedAt).UTC().Format(time.RFC3339))
	}
	changed := rs.Diff
	if !changed {
		if changed, err = p.ChangedSince(ctx, vol, rs.Local); err != nil {
			return nil, err
		}
	}
	if changed {
		if _, err := p.Rollback(vol, fmt.Sprintf("seq:%d", rs.Local), true); err != nil {
			return nil, err
		}
	}
	rs.Promoted, rs.PromotedAt, rs.Diff, rs.DiffTo, rs.DiffNext, rs.DiffParked = true, time.Now().UnixNano(), false, 0, 0, 0
	if changed {
		// The head is now the rollback's point: it reads as Acked.
		rs.Local = p.AppliedSeq()
	}
	if err := p.SetReplicaState(vol, rs); err != nil {
		return nil, err
	}
	if err := p.SetReadOnly(vol, false); err != nil {
		return nil, err
	}
	return rs, nil
}

// Demote makes a promoted replica, or a volume a replica was promoted from,
// read-only and ready to follow a source again. Writes made since the last
// point in common are refused unless discardLocal, which rolls the head
// back (they stay readable as points in time).
func Demote(ctx context.Context, p *cow.Pool, vol string, discardLocal bool) (string, error) {
	info, err := p.VolumeInfo(vol)
	if err != nil {
		return "", err
	}
	rs := info.Replica
	if info.Handles > 0 && !info.ReadOnly {
		return "", fmt.Errorf("%w: volume %q is attached (%d connections); detach it first", ErrRefused, vol, info.Handles)
	}
	if rs != nil && !rs.Promoted {
		return "", fmt.Errorf("%w: %q already follows %s", ErrRefused, vol, rs.SourceName)
	}
	if rs != nil && rs.Promoted {
		changed, err := p.ChangedSince(ctx, vol, rs.Local)
		if err != nil {
			return "", err
		}
		if changed && !discardLocal {
			return "", fmt.Errorf("%w: %q has been written since it was promoted (since seq:%d); run with --discard-local to roll those writes back (they stay readable as points in time)", ErrRefused, vol, rs.Local)
		}
		if err := p.SetReadOnly(vol, true); err != nil {
			return "", err
		}
		if changed {
			if _, err := p.Rollback(vol, fmt.Sprintf("seq:%d", rs.Local), true); err != nil {
				return "", err
			}
		}
		rs.Promoted, rs.PromotedAt, rs.Local = false, 0, 0
		if err := p.SetReplicaState(vol, rs); err != nil {
			return "", err
		}
		return fmt.Sprintf("%s follows %s again from source seq:%d", vol, rs.SourceName, rs.Acked), nil
	}
	// A volume that was the source of a promoted replica: it waits for the
	// failback stream, which checks and (with discardLocal) rolls back.
	if err := p.SetReadOnly(vol, true); err != nil {
		return "", err
	}
	if err := p.SetReplicaState(vol, &cow.ReplicaState{Promoted: true, DiscardLocal: discardLocal}); err != nil {
		return "", err
	}
	msg := fmt.Sprintf("%s is read-only and waits for a failback stream from the promoted replica", vol)
	if discardLocal {
		msg += "; writes since the last common point will be rolled back (they stay readable as points in time)"
	}
	return msg, nil
}

// fmtBytes prints n in MiB, the unit batches are sized in.
func fmtBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
