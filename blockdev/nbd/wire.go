package nbd

import (
	"encoding/binary"
	"errors"
	"math"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// Wire constants. Those go-nbd's protocol package defines are taken from it;
// the rest are from doc/proto.md.
const (
	magicNBD             = protocol.NEGOTIATION_MAGIC_OLDSTYLE // "NBDMAGIC"
	magicOption          = protocol.NEGOTIATION_MAGIC_OPTION   // "IHAVEOPT"
	magicOptionReply     = protocol.NEGOTIATION_MAGIC_REPLY
	magicRequest         = protocol.TRANSMISSION_MAGIC_REQUEST
	magicSimpleReply     = protocol.TRANSMISSION_MAGIC_REPLY
	magicStructuredReply = uint32(0x668e33ef)
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle       = protocol.NEGOTIATION_HANDSHAKE_FLAG_FIXED_NEWSTYLE
	flagNoZeroes            = uint16(1 << 1)
	clientFlagFixedNewstyle = uint32(1 << 0)
	clientFlagNoZeroes      = uint32(1 << 1)
	clientFlagsKnown        = clientFlagFixedNewstyle | clientFlagNoZeroes
)

// Options.
const (
	optExportName      = uint32(1)
	optAbort           = protocol.NEGOTIATION_ID_OPTION_ABORT
	optList            = protocol.NEGOTIATION_ID_OPTION_LIST
	optStartTLS        = uint32(5)
	optInfo            = protocol.NEGOTIATION_ID_OPTION_INFO
	optGo              = protocol.NEGOTIATION_ID_OPTION_GO
	optStructuredReply = uint32(8)
	optListMetaContext = uint32(9)
	optSetMetaContext  = uint32(10)
	optExtendedHeaders = uint32(11)
)

// Option reply types.
const (
	repAck         = protocol.NEGOTIATION_TYPE_REPLY_ACK
	repServer      = protocol.NEGOTIATION_TYPE_REPLY_SERVER
	repInfo        = protocol.NEGOTIATION_TYPE_REPLY_INFO
	repMetaContext = uint32(4)
	repErrUnsup    = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNSUPPORTED
	repErrPolicy   = uint32(1<<31 + 2)
	repErrInvalid  = uint32(1<<31 + 3)
	repErrTLSReqd  = uint32(1<<31 + 5)
	repErrUnknown  = protocol.NEGOTIATION_TYPE_REPLY_ERR_UNKNOWN
	repErrShutdown = uint32(1<<31 + 7)
	repErrTooBig   = uint32(1<<31 + 9)
)

// NBD_INFO types.
const (
	infoExport      = protocol.NEGOTIATION_TYPE_INFO_EXPORT
	infoName        = protocol.NEGOTIATION_TYPE_INFO_NAME
	infoDescription = protocol.NEGOTIATION_TYPE_INFO_DESCRIPTION
	infoBlockSize   = protocol.NEGOTIATION_TYPE_INFO_BLOCKSIZE
)

// Transmission flags.
const (
	tfHasFlags        = protocol.NEGOTIATION_REPLY_FLAGS_HAS_FLAGS
	tfReadOnly        = uint16(1 << 1)
	tfSendFlush       = uint16(1 << 2)
	tfSendFUA         = uint16(1 << 3)
	tfSendTrim        = uint16(1 << 5)
	tfSendWriteZeroes = uint16(1 << 6)
	tfSendDF          = uint16(1 << 7)
	tfCanMultiConn    = protocol.NEGOTIATION_REPLY_FLAGS_CAN_MULTI_CONN
	tfSendCache       = uint16(1 << 10)
	tfSendFastZero    = uint16(1 << 11)
)

// Commands.
const (
	cmdRead        = protocol.TRANSMISSION_TYPE_REQUEST_READ
	cmdWrite       = protocol.TRANSMISSION_TYPE_REQUEST_WRITE
	cmdDisc        = protocol.TRANSMISSION_TYPE_REQUEST_DISC
	cmdFlush       = uint16(3)
	cmdTrim        = uint16(4)
	cmdCache       = uint16(5)
	cmdWriteZeroes = uint16(6)
	cmdBlockStatus = uint16(7)
)

// Command flags.
const (
	cmdFlagFUA      = uint16(1 << 0)
	cmdFlagNoHole   = uint16(1 << 1)
	cmdFlagDF       = uint16(1 << 2)
	cmdFlagReqOne   = uint16(1 << 3)
	cmdFlagFastZero = uint16(1 << 4)
)

// Structured reply flags and types.
const (
	replyFlagDone        = uint16(1 << 0)
	replyTypeNone        = uint16(0)
	replyTypeOffsetData  = uint16(1)
	replyTypeBlockStatus = uint16(5)
	replyTypeError       = uint16(1<<15 + 1)
)

// Errno values the spec allows on the wire.
const (
	errnoPerm     = protocol.TRANSMISSION_ERROR_EPERM
	errnoIO       = uint32(5)
	errnoNoMem    = uint32(12)
	errnoInval    = protocol.TRANSMISSION_ERROR_EINVAL
	errnoNoSpc    = uint32(28)
	errnoOverflow = uint32(75)
	errnoNotSup   = uint32(95)
	errnoShutdown = uint32(108)
)

// base:allocation flags (the same bits as blockdev's extent flags).
const (
	stateHole = uint32(1 << 0)
	stateZero = uint32(1 << 1)
)

const (
	requestHeaderLen    = 28
	simpleReplyLen      = 16
	structuredHeaderLen = 20
	// maxStringLen is the spec's hard limit for names, queries and messages.
	maxStringLen = 4096
	// maxErrorMessage keeps error chunks short; device errors can be long.
	maxErrorMessage = 256
	// maxDescriptors caps the extents in one block status reply; the spec
	// lets a server return fewer than asked, and clients ask again.
	maxDescriptors = 1024
)

var errBadMagic = errors.New("nbd: bad request magic")

// request is one decoded transmission request header.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	off    uint64
	length uint32
}

