package cdp

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
)

func writeRec(vol, off uint64, fill byte, blocks int) *Record {
	data := bytes.Repeat([]byte{fill}, blocks*BlockSize)
	return &Record{Kind: KindWrite, Volume: vol, Offset: off, Length: uint64(len(data)), Data: data, Meta: BlockChecksums(data)}
}

func TestRecordRoundTrip(t *testing.T) {
	recs := []*Record{
		writeRec(7, 8192, 0xab, 3),
		{Kind: KindZero, Flags: FlagNoHole, Volume: 7, Offset: 4096, Length: 1 << 30},
		{Kind: KindTrim, Volume: 9, Offset: 0, Length: 4096},
		{Kind: KindVolumeCreate, Volume: 0, Length: 10 << 30, Meta: []byte("vol0")},
		{Kind: KindVolumeResize, Volume: 4, Length: 1 << 20},
		{Kind: KindVolumeDelete, Volume: 4},
	}
	for i, r := range recs {
		r.Seq = uint64(100 + i)
		r.Time = int64(1e18 + i)
		b := AppendEncoded(nil, r)
		if len(b) != r.EncodedSize() {
			t.Fatalf("%s: encoded %d bytes, EncodedSize says %d", r.Kind, len(b), r.EncodedSize())
		}
		got, n, err := DecodeRecord(append(b, 0xff, 0xee))
		if err != nil {
			t.Fatalf("%s: decode: %v", r.Kind, err)
		}
		if n != len(b) || got.Kind != r.Kind || got.Flags != r.Flags || got.Volume != r.Volume || got.Seq != r.Seq ||
			got.Time != r.Time || got.Offset != r.Offset || got.Length != r.Length ||
			!bytes.Equal(got.Meta, r.Meta) || !bytes.Equal(got.Data, r.Data) {
			t.Fatalf("%s: round trip mismatch: %+v", r.Kind, got)
		}
		// Every single-bit flip anywhere in the record is caught.
		for bit := 0; bit < len(b)*8; bit += 61 {
			c := bytes.Clone(b)
			c[bit/8] ^= 1 << (bit % 8)
			if _, _, err := DecodeRecord(c); err == nil {
				t.Fatalf("%s: flip of bit %d not detected", r.Kind, bit)
			}
		}
		// Every truncation is caught.
		for cut := 0; cut < len(b); cut += 97 {
			if _, _, err := DecodeRecord(b[:cut]); err == nil {
				t.Fatalf("%s: truncation to %d bytes not detected", r.Kind, cut)
			}
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	r := writeRec(1, 4096, 0x5a, 1)
	r.Seq = 1
	f.Add(AppendEncoded(nil, r))
	f.Add(AppendEncoded(nil, &Record{Kind: KindVolumeCreate, Seq: 2, Length: 1 << 20, Meta: []byte("a")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, n, err := DecodeRecord(b)
		if err != nil {
			return
		}
		if n > len(b) || n != rec.EncodedSize() {
			t.Fatalf("decoded size %d of %d-byte input", n, len(b))
		}
		// A record that decodes re-encodes to the same bytes.
		if !bytes.Equal(AppendEncoded(nil, &rec), b[:n]) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func openMem(t *testing.T, fs vfs.FS, from uint64, replay ReplayFunc) *Journal {
	t.Helper()
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, from, replay)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return j
}

func collect(t *testing.T, fs vfs.FS) ([]Record, error) {
	var got []Record
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, 0, func(r *Record, _ Location) error {
		c := *r
		c.Data = bytes.Clone(r.Data)
		c.Meta = bytes.Clone(r.Meta)
		got = append(got, c)
		return nil
	})
	if err != nil {
		return nil, err
	}
	j.Close()
	return got, nil
}

func TestAppendReadAndRotate(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	var locs []Location
	for i := 0; i < 100; i++ { // 100 x 16 KiB+ crosses several 1 MiB segments
		loc, err := j.Append(writeRec(1, uint64(i)*BlockSize, byte(i), 4))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
	}
	if st := j.Stats(); st.Segments < 2 || st.LastSeq != 100 {
		t.Fatalf("stats %+v: want >= 2 segments and last sequence 100", st)
	}
	for i, loc := range locs {
		buf := make([]byte, BlockSize)
		if err := j.ReadAt(loc.Segment, loc.DataOffset(16)+BlockSize, buf); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf, bytes.Repeat([]byte{byte(i)}, BlockSize)) {
			t.Fatalf("record %d reads back wrong data", i)
		}
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := collect(t, fs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 100 {
		t.Fatalf("replayed %d records, want 100", len(got))
	}
	for i, r := range got {
		if r.Seq != uint64(i+1) || r.Data[0] != byte(i) {
			t.Fatalf("record %d: seq %d data %x", i, r.Seq, r.Data[0])
		}
		if i > 0 && r.Time < got[i-1].Time {
			t.Fatalf("time goes backwards at %d", i)
		}
	}
	// Reopening appends after the old records, never over them.
	j = openMem(t, fs, 101, func(*Record, Location) error { t.Fatal("nothing to replay"); return nil })
	if _, err := j.Append(writeRec(1, 0, 0xee, 1)); err != nil {
		t.Fatal(err)
	}
	j.Close()
	if got, _ := collect(t, fs); len(got) != 101 || got[100].Seq != 101 {
		t.Fatalf("after reopen: %d records", len(got))
	}
}

// segmentsOf lists the segment files, oldest first.
func segmentsOf(t *testing.T, fs vfs.FS) []string {
	names, err := fs.List("j")
	if err != nil {
		t.Fatal(err)
	}
	var segs []string
	for _, n := range names {
		if len(n) > 4 && n[len(n)-4:] == ".seg" {
			segs = append(segs, n)
		}
	}
	sort.Strings(segs)
	return segs
}

func corrupt(t *testing.T, fs vfs.FS, name string, off int64, mutate func([]byte) []byte) {
	t.Helper()
	f, err := fs.Open(fs.PathJoin("j", name))
	if err != nil {
		t.Fatal(err)
	}
	st, _ := f.Stat()
	b := make([]byte, st.Size())
	f.ReadAt(b, 0)
	f.Close()
	b = mutate(b)
	w, err := fs.Create(fs.PathJoin("j", name), vfs.WriteCategoryUnspecified)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(b)
	w.Sync()
	w.Close()
}

func TestTornTailIsCut(t *testing.T) {
	for _, tc := range []struct {
		name string
		cut  func(b []byte) []byte
	}{
		{"short header", func(b []byte) []byte { return b[:len(b)-(RecordHeaderSize+4+BlockSize)+10] }},
		{"short data", func(b []byte) []byte { return b[:len(b)-100] }},
		{"garbage tail", func(b []byte) []byte { b[len(b)-5] ^= 0xff; return b }},
		{"zeroed tail", func(b []byte) []byte {
			for i := len(b) - 3000; i < len(b); i++ {
				b[i] = 0
			}
			return b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := vfs.NewMem()
			j := openMem(t, fs, 0, nil)
			for i := 0; i < 5; i++ {
				if _, err := j.Append(writeRec(1, 0, byte(i), 1)); err != nil {
					t.Fatal(err)
				}
			}
			j.close(false) // a crash: no proof of a clean end
			segs := segmentsOf(t, fs)
			corrupt(t, fs, segs[0], 0, tc.cut)
			got, err := collect(t, fs)
			if err != nil {
				t.Fatalf("torn tail should be cut, got %v", err)
			}
			if len(got) != 4 {
				t.Fatalf("got %d records, want the 4 before the torn one", len(got))
			}
			// New appends follow the cut records with the next sequence.
			j = openMem(t, fs, 5, nil)
			if _, err := j.Append(writeRec(1, 0, 0x77, 1)); err != nil {
				t.Fatal(err)
			}
			j.Close()
			got, err = collect(t, fs)
			if err != nil || len(got) != 5 || got[4].Seq != 5 || got[4].Data[0] != 0x77 {
				t.Fatalf("after append past the torn tail: %d records, err %v", len(got), err)
			}
			// And it stays consistent across another reopen.
			if got, err := collect(t, fs); err != nil || len(got) != 5 {
				t.Fatalf("second reopen: %d records, err %v", len(got), err)
			}
		})
	}
}

// TestMidLogDamageIsKept: a data byte flipped in a record that later
// records prove was synced is damage, not a torn tail: the journal opens,
// keeps every record (the damaged one too: its block checksums are intact
// in the meta, so readers find the damage), and reports it. A damaged header
// (framing) in the middle still refuses the open.
func TestMidLogDamageIsKept(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	var locs []Location
	for i := 0; i < 5; i++ {
		loc, err := j.Append(writeRec(1, 0, byte(i), 1))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
		if err := j.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	segs := segmentsOf(t, fs)
	// Flip one data byte of record 2 after it was synced: records 3..5,
	// appended after that fsync, prove it was durable.
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte { b[locs[1].DataOffset(4)+17] ^= 1; return b })
	var seqs []uint64
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, 0, func(r *Record, _ Location) error {
		seqs = append(seqs, r.Seq)
		return nil
	})
	if err != nil {
		t.Fatalf("a damaged data block must not stop the open: %v", err)
	}
	if len(seqs) != 5 {
		t.Fatalf("replayed %v, want all 5 records", seqs)
	}
	d := j.Damaged()
	if len(d) != 1 || d[0].Seq != 2 || d[0].Offset != locs[1].Offset || len(d[0].Blocks) != 1 || d[0].Blocks[0] != "0" {
		t.Fatalf("damage reported: %+v", d)
	}
	if st := j.Stats(); st.DamagedBlocks != 1 {
		t.Fatalf("stats: %+v", st)
	}
	j.Close()
	// The header of record 3: its framing is gone, which is corruption.
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte { b[locs[2].Offset+40] ^= 1; return b })
	if _, err := collect(t, fs); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt for a bad header in the middle, got %v", err)
	}
}

// A bad record past the last fsync with valid unsynced records after it is
// a torn tail (a crash may persist unsynced blocks in any order).
func TestUnsyncedGapIsTornTail(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	var locs []Location
	for i := 0; i < 5; i++ {
		loc, err := j.Append(writeRec(1, 0, byte(i), 1))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
		if i == 1 {
			j.Sync()
		}
	}
	j.close(false) // a crash after a sync that reached the disk: the records' headers only prove 2 synced
	segs := segmentsOf(t, fs)
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte { b[locs[3].DataOffset(4)+17] ^= 1; return b })
	got, err := collect(t, fs)
	if err != nil || len(got) != 3 {
		t.Fatalf("want the 3 records before the unsynced bad one, got %d, %v", len(got), err)
	}
}

// An unsynced record the disk never got (zeros: the tail's writers finish
// in any order, so a later part of the tail can be in the file and an
// earlier one not) with valid unsynced records after it is a torn tail:
// recovery keeps what precedes the gap and opens.
func TestUnsyncedZeroGapIsTornTail(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	var locs []Location
	for i := 0; i < 5; i++ {
		loc, err := j.Append(writeRec(1, 0, byte(i+1), 1))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
		if i == 1 {
			j.Sync()
		}
	}
	j.close(false)
	segs := segmentsOf(t, fs)
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte {
		clear(b[locs[3].Offset:locs[4].Offset])
		return b
	})
	got, err := collect(t, fs)
	if err != nil || len(got) != 3 {
		t.Fatalf("want the 3 records before the gap, got %d, %v", len(got), err)
	}
}

