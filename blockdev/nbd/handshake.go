package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"syscall"
	"unicode/utf8"

	"github.com/pojntfx/go-nbd/pkg/protocol"
	"github.com/strata-storage/strata/blockdev"
)

const (
	// maxOptionLen is the largest option payload the server reads; larger
	// ones up to optionHardCap are discarded and answered NBD_REP_ERR_TOO_BIG,
	// beyond that the connection closes.
	maxOptionLen  = 64 << 10
	optionHardCap = 1 << 20
	// maxOptions bounds option haggling on one connection (a client listing
	// exports sends one NBD_OPT_INFO per export).
	maxOptions = 10000
	// metaContextID is the id base:allocation gets from SET_META_CONTEXT.
	metaContextID      = uint32(1)
	metaBaseAllocation = "base:allocation"
)

// errAbort ends a connection the client asked to end (NBD_OPT_ABORT).
var errAbort = errors.New("nbd: client aborted negotiation")

// handshake runs the fixed newstyle negotiation. It returns true when the
// connection enters transmission with c.exp set.
func (c *conn) handshake() bool {
	err := binary.Write(c.bw, binary.BigEndian, protocol.NegotiationNewstyleHeader{
		OldstyleMagic:  magicNBD,
		OptionMagic:    magicOption,
		HandshakeFlags: flagFixedNewstyle | flagNoZeroes,
	})
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		c.logEnd("handshake", err)
		return false
	}
	var cflags uint32
	if err := binary.Read(c.br, binary.BigEndian, &cflags); err != nil {
		c.logEnd("handshake", err)
		return false
	}
	if cflags&^clientFlagsKnown != 0 {
		c.log.Warn("nbd: unknown client flags; closing", "flags", cflags)
		return false
	}
	// A client without FIXED_NEWSTYLE still gets fixed newstyle replies, as
	// the spec allows.
	c.noZeroes = cflags&clientFlagNoZeroes != 0

	for {
		var h protocol.NegotiationOptionHeader
		if err := binary.Read(c.br, binary.BigEndian, &h); err != nil {
			c.logEnd("handshake", err)
			return false
		}
		if h.OptionMagic != magicOption {
			c.log.Warn("nbd: bad option magic; closing", "magic", h.OptionMagic)
			return false
		}
		c.numOptions++
		if c.numOptions > maxOptions {
			c.log.Warn("nbd: too many options; closing")
			return false
		}
		if h.Length > maxOptionLen {
			if h.Length > optionHardCap || h.ID == optExportName {
				c.log.Warn("nbd: option payload too large; closing", "option", h.ID, "length", h.Length)
				return false
			}
			if _, err := c.br.Discard(int(h.Length)); err != nil {
				c.logEnd("handshake", err)
				return false
			}
			if err := c.optError(h.ID, repErrTooBig, "option payload too large"); err != nil {
				c.logEnd("handshake", err)
				return false
			}
			continue
		}
		data := make([]byte, h.Length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			c.logEnd("handshake", err)
			return false
		}
		enter, err := c.option(h.ID, data)
		if err != nil {
			c.logEnd("handshake", err)
			return false
		}
		if enter {
			return true
		}
	}
}

// logEnd logs why a connection ended: at debug level when the client went
// away or the server stopped it, at info level otherwise (protocol
// violations are logged where they are found).
func (c *conn) logEnd(phase string, err error) {
	switch {
	case errors.Is(err, errAbort), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, net.ErrClosed), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE),
		c.stopping.Load() && errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Debug("nbd: connection ended", "phase", phase, "err", err)
	default:
		c.log.Info("nbd: connection ended", "phase", phase, "err", err)
	}
}

// option answers one option. enter is true when transmission begins; an
// error closes the connection.
func (c *conn) option(opt uint32, data []byte) (enter bool, err error) {
	if c.s.opts.RequireTLS && !c.tls {
		switch opt {
		case optStartTLS, optAbort:
		case optExportName:
			// No error reply exists for EXPORT_NAME: the spec says close.
			return false, errors.New("nbd: EXPORT_NAME in the clear where TLS is required")
		default:
			return false, c.optError(opt, repErrTLSReqd, "TLS is required: send NBD_OPT_STARTTLS first")
		}
	}
	switch opt {
	case optExportName:
		return c.optExportName(data)
	case optAbort:
		// The spec asks servers to ignore any payload here.
		if err := c.optReply(opt, repAck, nil); err != nil {
			return false, err
		}
		return false, errAbort
	case optList:
		return false, c.optList(data)
	case optStartTLS:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "STARTTLS takes no payload")
		}
		return false, c.startTLS()
	case optInfo, optGo:
		return c.optInfoGo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "STRUCTURED_REPLY takes no payload")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(opt, data)
	case optExtendedHeaders:
		return false, c.optError(opt, repErrUnsup, "extended headers not supported")
	}
	return false, c.optError(opt, repErrUnsup, fmt.Sprintf("option %d not supported", opt))
}

