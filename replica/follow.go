package replica

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-storage/strata/cow"
)

// A Follower keeps one volume's stream to a target open and ships each
// change moments after it is written, instead of once per run: the stream
// of a synchronous mirror. It first catches the target up as Ship does (a
// full copy for a new target, the journal since its point otherwise),
// then follows the volume's changes, sending whatever was written since
// the last batch each time it is kicked (or every Idle): from its tap
// (cow.Tap, the changes in memory as they are applied) while that holds
// them, from the journal with a cursor otherwise. Batches
// are pipelined as Ship's are, so while one is applied at the target the
// next gathers what came in meanwhile: under load batches grow, and the
// target's fsyncs are shared.
//
// Once caught up, batches are NoSync: the target applies them and
// acknowledges at once, and makes them durable with the next batch that
// Sync asked for. Acked says how far the target has applied the volume
// (WaitAcked: what a mirrored write waits for, so that a primary killed
// after acknowledging it loses nothing), Durable how far it holds it
// durably (WaitDurable: what a mirrored FLUSH waits for). A Follower stops
// at its first error (Done, Err); its owner starts a new one, which
// resumes from the target's point.
type Follower struct {
	o      ShipOptions
	mirror *Mirror
	idle   time.Duration
	kick   chan struct{}
	sync   atomic.Bool // the next batch is to be made durable
	// syncSent: the point the last batch to be made durable ended at,
	// once queued; SyncTo asks for no other batch to cover less.
	syncSent atomic.Uint64
	done     chan struct{}
	cancel   context.CancelFunc

	mu struct {
		sync.Mutex
		acked   uint64
		durable uint64
		lastAck time.Time // when the newest acknowledged batch was sent
		opened  bool
		target  State  // what the target held when the stream opened
		upto    uint64 // the point the last batch queued ends at
		// waiters: callers of WaitAcked/WaitDurable; each is woken once
		// its point is reached or the follower stops, not at every ack.
		waiters []*ackWaiter
		err     error
	}
}

// ackWaiter is one caller waiting for a point.
type ackWaiter struct {
	seq     uint64
	durable bool
	ch      chan struct{} // closed when woken
}

// DefaultFollowIdle is how often a follower with nothing new to send moves
// its target along anyway (an empty batch), which also finds a dead
// connection.
const DefaultFollowIdle = time.Second

// Follow starts a follower of o.Volume to o.Target (o.Upto is ignored).
// m, when not nil, marks the stream as a mirror's. idle <= 0 means
// DefaultFollowIdle. The follower ends when ctx ends, Stop is called, or
// the stream fails.
func Follow(ctx context.Context, o ShipOptions, m *Mirror, idle time.Duration) *Follower {
	if idle <= 0 {
		idle = DefaultFollowIdle
	}
	ctx, cancel := context.WithCancel(ctx)
	f := &Follower{o: o, mirror: m, idle: idle, kick: make(chan struct{}, 1), done: make(chan struct{}), cancel: cancel}
	go func() {
		err := f.run(ctx)
		cancel()
		f.mu.Lock()
		f.mu.err = err
		close(f.done)
		for _, w := range f.mu.waiters {
			close(w.ch)
		}
		f.mu.waiters = nil
		f.mu.Unlock()
	}()
	return f
}

// Kick tells the follower there is something new to ship. It never blocks.
func (f *Follower) Kick() {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// Sync asks for the next batch to be made durable at the target (sent at
// once, empty if nothing is new). It never blocks.
func (f *Follower) Sync() {
	f.sync.Store(true)
	f.Kick()
}

// SyncTo asks for point seq to be made durable at the target: as Sync,
// unless a batch already on its way is to be made durable up to seq or
// beyond (the flushes of a burst share one). It never blocks.
func (f *Follower) SyncTo(seq uint64) {
	if seq != 0 && f.syncSent.Load() >= seq {
		return
	}
	f.Sync()
}

// LastAck is when the newest batch the target acknowledged was sent: the
// target was alive and following at least until then. (An idle follower
// sends an empty batch every idle period.)
func (f *Follower) LastAck() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.lastAck
}

// Durable is the point the target holds durably.
func (f *Follower) Durable() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.durable
}

// WaitDurable returns once the target holds point seq durably (asking for
// it with Sync), or with the follower's error if it ends first, or ctx's.
func (f *Follower) WaitDurable(ctx context.Context, seq uint64) error {
	return f.wait(ctx, seq, true)
}

// Stop ends the follower and waits for it.
func (f *Follower) Stop() {
	f.cancel()
	<-f.done
}

// Done is closed when the follower has ended; Err then says why.
func (f *Follower) Done() <-chan struct{} { return f.done }

// Err is why the follower ended (nil while it runs).
func (f *Follower) Err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.err
}

// Acked is the point the target holds durably.
func (f *Follower) Acked() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.acked
}

// Opened says whether the stream is open, and what the target held then
// (its pool's identity among it).
func (f *Follower) Opened() (State, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.target, f.mu.opened
}

// Queued is the point the last batch handed to the sender ends at: the
// follower has read the journal up to there.
func (f *Follower) Queued() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.upto
}

// WaitAcked returns once the target holds point seq durably, or with the
// follower's error if it ends first, or ctx's.
func (f *Follower) WaitAcked(ctx context.Context, seq uint64) error {
	return f.wait(ctx, seq, false)
}