func TestCorruptNonLastSegment(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	for i := 0; i < 80; i++ {
		if _, err := j.Append(writeRec(1, 0, byte(i), 4)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	segs := segmentsOf(t, fs)
	if len(segs) < 2 {
		t.Fatalf("want several segments, have %v", segs)
	}
	// Tear the end of the first segment: later segments exist, so it is corruption.
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte { return b[:len(b)-10] })
	if _, err := collect(t, fs); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("want ErrCorrupt, got %v", err)
	}
}

// setFormatVersion rewrites every segment header with version v.
func setFormatVersion(t *testing.T, fs vfs.FS, v byte) {
	t.Helper()
	for _, seg := range segmentsOf(t, fs) {
		corrupt(t, fs, seg, 0, func(b []byte) []byte {
			b[8] = v
			c := Checksum(b[:60])
			b[60], b[61], b[62], b[63] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
			return b
		})
	}
}

// segmentVersions returns each segment's format version, oldest first.
func segmentVersions(t *testing.T, fs vfs.FS) []byte {
	t.Helper()
	var out []byte
	for _, seg := range segmentsOf(t, fs) {
		f, err := fs.Open(fs.PathJoin("j", seg))
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 9)
		f.ReadAt(b, 0)
		f.Close()
		out = append(out, b[8])
	}
	return out
}

