package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/strata-storage/strata/blockdev"
)

// Export is one opened device as a connection uses it. Its Device methods
// are called concurrently by the connection's request goroutines (and other
// connections may have opened the same volume). ReadOnly is read once, at
// negotiation. If it is a blockdev.FastReader, a READ of up to 64 KiB first
// tries TryReadAt, on the goroutine that parses the connection's requests.
//
// An Export may also implement Name() string, its canonical name (reported
// as NBD_INFO_NAME, and the name Connections and DisconnectExport use; by
// default the name the client asked for), and Description() string (reported
// as NBD_INFO_DESCRIPTION; by default the description List gives that name).
type Export interface {
	blockdev.Device
	ReadOnly() bool
	// Close is called exactly once: when the connection that entered
	// transmission with it ends (after its last request returned), or right
	// after answering an NBD_OPT_INFO or a metadata context option.
	Close() error
}

// ExportInfo describes an export for NBD_OPT_LIST.
type ExportInfo struct{ Name, Description string }

// Exporter resolves export names. It is called concurrently from many
// connections.
type Exporter interface {
	// Open resolves an export name (the empty name is the default export;
	// the exporter decides what it means). errors.Is(err,
	// blockdev.ErrNotFound) when there is no such export; errors.Is(err,
	// blockdev.ErrInvalid) when the name is malformed.
	Open(name string) (Export, error)
	// List returns the exports NBD_OPT_LIST shows.
	List() ([]ExportInfo, error)
}

// Peer is the client a connection serves, as a PeerExporter sees it.
type Peer struct {
	// Addr is the client's address (c.RemoteAddr()).
	Addr net.Addr
	// Unix: the client came through a Unix socket (a local client).
	Unix bool
	// Certs is the client's verified certificate chain, leaf first, once
	// the connection negotiated TLS with a verified client certificate
	// (nil otherwise).
	Certs []*x509.Certificate
}

// PeerExporter is an Exporter that decides per client. When the Server's
// Exporter implements it, the Server calls OpenFor and ListFor instead of
// Open and List; they have the same contracts. An export the peer may not
// use should be left out of ListFor and refused by OpenFor with an error
// that errors.Is blockdev.ErrNotFound: the client then sees exactly what
// it would for a name that does not exist.
type PeerExporter interface {
	Exporter
	OpenFor(p Peer, name string) (Export, error)
	ListFor(p Peer) ([]ExportInfo, error)
}

// Options configure a Server. The zero value gives the defaults.
type Options struct {
	// Logger receives connection and error logs. Default slog.Default().
	Logger *slog.Logger
	// MaxRequestsInFlight bounds the requests one connection runs at once.
	// Default 64.
	MaxRequestsInFlight int
	// MaxBytesInFlight bounds one connection's WRITE payloads and READ
	// buffers in flight (a single request larger than this still runs, on
	// its own). Default 128 MiB.
	MaxBytesInFlight int64
	// Block size constraints advertised with NBD_INFO_BLOCK_SIZE. Minimum: a
	// power of two up to 64 KiB (default 1: any alignment works, as with
	// qemu-nbd; libnbd in its default strict mode refuses to send requests
	// the minimum does not divide). Preferred: a power of two at least
	// max(Minimum, 512) (default 4096). Maximum: a multiple of Minimum, at
	// least Preferred, at most 1 GiB (default 32 MiB). A client that asked
	// for these sizes gets EINVAL for a READ or WRITE longer than Maximum;
	// one that did not may send them up to the export's size, and they are
	// served in chunks (long.go).
	MinBlockSize, PreferredBlockSize, MaxBlockSize uint32
	// TLS, when set, lets clients upgrade with NBD_OPT_STARTTLS (nil: the
	// option is answered NBD_REP_ERR_UNSUP).
	TLS *tls.Config
	// RequireTLS refuses every option but STARTTLS and ABORT in the clear
	// (NBD_REP_ERR_TLS_REQD; EXPORT_NAME closes the connection).
	RequireTLS bool
	// HandshakeTimeout bounds the whole option haggling, so a client that
	// connects and goes quiet does not hold a goroutine forever. Default
	// 30s; the transmission phase has no timeout (clients idle legitimately).
	HandshakeTimeout time.Duration
}