func (f *Follower) wait(ctx context.Context, seq uint64, durable bool) error {
	var w *ackWaiter
	for {
		f.mu.Lock()
		acked := f.mu.acked
		if durable {
			acked = f.mu.durable
		}
		if acked >= seq {
			f.mu.Unlock()
			return nil
		}
		select {
		case <-f.done:
			err := f.mu.err
			f.mu.Unlock()
			if err == nil {
				err = context.Canceled
			}
			return err
		default:
		}
		w = &ackWaiter{seq: seq, durable: durable, ch: make(chan struct{})}
		f.mu.waiters = append(f.mu.waiters, w)
		f.mu.Unlock()
		if durable {
			f.SyncTo(seq)
		} else {
			f.Kick()
		}
		select {
		case <-w.ch:
		case <-ctx.Done():
			f.mu.Lock()
			f.removeWaiterLocked(w)
			f.mu.Unlock()
			return ctx.Err()
		}
	}
}

func (f *Follower) removeWaiterLocked(w *ackWaiter) {
	for i, x := range f.mu.waiters {
		if x == w {
			last := len(f.mu.waiters) - 1
			f.mu.waiters[i] = f.mu.waiters[last]
			f.mu.waiters[last] = nil
			f.mu.waiters = f.mu.waiters[:last]
			return
		}
	}
}

func (f *Follower) setAcked(seq, durable uint64) {
	f.mu.Lock()
	if seq > f.mu.acked || durable > f.mu.durable {
		f.mu.acked = max(f.mu.acked, seq)
		f.mu.durable = max(f.mu.durable, durable)
		kept := f.mu.waiters[:0]
		for _, w := range f.mu.waiters {
			if (w.durable && f.mu.durable >= w.seq) || (!w.durable && f.mu.acked >= w.seq) {
				close(w.ch)
				continue
			}
			kept = append(kept, w)
		}
		clear(f.mu.waiters[len(kept):])
		f.mu.waiters = kept
	}
	f.mu.Unlock()
}

// testHookTap, when set, sees each follower's tap.
var testHookTap func(*cow.Tap)

// syncer is a target that acknowledges NoSync batches before they are
// durable and says how far they are.
type syncer interface{ Synced() uint64 }

func (f *Follower) run(ctx context.Context) error {
	o := f.o
	o.Upto = 0
	user := o.Progress
	sy, _ := f.o.Target.(syncer)
	o.Progress = func(p Progress) {
		durable := p.Acked
		if sy != nil {
			durable = sy.Synced()
		}
		f.setAcked(p.Acked, durable)
		if user != nil {
			user(p)
		}
	}
	// A stream that stays open does not move its target along when idle
	// on its own: the loop below does, every f.idle.
	o.IdleAdvance = 0
	s, st, info, err := openShipper(ctx, &o, f.mirror)
	if err != nil {
		return err
	}
	defer f.o.Target.Close()
	s.onAck = func(sent time.Time) {
		f.mu.Lock()
		if sent.After(f.mu.lastAck) {
			f.mu.lastAck = sent
		}
		f.mu.Unlock()
	}
	s.startAcker()
	f.mu.Lock()
	f.mu.opened, f.mu.target, f.mu.acked, f.mu.durable, f.mu.upto = true, st, st.Acked, st.Acked, s.o.Upto
	f.mu.Unlock()
	fail := func(err error) error {
		// Stop waiting for acks that may never come (a dead connection):
		// the next follower resumes from what the target holds.
		f.cancel()
		if derr := s.drain(); err == nil {
			err = derr
		}
		return err
	}
	if st.Acked < s.o.Upto {
		if err := s.run(st, info); err != nil {
			return fail(err)
		}
	}
	s.cur = &cow.Cursor{}
	s.follow = true
	// From here on the follower reads the changes from the tap (none if
	// another reader holds the volume's: then the journal).
	tap, err := s.o.Pool.OpenTap(s.o.Volume, func(n int) []byte { return getOpBuf(uint64(n)) }, 0)
	if err != nil {
		return fail(err)
	}
	if tap != nil {
		defer tap.Close()
		s.tap = tap
		if testHookTap != nil {
			testHookTap(tap)
		}
	}
	tick := time.NewTicker(f.idle)
	defer tick.Stop()
	for {
		var senderDone, ackDone <-chan struct{}
		if s.queue != nil {
			senderDone = s.senderDone
		}
		if s.acks != nil {
			ackDone = s.ackDone
		}
		idle := false
		select {
		case <-f.kick:
		case <-tick.C:
			idle = true
			if f.Durable() < f.Acked() {
				f.sync.Store(true)
			}
		case <-senderDone:
			return fail(s.senderErr)
		case <-ackDone:
			return fail(s.ackErr)
		case <-ctx.Done():
			return fail(ctx.Err())
		}
		s.syncLast = f.sync.Swap(false)
		upto := s.o.Pool.AppliedSeq()
		if upto < s.pos || (upto == s.pos && !s.syncLast && !idle) {
			continue // an idle tick sends an empty batch: the target hears the source is alive
		}
		s.o.Upto = upto
		if err := s.incremental(s.pos); err != nil {
			return fail(err)
		}
		if s.syncLast {
			f.syncSent.Store(upto)
		}
		f.mu.Lock()
		f.mu.upto = upto
		f.mu.Unlock()
	}
}
