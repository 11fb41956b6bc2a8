package daemon

// The synchronous mirror (docs/ha.md). A mirrored volume lives on two
// hosts. The primary serves it and keeps a follower stream (replica.Follow)
// open to the secondary's replica listener; a FLUSH (or FUA write) on the
// primary completes only once the secondary holds every change up to it
// durably. A witness breaks ties: the primary holds a lease there and
// serves I/O only while it does; the secondary asks for the lease all the
// time and gets it only when the primary's has run out and the secondary
// is not outdated (the primary marks it outdated, at the witness, before
// it acknowledges a flush without it). Epochs count primaries: the stream
// carries the primary's, and a host that sees a higher one steps down.
// Writes a host took that the new primary does not hold are kept as a
// split clone when it rejoins (the failback's BeforeDiscard).

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/replica"
)

// Mirror timing.
const (
	// mirrorSyncTimeout is how long a flush waits for the secondary before
	// the primary asks the witness to let it go on alone.
	mirrorSyncTimeout = 2 * time.Second
	// mirrorPoll is how often a secondary asks the witness for the lease,
	// and how often the primary checks a resync's progress.
	mirrorPoll = 250 * time.Millisecond
	// mirrorBlockLimit bounds how long I/O waits while the primary has no
	// lease (or a switchover pauses it) before it fails with EIO.
	mirrorBlockLimit = 60 * time.Second
	// mirrorRetryMax caps the backoff between stream attempts.
	mirrorRetryMax = 5 * time.Second
	// mirrorHeard: a secondary that had a batch from its primary this
	// recently does not ask for the lease (the primary sends at least
	// one a second).
	mirrorHeard = 2 * time.Second
)

// procStart anchors the lease clock: leases are kept as monotonic
// nanoseconds since it, so that a step of the wall clock cannot stretch
// one.
var procStart = time.Now()

// mono is now on the lease clock.
func mono() int64 { return int64(time.Since(procStart)) }

// monoOf is t on the lease clock (t must carry a monotonic reading, as
// time.Now's results and the witness client's ValidUntil do).
func monoOf(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return int64(t.Sub(procStart))
}

// mirrorServeUnleased: a primary in sync serves without a lease only while
// the secondary acknowledged a batch sent this recently (well under
// mirrorHeard, after which the secondary asks for the lease).
const mirrorServeUnleased = 1500 * time.Millisecond

var (
	// errNotPrimary: I/O on a host that is not (or no longer) the
	// mirror's primary.
	errNotPrimary = fmt.Errorf("%w: this host is not the mirror's primary", blockdev.ErrMoved)
	// errIOBlocked: I/O waited mirrorBlockLimit for a lease.
	errIOBlocked = fmt.Errorf("%w: the mirror's primary has had no lease from the witness for %s", blockdev.ErrIO, mirrorBlockLimit)
)

// vote is the witness's answer.
type vote struct {
	Granted    bool
	Epoch      uint64
	Holder     string
	Outdated   string
	Reason     string
	ValidUntil time.Time
}

// witnessClient is what the mirror asks the witness.
type witnessClient interface {
	Acquire(ctx context.Context, group, node, peer string, epoch uint64) (vote, error)
	SetOutdated(ctx context.Context, group, node string, epoch uint64, peer string, outdated bool) (vote, error)
	Handover(ctx context.Context, group, node string, epoch uint64, to string) (vote, error)
	Release(ctx context.Context, group, node string, epoch uint64) (vote, error)
	// Exists says whether the witness knows group: only the primary
	// creates it (with its first Acquire), never the secondary.
	Exists(ctx context.Context, group string) (bool, error)
}

// mirrorEntry is a mirrored volume's configuration, in DATA/mirror.json.
type mirrorEntry struct {
	Volume string `json:"volume"`
	Group  string `json:"group"`
	Role   string `json:"role"`
	Epoch  uint64 `json:"epoch"`
	// Peer is the other host's pool identity; PeerURL its replica
	// listener; SelfURL this host's, as the peer reaches it.
	Peer             string `json:"peer"`
	PeerURL          string `json:"peer_url"`
	SelfURL          string `json:"self_url"`
	TokenFile        string `json:"token_file"`
	TLSCA            string `json:"tls_ca,omitempty"`
	Insecure         bool   `json:"insecure,omitempty"`
	Witness          string `json:"witness,omitempty"`
	WitnessTokenFile string `json:"witness_token_file,omitempty"`
	// ValidUpto (a primary that stepped down after a restart): its
	// journal ended here when it restarted, so points after it that the
	// other host received may be lost here (replica.Receiver.LocalValid).
	ValidUpto uint64 `json:"valid_upto,omitempty"`
	// Points (a secondary that took over): which of its points read as
	// which of the old primary's, for the old primary's failback
	// (replica.Mirror.Points); dropped once it is in sync again.
	Points []replica.PointPair `json:"points,omitempty"`
}

// maxSavedPoints bounds the point pairs a promoted secondary keeps.
const maxSavedPoints = 1024

func (e *mirrorEntry) target() control.TargetSpec {
	return control.TargetSpec{To: e.PeerURL, TokenFile: e.TokenFile, TLSCA: e.TLSCA, Insecure: e.Insecure}
}

// mirrorManager runs the pool's mirrored volumes.
type mirrorManager struct {
	d    *Daemon
	pool *cow.Pool
	log  *slog.Logger
	path string
	// newWitness makes a witness client (tests inject one).
	newWitness func(e *mirrorEntry) (witnessClient, error)
	// onRole runs when this host becomes primary or secondary of a
	// volume (the floating address, the --on-promote hook).
	onRole func(vol, role string, epoch uint64)
	// The NBD server and the stream receiver, once the daemon has made
	// them (mirrors start before either).
	nbd  atomic.Pointer[nbd.Server]
	recv atomic.Pointer[replica.Receiver]

	mu struct {
		sync.Mutex
		entries map[string]*mirrorEntry
		run     map[string]*mirror
		// slots hold each volume's running mirror for its exports, which
		// look it up on every request: a volume attached before its
		// mirror was added goes through the mirror from then on.
		slots map[string]*atomic.Pointer[mirror]
	}
}

// slot is where vol's exports find its mirror (nil pointer: none).
func (m *mirrorManager) slot(vol string) *atomic.Pointer[mirror] {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.slotLocked(vol)
}

func (m *mirrorManager) slotLocked(vol string) *atomic.Pointer[mirror] {
	s := m.mu.slots[vol]
	if s == nil {
		s = new(atomic.Pointer[mirror])
		m.mu.slots[vol] = s
	}
	return s
}

// mirror is one mirrored volume at run time.
type mirror struct {
	m   *mirrorManager
	vol string
	w   witnessClient // nil: no witness
	ctx context.Context
	end context.CancelFunc
	wg  sync.WaitGroup
	// spawnMu orders spawn against stop; promoteMu serializes promote.
	spawnMu   sync.Mutex
	promoteMu sync.Mutex

	// The I/O gate: open while this host is the primary, holds a lease
	// (leaseUntil, Unix nanoseconds; 0 without a witness) and no
	// switchover pauses it. inflight counts requests past the gate.
	primary    atomic.Bool
	paused     atomic.Bool
	leaseUntil atomic.Int64
	inflight   atomic.Int64
	// announced: onRole heard this host is the primary (it takes the
	// floating address only while it holds a lease).
	announced atomic.Bool
	// decided is closed once a primary that restarted knows from the
	// witness whether it serves or yields (see leaseLoop): its stream
	// waits for that, since a stream from a host that lost its tail
	// rewinds the secondary.
	decided     chan struct{}
	decidedOnce sync.Once
	// streamGen counts stream loops started in one term (see streamLoop).
	streamGen atomic.Uint64
	// switching: a switchover runs (it moves the address itself).
	switching atomic.Bool
	// yieldUntil: a restarted primary that gave the lease to its
	// secondary does not ask for it back before then (lease clock).
	yieldUntil atomic.Int64
	// recovered: this host was the primary when the daemon started and
	// its journal ended here then; until a stream to the secondary has
	// opened, the secondary may hold points after it that were lost.
	recovered atomic.Uint64
	// inSync: the secondary is up to date and its stream alive. A primary
	// in sync serves on without a lease (the witness is away): every write
	// waits for the secondary, which does not take over while it hears
	// from the primary.
	inSync atomic.Bool
	// witnessMu orders the witness's outdated/up-to-date transitions
	// with the local state they allow (syncWait, inSync); degradeGen
	// counts attempts to degrade, degradeErr is the last one's result
	// (under witnessMu).
	witnessMu  sync.Mutex
	degradeGen atomic.Uint64
	degradeErr error
	// fenced: the primary lost its lease and told its clients to go
	// (until the lease comes back): waiting requests go unanswered.
	fenced atomic.Bool
	// f is the stream to the secondary while one runs (on the primary).
	f atomic.Pointer[replica.Follower]

	mu struct {
		sync.Mutex
		e        mirrorEntry
		syncWait bool // flushes wait for the secondary
		state    string
		since    time.Time
		lastErr  string
		synced   int64
		changed  chan struct{} // closed (and replaced) when the gate may have opened
	}
}

