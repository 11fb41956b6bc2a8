package replica

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/klauspost/reedsolomon"
)

// Erasure-coded objects: an object is cut into K data shards and M parity
// shards (Reed-Solomon), shard i going to target i under the object's key.
// Each shard is self-describing, so a reader can tell a shard that rotted,
// was truncated, or belongs to another object or another version of it
// from a good one, and use any K good shards:
//
//	magic "SRS1" (4) | version (1) | K (1) | M (1) | index (1) |
//	object length (8) | CRC32C of payload (4) | CRC32C of object (4) |
//	CRC32C of the 24 bytes before (4) | payload
//
// Every payload is ceil(length/K) bytes (at least one, as Reed-Solomon
// cannot code empty shards); the last data shard is padded with zeros.
const (
	shardMagic     = "SRS1"
	shardVersion   = 1
	shardHeaderLen = 28
	// maxShards is what the codec (GF(2^8)) supports and what the index
	// byte can hold.
	maxShards = 256
)

// ecCodec splits objects into shards and joins them back.
type ecCodec struct {
	k, m int
	rs   reedsolomon.Encoder
}

func newEC(k, m int) (*ecCodec, error) {
	if k < 1 || m < 1 || k+m > maxShards {
		return nil, fmt.Errorf("replica: erasure coding %d+%d: need K >= 1, M >= 1 and K+M <= %d", k, m, maxShards)
	}
	rs, err := reedsolomon.New(k, m)
	if err != nil {
		return nil, fmt.Errorf("replica: erasure coding %d+%d: %w", k, m, err)
	}
	return &ecCodec{k: k, m: m, rs: rs}, nil
}

// shardPayload is the payload size of each shard of an n-byte object.
func (c *ecCodec) shardPayload(n int64) int64 {
	p := (n + int64(c.k) - 1) / int64(c.k)
	if p == 0 {
		p = 1
	}
	return p
}

// Split returns the K+M shards of obj, headers included. The shards share
// one allocation.
func (c *ecCodec) Split(obj []byte) ([][]byte, error) {
	n := c.k + c.m
	p := int(c.shardPayload(int64(len(obj))))
	buf := make([]byte, n*(shardHeaderLen+p))
	shards := make([][]byte, n)
	payloads := make([][]byte, n)
	for i := range shards {
		shards[i] = buf[i*(shardHeaderLen+p) : (i+1)*(shardHeaderLen+p) : (i+1)*(shardHeaderLen+p)]
		payloads[i] = shards[i][shardHeaderLen:]
	}
	rest := obj
	for i := 0; i < c.k && len(rest) > 0; i++ {
		rest = rest[copy(payloads[i], rest):]
	}
	if err := c.rs.Encode(payloads); err != nil {
		return nil, fmt.Errorf("replica: erasure coding: %w", err)
	}
	objCRC := crc32.Checksum(obj, castagnoli)
	for i, s := range shards {
		le := binary.LittleEndian
		copy(s, shardMagic)
		s[4] = shardVersion
		s[5] = byte(c.k)
		s[6] = byte(c.m)
		s[7] = byte(i)
		le.PutUint64(s[8:], uint64(len(obj)))
		le.PutUint32(s[16:], crc32.Checksum(payloads[i], castagnoli))
		le.PutUint32(s[20:], objCRC)
		le.PutUint32(s[24:], crc32.Checksum(s[:24], castagnoli))
	}
	return shards, nil
}

// checkShard says why shard i cannot be used for the object of length
// want and checksum wantCRC, or nil if it can.
func (c *ecCodec) checkShard(i int, s []byte, want int64, wantCRC uint32) error {
	le := binary.LittleEndian
	if len(s) < shardHeaderLen {
		return fmt.Errorf("shard is %d bytes, shorter than its header", len(s))
	}
	if string(s[:4]) != shardMagic {
		return errors.New("not a shard (bad magic)")
	}
	if crc32.Checksum(s[:24], castagnoli) != le.Uint32(s[24:]) {
		return errors.New("shard header checksum mismatch")
	}
	if s[4] != shardVersion {
		return fmt.Errorf("shard format version %d is not supported", s[4])
	}
	if int(s[5]) != c.k || int(s[6]) != c.m {
		return fmt.Errorf("shard is coded %d+%d, expected %d+%d", s[5], s[6], c.k, c.m)
	}
	if int(s[7]) != i {
		return fmt.Errorf("shard has index %d, expected %d (targets listed in another order?)", s[7], i)
	}
	if n := int64(le.Uint64(s[8:])); n != want || le.Uint32(s[20:]) != wantCRC {
		return fmt.Errorf("shard belongs to another object or version (%d bytes, crc %08x; expected %d bytes, crc %08x)",
			n, le.Uint32(s[20:]), want, wantCRC)
	}
	if p := c.shardPayload(want); int64(len(s)-shardHeaderLen) != p {
		return fmt.Errorf("shard payload is %d bytes, expected %d", len(s)-shardHeaderLen, p)
	}
	if crc32.Checksum(s[shardHeaderLen:], castagnoli) != le.Uint32(s[16:]) {
		return errors.New("shard payload checksum mismatch")
	}
	return nil
}

// Join rebuilds the object of length want and checksum wantCRC from its
// shards; shards[i] is nil where shard i is missing. bad[i] says why a
// present shard i was not used. With fewer than K usable shards, or if the
// rebuilt object fails its checksum, err wraps ErrCorrupt.
func (c *ecCodec) Join(shards [][]byte, want int64, wantCRC uint32) (obj []byte, bad []error, err error) {
	n := c.k + c.m
	if len(shards) != n {
		return nil, nil, fmt.Errorf("replica: erasure coding %d+%d: got %d shards", c.k, c.m, len(shards))
	}
	if want < 0 || want > maxObject {
		return nil, nil, fmt.Errorf("%w: object length %d is out of range", ErrCorrupt, want)
	}
	bad = make([]error, n)
	payloads := make([][]byte, n)
	good := 0
	for i, s := range shards {
		if s == nil {
			continue
		}
		if e := c.checkShard(i, s, want, wantCRC); e != nil {
			bad[i] = e
			continue
		}
		payloads[i] = s[shardHeaderLen:]
		good++
	}
	if good < c.k {
		return nil, bad, fmt.Errorf("%w: %d of %d shards usable, %d needed", ErrCorrupt, good, n, c.k)
	}
	// ReconstructData fills in missing data shards only: parity is not
	// needed to read, and is left alone when all data shards are good.
	if err := c.rs.ReconstructData(payloads); err != nil {
		return nil, bad, fmt.Errorf("%w: erasure decoding: %v", ErrCorrupt, err)
	}
	obj = make([]byte, 0, want)
	for i := 0; i < c.k && int64(len(obj)) < want; i++ {
		take := min(int64(len(payloads[i])), want-int64(len(obj)))
		obj = append(obj, payloads[i][:take]...)
	}
	if int64(len(obj)) != want || crc32.Checksum(obj, castagnoli) != wantCRC {
		return nil, bad, fmt.Errorf("%w: object rebuilt from shards fails its checksum", ErrCorrupt)
	}
	return obj, bad, nil
}
