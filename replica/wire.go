package replica

import (
	"bufio"
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/cow"
)

// The strata:// protocol, over TCP (TLS when configured). Every message is
//
//	type(1) length(4, little endian) payload
//
// Client to server: 'H' hello (JSON: token and Hello), 'B' a batch frame
// (EncodeBatch; or to a server whose state says wire 2, an uncompressed
// "SRB2" frame, rawFrame), 'P' pull (JSON: token, volume, point). Server
// to client: 'S' state (JSON) after a hello, 'A' ack (JSON) after each
// batch, 'E' error (JSON: code and message), and for a pull 'B' batch
// frames then 'D'.
const (
	msgHello = 'H'
	msgBatch = 'B'
	msgPull  = 'P'
	msgState = 'S'
	msgAck   = 'A'
	msgError = 'E'
	msgDone  = 'D'
)

// wireVersion is the protocol version a Server reads (State.Wire).
const wireVersion = 2

const (
	// DefaultPort is where `serve --replica-listen` listens by default.
	DefaultPort = 10810
	maxMessage  = frameHeaderSize + MaxBatchRaw + MaxBatchRaw/8
	// ioTimeout bounds one message's round trip (a batch's apply included).
	ioTimeout = 10 * time.Minute
)

type helloMsg struct {
	Token string `json:"token"`
	Hello Hello  `json:"hello"`
}

type pullMsg struct {
	Token  string `json:"token"`
	Volume string `json:"volume"`
	Point  string `json:"point"`
}

type errorMsg struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

type ackMsg struct {
	Acked uint64 `json:"acked"`
	// Synced: the point the target holds durably. Absent from older
	// targets, which sync every batch: then it is Acked.
	Synced *uint64 `json:"synced,omitempty"`
}

// errCode and codeErr carry error classes across the wire.
func errCode(err error) string {
	switch {
	case errors.Is(err, ErrAuth):
		return "auth"
	case errors.Is(err, ErrBusy):
		return "busy"
	case errors.Is(err, ErrRefused):
		return "refused"
	case errors.Is(err, ErrNoSpace), errors.Is(err, blockdev.ErrNoSpace):
		return "nospace"
	case errors.Is(err, ErrCorrupt):
		return "corrupt"
	case errors.Is(err, ErrNotFound), errors.Is(err, blockdev.ErrNotFound):
		return "notfound"
	case errors.Is(err, cow.ErrPoint):
		return "point"
	case errors.Is(err, ErrFenced):
		return "fenced"
	case errors.Is(err, ErrHandedOver):
		return "handedover"
	}
	return "error"
}

func codeErr(e errorMsg) error {
	class := map[string]error{"auth": ErrAuth, "busy": ErrBusy, "refused": ErrRefused, "nospace": ErrNoSpace,
		"corrupt": ErrCorrupt, "notfound": ErrNotFound, "point": cow.ErrPoint, "fenced": ErrFenced, "handedover": ErrHandedOver}[e.Code]
	if class == nil {
		return fmt.Errorf("target: %s", e.Message)
	}
	return &remoteError{class: class, msg: e.Message}
}

type remoteError struct {
	class error
	msg   string
}

func (e *remoteError) Error() string        { return "target: " + e.msg }
func (e *remoteError) Is(target error) bool { return target == e.class }

func writeMsg(w io.Writer, typ byte, payload []byte) error {
	var hdr [5]byte
	hdr[0] = typ
	binary.LittleEndian.PutUint32(hdr[1:], uint32(len(payload)))
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	_, err := w.Write(payload)
	return err
}

func writeJSON(w io.Writer, typ byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeMsg(w, typ, b)
}

func readMsg(r io.Reader) (byte, []byte, error) { return readMsgInto(r, nil) }

// readMsgInto is readMsg reading the payload into buf when it fits.
func readMsgInto(r io.Reader, buf []byte) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.LittleEndian.Uint32(hdr[1:])
	if n > maxMessage {
		return 0, nil, fmt.Errorf("%w: message of %d bytes is too large", ErrCorrupt, n)
	}
	b := buf[:0]
	if cap(b) < int(n) {
		b = make([]byte, n)
	}
	b = b[:n]
	if _, err := io.ReadFull(r, b); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, fmt.Errorf("truncated message: %w", err)
	}
	return hdr[0], b, nil
}