func newMirrorManager(d *Daemon, path string) (*mirrorManager, error) {
	m := &mirrorManager{d: d, pool: d.pool, log: d.opts.Logger, path: path}
	m.newWitness = newWitnessClient
	m.onRole = d.onMirrorRole
	entries, err := loadEntries(path, func(e *mirrorEntry) string { return e.Volume })
	if err != nil {
		return nil, err
	}
	m.mu.entries = entries
	m.mu.run = map[string]*mirror{}
	m.mu.slots = map[string]*atomic.Pointer[mirror]{}
	return m, nil
}

// start runs every configured mirror (at daemon start).
func (m *mirrorManager) start() {
	if v := m.d.vip; v != nil {
		// A host that was the primary before a crash may still hold the
		// address; it takes it again only once it holds a lease.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := v.Release(ctx); err != nil {
			m.log.Warn("mirror: releasing the floating address at start failed", "vip", v.String(), "err", err)
		}
		cancel()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, e := range m.mu.entries {
		if err := m.startLocked(*e, false); err != nil {
			m.log.Error("mirror: cannot start", "volume", e.Volume, "err", err)
		}
	}
}

func (m *mirrorManager) saveLocked() error { return saveEntries(m.path, m.mu.entries) }

// save stores e as the volume's entry.
func (m *mirrorManager) save(e mirrorEntry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mu.entries[e.Volume]; !ok {
		return nil // removed meanwhile
	}
	m.mu.entries[e.Volume] = &e
	return m.saveLocked()
}

// startLocked runs e; fresh: a mirror just added (the secondary is known
// to be outdated, so I/O need not wait for it while it copies).
func (m *mirrorManager) startLocked(e mirrorEntry, fresh bool) error {
	var w witnessClient
	if e.Witness != "" {
		var err error
		if w, err = m.newWitness(&e); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	mr := &mirror{m: m, vol: e.Volume, w: w, ctx: ctx, end: cancel, decided: make(chan struct{})}
	mr.mu.e = e
	mr.mu.changed = make(chan struct{})
	mr.mu.since = time.Now()
	m.mu.run[e.Volume] = mr
	m.slotLocked(e.Volume).Store(mr)
	if e.Role == control.RolePrimary {
		if !fresh {
			// Where the journal ended at this start; an earlier start's
			// end, not yet resolved, is older and still holds.
			r := m.pool.AppliedSeq()
			if e.ValidUpto != 0 && e.ValidUpto < r {
				r = e.ValidUpto
			}
			mr.recovered.Store(r)
			if e.ValidUpto != r {
				mr.mu.e.ValidUpto = r
				m.mu.entries[e.Volume].ValidUpto = r
				if err := m.saveLocked(); err != nil {
					m.log.Error("mirror: saving failed", "volume", e.Volume, "err", err)
				}
			}
		}
		mr.becomePrimary(0, time.Time{}, !fresh)
		if w == nil && m.onRole != nil {
			mr.announced.Store(true)
			go m.onRole(e.Volume, control.RolePrimary, e.Epoch)
		}
	} else {
		mr.setState(control.MirrorFollowing, "")
		mr.spawn(mr.secondaryLoop)
	}
	return nil
}

func (m *mirrorManager) close() {
	m.mu.Lock()
	runs := m.mu.run
	m.mu.run = map[string]*mirror{}
	m.mu.Unlock()
	// The slots keep the stopped mirrors: their gates stay shut, so a
	// request still running at shutdown is not acknowledged here alone.
	for _, mr := range runs {
		mr.stop()
	}
}

// wantsAddress says whether this host should hold the floating address
// now: a mirror here announced itself as the primary (holds a lease, or
// needs none) and has not stepped down or been fenced since. Role events
// act on this, not on themselves, so one that runs late (a fence's release
// after the lease came back) does not undo a newer one.
func (m *mirrorManager) wantsAddress() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, mr := range m.mu.run {
		if mr.announced.Load() {
			return true
		}
	}
	return false
}

// mirrored says whether vol is mirrored here.
func (m *mirrorManager) mirrored(vol string) bool { return m.get(vol) != nil }

func (m *mirrorManager) get(vol string) *mirror {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.mu.run[vol]
}

// stop ends the mirror's goroutines; the gate closes for good.
func (mr *mirror) stop() {
	mr.primary.Store(false)
	mr.spawnMu.Lock()
	mr.end()
	mr.spawnMu.Unlock()
	mr.wake()
	mr.wg.Wait()
	if f := mr.f.Swap(nil); f != nil {
		f.Stop()
	}
}

// spawn runs loop (which calls wg.Done) unless the mirror stopped: role
// changes come from goroutines of their own, and must not start loops
// that stop no longer waits for.
func (mr *mirror) spawn(loop func()) {
	mr.spawnMu.Lock()
	defer mr.spawnMu.Unlock()
	if mr.ctx.Err() != nil {
		return
	}
	mr.wg.Add(1)
	go loop()
}

// primaryAt says whether this host is still the primary in epoch.
func (mr *mirror) primaryAt(epoch uint64) bool {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	return mr.mu.e.Role == control.RolePrimary && mr.mu.e.Epoch == epoch
}

// stateName is the mirror's state (control.Mirror*).
func (mr *mirror) stateName() string {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	return mr.mu.state
}

func (mr *mirror) entry() mirrorEntry {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	return mr.mu.e
}

func (mr *mirror) setState(state, lastErr string) {
	mr.mu.Lock()
	defer mr.mu.Unlock()
	mr.setStateLocked(state, lastErr)
}

// setStateLocked moves to state, logging why; a mirror back in sync (or
// following) forgets its last error.
func (mr *mirror) setStateLocked(state, why string) {
	if mr.mu.state != state {
		mr.m.log.Info("mirror: "+state, "volume", mr.vol, "role", mr.mu.e.Role, "epoch", mr.mu.e.Epoch, "reason", why)
		mr.mu.state, mr.mu.since = state, time.Now()
	}
	switch state {
	case control.MirrorInSync, control.MirrorFollowing:
		mr.mu.lastErr = ""
	case control.MirrorDegraded, control.MirrorFenced:
		if why != "" {
			mr.mu.lastErr = why
		}
	}
}

// wake tells I/O waiting at the gate to look again.
func (mr *mirror) wake() {
	mr.mu.Lock()
	close(mr.mu.changed)
	mr.mu.changed = make(chan struct{})
	mr.mu.Unlock()
}

// open says whether I/O may pass the gate now.
func (mr *mirror) open() bool {
	if !mr.primary.Load() || mr.paused.Load() || mr.fenced.Load() {
		return false
	}
	if mr.w == nil || mono() < mr.leaseUntil.Load() {
		return true
	}
	// No lease (the witness is away): serve on only while the secondary
	// is in sync and answered lately, since it does not take over while it
	// hears from this host.
	if f := mr.f.Load(); f != nil && mr.inSync.Load() {
		return time.Since(f.LastAck()) < mirrorServeUnleased
	}
	return false
}

// enter passes the gate (waiting while it is shut, up to
// mirrorBlockLimit); exit must follow.
func (mr *mirror) enter() error {
	mr.inflight.Add(1)
	if mr.open() {
		return nil
	}
	mr.inflight.Add(-1)
	deadline := time.Now().Add(mirrorBlockLimit)
	for {
		mr.mu.Lock()
		ch, role := mr.mu.changed, mr.mu.e.Role
		mr.mu.Unlock()
		if role != control.RolePrimary || mr.ctx.Err() != nil || mr.fenced.Load() {
			return errNotPrimary
		}
		mr.inflight.Add(1)
		if mr.open() {
			return nil
		}
		mr.inflight.Add(-1)
		if time.Now().After(deadline) {
			return errIOBlocked
		}
		t := time.NewTimer(20 * time.Millisecond) // the lease may come back without a wake
		select {
		case <-ch:
		case <-t.C:
		}
		t.Stop()
	}
}