func TestNewerFormatRefused(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	j.Append(writeRec(1, 0, 1, 1))
	j.Close()
	setFormatVersion(t, fs, FormatVersion+1)
	if _, err := collect(t, fs); err == nil || !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("a segment of a newer format version must be refused, got %v", err)
	}
}

// A journal written by a build of format version 1 (no snapshot flags)
// opens unchanged, and what is appended to it goes into version 2
// segments, which such a build refuses.
func TestOlderFormatRead(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	j.Append(writeRec(1, 0, 1, 1))
	j.Close()
	setFormatVersion(t, fs, 1)
	recs, err := collect(t, fs)
	if err != nil || len(recs) != 1 {
		t.Fatalf("a version 1 journal must be read: %d records, %v", len(recs), err)
	}
	// The empty segment a clean stop leaves is reused by the next open;
	// left by an old build, it has a version 1 header.
	setFormatVersion(t, fs, 1)
	j = openMem(t, fs, 0, nil)
	if _, err := j.Append(&Record{Kind: KindSnapshotCreate, Volume: 1, Flags: FlagSnapScheduled, Meta: []byte{1, 0, 's'}}); err != nil {
		t.Fatal(err)
	}
	if err := j.Sync(); err != nil {
		t.Fatal(err)
	}
	j.Close()
	recs, err = collect(t, fs)
	if err != nil || len(recs) != 2 || recs[1].Flags != FlagSnapScheduled {
		t.Fatalf("after appending: %+v, %v", recs, err)
	}
	// The record went into the reused segment, whose header now says
	// version 2, as does the empty one the clean stop left after it.
	vs := segmentVersions(t, fs)
	if !bytes.Equal(vs, []byte{1, FormatVersion, FormatVersion}) {
		t.Fatalf("segment versions %v: the new record must be in a version %d segment", vs, FormatVersion)
	}
}