// ParseStrataURL splits strata://HOST:PORT[/REMOTEVOL].
func ParseStrataURL(s string) (addr, vol string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "strata" || u.Host == "" {
		return "", "", fmt.Errorf("%q is not a strata://HOST:PORT[/VOLUME] URL", s)
	}
	addr = u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), fmt.Sprint(DefaultPort))
	}
	vol = strings.Trim(u.Path, "/")
	if vol != "" {
		if err := cow.ValidateName(vol); err != nil {
			return "", "", fmt.Errorf("%s: remote volume: %w", s, err)
		}
	}
	return addr, vol, nil
}

// IsLoopback reports whether addr's host is a loopback address or name.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// RemoteOptions configure a strata:// target.
type RemoteOptions struct {
	Addr  string
	Token string
	// TLS, when set, wraps the connection (the server must have a
	// certificate); nil is plaintext, which callers allow on loopback or
	// when told to.
	TLS *tls.Config
	// Dial (tests: through a proxy); default net.Dialer.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Remote is a strata:// target: another site's `strata serve
// --replica-listen`.
type Remote struct {
	o       RemoteOptions
	conn    net.Conn
	br      *bufio.Reader
	raw     int64
	stored  int64
	counter sync.Mutex
	unwatch func() bool // stops the context watch of the connection
	pending []inflight  // submitted, not yet acknowledged (under pmu)
	pmu     sync.Mutex  // Submit and Wait may run on two goroutines
	frame   []byte      // Submit's encoding space, reused batch after batch
	synced  atomic.Uint64
	dead    atomic.Bool // the context of the connection was cancelled
	// noCompress: batches go stored (NoCompress).
	noCompress bool
	// rawFrames: the target reads uncompressed frames (State.Wire >= 2);
	// small is rawFrame's reused buffer.
	rawFrames bool
	small     []byte
}

// NoCompress makes the batches go stored, not compressed: for a stream on
// a fast network where a batch's latency counts (a mirror), compressing
// costs more than it saves.
func (r *Remote) NoCompress() { r.noCompress = true }

// Synced is the point the target said it holds durably (batches with
// NoSync are acknowledged before they are).
func (r *Remote) Synced() uint64 { return r.synced.Load() }

// NewRemote makes a strata:// target; it connects on Open.
func NewRemote(o RemoteOptions) *Remote { return &Remote{o: o} }

func (r *Remote) String() string { return "strata://" + r.o.Addr }

// Counters implements Counter.
func (r *Remote) Counters() (raw, stored int64) {
	r.counter.Lock()
	defer r.counter.Unlock()
	return r.raw, r.stored
}

func (r *Remote) dial(ctx context.Context) error {
	dial := r.o.Dial
	if dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	c, err := dial(ctx, "tcp", r.o.Addr)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	if r.o.TLS != nil {
		tc := tls.Client(c, r.o.TLS)
		tc.SetDeadline(time.Now().Add(30 * time.Second))
		if err := tc.HandshakeContext(ctx); err != nil {
			c.Close()
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				return fmt.Errorf("TLS handshake: %w (the target closed the connection: is its --replica-listen plaintext, without --tls-cert/--tls-key?)", err)
			}
			return fmt.Errorf("TLS handshake: %w", err)
		}
		tc.SetDeadline(time.Time{})
		c = tc
	}
	r.conn = c
	r.br = bufio.NewReaderSize(c, 64<<10)
	r.pending = nil
	// A cancelled context unblocks any read or write (Close stops the
	// watch, so long-lived contexts do not collect one per connection);
	// the deadlines set per message check dead, so that they do not undo
	// it.
	r.dead.Store(false)
	r.unwatch = context.AfterFunc(ctx, func() {
		r.dead.Store(true)
		c.SetDeadline(time.Unix(1, 0))
	})
	return nil
}

// reply reads the server's answer, turning 'E' into an error.
// deadline sets the connection's read or write deadline ioTimeout ahead,
// unless its context was cancelled.
func (r *Remote) deadline(set func(time.Time) error) {
	set(time.Now().Add(ioTimeout))
	if r.dead.Load() {
		set(time.Unix(1, 0))
	}
}

func (r *Remote) reply(want byte, v any) error {
	r.deadline(r.conn.SetReadDeadline)
	typ, b, err := readMsg(r.br)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return fmt.Errorf("the target closed the connection: %w", err)
		}
		return err
	}
	switch typ {
	case want:
		if v == nil {
			return nil
		}
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("%w: bad reply: %v", ErrCorrupt, err)
		}
		return nil
	case msgError:
		var e errorMsg
		if err := json.Unmarshal(b, &e); err != nil {
			return fmt.Errorf("%w: bad error reply: %v", ErrCorrupt, err)
		}
		return codeErr(e)
	}
	return fmt.Errorf("%w: unexpected reply %q", ErrCorrupt, typ)
}