func (mr *mirror) exit() { mr.inflight.Add(-1) }

// waitSecondary returns once the secondary has applied seq (durable: and
// made it durable), or the mirror went on without it (degraded, with the
// witness's agreement).
func (mr *mirror) waitSecondary(seq uint64, durable bool) error {
	deadline := time.Now().Add(mirrorBlockLimit)
	for {
		if time.Now().After(deadline) {
			return errIOBlocked
		}
		mr.mu.Lock()
		wait, role := mr.mu.syncWait, mr.mu.e.Role
		mr.mu.Unlock()
		f := mr.f.Load()
		if role != control.RolePrimary {
			return errNotPrimary
		}
		if !wait {
			return nil
		}
		if f != nil {
			ctx, cancel := context.WithTimeout(mr.ctx, mirrorSyncTimeout)
			var err error
			if durable {
				err = f.WaitDurable(ctx, seq)
			} else {
				err = f.WaitAcked(ctx, seq)
			}
			cancel()
			if err == nil {
				return nil
			}
			if mr.ctx.Err() != nil {
				return errNotPrimary
			}
			// Its stream is as good as dead (a cut cable leaves the
			// connection open): a new one is tried, and until the
			// secondary is back in sync the gate wants a lease.
			mr.inSync.Store(false)
			if mr.f.CompareAndSwap(f, nil) {
				mr.m.log.Warn("mirror: the secondary did not confirm a write; restarting its stream", "volume", mr.vol, "seq", seq, "durable", durable, "err", err)
				go f.Stop()
			}
		}
		if mr.fenced.Load() {
			return errNotPrimary // the client was told to go; it resends elsewhere
		}
		if err := mr.degrade("the secondary did not confirm a write within " + mirrorSyncTimeout.String()); err != nil {
			mr.m.log.Debug("mirror: cannot go on without the secondary", "volume", mr.vol, "err", err)
			if mono() >= mr.leaseUntil.Load() {
				mr.fence("no lease, and the secondary does not answer: " + err.Error())
				return errNotPrimary
			}
			select {
			case <-time.After(mirrorPoll):
			case <-mr.ctx.Done():
				return errNotPrimary
			}
		}
	}
}

// degrade lets the primary go on without its secondary: the witness (if
// any) first records the secondary as outdated, so that it cannot take
// over with writes missing.
func (mr *mirror) degrade(reason string) error {
	// Witness transitions and the local state they allow change together.
	// Requests that waited here while another asked the witness take its
	// answer instead of asking again (with an unreachable witness, one
	// question each would drain them a timeout at a time).
	gen := mr.degradeGen.Load()
	mr.witnessMu.Lock()
	defer mr.witnessMu.Unlock()
	mr.mu.Lock()
	wait := mr.mu.syncWait
	mr.mu.Unlock()
	if !wait {
		return nil // degraded already
	}
	if mr.degradeGen.Load() != gen {
		return mr.degradeErr
	}
	err := mr.degradeLocked(reason)
	mr.degradeErr = err
	mr.degradeGen.Add(1)
	return err
}

// degradeLocked asks the witness and goes on alone if it agrees; under
// witnessMu.
func (mr *mirror) degradeLocked(reason string) error {
	e := mr.entry()
	if mr.w != nil && e.Peer != "" {
		ctx, cancel := context.WithTimeout(mr.ctx, 2*time.Second)
		v, err := mr.w.SetOutdated(ctx, e.Group, mr.m.pool.ID(), e.Epoch, e.Peer, true)
		cancel()
		if err != nil {
			return fmt.Errorf("witness: %w", err)
		}
		if !v.Granted {
			mr.noteRefusal(v)
			return fmt.Errorf("the witness refused to mark the secondary outdated: %s", v.Reason)
		}
	}
	mr.inSync.Store(false)
	mr.mu.Lock()
	mr.mu.syncWait = false
	mr.setStateLocked(control.MirrorDegraded, reason)
	mr.mu.Unlock()
	return nil
}

// fence notes that the primary lost its lease: I/O waits at the gate, and
// clients are disconnected once, so that reconnecting ones find whichever
// host holds the floating address (the new primary, if one took over).
func (mr *mirror) fence(why string) {
	mr.inSync.Store(false)
	mr.mu.Lock()
	mr.setStateLocked(control.MirrorFenced, why)
	mr.mu.Unlock()
	if mr.fenced.Swap(true) {
		return
	}
	mr.wake() // requests waiting at the gate go (unanswered)
	// The address goes too, once the clients are gone: a client must not
	// come back here while another host may be taking over. It returns
	// with the lease.
	release := mr.announced.Swap(false)
	go func() {
		mr.dropClients()
		if release && mr.m.onRole != nil {
			mr.m.onRole(mr.vol, roleFenced, mr.entry().Epoch)
		}
	}()
}

