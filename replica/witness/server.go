package witness

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sort"
	"sync"
	"time"
)

// Options configure a Server.
type Options struct {
	// Dir holds witness.json and witness.lock; created if missing.
	Dir string
	// Lease is how long a grant lasts on the witness's clock; default
	// DefaultLease.
	Lease time.Duration
	// Token is the shared secret every request must carry (required).
	Token string
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
	// Logger; default slog.Default().
	Logger *slog.Logger
}

// Server is the witness. Its methods are safe for concurrent use: one
// mutex orders every request, and a change is applied in memory only after
// it is durable on disk, so no answer ever names a state a restart would
// forget.
type Server struct {
	opts  Options
	store store
	lock  *os.File

	mu struct {
		sync.Mutex
		groups map[string]*group
		// failed is the save error that stopped the server: a failed fsync
		// leaves the disk state unknown, so nothing changes after it.
		failed error
		closed bool
		http   *http.Server
	}
}

type group struct {
	savedGroup
	leaseUntil time.Time
}

// NewServer locks opts.Dir, loads the state saved there, and leases every
// group that has a holder for one full lease from now: the holder may
// still believe it holds, so nobody may take over in that window.
func NewServer(o Options) (*Server, error) {
	if o.Dir == "" {
		return nil, errors.New("witness: Options.Dir is required")
	}
	if o.Token == "" {
		return nil, errors.New("witness: Options.Token is required")
	}
	if o.Lease == 0 {
		o.Lease = DefaultLease
	}
	if o.Lease < 10*time.Millisecond {
		return nil, fmt.Errorf("witness: lease %s is too short (at least 10ms)", o.Lease)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	lock, err := lockDir(o.Dir)
	if err != nil {
		return nil, err
	}
	s := &Server{opts: o, store: store{dir: o.Dir}, lock: lock}
	saved, err := s.store.load()
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("witness: load state: %w", err)
	}
	now := o.Now()
	s.mu.groups = make(map[string]*group, len(saved))
	for _, g := range saved {
		ng := &group{savedGroup: g}
		if g.Holder != "" {
			ng.leaseUntil = now.Add(o.Lease)
		}
		s.mu.groups[g.Group] = ng
	}
	o.Logger.Info("witness state loaded", "dir", o.Dir, "groups", len(saved), "lease", o.Lease)
	return s, nil
}

// Lease is the lease the server grants.
func (s *Server) Lease() time.Duration { return s.opts.Lease }

func (s *Server) checkToken(tok string) bool {
	return subtle.ConstantTimeCompare([]byte(tok), []byte(s.opts.Token)) == 1
}

// begin takes the lock and checks the server may still act.
func (s *Server) begin() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return ErrClosed
	}
	if s.mu.failed != nil {
		err := fmt.Errorf("%w: %v", ErrFailed, s.mu.failed)
		s.mu.Unlock()
		return err
	}
	return nil
}

func grantOf(g *group, granted bool, lease time.Duration, reason string) Grant {
	return Grant{Granted: granted, Epoch: g.Epoch, Holder: g.Holder, Outdated: g.Outdated, Lease: lease, Reason: reason}
}

func (g *group) isMember(n string) bool { return n == g.Members[0] || n == g.Members[1] }

func (g *group) other(n string) string {
	if n == g.Members[0] {
		return g.Members[1]
	}
	return g.Members[0]
}

// commitLocked makes next the state of its group: saved first, applied
// after. A failed save stops the server.
func (s *Server) commitLocked(next *group, why string) error {
	all := make([]savedGroup, 0, len(s.mu.groups)+1)
	for name, g := range s.mu.groups {
		if name != next.Group {
			all = append(all, g.savedGroup)
		}
	}
	all = append(all, next.savedGroup)
	if err := s.store.save(all); err != nil {
		s.mu.failed = err
		s.opts.Logger.Error("witness: saving state failed; refusing every change and renewal until restarted", "err", err)
		return fmt.Errorf("%w: %v", ErrFailed, err)
	}
	s.mu.groups[next.Group] = next
	s.opts.Logger.Info("witness: "+why, "group", next.Group, "epoch", next.Epoch, "holder", next.Holder,
		"members", next.Members[0]+","+next.Members[1], "outdated", next.Outdated)
	return nil
}

func leaseLeft(g *group, now time.Time) time.Duration {
	if g.Holder == "" || !now.Before(g.leaseUntil) {
		return 0
	}
	return g.leaseUntil.Sub(now)
}