// TestCrashKeepsSyncedRecords: records covered by a Sync survive a crash that
// drops everything unsynced; what survives is a clean prefix, never garbage.
func TestCrashKeepsSyncedRecords(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed))
	for round := 0; round < 20; round++ {
		fs := vfs.NewCrashableMem()
		j := openMem(t, fs, 0, nil)
		synced := uint64(0)
		total := 10 + rng.IntN(100)
		for i := 0; i < total; i++ {
			if _, err := j.Append(writeRec(uint64(1+i%3), uint64(i)*BlockSize, byte(i), 1+rng.IntN(8))); err != nil {
				t.Fatal(err)
			}
			if rng.IntN(10) == 0 {
				if err := j.Sync(); err != nil {
					t.Fatal(err)
				}
				synced = uint64(i + 1)
			}
		}
		pct := rng.IntN(101)
		crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(seed, uint64(round)))})
		got, err := collect(t, crashed)
		if err != nil {
			t.Fatalf("round %d (unsynced kept %d%%): recovery failed: %v", round, pct, err)
		}
		if uint64(len(got)) < synced {
			t.Fatalf("round %d: %d records survived, %d were synced", round, len(got), synced)
		}
		for i, r := range got {
			if r.Seq != uint64(i+1) || r.Data[0] != byte(i) {
				t.Fatalf("round %d: record %d is wrong after crash", round, i)
			}
		}
		j.Close()
	}
}