// startTLS upgrades the connection (NBD_OPT_STARTTLS): ACK, then a TLS
// handshake on the socket, then every later byte goes through TLS. What was
// negotiated in the clear is forgotten, as the spec requires. c.nc stays the
// raw socket, so deadlines and Close from other goroutines still apply.
func (c *conn) startTLS() error {
	cfg := c.s.opts.TLS
	if cfg == nil {
		return c.optError(optStartTLS, repErrUnsup, "TLS is not configured on this server")
	}
	if c.tls {
		return c.optError(optStartTLS, repErrInvalid, "TLS is already negotiated")
	}
	if err := c.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	if c.br.Buffered() > 0 {
		return errors.New("nbd: client sent data before the TLS handshake")
	}
	tc := tls.Server(c.sock, cfg)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	c.w = tc
	c.br = bufio.NewReaderSize(tc, 64<<10)
	c.bw = bufio.NewWriterSize(tc, 64<<10)
	c.tls = true
	if chains := tc.ConnectionState().VerifiedChains; len(chains) > 0 {
		c.certs = chains[0]
	}
	c.structured, c.metaSet, c.metaExport = false, false, ""
	return nil
}

func (c *conn) optReply(opt, typ uint32, payload []byte) error {
	binary.Write(c.bw, binary.BigEndian, protocol.NegotiationReplyHeader{
		ReplyMagic: magicOptionReply,
		ID:         opt,
		Type:       typ,
		Length:     uint32(len(payload)),
	})
	c.bw.Write(payload)
	return c.bw.Flush()
}

func (c *conn) optError(opt, typ uint32, msg string) error {
	return c.optReply(opt, typ, []byte(shortMessage(msg)))
}

// parseName validates a string from the client: at most 4096 bytes of UTF-8
// without NUL.
func parseName(b []byte) (string, bool) {
	if len(b) > maxStringLen || !utf8.Valid(b) {
		return "", false
	}
	for _, ch := range b {
		if ch == 0 {
			return "", false
		}
	}
	return string(b), true
}

// readString reads a 32-bit length and that many bytes of name from p.
func readString(p []byte) (string, []byte, bool) {
	if len(p) < 4 {
		return "", nil, false
	}
	n := binary.BigEndian.Uint32(p)
	p = p[4:]
	if uint64(n) > uint64(len(p)) {
		return "", nil, false
	}
	s, ok := parseName(p[:n])
	return s, p[n:], ok
}

// open resolves an export name. On failure it returns the option error
// reply that fits.
func (c *conn) open(name string) (Export, uint32, error) {
	if c.s.shuttingDown() {
		return nil, repErrShutdown, errors.New("server is shutting down")
	}
	var exp Export
	var err error
	if pe, ok := c.s.exp.(PeerExporter); ok {
		exp, err = pe.OpenFor(c.peer(), name)
	} else {
		exp, err = c.s.exp.Open(name)
	}
	switch {
	case err == nil && exp != nil:
		return exp, 0, nil
	case err == nil, errors.Is(err, blockdev.ErrNotFound):
		return nil, repErrUnknown, fmt.Errorf("no export %q", name)
	case errors.Is(err, blockdev.ErrInvalid):
		return nil, repErrInvalid, err
	case errors.Is(err, blockdev.ErrGone):
		return nil, repErrShutdown, err
	}
	c.log.Warn("nbd: opening export failed", "name", name, "err", err)
	return nil, repErrUnknown, err
}

// peer describes the client for a PeerExporter.
func (c *conn) peer() Peer {
	a := c.nc.RemoteAddr()
	return Peer{Addr: a, Unix: a != nil && (a.Network() == "unix" || a.Network() == "unixpacket"), Certs: c.certs}
}

// list is the exports this client may see.
func (c *conn) list() ([]ExportInfo, error) {
	if pe, ok := c.s.exp.(PeerExporter); ok {
		return pe.ListFor(c.peer())
	}
	return c.s.exp.List()
}

func (c *conn) transmissionFlags(exp Export) uint16 {
	f := tfHasFlags | tfSendFlush | tfCanMultiConn | tfSendCache
	if exp.ReadOnly() {
		// Nothing that writes is offered (as nbdkit does); such requests
		// still get EPERM.
		f |= tfReadOnly
	} else {
		f |= tfSendFUA | c.writeFlags(exp)
	}
	if c.structured {
		// A successful read is always one OFFSET_DATA chunk.
		f |= tfSendDF
	}
	return f
}