// Acquire asks for group's lease for node, whose mirror peer is peer,
// presenting the epoch node last held (0 if none). See the package doc and
// docs/ha.md for the rules.
func (s *Server) Acquire(_ context.Context, groupID, node, peer string, epoch uint64) (Grant, error) {
	if err := firstErr(validID("group", groupID), validID("node", node)); err != nil {
		return Grant{}, err
	}
	if peer != "" {
		if err := validID("peer", peer); err != nil {
			return Grant{}, err
		}
	}
	if err := s.begin(); err != nil {
		return Grant{}, err
	}
	defer s.mu.Unlock()
	now := s.opts.Now()
	lease := s.opts.Lease
	g, ok := s.mu.groups[groupID]
	if !ok {
		if peer == "" {
			return Grant{}, fmt.Errorf("%w: group %q is new: name its peer", ErrBadRequest, groupID)
		}
		if peer == node {
			return Grant{}, fmt.Errorf("%w: node and peer are both %q", ErrBadRequest, node)
		}
		ng := &group{savedGroup: savedGroup{Group: groupID, Epoch: max(epoch, 1), Holder: node,
			Members: [2]string{node, peer}, Outdated: peer}, leaseUntil: now.Add(lease)}
		if err := s.commitLocked(ng, "group created"); err != nil {
			return Grant{}, err
		}
		return grantOf(ng, true, lease, ""), nil
	}
	if !g.isMember(node) {
		return grantOf(g, false, 0, fmt.Sprintf("%s is not a member of group %s (members %s and %s)", node, groupID, g.Members[0], g.Members[1])), nil
	}
	if peer != "" && peer != g.other(node) {
		return grantOf(g, false, 0, fmt.Sprintf("group %s pairs %s with %s, not with %s", groupID, node, g.other(node), peer)), nil
	}
	if g.Holder == node {
		switch {
		case epoch == g.Epoch:
			g.leaseUntil = now.Add(lease)
			return grantOf(g, true, lease, ""), nil
		case epoch < g.Epoch:
			return grantOf(g, false, 0, fmt.Sprintf("epoch %d is fenced: the group is at epoch %d", epoch, g.Epoch)), nil
		default:
			return grantOf(g, false, 0, fmt.Sprintf("epoch %d is ahead of the witness's epoch %d", epoch, g.Epoch)), nil
		}
	}
	if left := leaseLeft(g, now); left > 0 {
		return grantOf(g, false, 0, fmt.Sprintf("the holder's lease runs %d ms more", (left+time.Millisecond-1).Milliseconds())), nil
	}
	if g.Outdated == node {
		return grantOf(g, false, 0, "this member is outdated: it misses writes the holder acknowledged"), nil
	}
	ng := &group{savedGroup: g.savedGroup, leaseUntil: now.Add(lease)}
	ng.Holder, ng.Epoch = node, g.Epoch+1
	if err := s.commitLocked(ng, "holder changed"); err != nil {
		return Grant{}, err
	}
	return grantOf(ng, true, lease, ""), nil
}

// holderLocked checks that node holds group at epoch; it returns the
// group, or a refusal.
func (s *Server) holderLocked(groupID, node string, epoch uint64, needLease bool) (*group, *Grant) {
	g, ok := s.mu.groups[groupID]
	if !ok {
		return nil, &Grant{Reason: fmt.Sprintf("group %s is unknown", groupID)}
	}
	var why string
	switch {
	case g.Holder != node:
		why = fmt.Sprintf("%s does not hold group %s (holder %q)", node, groupID, g.Holder)
	case epoch != g.Epoch:
		why = fmt.Sprintf("epoch %d is not the group's epoch %d", epoch, g.Epoch)
	case needLease && leaseLeft(g, s.opts.Now()) == 0:
		why = "the lease has expired: acquire it again first"
	default:
		return g, nil
	}
	r := grantOf(g, false, 0, why)
	return nil, &r
}

// SetOutdated marks peer outdated (the holder serves without it) or up to
// date again (it has resynced). Only the holder at the current epoch with a
// valid lease may do it.
func (s *Server) SetOutdated(_ context.Context, groupID, node string, epoch uint64, peer string, outdated bool) (Grant, error) {
	if err := firstErr(validID("group", groupID), validID("node", node), validID("peer", peer)); err != nil {
		return Grant{}, err
	}
	if err := s.begin(); err != nil {
		return Grant{}, err
	}
	defer s.mu.Unlock()
	g, refused := s.holderLocked(groupID, node, epoch, true)
	if refused != nil {
		return *refused, nil
	}
	if peer == node || !g.isMember(peer) {
		return grantOf(g, false, 0, fmt.Sprintf("%s is not %s's peer in group %s", peer, node, groupID)), nil
	}
	want := ""
	if outdated {
		want = peer
	}
	if g.Outdated == want {
		return grantOf(g, true, 0, ""), nil
	}
	ng := &group{savedGroup: g.savedGroup, leaseUntil: g.leaseUntil}
	ng.Outdated = want
	why := "peer marked outdated"
	if !outdated {
		why = "peer marked up to date"
	}
	if err := s.commitLocked(ng, why); err != nil {
		return Grant{}, err
	}
	return grantOf(ng, true, 0, ""), nil
}