func TestGroupCommit(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	defer j.Close()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				if _, err := j.Append(writeRec(uint64(g), uint64(i)*BlockSize, byte(g), 1)); err != nil {
					errs <- err
					return
				}
				if err := j.Sync(); err != nil {
					errs <- err
					return
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := j.Stats()
	if st.SyncedSeq != 800 {
		t.Fatalf("synced %d, want 800", st.SyncedSeq)
	}
	t.Logf("800 appends+syncs took %d fsyncs", st.Fsyncs)
	if st.Fsyncs > 800 {
		t.Fatalf("more fsyncs (%d) than syncs", st.Fsyncs)
	}
}

// failFS fails every Sync once armed.
type failFS struct {
	vfs.FS
	armed *bool
}

type failFile struct {
	vfs.File
	armed *bool
}

func (f failFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, c, o...)
	return failFile{file, f.armed}, err
}

func (f failFile) SyncData() error {
	if *f.armed {
		return fmt.Errorf("injected EIO")
	}
	return f.File.SyncData()
}

func TestFailedSyncIsFatal(t *testing.T) {
	armed := false
	fs := failFS{vfs.NewMem(), &armed}
	j := openMem(t, fs, 0, nil)
	if _, err := j.Append(writeRec(1, 0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	armed = true
	if err := j.Sync(); !errors.Is(err, ErrFailed) {
		t.Fatalf("want ErrFailed, got %v", err)
	}
	armed = false // even if the disk "recovers", the journal never retries
	if err := j.Sync(); !errors.Is(err, ErrFailed) {
		t.Fatalf("sync after failure: want ErrFailed, got %v", err)
	}
	if _, err := j.Append(writeRec(1, 0, 1, 1)); !errors.Is(err, ErrFailed) {
		t.Fatalf("append after failure: want ErrFailed, got %v", err)
	}
}

// Garbage collection removes old segments: the journal reopens across the
// gap, and Scan walks headers and meta across segments without data.
func TestRemoveSegmentAndScan(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	for i := 0; i < 300; i++ {
		if _, err := j.Append(writeRec(1, uint64(i)*BlockSize, byte(i), 4)); err != nil {
			t.Fatal(err)
		}
	}
	segs := j.Segments()
	if len(segs) < 4 || !segs[len(segs)-1].Current {
		t.Fatalf("segments %+v", segs)
	}
	if err := j.RemoveSegment(segs[len(segs)-1].ID); !errors.Is(err, ErrSegmentInUse) {
		t.Fatalf("removing the current segment: %v", err)
	}
	// Remove the second and third: a gap in the middle of old segments.
	for _, s := range segs[1:3] {
		if err := j.RemoveSegment(s.ID); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	if err := j.Scan(Location{Segment: segs[0].ID, Offset: 64}, func(r *Record, _ Location) bool {
		if r.Data != nil || len(r.Meta) != 16 {
			t.Fatalf("scan record %d: data %d meta %d", r.Seq, len(r.Data), len(r.Meta))
		}
		seqs = append(seqs, r.Seq)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if seqs[0] != 1 || seqs[len(seqs)-1] != 300 || len(seqs) != 300-int(segs[3].ID-segs[1].ID) {
		t.Fatalf("scan saw %d records (%d..%d)", len(seqs), seqs[0], seqs[len(seqs)-1])
	}
	j.Close()
	// Reopen replaying only the newest records (as after a checkpoint).
	var replayed int
	j = openMem(t, fs, segs[len(segs)-1].ID, func(*Record, Location) error { replayed++; return nil })
	defer j.Close()
	if replayed != int(301-segs[len(segs)-1].ID) {
		t.Fatalf("replayed %d", replayed)
	}
	if _, err := j.Append(writeRec(1, 0, 1, 1)); err != nil {
		t.Fatal(err)
	}
	// Asking to replay from inside a removed range is corruption.
	j.Close()
	if _, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, segs[1].ID, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("replay from a removed segment: %v", err)
	}
}

// TestDamageInOlderSegmentIsKept: a damaged data block in a segment that is
// not the newest can never be a torn write: the record is kept and
// reported, and every record after it replays.
func TestDamageInOlderSegmentIsKept(t *testing.T) {
	fs := vfs.NewMem()
	j := openMem(t, fs, 0, nil)
	var locs []Location
	for i := 0; i < 80; i++ {
		loc, err := j.Append(writeRec(1, 0, byte(i), 4))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, loc)
	}
	j.Close()
	segs := segmentsOf(t, fs)
	if len(segs) < 2 || segmentName(locs[3].Segment) != segs[0] {
		t.Fatalf("want several segments, record 4 in the first: %v, %+v", segs, locs[3])
	}
	corrupt(t, fs, segs[0], 0, func(b []byte) []byte { b[locs[3].DataOffset(16)+2*BlockSize+5] ^= 0x40; return b })
	n := 0
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, 0, func(*Record, Location) error { n++; return nil })
	if err != nil {
		t.Fatalf("damage in an older segment must not stop the open: %v", err)
	}
	defer j.Close()
	if d := j.Damaged(); n != 80 || len(d) != 1 || d[0].Seq != 4 || len(d[0].Blocks) != 1 || d[0].Blocks[0] != "8192" {
		t.Fatalf("replayed %d records, damage %+v", n, d)
	}
}

// After a clean close, the newest record is proven durable: damage to its
// data is kept as damage (reported, its blocks unreadable), not cut off as
// a torn tail, and its framing damaged refuses the open; after a crash the
// same damage is a torn tail.
func TestCleanCloseProvesTheEnd(t *testing.T) {
	for _, clean := range []bool{true, false} {
		fs := vfs.NewMem()
		j := openMem(t, fs, 0, nil)
		var last Location
		for i := 0; i < 3; i++ {
			loc, err := j.Append(writeRec(1, 0, byte(i), 1))
			if err != nil {
				t.Fatal(err)
			}
			last = loc
		}
		if err := j.close(clean); err != nil {
			t.Fatal(err)
		}
		segs := segmentsOf(t, fs)
		if want := map[bool]int{true: 2, false: 1}[clean]; len(segs) != want {
			t.Fatalf("clean=%v: %d segments after close, want %d", clean, len(segs), want)
		}
		corrupt(t, fs, segs[0], 0, func(b []byte) []byte { b[last.DataOffset(4)+9] ^= 1; return b })
		var seqs []uint64
		j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: 1 << 20}, 0, func(r *Record, _ Location) error {
			seqs = append(seqs, r.Seq)
			return nil
		})
		if err != nil {
			t.Fatalf("clean=%v: open: %v", clean, err)
		}
		if clean {
			if len(seqs) != 3 || len(j.Damaged()) != 1 || j.Damaged()[0].Seq != 3 {
				t.Fatalf("after a clean close: replayed %v, damage %+v; want all 3 kept and record 3 damaged", seqs, j.Damaged())
			}
		} else if len(seqs) != 2 || len(j.Damaged()) != 0 {
			t.Fatalf("after a crash: replayed %v, damage %+v; want the torn record 3 cut", seqs, j.Damaged())
		}
		// Reopening a cleanly closed journal reuses its empty segment.
		if _, err := j.Append(writeRec(1, 0, 9, 1)); err != nil {
			t.Fatal(err)
		}
		if err := j.Close(); err != nil {
			t.Fatal(err)
		}
		if clean {
			// The framing of the newest record before the clean stop:
			// corruption, refused, with nothing cut.
			corrupt(t, fs, segs[0], 0, func(b []byte) []byte { b[last.Offset+40] ^= 1; return b })
			if _, err := collect(t, fs); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("damaged framing of a proven record: want ErrCorrupt, got %v", err)
			}
		}
	}
}