func (o *Options) withDefaults() (Options, error) {
	r := *o
	if r.Logger == nil {
		r.Logger = slog.Default()
	}
	if r.RequireTLS && r.TLS == nil {
		return r, errors.New("RequireTLS needs a TLS configuration")
	}
	if r.HandshakeTimeout == 0 {
		r.HandshakeTimeout = 30 * time.Second
	}
	if r.MaxRequestsInFlight <= 0 {
		r.MaxRequestsInFlight = 64
	}
	if r.MaxBytesInFlight <= 0 {
		r.MaxBytesInFlight = 128 << 20
	}
	if r.MinBlockSize == 0 {
		r.MinBlockSize = 1
	}
	if r.PreferredBlockSize == 0 {
		r.PreferredBlockSize = 4096
	}
	if r.MaxBlockSize == 0 {
		r.MaxBlockSize = 32 << 20
	}
	pow2 := func(v uint32) bool { return bits.OnesCount32(v) == 1 }
	switch {
	case !pow2(r.MinBlockSize) || r.MinBlockSize > 64<<10:
		return r, fmt.Errorf("MinBlockSize %d: want a power of two up to 65536", r.MinBlockSize)
	case !pow2(r.PreferredBlockSize) || r.PreferredBlockSize < max(r.MinBlockSize, 512):
		return r, fmt.Errorf("PreferredBlockSize %d: want a power of two at least max(MinBlockSize, 512)", r.PreferredBlockSize)
	case r.MaxBlockSize%r.MinBlockSize != 0 || r.MaxBlockSize < r.PreferredBlockSize || r.MaxBlockSize > 1<<maxBufShift:
		return r, fmt.Errorf("MaxBlockSize %d: want a multiple of MinBlockSize, at least PreferredBlockSize, at most 1 GiB", r.MaxBlockSize)
	}
	return r, nil
}

// ConnInfo describes one open connection.
type ConnInfo struct {
	// Export is the export in use, "" while the client is still negotiating.
	Export string
	Remote string
	Since  time.Time
}

// Server serves NBD connections. Its methods are safe for concurrent use.
type Server struct {
	exp  Exporter
	opts Options
	log  *slog.Logger

	// panics counts recovered panics; tests assert it stays zero.
	panics atomic.Int64

	mu struct {
		sync.Mutex
		shutdown  bool
		listeners map[net.Listener]struct{}
		conns     map[*conn]struct{}
	}
}

// NewServer returns a server for exp. It panics if opts are invalid (a
// programming error); zero fields take their defaults.
func NewServer(exp Exporter, opts Options) (*Server, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("nbd: invalid Options: %w", err)
	}
	s := &Server{exp: exp, opts: o, log: o.Logger}
	s.mu.listeners = make(map[net.Listener]struct{})
	s.mu.conns = make(map[*conn]struct{})
	return s, nil
}

// Serve accepts connections on l and serves each in its own goroutine. It
// returns nil once Shutdown was called, or the listener's error.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.mu.shutdown {
		s.mu.Unlock()
		l.Close()
		return nil
	}
	s.mu.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.mu.listeners, l)
		s.mu.Unlock()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.shuttingDown() {
				return nil
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed, retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		go s.ServeConn(nc)
	}
}

func (s *Server) shuttingDown() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.shutdown
}

// ServeConn runs the handshake and the transmission phase on c and returns
// when the connection has ended; c is closed by then.
func (s *Server) ServeConn(nc net.Conn) {
	c := s.newConn(nc)
	s.mu.Lock()
	if s.mu.shutdown {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.mu.conns[c] = struct{}{}
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		delete(s.mu.conns, c)
		s.mu.Unlock()
		close(c.done)
	}()
	defer func() {
		if r := recover(); r != nil {
			s.notePanic(c.log, r)
		}
		c.finish()
	}()
	nc.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	if c.handshake() {
		nc.SetDeadline(time.Time{})
		// A stop (Shutdown, DisconnectExport) that raced the line above had
		// its read deadline cleared: apply it again. stop sets the flag
		// before the deadline, so one of the two always takes effect.
		if c.stopping.Load() {
			nc.SetReadDeadline(time.Now())
		}
		c.transmit()
	}
}

func (s *Server) notePanic(log *slog.Logger, r any) {
	s.panics.Add(1)
	log.Error("nbd: panic serving connection; closing it", "panic", r, "stack", string(debug.Stack()))
}

// Shutdown stops accepting connections and stops every connection from
// reading further requests; requests in flight finish and their replies go
// out, then the connections close. It waits for all of them, or until ctx
// is done, when it closes the remaining connections at once and returns
// ctx.Err().
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.mu.shutdown = true
	for l := range s.mu.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.mu.conns))
	for c := range s.mu.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()

	for _, c := range conns {
		c.stop()
	}
	for i, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range conns[i:] {
				c.nc.Close()
			}
			return ctx.Err()
		}
	}
	return nil
}