// Release gives up node's lease now (a planned switchover): the peer may
// acquire at once unless it is outdated.
func (s *Server) Release(_ context.Context, groupID, node string, epoch uint64) (Grant, error) {
	if err := firstErr(validID("group", groupID), validID("node", node)); err != nil {
		return Grant{}, err
	}
	if err := s.begin(); err != nil {
		return Grant{}, err
	}
	defer s.mu.Unlock()
	g, refused := s.holderLocked(groupID, node, epoch, false)
	if refused != nil {
		return *refused, nil
	}
	ng := &group{savedGroup: g.savedGroup}
	ng.Holder = ""
	if err := s.commitLocked(ng, "lease released"); err != nil {
		return Grant{}, err
	}
	return grantOf(ng, true, 0, ""), nil
}

// Handover makes to the holder at the next epoch with a fresh lease. The
// caller must have made sure to is in sync; an outdated to is refused.
func (s *Server) Handover(_ context.Context, groupID, node string, epoch uint64, to string) (Grant, error) {
	if err := firstErr(validID("group", groupID), validID("node", node), validID("to", to)); err != nil {
		return Grant{}, err
	}
	if err := s.begin(); err != nil {
		return Grant{}, err
	}
	defer s.mu.Unlock()
	g, refused := s.holderLocked(groupID, node, epoch, true)
	if refused != nil {
		return *refused, nil
	}
	if to == node || !g.isMember(to) {
		return grantOf(g, false, 0, fmt.Sprintf("%s is not %s's peer in group %s", to, node, groupID)), nil
	}
	if g.Outdated == to {
		return grantOf(g, false, 0, fmt.Sprintf("%s is outdated: it misses writes the holder acknowledged; resync it and mark it up to date first", to)), nil
	}
	ng := &group{savedGroup: g.savedGroup, leaseUntil: s.opts.Now().Add(s.opts.Lease)}
	ng.Holder, ng.Epoch = to, g.Epoch+1
	if err := s.commitLocked(ng, "handed over"); err != nil {
		return Grant{}, err
	}
	return grantOf(ng, true, s.opts.Lease, ""), nil
}

func (s *Server) stateLocked(g *group, now time.Time) State {
	st := State{Group: g.Group, Epoch: g.Epoch, Holder: g.Holder, Members: g.Members, Outdated: g.Outdated,
		LeaseLeft: leaseLeft(g, now)}
	if st.LeaseLeft > 0 {
		st.LeaseUntil = g.leaseUntil
	}
	return st
}

// Status is one group's state.
func (s *Server) Status(_ context.Context, groupID string) (State, error) {
	if err := validID("group", groupID); err != nil {
		return State{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.mu.groups[groupID]
	if !ok {
		return State{}, fmt.Errorf("%w: %s", ErrUnknownGroup, groupID)
	}
	return s.stateLocked(g, s.opts.Now()), nil
}

// List is every group's state, sorted by group.
func (s *Server) List(_ context.Context) ([]State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	out := make([]State, 0, len(s.mu.groups))
	for _, g := range s.mu.groups {
		out = append(out, s.stateLocked(g, now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Group < out[j].Group })
	return out, nil
}

// Serve answers HTTP requests on ln until Close. Wrap ln with TLS for a
// witness reached off loopback.
func (s *Server) Serve(ln net.Listener) error {
	hs := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: time.Minute, ErrorLog: slog.NewLogLogger(s.opts.Logger.Handler(), slog.LevelWarn)}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrClosed
	}
	s.mu.http = hs
	s.mu.Unlock()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving (requests under way finish, for up to 5 s) and
// releases the data directory. The state is already on disk.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return nil
	}
	s.mu.closed = true
	hs := s.mu.http
	s.mu.Unlock()
	var err error
	if hs != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err = hs.Shutdown(ctx)
		cancel()
	}
	return errors.Join(err, s.lock.Close())
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