// parseRequest decodes a request header. Only a bad magic is an error: it
// means the stream is out of sync, and the connection must close. Everything
// else is judged by exportCaps.check, which answers with an errno.
func parseRequest(b *[requestHeaderLen]byte) (request, error) {
	if binary.BigEndian.Uint32(b[0:4]) != magicRequest {
		return request{}, errBadMagic
	}
	return request{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		off:    binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// exportCaps is what was negotiated for one connection: it decides which
// requests are valid.
type exportCaps struct {
	readOnly    bool
	trim        bool // device is a blockdev.Trimmer
	zero        bool // device is a blockdev.Zeroer
	blockStatus bool // base:allocation selected for this export (implies structured)
	structured  bool
	// strictAlign: the client asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO
	// and so promised to honour minBlock; only then are unaligned requests
	// refused (the device itself handles any alignment).
	strictAlign bool
	minBlock    uint32
	maxBlock    uint32
}

// check validates a decoded request (other than NBD_CMD_DISC) against the
// negotiated capabilities and the export's current size. It returns 0 when
// the request may run, otherwise the errno to reply with and a short message.
func (c *exportCaps) check(r *request, size uint64) (uint32, string) {
	allowed := cmdFlagFUA // valid on every command once SEND_FUA is advertised
	switch r.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdFlush, cmdCache:
	case cmdTrim:
		if !c.trim {
			return errnoInval, "trim not supported"
		}
	case cmdWriteZeroes:
		if !c.zero {
			return errnoInval, "write zeroes not supported"
		}
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		if !c.blockStatus {
			return errnoInval, "no metadata context negotiated"
		}
		allowed |= cmdFlagReqOne
	default:
		return errnoInval, "unknown command"
	}
	if r.flags&^allowed != 0 {
		return errnoInval, "invalid command flags"
	}
	if r.typ == cmdFlush {
		if r.off != 0 || r.length != 0 {
			return errnoInval, "flush offset and length must be zero"
		}
		return 0, ""
	}
	write := r.typ == cmdWrite || r.typ == cmdWriteZeroes
	if c.readOnly && (write || r.typ == cmdTrim) {
		return errnoPerm, "export is read-only"
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > c.maxBlock {
		return errnoInval, "request larger than maximum block size"
	}
	if r.off > math.MaxUint64-uint64(r.length) {
		return errnoInval, "offset plus length overflows"
	}
	if r.off+uint64(r.length) > size {
		if write {
			return errnoNoSpc, "request beyond end of export"
		}
		return errnoInval, "request beyond end of export"
	}
	if c.strictAlign && c.minBlock > 1 &&
		(r.off%uint64(c.minBlock) != 0 || r.length%c.minBlock != 0) {
		return errnoInval, "request not aligned to minimum block size"
	}
	if r.typ == cmdBlockStatus && r.length == 0 {
		// No descriptor can be nonzero and fit in a zero-length request.
		return errnoInval, "block status length is zero"
	}
	return 0, ""
}

func cmdName(typ uint16) string {
	switch typ {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disc"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdCache:
		return "cache"
	case cmdWriteZeroes:
		return "write_zeroes"
	case cmdBlockStatus:
		return "block_status"
	}
	return "unknown"
}