// dropClients disconnects the volume's NBD clients and waits (3 s at
// most) until their connections are closed: before the floating address
// goes, since a connection whose local address is gone cannot even send
// its FIN, and the client would wait for answers forever.
func (mr *mirror) dropClients() {
	srv := mr.m.nbd.Load()
	if srv == nil {
		return
	}
	srv.DisconnectExport(mr.vol)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		open := false
		for _, c := range srv.Connections() {
			if c.Export == mr.vol {
				open = true
			}
		}
		if !open {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	mr.m.log.Warn("mirror: clients still connected 3 s after they were told to go", "volume", mr.vol)
}

// roleFenced is what onRole hears when the primary lost its lease.
const roleFenced = "fenced"

// markUpToDate tells the witness the secondary is up to date again and
// puts the mirror in sync; false if the witness did not agree or the
// mirror degraded meanwhile.
func (mr *mirror) markUpToDate(e mirrorEntry) bool {
	mr.witnessMu.Lock()
	defer mr.witnessMu.Unlock()
	mr.mu.Lock()
	wait := mr.mu.syncWait
	mr.mu.Unlock()
	if !wait {
		return false // degraded since: start over
	}
	if mr.w != nil {
		ctx, cancel := context.WithTimeout(mr.ctx, 2*time.Second)
		v, err := mr.w.SetOutdated(ctx, e.Group, mr.m.pool.ID(), e.Epoch, e.Peer, false)
		cancel()
		if err != nil || !v.Granted {
			if err == nil {
				mr.noteRefusal(v)
				err = errors.New(v.Reason)
			}
			mr.m.log.Warn("mirror: the witness did not take the secondary as up to date", "volume", mr.vol, "err", err)
			return false
		}
	}
	mr.mu.Lock()
	mr.setStateLocked(control.MirrorInSync, "")
	mr.mu.Unlock()
	mr.inSync.Store(true)
	return true
}

// noteRefusal steps down when the witness says another host holds a
// newer epoch.
func (mr *mirror) noteRefusal(v vote) {
	e := mr.entry()
	if v.Holder != "" && v.Holder != mr.m.pool.ID() && v.Epoch > e.Epoch {
		go mr.stepDown(v.Epoch, "the witness gave epoch "+fmt.Sprint(v.Epoch)+" to the other host")
	}
}

// becomePrimary opens the gate side: the lease loop and the stream to
// the secondary. epoch > 0 is a promotion's new epoch.
func (mr *mirror) becomePrimary(epoch uint64, validUntil time.Time, syncWait bool) {
	mr.mu.Lock()
	if epoch > 0 {
		mr.mu.e.Epoch = epoch
	}
	mr.mu.e.Role = control.RolePrimary
	// Unless the witness holds the secondary as outdated (a new mirror),
	// every write and flush waits for it until it has caught up or the
	// witness agrees to go on without it.
	mr.mu.syncWait = syncWait
	mr.setStateLocked(control.MirrorSyncing, "")
	mr.mu.Unlock()
	if mr.w != nil {
		mr.leaseUntil.Store(monoOf(validUntil))
		mr.spawn(mr.leaseLoop)
	}
	mr.primary.Store(true)
	mr.wake()
	mr.spawn(mr.streamLoop)
}

// leaseLoop keeps the primary's lease at the witness.
func (mr *mirror) leaseLoop() {
	defer mr.wg.Done()
	every := time.Second
	epoch := mr.entry().Epoch // this loop serves this term only
	for {
		e := mr.entry()
		if e.Role != control.RolePrimary || e.Epoch != epoch {
			return
		}
		if e.Peer != "" {
			sent := time.Now()
			ctx, cancel := context.WithTimeout(mr.ctx, time.Second)
			v, err := mr.w.Acquire(ctx, e.Group, mr.m.pool.ID(), e.Peer, e.Epoch)
			cancel()
			switch {
			case mr.ctx.Err() != nil:
				return
			case err != nil:
				if mono() >= mr.leaseUntil.Load() && !mr.open() && !mr.paused.Load() {
					mr.fence("witness: " + err.Error())
				}
			case v.Granted && mr.recovered.Load() != 0 && v.Outdated == "" && e.Peer != "":
				// This primary restarted (perhaps losing writes that only
				// its journal's memory held) while its secondary is up to
				// date: the secondary has every write this host
				// acknowledged, so it takes over, and this host follows
				// it. (Serving on would have the secondary go back to this
				// host's journal end, losing acknowledged writes.)
				ctx, cancel := context.WithTimeout(mr.ctx, time.Second)
				_, rerr := mr.w.Release(ctx, e.Group, mr.m.pool.ID(), e.Epoch)
				cancel()
				if rerr != nil {
					mr.m.log.Warn("mirror: could not give the lease to the up-to-date secondary", "volume", mr.vol, "err", rerr)
					break
				}
				mr.m.log.Warn("mirror: this primary restarted while its secondary is up to date; the secondary takes over", "volume", mr.vol)
				// Its poll gets the lease within a second; this host asks
				// only if it has not (it may be gone too).
				mr.yieldUntil.Store(mono() + int64(5*time.Second))
				mr.decidedOnce.Do(func() { close(mr.decided) })
				go mr.stepDown(e.Epoch+1, "restarted while the secondary was up to date: it takes over")
				return
			case v.Granted:
				mr.decidedOnce.Do(func() { close(mr.decided) })
				mr.leaseUntil.Store(monoOf(v.ValidUntil))
				mr.fenced.Store(false)
				mr.wake()
				if !mr.announced.Swap(true) && mr.m.onRole != nil {
					go mr.m.onRole(mr.vol, control.RolePrimary, e.Epoch)
				}
				if lease := v.ValidUntil.Sub(sent); lease > 0 {
					every = max(lease/3, 100*time.Millisecond)
				}
				mr.mu.Lock()
				if mr.mu.state == control.MirrorFenced {
					st := control.MirrorInSync
					if !mr.mu.syncWait {
						st = control.MirrorDegraded
					}
					mr.setStateLocked(st, "")
				}
				mr.mu.Unlock()
			default:
				mr.fence("witness: " + v.Reason)
				mr.noteRefusal(v)
				if v.Holder != "" && v.Holder != mr.m.pool.ID() {
					mr.decidedOnce.Do(func() { close(mr.decided) }) // another host serves: no stream from here
				}
			}
		}
		select {
		case <-time.After(every):
		case <-mr.ctx.Done():
			return
		}
	}
}

// streamLoop keeps a follower to the secondary running, and tracks the
// resync: once the secondary holds everything, flushes wait for it and
// the witness hears that it is up to date.
func (mr *mirror) streamLoop() {
	defer mr.wg.Done()
	epoch := mr.entry().Epoch  // this loop serves this term only
	gen := mr.streamGen.Load() // and gives way to a newer loop
	if mr.w != nil && mr.recovered.Load() != 0 {
		select {
		case <-mr.decided:
		case <-mr.ctx.Done():
			return
		}
	}
	backoff := 200 * time.Millisecond
	// (primary goes false when a switchover hands over: no stream then.)
	for mr.ctx.Err() == nil && mr.primaryAt(epoch) && mr.primary.Load() && mr.streamGen.Load() == gen {
		f, err := mr.openFollower()
		if err == nil {
			backoff = 200 * time.Millisecond
			err = mr.track(f)
		}
		if mr.ctx.Err() != nil || !mr.primaryAt(epoch) || !mr.primary.Load() || mr.streamGen.Load() != gen {
			return
		}
		if errors.Is(err, replica.ErrFenced) {
			// The other host took over (a newer epoch): whatever the
			// witness says, this host must not go on.
			mr.stepDown(mr.entry().Epoch+1, "the other host refused this host's stream: "+err.Error())
			return
		}
		if err != nil {
			mr.m.log.Warn("mirror: stream to the secondary failed", "volume", mr.vol, "err", err)
			mr.mu.Lock()
			mr.mu.lastErr = err.Error()
			wait := mr.mu.syncWait
			mr.mu.Unlock()
			if wait {
				// Flushes would wait for a secondary that is gone.
				if derr := mr.degrade("the stream to the secondary failed: " + err.Error()); derr != nil {
					mr.m.log.Warn("mirror: cannot go on without the secondary", "volume", mr.vol, "err", derr)
				}
			}
		}
		select {
		case <-time.After(backoff):
		case <-mr.ctx.Done():
			return
		}
		backoff = min(backoff*2, mirrorRetryMax)
	}
}

func (mr *mirror) openFollower() (*replica.Follower, error) {
	e := mr.entry()
	tgt, remote, err := openTarget(e.target(), mr.vol)
	if err != nil {
		return nil, err
	}
	if r, ok := tgt.(*replica.Remote); ok {
		r.NoCompress() // latency counts more than bandwidth here
	}
	hello := &replica.Mirror{Group: e.Group, Epoch: e.Epoch, Peer: e.SelfURL, Self: e.PeerURL, Witness: e.Witness,
		Valid: mr.recovered.Load(), Points: e.Points}
	f := replica.Follow(mr.ctx, replica.ShipOptions{Pool: mr.m.pool, Volume: mr.vol, RemoteName: remote, Target: tgt,
		PinID: mirrorPinID(e), Logger: mr.m.log, Progress: func(p replica.Progress) {
			mr.mu.Lock()
			mr.mu.synced = p.DataBytes
			mr.mu.Unlock()
		}}, hello, mirrorHeard/4)
	mr.f.Store(f)
	return f, nil
}

func mirrorPinID(e mirrorEntry) string { return "mirror:" + e.Group }

// track watches a follower until it ends: it learns the secondary's
// identity, and brings a secondary that caught up into the flush path.
func (mr *mirror) track(f *replica.Follower) error {
	defer func() {
		mr.inSync.Store(false)
		mr.f.CompareAndSwap(f, nil)
		f.Stop()
	}()
	tick := time.NewTicker(mirrorPoll)
	defer tick.Stop()
	var target uint64 // once syncWait is set again: the point to reach before the witness hears
	for {
		select {
		case <-f.Done():
			return f.Err()
		case <-mr.ctx.Done():
			return nil
		case <-tick.C:
		}
		st, ok := f.Opened()
		if !ok {
			continue
		}
		if mr.recovered.Swap(0) != 0 {
			// The secondary has gone back to what this host holds.
			mr.mu.Lock()
			mr.mu.e.ValidUpto = 0
			e := mr.mu.e
			mr.mu.Unlock()
			if err := mr.m.save(e); err != nil {
				return err
			}
		}
		e := mr.entry()
		if e.Peer == "" {
			if err := mr.learnPeer(st.Pool); err != nil {
				return err
			}
			continue
		}
		if st.Pool != "" && st.Pool != e.Peer {
			return fmt.Errorf("%w: %s is pool %s, not the mirror's secondary %s", replica.ErrRefused, e.PeerURL, st.Pool, e.Peer)
		}
		if mr.inSync.Load() {
			continue
		}
		head, err := mr.m.pool.LastChange(mr.vol)
		if err != nil {
			return err
		}
		if f.Acked() < head {
			continue // catching up
		}
		mr.mu.Lock()
		wait := mr.mu.syncWait
		if !wait {
			// Caught up: from now on writes and flushes wait for the
			// secondary; once it durably holds what was written before
			// (read after this point), it is up to date.
			mr.mu.syncWait = true
			mr.setStateLocked(control.MirrorSyncing, "")
		}
		mr.mu.Unlock()
		if !wait {
			if target, err = mr.m.pool.LastChange(mr.vol); err != nil {
				return err
			}
			f.Sync()
			continue
		}
		if f.Durable() < target {
			f.Sync()
			continue
		}
		if !mr.markUpToDate(e) {
			continue
		}
		if len(e.Points) > 0 {
			mr.mu.Lock()
			mr.mu.e.Points = nil
			e := mr.mu.e
			mr.mu.Unlock()
			if err := mr.m.save(e); err != nil {
				mr.m.log.Warn("mirror: saving failed", "volume", mr.vol, "err", err)
			}
		}
	}
}

// learnPeer records the secondary's pool identity, the first time its
// stream opens, and registers the mirror at the witness.
func (mr *mirror) learnPeer(pool string) error {
	if pool == "" {
		return fmt.Errorf("%w: the secondary did not say its pool identity (an older strata?)", replica.ErrRefused)
	}
	mr.mu.Lock()
	mr.mu.e.Peer = pool
	e := mr.mu.e
	mr.mu.Unlock()
	if err := mr.m.save(e); err != nil {
		return err
	}
	if mr.w != nil {
		ctx, cancel := context.WithTimeout(mr.ctx, 2*time.Second)
		v, err := mr.w.Acquire(ctx, e.Group, mr.m.pool.ID(), e.Peer, e.Epoch)
		cancel()
		if err != nil {
			return fmt.Errorf("witness: %w", err)
		}
		if !v.Granted {
			mr.noteRefusal(v)
			return fmt.Errorf("the witness refused the lease: %s", v.Reason)
		}
		mr.leaseUntil.Store(monoOf(v.ValidUntil))
		mr.wake()
		if !mr.announced.Swap(true) && mr.m.onRole != nil {
			go mr.m.onRole(mr.vol, control.RolePrimary, e.Epoch)
		}
	}
	return nil
}

// secondaryLoop asks the witness for the lease; it gets it only when the
// primary's ran out and this host holds every acknowledged flush, and
// then takes over.
func (mr *mirror) secondaryLoop() {
	defer mr.wg.Done()
	if mr.w == nil {
		return // no automatic failover without a witness
	}
	known := false
	for {
		select {
		case <-time.After(mirrorPoll):
		case <-mr.ctx.Done():
			return
		}
		e := mr.entry()
		if e.Role != control.RoleSecondary {
			return
		}
		if e.Peer == "" || mono() < mr.yieldUntil.Load() {
			continue
		}
		if rs := mr.m.recv.Load(); rs != nil {
			if last, ok := rs.LastBatch(mr.vol); ok && time.Since(last) < mirrorHeard {
				if e.ValidUpto != 0 && len(rs.History(mr.vol)) > 0 {
					// Following the new primary: what this host lost no
					// longer matters.
					mr.mu.Lock()
					mr.mu.e.ValidUpto = 0
					e = mr.mu.e
					mr.mu.Unlock()
					if err := mr.m.save(e); err != nil {
						mr.m.log.Warn("mirror: saving failed", "volume", mr.vol, "err", err)
					}
				}
				continue // the primary is alive
			}
		}
		ctx, cancel := context.WithTimeout(mr.ctx, time.Second)
		if !known {
			known, _ = mr.w.Exists(ctx, e.Group)
		}
		var v vote
		var err error
		if known {
			v, err = mr.w.Acquire(ctx, e.Group, mr.m.pool.ID(), e.Peer, e.Epoch)
			if err == nil && !v.Granted && v.Holder == mr.m.pool.ID() && v.Epoch > e.Epoch {
				// A handover gave this host the lease, but its hello was
				// lost: take the epoch and ask again.
				v, err = mr.w.Acquire(ctx, e.Group, mr.m.pool.ID(), e.Peer, v.Epoch)
			}
		}
		cancel()
		if !known || err != nil || !v.Granted {
			continue
		}
		if err := mr.promote(v.Epoch, v.ValidUntil, "the primary's lease ran out at the witness"); err != nil {
			mr.m.log.Error("mirror: taking over failed", "volume", mr.vol, "err", err)
			continue
		}
		return
	}
}

// promote makes this secondary the primary with epoch.
func (mr *mirror) promote(epoch uint64, validUntil time.Time, why string) error {
	m := mr.m
	// One promotion at a time: a handover's and the witness poll's may
	// race for the same epoch.
	mr.promoteMu.Lock()
	defer mr.promoteMu.Unlock()
	mr.mu.Lock()
	if mr.mu.e.Role == control.RolePrimary {
		mr.mu.Unlock()
		return nil
	}
	old := mr.mu.e.Epoch
	if epoch == 0 {
		epoch = old + 1 // no witness: the next term
	}
	mr.mu.e.Epoch = max(epoch, old) // from now on the old primary's stream is refused
	epoch = mr.mu.e.Epoch
	mr.mu.Unlock()
	var points []replica.PointPair
	if rs := m.recv.Load(); rs != nil {
		if !rs.Stop(mr.vol) {
			mr.mu.Lock()
			mr.mu.e.Epoch = old // not taken over: the old primary may still ship
			mr.mu.Unlock()
			return fmt.Errorf("%w: the old primary's stream into %s does not end", cow.ErrBusy, mr.vol)
		}
		points = rs.History(mr.vol)
		if len(points) > maxSavedPoints {
			points = points[len(points)-maxSavedPoints:]
		}
	}
	if rs, err := m.pool.ReplicaStateOf(mr.vol); err == nil && rs != nil && !rs.Promoted {
		if _, err := replica.Promote(mr.ctx, m.pool, mr.vol); err != nil {
			return fmt.Errorf("promote %s: %w", mr.vol, err)
		}
	} else if err := m.pool.SetReadOnly(mr.vol, false); err != nil {
		return err
	}
	mr.mu.Lock()
	mr.mu.e.Role, mr.mu.e.Points, mr.mu.e.ValidUpto = control.RolePrimary, points, 0
	e := mr.mu.e
	mr.mu.Unlock()
	if err := m.save(e); err != nil {
		return err
	}
	// The old primary resyncs from this point when it returns: the
	// journal keeps what it will need.
	if err := m.pool.PinShipped(mirrorPinID(e), mr.vol, m.pool.AppliedSeq()); err != nil {
		m.log.Warn("mirror: could not pin the journal for the old primary's return", "volume", mr.vol, "err", err)
	}
	m.log.Warn("mirror: this host is now the primary", "volume", mr.vol, "epoch", epoch, "reason", why)
	if mr.w != nil {
		// The old primary is gone: it is outdated from the first write on.
		ctx, cancel := context.WithTimeout(mr.ctx, 2*time.Second)
		v, err := mr.w.SetOutdated(ctx, e.Group, m.pool.ID(), epoch, e.Peer, true)
		cancel()
		mr.becomePrimary(0, validUntil, true)
		if err == nil && v.Granted {
			mr.mu.Lock()
			mr.mu.syncWait = false
			mr.setStateLocked(control.MirrorDegraded, "the old primary is away")
			mr.mu.Unlock()
		}
	} else {
		mr.becomePrimary(0, validUntil, false)
	}
	if !mr.announced.Swap(true) && m.onRole != nil {
		go m.onRole(mr.vol, control.RolePrimary, epoch)
	}
	return nil
}

// stepDown makes this primary a secondary that waits for the new
// primary's stream: I/O stops, clients are disconnected (they reconnect to
// the new primary), and writes the new primary does not hold are kept as
// a split clone when its stream arrives.
func (mr *mirror) stepDown(epoch uint64, why string) {
	m := mr.m
	if mr.ctx.Err() != nil {
		return // the mirror was removed or the daemon stops
	}
	mr.mu.Lock()
	if mr.mu.e.Role != control.RolePrimary || epoch < mr.mu.e.Epoch {
		mr.mu.Unlock()
		return
	}
	mr.primary.Store(false)
	old := mr.mu.e.Epoch
	mr.mu.e.Role, mr.mu.e.Epoch, mr.mu.e.Points = control.RoleSecondary, epoch, nil
	if r := mr.recovered.Swap(0); r != 0 {
		mr.mu.e.ValidUpto = r
	}
	mr.setStateLocked(control.MirrorFollowing, why)
	e := mr.mu.e
	mr.mu.Unlock()
	f := mr.f.Load()
	mr.wake()
	m.log.Warn("mirror: this host is no longer the primary", "volume", mr.vol, "old_epoch", old, "epoch", epoch, "reason", why)
	if f != nil {
		f.Stop()
	}
	mr.dropClients()
	if err := replica.AwaitFailback(m.pool, mr.vol); err != nil {
		m.log.Error("mirror: could not make the volume wait for the new primary", "volume", mr.vol, "err", err)
	}
	if err := m.save(e); err != nil {
		m.log.Error("mirror: saving the new role failed", "volume", mr.vol, "err", err)
	}
	if !mr.switching.Load() && mr.announced.Swap(false) && m.onRole != nil {
		// (A switchover moves the address itself, in its own time.)
		go m.onRole(mr.vol, control.RoleSecondary, epoch)
	}
	mr.spawn(mr.secondaryLoop)
}

// checkHello is the receiver's hook: it fences primaries with an old
// epoch, records a new secondary's configuration, makes a primary that
// sees a newer one step down, and takes a planned handover.
func (m *mirrorManager) checkHello(h replica.Hello) error {
	hm := h.Mirror
	m.mu.Lock()
	mr := m.mu.run[h.Target]
	m.mu.Unlock()
	if hm == nil {
		if mr != nil && mr.entry().Role == control.RolePrimary {
			return fmt.Errorf("%w: %q is the primary of a mirror here; replication into it is refused", replica.ErrRefused, h.Target)
		}
		return nil
	}
	if mr == nil {
		return m.newSecondary(h)
	}
	e := mr.entry()
	switch {
	case hm.Group != e.Group:
		return fmt.Errorf("%w: %q here belongs to mirror %s, not %s", replica.ErrRefused, h.Target, e.Group, hm.Group)
	case hm.Epoch < e.Epoch:
		return fmt.Errorf("%w: the stream's epoch %d is older than %d: another host has taken over %q", replica.ErrFenced, hm.Epoch, e.Epoch, h.Target)
	case e.Role == control.RolePrimary && hm.Epoch == e.Epoch:
		return fmt.Errorf("%w: %q is the primary here at epoch %d too", replica.ErrRefused, h.Target, e.Epoch)
	case e.Role == control.RolePrimary:
		mr.stepDown(hm.Epoch, fmt.Sprintf("a primary with epoch %d ships to this host", hm.Epoch))
	}
	if hm.Handover && hm.Final {
		// A migration: the volume is this host's alone from now on.
		if err := m.remove(h.Target); err != nil {
			return err
		}
		mr.stop()
		if rs := m.recv.Load(); rs != nil {
			rs.Stop(h.Target)
		}
		if rs, err := m.pool.ReplicaStateOf(h.Target); err == nil && rs != nil && !rs.Promoted {
			if _, err := replica.Promote(context.Background(), m.pool, h.Target); err != nil {
				return fmt.Errorf("promote %s: %w", h.Target, err)
			}
		}
		m.log.Warn("mirror: the volume migrated here; it is no longer mirrored", "volume", h.Target)
		if m.onRole != nil {
			go m.onRole(h.Target, control.RolePrimary, hm.Epoch)
		}
		return fmt.Errorf("%w: %q is served here now", replica.ErrHandedOver, h.Target)
	}
	if hm.Handover {
		// The witness handed this host a lease a moment ago; the lease
		// loop renews it at once.
		if err := mr.promote(hm.Epoch, time.Now().Add(time.Second), "planned switchover"); err != nil {
			return err
		}
		return fmt.Errorf("%w: %q is the primary here now (epoch %d)", replica.ErrHandedOver, h.Target, hm.Epoch)
	}
	if hm.Epoch > e.Epoch || e.Peer == "" || e.Peer != h.Source.Pool || e.PeerURL != hm.Peer {
		mr.mu.Lock()
		mr.mu.e.Epoch = max(mr.mu.e.Epoch, hm.Epoch)
		mr.mu.e.Peer = h.Source.Pool
		if hm.Peer != "" {
			mr.mu.e.PeerURL = hm.Peer
		}
		e := mr.mu.e
		mr.mu.Unlock()
		return m.save(e)
	}
	return nil
}

// localValid is the receiver's LocalValid hook (see mirrorEntry.ValidUpto).
func (m *mirrorManager) localValid(vol string) uint64 {
	if mr := m.get(vol); mr != nil {
		return mr.entry().ValidUpto
	}
	return 0
}

// newSecondary records this host as the secondary of a mirror whose
// primary just opened its first stream here.
func (m *mirrorManager) newSecondary(h replica.Hello) error {
	hm := h.Mirror
	if hm.Handover {
		return fmt.Errorf("%w: no mirror of %q here to hand over", replica.ErrRefused, h.Target)
	}
	if info, err := m.pool.VolumeInfo(h.Target); err == nil {
		if rs := info.Replica; rs == nil || rs.Promoted || rs.SourcePool != h.Source.Pool || rs.SourceVol != h.Source.Vol {
			return fmt.Errorf("%w: volume %q exists here and is not a replica of %s (pool %s): it cannot become that mirror's secondary; name another volume or delete it here",
				replica.ErrRefused, h.Target, h.Source.Name, h.Source.Pool)
		}
	}
	o := m.d.opts
	e := mirrorEntry{Volume: h.Target, Group: hm.Group, Role: control.RoleSecondary, Epoch: hm.Epoch, Peer: h.Source.Pool,
		PeerURL: hm.Peer, SelfURL: hm.Self, TokenFile: o.ReplicaTokenFile, Insecure: o.ReplicaInsecure,
		Witness: hm.Witness, WitnessTokenFile: o.ReplicaTokenFile}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mu.entries[e.Volume]; ok {
		return nil
	}
	m.mu.entries[e.Volume] = &e
	if err := m.saveLocked(); err != nil {
		delete(m.mu.entries, e.Volume)
		return err
	}
	m.log.Info("mirror: this host is the secondary", "volume", e.Volume, "group", e.Group, "primary", e.PeerURL, "witness", e.Witness)
	return m.startLocked(e, false)
}

// beforeDiscard keeps the writes a stepping-down primary took that the new
// primary does not hold, as clone VOL-split-EPOCH, before the failback
// rolls them back.
func (m *mirrorManager) beforeDiscard(vol string, common uint64) error {
	mr := m.get(vol)
	if mr == nil {
		return nil
	}
	e := mr.entry()
	name := fmt.Sprintf("%s-split-%d", vol, e.Epoch-1)
	for i := 2; ; i++ {
		if _, err := m.pool.VolumeInfo(name); errors.Is(err, blockdev.ErrNotFound) {
			break
		}
		name = fmt.Sprintf("%s-split-%d-%d", vol, e.Epoch-1, i)
	}
	info, err := m.pool.Clone(vol, fmt.Sprintf("seq:%d", m.pool.AppliedSeq()), name)
	if err != nil {
		return fmt.Errorf("keep the split writes as %s: %w", name, err)
	}
	m.log.Warn("mirror: writes this host took that the new primary does not hold are kept as a clone", "volume", vol, "clone", info.Name, "common_seq", common)
	return nil
}

// add starts mirroring: it checks the secondary answers (and learns its
// identity and the witness's lease) before it stores anything.
func (m *mirrorManager) add(ctx context.Context, req control.MirrorAddRequest) (control.MirrorStatus, error) {
	info, err := m.pool.VolumeInfo(req.Volume)
	if err != nil {
		return control.MirrorStatus{}, err
	}
	if info.Replica != nil && !info.Replica.Promoted {
		return control.MirrorStatus{}, fmt.Errorf("%w: %q is a replica; mirror it from its primary", errBadRequest, req.Volume)
	}
	if slices.Contains(m.d.opts.UblkVolumes, req.Volume) {
		return control.MirrorStatus{}, fmt.Errorf("%w: %q is served as a ublk device too, which a mirror cannot hold back while another host takes over; serve it over NBD only", errBadRequest, req.Volume)
	}
	if !strings.HasPrefix(req.To, "strata://") {
		return control.MirrorStatus{}, fmt.Errorf("%w: --to %q: a mirror's secondary is another strata host: strata://HOST:PORT", errBadRequest, req.To)
	}
	self := req.Self
	if self == "" {
		la := m.d.opts.ReplicaListen
		host, _, err := net.SplitHostPort(la)
		if la == "" || err != nil || host == "" || net.ParseIP(host).IsUnspecified() {
			return control.MirrorStatus{}, fmt.Errorf("%w: give --self strata://HOST:PORT, where the secondary reaches this host's --replica-listen (%q names no host), so that it can ship back once it takes over", errBadRequest, la)
		}
		self = "strata://" + la
	}
	if m.d.opts.ReplicaListen == "" {
		return control.MirrorStatus{}, fmt.Errorf("%w: this daemon has no --replica-listen: the secondary could not ship back to it after a failover", errBadRequest)
	}
	g := make([]byte, 8)
	rand.Read(g)
	e := mirrorEntry{Volume: req.Volume, Group: hex.EncodeToString(g), Role: control.RolePrimary, Epoch: 1, PeerURL: req.To, SelfURL: self,
		TokenFile: req.TokenFile, TLSCA: req.TLSCA, Insecure: req.Insecure, Witness: req.Witness, WitnessTokenFile: req.WitnessTokenFile}
	if e.WitnessTokenFile == "" {
		e.WitnessTokenFile = e.TokenFile
	}
	if _, _, err := openTarget(e.target(), req.Volume); err != nil {
		return control.MirrorStatus{}, err
	}
	if e.Witness != "" {
		if _, err := m.newWitness(&e); err != nil {
			return control.MirrorStatus{}, err
		}
	}
	m.mu.Lock()
	if _, ok := m.mu.entries[req.Volume]; ok {
		m.mu.Unlock()
		return control.MirrorStatus{}, fmt.Errorf("%w: %q is mirrored already (strata mirror status %s)", cow.ErrExists, req.Volume, req.Volume)
	}
	m.mu.entries[req.Volume] = &e
	if err := m.saveLocked(); err != nil {
		delete(m.mu.entries, req.Volume)
		m.mu.Unlock()
		return control.MirrorStatus{}, err
	}
	err = m.startLocked(e, true)
	mr := m.mu.run[req.Volume]
	m.mu.Unlock()
	if err != nil {
		return control.MirrorStatus{}, err
	}
	// Wait until the stream opened (the secondary answered and, with a
	// witness, the lease is held), or say why not.
	deadline := time.Now().Add(15 * time.Second)
	for {
		st := mr.status(ctx)
		if mr.entry().Peer != "" && (mr.w == nil || mr.open()) {
			return st, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			m.removeEntry(req.Volume)
			msg := st.LastError
			if msg == "" {
				msg = "no answer"
			}
			return st, fmt.Errorf("%w: the mirror did not start: %s", replica.ErrRefused, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// remove stops mirroring vol here; the other host keeps its copy (and its
// own configuration).
func (m *mirrorManager) remove(vol string) error {
	// A primary that ends its mirror has the witness record the
	// secondary as outdated first: otherwise the secondary, hearing no
	// more from it, would take over the volume this host goes on serving.
	if mr := m.get(vol); mr != nil {
		if e := mr.entry(); e.Role == control.RolePrimary && mr.w != nil && e.Peer != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			v, err := mr.w.SetOutdated(ctx, e.Group, m.pool.ID(), e.Epoch, e.Peer, true)
			cancel()
			if err == nil && !v.Granted {
				err = errors.New(v.Reason)
			}
			if err != nil {
				return fmt.Errorf("%w: the witness must record %s as outdated before this host stops mirroring %q (or the secondary would take over): %v; retry when the witness answers",
					cow.ErrBusy, e.PeerURL, vol, err)
			}
		}
	}
	return m.removeEntry(vol)
}

// removeEntry forgets vol's mirror and stops it.
func (m *mirrorManager) removeEntry(vol string) error {
	m.mu.Lock()
	e, ok := m.mu.entries[vol]
	if !ok {
		m.mu.Unlock()
		return fmt.Errorf("%w: %q is not mirrored here", blockdev.ErrNotFound, vol)
	}
	delete(m.mu.entries, vol)
	err := m.saveLocked()
	mr := m.mu.run[vol]
	delete(m.mu.run, vol)
	m.slotLocked(vol).Store(nil)
	m.mu.Unlock()
	if mr != nil {
		// stop waits for goroutines that may call into the manager:
		// not under its lock.
		go func() {
			mr.stop()
			if e.Role == control.RolePrimary {
				m.pool.UnpinShipped(mirrorPinID(*e))
			}
		}()
	}
	return err
}

func (m *mirrorManager) statuses(ctx context.Context) []control.MirrorStatus {
	m.mu.Lock()
	var runs []*mirror
	for _, mr := range m.mu.run {
		runs = append(runs, mr)
	}
	m.mu.Unlock()
	out := make([]control.MirrorStatus, 0, len(runs))
	for _, mr := range runs {
		out = append(out, mr.status(ctx))
	}
	slices.SortFunc(out, func(a, b control.MirrorStatus) int { return strings.Compare(a.Volume, b.Volume) })
	return out
}

func (mr *mirror) status(ctx context.Context) control.MirrorStatus {
	f := mr.f.Load()
	mr.mu.Lock()
	e := mr.mu.e
	st := control.MirrorStatus{Volume: mr.vol, Group: e.Group, Role: e.Role, State: mr.mu.state, Epoch: e.Epoch, PeerURL: e.PeerURL, SelfURL: e.SelfURL,
		Witness: e.Witness, Since: mr.mu.since.UTC(), LastError: mr.mu.lastErr, SyncedBytes: mr.mu.synced}
	mr.mu.Unlock()
	if e.Role == control.RolePrimary {
		st.Head, _ = mr.m.pool.LastChange(mr.vol)
		if f != nil {
			st.Acked = f.Acked()
		} else if pin, ok := mr.m.pool.ShipPins()[mirrorPinID(e)]; ok {
			st.Acked = pin.Seq // what the secondary held when its stream ended
		} else {
			st.LagBytes = -1 // unknown: the secondary has not connected since this host took over
		}
		if st.LagBytes == 0 && st.Acked < st.Head {
			if _, b, _, err := mr.m.pool.Pending(ctx, mr.vol, st.Acked); err == nil {
				st.LagBytes = b
			}
		}
		if mr.w != nil {
			left := time.Duration(mr.leaseUntil.Load() - mono()).Round(time.Millisecond)
			st.LeaseLeft = max(left, 0).String()
		}
	}
	return st
}

// switchover hands the primary role to the secondary: I/O pauses, the
// secondary gets every write, takes over, and clients are sent there.
func (m *mirrorManager) switchover(ctx context.Context, vol string, final bool) (control.MirrorSwitchoverReply, error) {
	mr := m.get(vol)
	if mr == nil {
		return control.MirrorSwitchoverReply{}, fmt.Errorf("%w: %q is not mirrored here", blockdev.ErrNotFound, vol)
	}
	st := mr.status(ctx)
	if st.Role != control.RolePrimary {
		return control.MirrorSwitchoverReply{}, fmt.Errorf("%w: this host is the secondary of %q; run the switchover on the primary (%s)", errBadRequest, vol, st.PeerURL)
	}
	if st.State != control.MirrorInSync {
		return control.MirrorSwitchoverReply{}, fmt.Errorf("%w: the mirror of %q is %s, not in sync; wait for it (strata mirror status %s)", cow.ErrBusy, vol, st.State, vol)
	}
	start := time.Now()
	mr.switching.Store(true)
	defer mr.switching.Store(false)
	mr.paused.Store(true)
	resume := func() {
		mr.paused.Store(false)
		mr.wake()
	}
	// In-flight requests finish; new ones wait at the gate.
	for mr.inflight.Load() > 0 {
		if time.Since(start) > 10*time.Second {
			resume()
			return control.MirrorSwitchoverReply{}, fmt.Errorf("%w: requests in flight did not finish in 10s", cow.ErrBusy)
		}
		time.Sleep(time.Millisecond)
	}
	if err := m.pool.Flush(); err != nil {
		resume()
		return control.MirrorSwitchoverReply{}, err
	}
	head, err := m.pool.LastChange(vol)
	if err != nil {
		resume()
		return control.MirrorSwitchoverReply{}, err
	}
	f := mr.f.Load()
	e := mr.entry()
	if f == nil {
		resume()
		return control.MirrorSwitchoverReply{}, fmt.Errorf("%w: the stream to the secondary is down", cow.ErrBusy)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = f.WaitAcked(wctx, head)
	cancel()
	if err != nil {
		resume()
		return control.MirrorSwitchoverReply{}, fmt.Errorf("the secondary did not take the last writes: %w", err)
	}
	next := e.Epoch + 1
	if mr.w != nil {
		hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		v, err := mr.w.Handover(hctx, e.Group, m.pool.ID(), e.Epoch, e.Peer)
		cancel()
		if err != nil || !v.Granted {
			resume()
			if err == nil {
				err = errors.New(v.Reason)
			}
			return control.MirrorSwitchoverReply{}, fmt.Errorf("witness: handover refused: %w", err)
		}
		next = v.Epoch
	}
	// From here on this host is not the primary, whatever the secondary
	// answers: the witness (if any) says so already. Requests waiting at
	// the gate go unanswered (their clients resend them to the new
	// primary). The secondary hears at once, while the lease the witness
	// handed it is fresh; it announces the address, and only then are the
	// clients here disconnected (this host still has the address to send
	// their FIN from) and the address released.
	mr.primary.Store(false)
	mr.fenced.Store(true)
	mr.wake()
	f.Stop()
	tgt, remote, err := openTarget(e.target(), vol)
	if err == nil {
		_, err = tgt.Open(ctx, replica.Hello{Source: replica.VolumeID{Pool: m.pool.ID(), Name: vol}, Target: remote,
			Mirror: &replica.Mirror{Group: e.Group, Epoch: next, Peer: e.SelfURL, Self: e.PeerURL, Witness: e.Witness, Handover: true, Final: final}})
		tgt.Close()
	}
	if !errors.Is(err, replica.ErrHandedOver) {
		// The secondary did not take over. Without a witness it did not:
		// this host goes on. With one, the witness gave it the lease: its
		// poll finds that and it takes over.
		if mr.w == nil {
			mr.fenced.Store(false)
			mr.primary.Store(true)
			mr.streamGen.Add(1) // the stream loop ended when primary went false: a new one
			mr.spawn(mr.streamLoop)
			resume()
			return control.MirrorSwitchoverReply{}, fmt.Errorf("the secondary did not take over: %v", err)
		}
		m.log.Warn("mirror: the secondary did not answer the handover; the witness gave it the lease", "volume", vol, "err", err)
	}
	// I/O waited from the pause until the secondary took over; what
	// follows (clients told to go, the address moved) happens while the
	// new primary serves.
	paused := time.Since(start)
	mr.dropClients()
	if mr.announced.Load() && m.onRole != nil {
		// Keep the address a moment: a client that reconnects at once
		// (QEMU does) still reaches this host and is refused at the
		// handshake, quickly, and tries again; the new primary's
		// announcements meanwhile move the clients' neighbour entries
		// (which ignore an update less than a second after the last).
		// An address taken away under a handshake in progress would
		// leave that client waiting for an answer that cannot be sent.
		time.Sleep(1500 * time.Millisecond)
		mr.dropClients()
	}
	if mr.announced.Swap(false) && m.onRole != nil {
		m.onRole(vol, control.RoleSecondary, next)
	}
	mr.paused.Store(false)
	mr.fenced.Store(false)
	mr.stepDown(next, "planned switchover")
	msg := fmt.Sprintf("%s: %s is the primary now (epoch %d); this host follows it", vol, e.PeerURL, next)
	if final {
		if err := m.remove(vol); err != nil {
			return control.MirrorSwitchoverReply{}, err
		}
		// Clients were disconnected by stepDown; the volume goes.
		var derr error
		for i := 0; i < 50; i++ {
			if derr = m.pool.DeleteVolume(vol, true); derr == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if derr != nil {
			return control.MirrorSwitchoverReply{Paused: paused}, fmt.Errorf("migrated, but deleting %s here failed: %w", vol, derr)
		}
		msg = fmt.Sprintf("%s moved to %s; it is no longer here", vol, e.PeerURL)
	}
	m.log.Info("mirror: switchover", "volume", vol, "epoch", next, "paused", paused, "final", final)
	return control.MirrorSwitchoverReply{Message: msg, Paused: paused}, nil
}

// mirroredVolume is a volume's export that goes through the volume's
// mirror while it has one: I/O passes the gate, and a flush returns once
// the secondary holds what it covers.
type mirroredVolume struct {
	*meteredVolume
	vol  string
	slot *atomic.Pointer[mirror]
}

// enter passes the gate of the volume's mirror, if it has one; the
// mirror it returns (nil: none) must be given to exit.
func (v *mirroredVolume) enter() (*mirror, error) {
	mr := v.slot.Load()
	if mr == nil {
		return nil, nil
	}
	return mr, mr.enter()
}

func exit(mr *mirror) {
	if mr != nil {
		mr.exit()
	}
}

// WritesWait implements blockdev.WriteWaiter: a mirrored volume's writes
// wait for the secondary.
func (v *mirroredVolume) WritesWait() bool { return v.slot.Load() != nil }

func (v *mirroredVolume) BlockStatus(off, length int64) ([]blockdev.Extent, error) {
	mr, err := v.enter()
	if err != nil {
		return nil, err
	}
	defer exit(mr)
	return v.meteredVolume.BlockStatus(off, length)
}

func (v *mirroredVolume) ReadAt(p []byte, off int64) (int, error) {
	mr, err := v.enter()
	if err != nil {
		return 0, err
	}
	defer exit(mr)
	return v.meteredVolume.ReadAt(p, off)
}

func (v *mirroredVolume) TryReadAt(p []byte, off int64) (bool, error) {
	if mr := v.slot.Load(); mr != nil && !mr.open() {
		return false, nil // ReadAt waits at the gate
	}
	return v.meteredVolume.TryReadAt(p, off)
}

func (v *mirroredVolume) ReadRefs(off int64, n int) ([][]byte, func(), bool, error) {
	if mr := v.slot.Load(); mr != nil && !mr.open() {
		return nil, nil, false, nil
	}
	return v.meteredVolume.ReadRefs(off, n)
}

func (v *mirroredVolume) WriteAt(p []byte, off int64) (int, error) {
	mr, err := v.enter()
	if err != nil {
		return 0, err
	}
	defer exit(mr)
	if mr == nil {
		return v.meteredVolume.WriteAt(p, off)
	}
	n, seq, err := v.meteredVolume.writeAtSeq(p, off)
	if err == nil {
		err = mr.written(v.vol, seq)
	}
	return n, err
}

func (v *mirroredVolume) WriteBatch(ws []blockdev.BlockWrite) error {
	mr, err := v.enter()
	if err != nil {
		return err
	}
	defer exit(mr)
	if mr == nil {
		return v.meteredVolume.WriteBatch(ws)
	}
	seq, err := v.meteredVolume.writeBatchSeq(ws)
	if err == nil {
		err = mr.written(v.vol, seq)
	}
	return err
}

func (v *mirroredVolume) Trim(off, length int64) error {
	mr, err := v.enter()
	if err != nil {
		return err
	}
	defer exit(mr)
	err = v.meteredVolume.Trim(off, length)
	if mr != nil && err == nil {
		err = mr.written(v.vol, 0)
	}
	return err
}

func (v *mirroredVolume) WriteZeroes(off, length int64, noHole bool) error {
	mr, err := v.enter()
	if err != nil {
		return err
	}
	defer exit(mr)
	err = v.meteredVolume.WriteZeroes(off, length, noHole)
	if mr != nil && err == nil {
		err = mr.written(v.vol, 0)
	}
	return err
}

func (v *mirroredVolume) Flush() error {
	mr, err := v.enter()
	if err != nil {
		return err
	}
	defer exit(mr)
	if mr == nil {
		return v.meteredVolume.Flush()
	}
	seq, err := mr.m.pool.LastChange(v.vol)
	if err != nil {
		return err
	}
	if f := mr.f.Load(); f != nil {
		f.SyncTo(seq)
	}
	if err := v.meteredVolume.Flush(); err != nil {
		return err
	}
	return mr.waitSecondary(seq, true)
}

// written returns once the secondary has applied vol's changes up to
// point seq (0: all so far), or the mirror goes on without it: a write is
// acknowledged only then, so that a primary killed right after loses no
// acknowledged write. A write waits for its own point, not for the writes
// that came after it.
func (mr *mirror) written(vol string, seq uint64) error {
	mr.mu.Lock()
	wait := mr.mu.syncWait
	mr.mu.Unlock()
	mr.kick()
	if !wait {
		return nil
	}
	if seq == 0 {
		var err error
		if seq, err = mr.m.pool.LastChange(vol); err != nil {
			return err
		}
	}
	return mr.waitSecondary(seq, false)
}

// kick tells the follower there is something to ship.
func (mr *mirror) kick() {
	if f := mr.f.Load(); f != nil {
		f.Kick()
	}
}

// newWitnessClient is filled in by mirror_witness.go.
var newWitnessClient = func(e *mirrorEntry) (witnessClient, error) {
	return nil, fmt.Errorf("%w: no witness client built in", errBadRequest)
}