func (c *conn) writeFlags(exp Export) uint16 {
	var f uint16
	if _, ok := exp.(blockdev.Trimmer); ok {
		f |= tfSendTrim
	}
	if _, ok := exp.(blockdev.Zeroer); ok {
		// Zeroes on a Zeroer are always fast.
		f |= tfSendWriteZeroes | tfSendFastZero
	}
	return f
}

func exportSize(exp Export) uint64 {
	return uint64(max(exp.Size(), 0))
}

func (c *conn) optExportName(data []byte) (bool, error) {
	name, ok := parseName(data)
	if !ok {
		return false, errors.New("invalid export name in NBD_OPT_EXPORT_NAME")
	}
	exp, _, err := c.open(name)
	if err != nil {
		// This option has no error reply: the spec says to close.
		return false, fmt.Errorf("NBD_OPT_EXPORT_NAME: %w", err)
	}
	c.exp = exp
	var b [8 + 2 + 124]byte
	binary.BigEndian.PutUint64(b[0:8], exportSize(exp))
	binary.BigEndian.PutUint16(b[8:10], c.transmissionFlags(exp))
	reply := b[:]
	if c.noZeroes {
		reply = b[:10]
	}
	c.enter(exp, name, false)
	c.bw.Write(reply)
	return true, c.bw.Flush()
}

func (c *conn) optList(data []byte) error {
	if len(data) != 0 {
		return c.optError(optList, repErrInvalid, "LIST takes no payload")
	}
	if c.s.shuttingDown() {
		return c.optError(optList, repErrShutdown, "server is shutting down")
	}
	infos, err := c.list()
	if err != nil {
		c.log.Warn("nbd: listing exports failed", "err", err)
		if errors.Is(err, blockdev.ErrGone) {
			return c.optError(optList, repErrShutdown, err.Error())
		}
		return c.optError(optList, repErrPolicy, err.Error())
	}
	for _, info := range infos {
		if _, ok := parseName([]byte(info.Name)); !ok {
			continue // no client could ask for it
		}
		desc := info.Description
		if len(desc) > maxStringLen {
			desc = desc[:maxStringLen]
		}
		desc = strings.ToValidUTF8(desc, "")
		p := make([]byte, 4, 4+len(info.Name)+len(desc))
		binary.BigEndian.PutUint32(p, uint32(len(info.Name)))
		p = append(p, info.Name...)
		p = append(p, desc...)
		if err := c.optReply(optList, repServer, p); err != nil {
			return err
		}
	}
	return c.optReply(optList, repAck, nil)
}

func (c *conn) optInfoGo(opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, c.optError(opt, repErrInvalid, "payload too short")
	}
	n := binary.BigEndian.Uint32(data)
	if uint64(n) > uint64(len(data)-6) {
		return false, c.optError(opt, repErrInvalid, "name length past payload")
	}
	name, ok := parseName(data[4 : 4+n])
	if !ok {
		return false, c.optError(opt, repErrInvalid, "invalid export name")
	}
	rest := data[4+n:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return false, c.optError(opt, repErrInvalid, "information request count does not match payload")
	}
	var wantName, wantDesc, wantBlockSize bool
	for i := range nreq {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		case infoBlockSize:
			wantBlockSize = true
		}
	}

	exp, rep, err := c.open(name)
	if err != nil {
		return false, c.optError(opt, rep, err.Error())
	}
	if opt == optGo {
		c.exp = exp // closed by finish if the reply fails
	} else {
		defer exp.Close()
	}

	var b [14]byte
	binary.BigEndian.PutUint16(b[0:2], infoExport)
	binary.BigEndian.PutUint64(b[2:10], exportSize(exp))
	binary.BigEndian.PutUint16(b[10:12], c.transmissionFlags(exp))
	if err := c.optReply(opt, repInfo, b[:12]); err != nil {
		return false, err
	}
	if wantName {
		p := binary.BigEndian.AppendUint16(nil, infoName)
		if err := c.optReply(opt, repInfo, append(p, canonicalName(exp, name)...)); err != nil {
			return false, err
		}
	}
	if wantDesc {
		p := binary.BigEndian.AppendUint16(nil, infoDescription)
		if err := c.optReply(opt, repInfo, append(p, c.description(exp, name)...)); err != nil {
			return false, err
		}
	}
	// Always sent: clients that did not ask may still use it, and it is
	// the only way to tell them the maximum.
	binary.BigEndian.PutUint16(b[0:2], infoBlockSize)
	binary.BigEndian.PutUint32(b[2:6], c.s.opts.MinBlockSize)
	binary.BigEndian.PutUint32(b[6:10], c.s.opts.PreferredBlockSize)
	binary.BigEndian.PutUint32(b[10:14], c.s.opts.MaxBlockSize)
	if err := c.optReply(opt, repInfo, b[:14]); err != nil {
		return false, err
	}
	if opt == optInfo {
		return false, c.optReply(opt, repAck, nil)
	}
	// Enter before the ACK goes out, so that Connections shows the export
	// by the time the client can use it.
	c.enter(exp, name, wantBlockSize)
	return true, c.optReply(opt, repAck, nil)
}