// Open implements Target.
func (r *Remote) Open(ctx context.Context, h Hello) (State, error) {
	if err := r.dial(ctx); err != nil {
		return State{}, err
	}
	r.deadline(r.conn.SetWriteDeadline)
	if err := writeJSON(r.conn, msgHello, helloMsg{Token: r.o.Token, Hello: h}); err != nil {
		return State{}, err
	}
	var st State
	err := r.reply(msgState, &st)
	r.rawFrames = st.Wire >= 2
	return st, err
}

// Send implements Target.
func (r *Remote) Send(ctx context.Context, b *Batch) error {
	if err := r.Submit(ctx, b); err != nil {
		return err
	}
	return r.Wait(ctx)
}

// inflight is a batch sent and not yet acknowledged.
type inflight struct {
	to          uint64
	partial     bool
	raw, stored int
}

// Submit implements Pipeliner: it sends b; Wait takes its ack.
func (r *Remote) Submit(ctx context.Context, b *Batch) error {
	compress := !r.noCompress
	if compress && r.rawFrames {
		e, _ := codecs()
		compress = !incompressible(e, b)
	}
	var raw, stored int
	if !compress && r.rawFrames {
		// Uncompressed: the data goes from the ops' buffers, no copy.
		if err := checkNames(b); err != nil {
			return err
		}
		var bufs net.Buffers
		bufs, r.small, raw = rawFrame([]byte{msgBatch, 0, 0, 0, 0}, b, r.small)
		stored = frameHeaderSize + raw
		binary.LittleEndian.PutUint32(r.small[1:], uint32(stored))
		r.deadline(r.conn.SetWriteDeadline)
		if _, err := bufs.WriteTo(r.conn); err != nil {
			return err
		}
	} else {
		frame, n, err := appendBatch(r.frame[:0], b, compress)
		if err != nil {
			return err
		}
		r.frame = frame[:0] // written before Submit returns: reusable
		r.deadline(r.conn.SetWriteDeadline)
		if err := writeMsg(r.conn, msgBatch, frame); err != nil {
			return err
		}
		raw, stored = n, len(frame)
	}
	r.pmu.Lock()
	r.pending = append(r.pending, inflight{to: b.To, partial: b.Partial, raw: raw, stored: stored})
	r.pmu.Unlock()
	return nil
}

// Wait implements Pipeliner.
func (r *Remote) Wait(ctx context.Context) error {
	r.pmu.Lock()
	if len(r.pending) == 0 {
		r.pmu.Unlock()
		return errors.New("replica: no batch in flight")
	}
	f := r.pending[0]
	r.pending = r.pending[1:]
	r.pmu.Unlock()
	var a ackMsg
	if err := r.reply(msgAck, &a); err != nil {
		return err
	}
	if !f.partial && a.Acked != f.to {
		return fmt.Errorf("%w: the target acknowledged seq %d for a batch to %d", ErrCorrupt, a.Acked, f.to)
	}
	synced := a.Acked // a target that syncs every batch
	if a.Synced != nil {
		synced = *a.Synced
	}
	if !f.partial || a.Synced != nil {
		r.synced.Store(max(r.synced.Load(), synced))
	}
	r.counter.Lock()
	r.raw += int64(f.raw)
	r.stored += int64(f.stored)
	r.counter.Unlock()
	return nil
}

// Close implements Target.
func (r *Remote) Close() error {
	if r.unwatch != nil {
		r.unwatch()
		r.unwatch = nil
	}
	if r.conn == nil {
		return nil
	}
	return r.conn.Close()
}

// Pull asks the remote site for volume vol at point (a snapshot, time or
// seq:N there) as one full copy, calling fn with each batch.
func (r *Remote) Pull(ctx context.Context, vol, point string, fn func(*Batch) error) error {
	if err := r.dial(ctx); err != nil {
		return err
	}
	defer r.Close()
	r.conn.SetWriteDeadline(time.Now().Add(ioTimeout))
	if err := writeJSON(r.conn, msgPull, pullMsg{Token: r.o.Token, Volume: vol, Point: point}); err != nil {
		return err
	}
	for {
		r.conn.SetReadDeadline(time.Now().Add(ioTimeout))
		typ, b, err := readMsg(r.br)
		if err != nil {
			return fmt.Errorf("pull: %w", err)
		}
		switch typ {
		case msgBatch:
			bt, err := DecodeBatch(b)
			if err != nil {
				return err
			}
			if err := fn(bt); err != nil {
				return err
			}
		case msgDone:
			return nil
		case msgError:
			var e errorMsg
			if err := json.Unmarshal(b, &e); err != nil {
				return fmt.Errorf("%w: bad error reply", ErrCorrupt)
			}
			return codeErr(e)
		default:
			return fmt.Errorf("%w: unexpected message %q in a pull", ErrCorrupt, typ)
		}
	}
}