// disconnectGrace is how long a connection told to go away by
// DisconnectExport may take to send its remaining replies.
const disconnectGrace = 10 * time.Second

// DisconnectExport ends every connection in transmission on the export
// called name (its canonical name, see Export): each stops reading requests,
// finishes the ones in flight, sends their replies and closes. It returns
// how many connections it told to end, without waiting for them.
func (s *Server) DisconnectExport(name string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for c := range s.mu.conns {
		if c.inTransmission && c.exportName == name {
			c.stop()
			c.nc.SetWriteDeadline(time.Now().Add(disconnectGrace))
			n++
		}
	}
	return n
}

// Connections lists the open connections.
func (s *Server) Connections() []ConnInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ConnInfo, 0, len(s.mu.conns))
	for c := range s.mu.conns {
		out = append(out, ConnInfo{Export: c.exportName, Remote: c.remote, Since: c.since})
	}
	return out
}

// conn is one client connection.
type conn struct {
	s      *Server
	nc     net.Conn
	sock   *sockConn // nc as the reader reads it (sock.go)
	w      io.Writer // where replies go: nc, or the TLS connection over it
	br     *bufio.Reader
	bw     *bufio.Writer // negotiation only; transmission writes through out
	log    *slog.Logger
	remote string
	since  time.Time
	done   chan struct{}

	stopping atomic.Bool
	moved    atomic.Bool // a request found the device moved (logged once)
	closed   sync.Once

	// Guarded by s.mu: what Connections and DisconnectExport see.
	exportName     string
	inTransmission bool

	// Negotiation state, owned by the connection goroutine.
	tls         bool                // STARTTLS done: br and bw go through TLS
	certs       []*x509.Certificate // the verified client chain after STARTTLS
	noZeroes    bool
	structured  bool
	metaSet     bool   // SET_META_CONTEXT selected base:allocation
	metaExport  string // ... for this export name
	numOptions  int
	exp         Export
	caps        exportCaps
	trimmer     blockdev.Trimmer
	zeroer      blockdev.Zeroer
	blockStatus blockdev.BlockStatuser
	fast        blockdev.FastReader
	refs        blockdev.RefReader
	waiter      blockdev.WriteWaiter // nil: writes never wait long
	batcher     blockdev.BatchWriter // nil: writes go one by one

	// Transmission state.
	hdr     [requestHeaderLen]byte // reader goroutine only
	lim     *limiter
	running sync.WaitGroup // requests dispatched and not yet finished
	work    chan job       // requests for idle workers (unbuffered)
	workers int            // workers started; only the reader touches it

	// Reply writing (replies.go): pending counts goroutines that want wmu
	// to send a reply; idle is set while the reader may block; unflushed
	// tells the reader, without wmu, that out holds replies.
	pending   atomic.Int32
	idle      atomic.Bool
	unflushed atomic.Bool
	wmu       sync.Mutex
	out       *replyBuf   // small replies being gathered, under wmu
	queue     []segment   // sealed, waiting to be sent, under wmu
	sent      []segment   // the last batch sent (its backing array is reused), under wmu
	spare     []*replyBuf // empty buffers for out, under wmu
	sending   bool        // a goroutine sends the queue (sendLocked), under wmu
	sendDone  sync.Cond   // broadcast when sending ends or sent a batch; L is &wmu
	queued    int         // bytes in queue, under wmu
	vec       net.Buffers // the sender's writev vector
	whdr      [32]byte    // reply header scratch, under wmu
	werr      error       // first write error, under wmu
}

func (s *Server) newConn(nc net.Conn) *conn {
	remote := "?"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.String()
	}
	sock := newSockConn(nc)
	return &conn{
		s:      s,
		nc:     nc,
		sock:   sock,
		w:      nc,
		br:     bufio.NewReaderSize(sock, 64<<10),
		bw:     bufio.NewWriterSize(nc, 64<<10),
		log:    s.log.With("remote", remote),
		remote: remote,
		since:  time.Now(),
		done:   make(chan struct{}),
		work:   make(chan job),
	}
}

// stop makes the connection stop reading: the reader's next (or current)
// read fails, and it then drains the requests in flight and closes.
func (c *conn) stop() {
	c.stopping.Store(true)
	c.nc.SetReadDeadline(time.Now())
}

// finish closes the socket, waits for request goroutines and closes the
// export. It runs once, at the end of ServeConn.
func (c *conn) finish() {
	c.closed.Do(func() {
		c.nc.Close()
		c.running.Wait()
		if c.exp != nil {
			if err := c.exp.Close(); err != nil {
				c.log.Warn("nbd: closing export failed", "err", err)
			}
			c.exp = nil
		}
	})
}