func canonicalName(exp Export, asked string) string {
	if n, ok := exp.(interface{ Name() string }); ok {
		return n.Name()
	}
	return asked
}

func (c *conn) description(exp Export, name string) string {
	var desc string
	if d, ok := exp.(interface{ Description() string }); ok {
		desc = d.Description()
	} else if infos, err := c.list(); err == nil {
		for _, info := range infos {
			if info.Name == name {
				desc = info.Description
				break
			}
		}
	}
	if len(desc) > maxStringLen {
		desc = desc[:maxStringLen]
	}
	return strings.ToValidUTF8(desc, "")
}

func (c *conn) optMetaContext(opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		// SET replaces the selection even when it fails.
		c.metaSet = false
		c.metaExport = ""
	}
	if !c.structured {
		return c.optError(opt, repErrInvalid, "structured replies not negotiated")
	}
	name, p, ok := readString(data)
	if !ok || len(p) < 4 {
		return c.optError(opt, repErrInvalid, "malformed payload")
	}
	nq := binary.BigEndian.Uint32(p)
	p = p[4:]
	if uint64(nq) > uint64(len(p)/4) {
		return c.optError(opt, repErrInvalid, "query count past payload")
	}
	// With no query, LIST returns every context; SET selects none.
	match := opt == optListMetaContext && nq == 0
	for range nq {
		var q string
		if q, p, ok = readString(p); !ok {
			return c.optError(opt, repErrInvalid, "malformed query")
		}
		// "base:" is a wildcard for LIST only; SET must ignore it. Unknown
		// namespaces and leaves are ignored, as the spec requires.
		if q == metaBaseAllocation || (q == "base:" && opt == optListMetaContext) {
			match = true
		}
	}
	if len(p) != 0 {
		return c.optError(opt, repErrInvalid, "trailing bytes after queries")
	}
	exp, rep, err := c.open(name)
	if err != nil {
		return c.optError(opt, rep, err.Error())
	}
	exp.Close()
	if match {
		id := uint32(0) // LIST ids are reserved
		if opt == optSetMetaContext {
			id = metaContextID
		}
		payload := binary.BigEndian.AppendUint32(nil, id)
		if err := c.optReply(opt, repMetaContext, append(payload, metaBaseAllocation...)); err != nil {
			return err
		}
	}
	if opt == optSetMetaContext {
		c.metaSet = match
		c.metaExport = name
	}
	return c.optReply(opt, repAck, nil)
}

// enter switches the connection to transmission on exp.
func (c *conn) enter(exp Export, name string, strictAlign bool) {
	if c.metaExport != name {
		// The contexts were selected for another export.
		c.metaSet = false
	}
	c.exp = exp
	c.trimmer, _ = exp.(blockdev.Trimmer)
	c.zeroer, _ = exp.(blockdev.Zeroer)
	c.blockStatus, _ = exp.(blockdev.BlockStatuser)
	c.fast, _ = exp.(blockdev.FastReader)
	c.refs, _ = exp.(blockdev.RefReader)
	c.waiter, _ = exp.(blockdev.WriteWaiter)
	c.batcher, _ = exp.(blockdev.BatchWriter)
	c.caps = exportCaps{
		readOnly:    exp.ReadOnly(),
		trim:        c.trimmer != nil,
		zero:        c.zeroer != nil,
		blockStatus: c.metaSet && c.structured,
		structured:  c.structured,
		strictAlign: strictAlign,
		minBlock:    c.s.opts.MinBlockSize,
		maxBlock:    c.s.opts.MaxBlockSize,
	}
	if !strictAlign {
		// The client did not ask for block sizes, so it did not promise
		// to stay within our maximum: the spec's default maximum is the
		// export's size. Such requests are served in chunks (long.go).
		c.caps.maxBlock = math.MaxUint32
	}
	c.lim = newLimiter(c.s.opts.MaxRequestsInFlight, c.s.opts.MaxBytesInFlight)
	canonical := canonicalName(exp, name)
	c.log = c.log.With("export", canonical)
	c.s.mu.Lock()
	c.exportName = canonical
	c.inTransmission = true
	c.s.mu.Unlock()
	c.log.Debug("nbd: transmission started", "structured", c.structured, "base_allocation", c.caps.blockStatus)
}