// Server accepts streams from other sites (`serve --replica-listen`).
type Server struct {
	Receiver *Receiver
	// Token every client must present.
	Token  string
	Logger *slog.Logger
	// TLS, when set, is required of every connection; a plaintext client
	// gets a plaintext error saying so.
	TLS *tls.Config

	mu    sync.Mutex
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// Serve accepts connections on l until it is closed.
func (s *Server) Serve(l net.Listener) error {
	if s.Logger == nil {
		s.Logger = slog.Default()
	}
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		s.mu.Lock()
		if s.conns == nil {
			s.conns = map[net.Conn]bool{}
		}
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
			c.Close()
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
		}()
	}
}

// Close closes every connection and waits for their handlers.
func (s *Server) Close() {
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

func (s *Server) fail(c net.Conn, err error) {
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	writeJSON(c, msgError, errorMsg{Code: errCode(err), Message: err.Error()})
}

func (s *Server) checkToken(t string) error {
	if s.Token == "" || subtle.ConstantTimeCompare([]byte(t), []byte(s.Token)) != 1 {
		return fmt.Errorf("%w: wrong replication token (the shipper's --token-file must hold what the target's --replica-token-file holds)", ErrAuth)
	}
	return nil
}

// bufConn reads a connection through the reader that peeked at it.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// tlsRecordHandshake is the first byte of a TLS client's first record.
const tlsRecordHandshake = 0x16

func (s *Server) handle(c net.Conn) {
	log := s.Logger.With("peer", c.RemoteAddr().String())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	br := bufio.NewReaderSize(c, 64<<10)
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	first, err := br.Peek(1)
	if err != nil {
		log.Info("replication: connection closed before its hello", "err", err)
		return
	}
	switch {
	case s.TLS != nil && first[0] != tlsRecordHandshake:
		log.Warn("replication: refused a plaintext connection: this listener requires TLS")
		s.fail(c, fmt.Errorf("%w: this replication listener requires TLS: ship with --tls-ca FILE (or with the system's CAs when its certificate is public)", ErrRefused))
		return
	case s.TLS == nil && first[0] == tlsRecordHandshake:
		log.Warn("replication: refused a TLS connection: this listener is plaintext (serve has no --tls-cert/--tls-key)")
		return // the client's handshake fails; it says what that may mean
	case s.TLS != nil:
		tc := tls.Server(bufConn{c, br}, s.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			log.Info("replication: TLS handshake failed", "err", err)
			return
		}
		c = tc
		br = bufio.NewReaderSize(c, 64<<10)
	}
	typ, b, err := readMsg(br)
	if err != nil {
		log.Info("replication: connection closed before its hello", "err", err)
		return
	}
	switch typ {
	case msgPull:
		var m pullMsg
		if err := json.Unmarshal(b, &m); err != nil {
			s.fail(c, fmt.Errorf("%w: bad pull request", ErrCorrupt))
			return
		}
		if err := s.checkToken(m.Token); err != nil {
			log.Warn("replication: refused a pull", "err", err)
			s.fail(c, err)
			return
		}
		if err := s.servePull(ctx, c, m); err != nil {
			log.Warn("replication: pull failed", "volume", m.Volume, "err", err)
			s.fail(c, err)
		}
		return
	case msgFetch:
		if err := s.serveFetch(c, b); err != nil {
			log.Info("replication: block fetch failed", "err", err)
			s.fail(c, err)
		}
		return
	case msgHello:
	default:
		s.fail(c, fmt.Errorf("%w: expected a hello", ErrCorrupt))
		return
	}
	var m helloMsg
	if err := json.Unmarshal(b, &m); err != nil {
		s.fail(c, fmt.Errorf("%w: bad hello", ErrCorrupt))
		return
	}
	if err := s.checkToken(m.Token); err != nil {
		log.Warn("replication: refused a stream", "err", err)
		s.fail(c, err)
		return
	}
	sess, st, err := s.Receiver.Open(ctx, m.Hello, func() { c.Close() })
	if err != nil {
		log.Warn("replication: refused a stream", "volume", m.Hello.Target, "err", err)
		s.fail(c, err)
		return
	}
	defer sess.Close()
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	st.Pool = s.Receiver.Pool.ID()
	st.Wire = wireVersion
	if err := writeJSON(c, msgState, st); err != nil {
		return
	}
	log = log.With("volume", m.Hello.Target, "source", m.Hello.Source.Name)
	log.Info("replication: stream opened", "acked", st.Acked)
	// A reader receives and decodes the next batch while one is applied
	// (shippers keep two in flight).
	in := make(chan frameIn, 1)
	var drainUntil atomic.Int64
	go readBatches(ctx, c, br, in, &drainUntil)
	for f := range in {
		if f.connErr != nil {
			if !errors.Is(f.connErr, io.EOF) {
				log.Warn("replication: stream ended", "err", f.connErr)
			}
			return
		}
		err := f.err
		if err == nil {
			err = sess.Apply(ctx, f.b)
			f.b.Release()
		}
		if err != nil {
			log.Warn("replication: batch refused", "err", err)
			s.fail(c, err)
			// Let the shipper read the error: batches it sent after the
			// failed one are read and dropped until it hangs up (closing
			// with them unread would reset the connection first).
			until := time.Now().Add(drainTime)
			drainUntil.Store(until.UnixNano())
			if cw, ok := c.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			c.SetReadDeadline(until)
			for range in {
			}
			return
		}
		c.SetWriteDeadline(time.Now().Add(ioTimeout))
		synced := sess.synced
		if err := writeJSON(c, msgAck, ackMsg{Acked: sess.st.Acked, Synced: &synced}); err != nil {
			return
		}
	}
}

// frameIn is a batch read from a stream: connErr when the connection
// failed (or ended), err when the message was not a valid batch.
type frameIn struct {
	b       *Batch
	err     error
	connErr error
}

// drainTime bounds how long a receiver reads and drops what a shipper sent
// after a batch it refused, waiting for the shipper to hang up.
const drainTime = time.Minute

// readBatches reads and decodes batches from a stream into in until the
// connection fails or ctx ends; it closes in. Once drainUntil is set (the
// caller refused a batch), reads end by then.
func readBatches(ctx context.Context, c net.Conn, br *bufio.Reader, in chan<- frameIn, drainUntil *atomic.Int64) {
	defer close(in)
	// Frames are read into recycled buffers: an uncompressed one's batch
	// keeps its buffer (its ops' data point into it) until released.
	var frame *[]byte
	for {
		c.SetReadDeadline(time.Now().Add(ioTimeout))
		// Set after ours, or read by us after the caller's store: either
		// way the drain deadline wins.
		if d := drainUntil.Load(); d != 0 {
			c.SetReadDeadline(time.Unix(0, d))
		}
		var f frameIn
		if frame == nil {
			frame = decodeBuf(0)
		}
		typ, b, err := readMsgInto(br, *frame)
		*frame = b
		switch {
		case err != nil:
			f.connErr = err
		case typ != msgBatch:
			f.err = fmt.Errorf("%w: expected a batch, got %q", ErrCorrupt, typ)
		default:
			var kept bool
			f.b, kept, f.err = decodeOwned(frame)
			if kept {
				frame = nil
			}
		}
		select {
		case in <- f:
		case <-ctx.Done():
			return
		}
		if f.connErr != nil {
			return
		}
	}
}

// connTarget writes a pull's batches to a connection.
type connTarget struct{ c net.Conn }

func (t *connTarget) Open(context.Context, Hello) (State, error) { return State{}, nil }
func (t *connTarget) Close() error                               { return nil }
func (t *connTarget) String() string                             { return "pull from " + t.c.RemoteAddr().String() }
func (t *connTarget) Send(_ context.Context, b *Batch) error {
	frame, _, err := EncodeBatch(b)
	if err != nil {
		return err
	}
	t.c.SetWriteDeadline(time.Now().Add(ioTimeout))
	return writeMsg(t.c, msgBatch, frame)
}

func (s *Server) servePull(ctx context.Context, c net.Conn, m pullMsg) error {
	p := s.Receiver.Pool
	spec := m.Point
	if spec == "" {
		spec = fmt.Sprintf("seq:%d", p.AppliedSeq())
		if rs, err := p.ReplicaStateOf(m.Volume); err == nil && rs != nil && rs.Diff {
			// A diff is being applied: the newest whole point is Local.
			spec = fmt.Sprintf("seq:%d", rs.Local)
		}
	}
	pt, err := p.ResolvePoint(m.Volume, spec)
	if err != nil {
		return err
	}
	h, err := p.OpenVolumeAt(m.Volume, spec) // pins the point while it ships
	if err != nil {
		return err
	}
	defer h.Close()
	_, err = Ship(ctx, ShipOptions{Pool: p, Volume: m.Volume, Target: &connTarget{c: c}, Upto: pt.Seq, AllowReplica: true, Logger: s.Logger})
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	return writeMsg(c, msgDone, nil)
}