// reserveFS records each Preallocate of the journal's segment files and
// refuses with ENOSPC any that asks for more than free bytes.
type reserveFS struct {
	vfs.FS
	mu    *sync.Mutex
	calls *[]int64
	free  *int64
}

type reserveFile struct {
	vfs.File
	fs reserveFS
}

func (f reserveFS) OpenReadWrite(name string, c vfs.DiskWriteCategory, o ...vfs.OpenOption) (vfs.File, error) {
	file, err := f.FS.OpenReadWrite(name, c, o...)
	return reserveFile{file, f}, err
}

func (f reserveFile) Preallocate(off, n int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	*f.fs.calls = append(*f.fs.calls, n)
	if n > *f.fs.free {
		return syscall.ENOSPC
	}
	*f.fs.free -= n
	return f.File.Preallocate(off, n)
}

// TestReserveWholeSegment: by default a segment's room is reserved in one
// fallocate at its first append, not a few MiB at a time (on ext4 each
// fallocate waits for the tail's direct writes in flight); near a full
// disk the journal reserves 4 MiB ahead, then just what each record needs,
// and fails with ErrNoSpace the record that does not fit.
func TestReserveWholeSegment(t *testing.T) {
	var mu sync.Mutex
	var calls []int64
	free := int64(1 << 40)
	fs := reserveFS{vfs.NewMem(), &mu, &calls, &free}
	const seg = 16 << 20
	j, err := Open(Options{FS: fs, Dir: "j", SegmentSize: seg}, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	rec := func() *Record { return writeRec(1, 0, 7, 64) } // 256 KiB
	for i := 0; i < 40; i++ {                              // 10 MiB into the first segment
		if _, err := j.Append(rec()); err != nil {
			t.Fatal(err)
		}
	}
	mu.Lock()
	got := append([]int64(nil), calls...)
	mu.Unlock()
	if len(got) != 1 || got[0] != seg-segmentHeaderSize {
		t.Fatalf("reservations for 10 MiB of records: %v, want one of the whole segment (%d)", got, seg-segmentHeaderSize)
	}

	// Now only 6 MiB are free: the rest of the first segment (reserved)
	// fills, then the next segment's room is refused whole.
	mu.Lock()
	calls, free = nil, 6<<20
	mu.Unlock()
	for appended := 0; ; appended++ {
		if _, err := j.Append(rec()); err != nil {
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("append %d on a full disk: %v, want ErrNoSpace", appended, err)
			}
			break
		}
		if appended > 200 {
			t.Fatal("6 MiB free took 200 records of 256 KiB")
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) < 3 || calls[0] != seg-segmentHeaderSize || calls[1] != 4<<20 {
		t.Fatalf("reservations near a full disk: %v, want the segment refused, then 4 MiB ahead, then single records", calls)
	}
	// Once 4 MiB is refused too, one record at a time: no step refused
	// before is tried again.
	big := 0
	for _, n := range calls {
		if n > int64(rec().EncodedSize()) {
			big++
		}
	}
	if big != 3 {
		t.Fatalf("reservations near a full disk: %v: want the segment and 4 MiB refused once each, then one record at a time", calls)
	}
	if free < 0 || free >= int64(rec().EncodedSize()) {
		t.Fatalf("%d bytes left free after the disk filled", free)
	}
	// The failed append left the journal as it was: with room, it goes on.
	free = 1 << 30
	mu.Unlock()
	_, err = j.Append(rec())
	mu.Lock()
	if err != nil {
		t.Fatalf("append once the disk has room: %v", err)
	}
}
