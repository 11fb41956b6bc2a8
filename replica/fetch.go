package replica

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/strata-storage/strata/cdp"
	"github.com/strata-storage/strata/cow"
)

// Fetching a block version for a source's scrub: the client sends 'F'
// (JSON: token, volume, byte offset, checksum); the site answers 'K' with
// the block (4 KiB) or 'E' (a site that predates fetches answers any
// first message but a hello or pull with "expected a hello"). The site looks up the version of that block of
// its volume whose checksum is the one asked for, reads it and checks it
// against its own index's checksum before it answers; the source checks
// it again against its own.
const (
	msgFetch = 'F'
	msgBlock = 'K'
)

type fetchMsg struct {
	Token  string `json:"token"`
	Volume string `json:"volume"`
	Offset int64  `json:"offset"`
	CRC    uint32 `json:"crc"`
}

// FetchBlock asks the remote site for the version of the block at byte
// offset off of its volume vol whose CRC32C is crc, and checks the answer.
// An error of class ErrNotFound: the site holds no good copy of it.
func (r *Remote) FetchBlock(ctx context.Context, vol string, off int64, crc uint32) ([]byte, error) {
	if err := r.dial(ctx); err != nil {
		return nil, err
	}
	defer r.Close()
	r.deadline(r.conn.SetWriteDeadline)
	if err := writeJSON(r.conn, msgFetch, fetchMsg{Token: r.o.Token, Volume: vol, Offset: off, CRC: crc}); err != nil {
		return nil, err
	}
	r.deadline(r.conn.SetReadDeadline)
	typ, b, err := readMsg(r.br)
	if err != nil {
		return nil, fmt.Errorf("fetch: %w", err)
	}
	switch typ {
	case msgBlock:
		if len(b) != cdp.BlockSize || cdp.Checksum(b) != crc {
			return nil, fmt.Errorf("%w: the block the site sent does not match its checksum", ErrCorrupt)
		}
		return b, nil
	case msgError:
		var e errorMsg
		if err := json.Unmarshal(b, &e); err != nil {
			return nil, fmt.Errorf("%w: bad error reply", ErrCorrupt)
		}
		return nil, codeErr(e)
	}
	return nil, fmt.Errorf("%w: unexpected reply %q to a fetch", ErrCorrupt, typ)
}

// serveFetch answers one fetch.
func (s *Server) serveFetch(c net.Conn, b []byte) error {
	var m fetchMsg
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("%w: bad fetch request", ErrCorrupt)
	}
	if err := s.checkToken(m.Token); err != nil {
		return err
	}
	data, _, err := s.Receiver.Pool.ReadVersion(m.Volume, m.Offset, m.CRC)
	if errors.Is(err, cow.ErrNoVersion) {
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	return writeMsg(c, msgBlock, data)
}
