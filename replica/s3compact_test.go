package replica

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/strata-storage/strata/cow"
)

// hourly returns a manifest of one complete batch an hour from start,
// n of them.
func hourlyManifest(start time.Time, n int) *Manifest {
	m := &Manifest{Volume: "v"}
	for i := 0; i < n; i++ {
		t := start.Add(time.Duration(i) * time.Hour)
		m.Batches = append(m.Batches, ManifestEntry{Key: fmt.Sprintf("k%d", i), From: uint64(i), To: uint64(i + 1), Time: t.UnixNano()})
	}
	return m
}

func TestRetainedEndsWindow(t *testing.T) {
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	m := hourlyManifest(start, 30*24-11) // the last at 11-30T12:00
	now := time.Date(2026, 11, 30, 12, 30, 0, 0, time.UTC)
	r := Retention{Window: 7 * 24 * time.Hour}
	kept := retainedEnds(m, r, now)
	// The window starts at 11-23T12:30, in steps of a day: 11-23T00:00;
	// the newest point before it (11-22T23:00) stays so that the
	// window's first moment is restorable.
	first := time.Unix(0, m.Batches[kept[0]].Time).UTC()
	if want := time.Date(2026, 11, 22, 23, 0, 0, 0, time.UTC); !first.Equal(want) {
		t.Fatalf("oldest kept %s, want %s", first, want)
	}
	if len(kept) != 7*24+12+2 || kept[len(kept)-1] != len(m.Batches)-1 {
		t.Fatalf("kept %d points (last %d), want %d", len(kept), kept[len(kept)-1], 7*24+12+2)
	}
	for i := 1; i < len(kept); i++ {
		if kept[i] != kept[i-1]+1 {
			t.Fatalf("kept %v: a gap inside the window", kept)
		}
	}
	segs := planSegments(m, kept)
	if !segs[0].merge || segs[0].lo != 0 || segs[0].hi != kept[0] || segs[1].merge {
		t.Fatalf("segments %+v", segs[:2])
	}
	// Half an hour later the window's start has not crossed a step:
	// the same points stay (no rewrite after every run).
	if k2 := retainedEnds(m, r, now.Add(30*time.Minute)); k2[0] != kept[0] {
		t.Fatalf("oldest kept moved within a step: %d -> %d", kept[0], k2[0])
	}
	// The next day it moves by a day.
	if k3 := retainedEnds(m, r, now.Add(12*time.Hour)); k3[0] != kept[0]+24 {
		t.Fatalf("a day later the oldest kept is %d, want %d", k3[0], kept[0]+24)
	}
	// No policy: everything stays, nothing merges.
	all := retainedEnds(m, Retention{}, now)
	if len(all) != len(m.Batches) {
		t.Fatalf("no policy kept %d of %d", len(all), len(m.Batches))
	}
	for _, sg := range planSegments(m, all) {
		if sg.merge {
			t.Fatalf("no policy merges %+v", sg)
		}
	}
}

// dailyKeep keeps the newest point of each of the n most recent days.
func dailyKeep(n int) func([]time.Time) []bool {
	return func(times []time.Time) []bool {
		keep := make([]bool, len(times))
		seen := map[string]bool{}
		for i := len(times) - 1; i >= 0 && len(seen) <= n; i-- {
			d := times[i].UTC().Format("2006-01-02")
			if !seen[d] && len(seen) < n {
				keep[i] = true
			}
			seen[d] = true
		}
		return keep
	}
}

func TestRetainedEndsKeepRules(t *testing.T) {
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	m := hourlyManifest(start, 30*24-11)
	now := time.Date(2026, 11, 30, 12, 30, 0, 0, time.UTC)
	// Two days of everything, and the last point of each of 10 days.
	r := Retention{Window: 2 * 24 * time.Hour, Keep: dailyKeep(10)}
	kept := retainedEnds(m, r, now)
	var got []string
	for _, i := range kept {
		if tm := time.Unix(0, m.Batches[i].Time).UTC(); tm.Before(time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)) {
			got = append(got, tm.Format("01-02T15"))
		}
	}
	want := []string{"11-21T23", "11-22T23", "11-23T23", "11-24T23", "11-25T23", "11-26T23", "11-27T23"}
	if !slices.Equal(got, want) {
		t.Fatalf("kept before the window %v, want %v", got, want)
	}
	segs := planSegments(m, kept)
	// The base (up to 11-21T23), then a day merged into one diff each.
	if !segs[0].merge || !segs[1].merge || segs[1].hi-segs[1].lo != 23 {
		t.Fatalf("segments %+v", segs[:3])
	}
}

func TestSpanSet(t *testing.T) {
	var s spanSet
	s.add(10, 20)
	s.add(30, 40)
	if g := s.gaps(0, 50); fmt.Sprint(g) != "[{0 10} {20 30} {40 50}]" {
		t.Fatalf("gaps %v", g)
	}
	s.add(20, 30)
	if fmt.Sprint(s) != "[{10 40}]" {
		t.Fatalf("set %v", s)
	}
	s.add(5, 12)
	s.add(45, 50)
	if g := s.gaps(0, 60); fmt.Sprint(g) != "[{0 5} {40 45} {50 60}]" || fmt.Sprint(s) != "[{5 40} {45 50}]" {
		t.Fatalf("gaps %v set %v", g, s)
	}
	if g := s.gaps(12, 30); len(g) != 0 {
		t.Fatalf("gaps inside %v", g)
	}
}

// simStream makes a volume's history: a first copy by difference in two
// parts, then one batch an hour with writes, zeros, trims, a shrink and
// a regrow, and snapshots; it records the volume's bytes at every batch
// end.
type simStream struct {
	r       *rand.Rand
	vol     []byte
	seq     uint64
	start   time.Time
	batches []*Batch
	states  map[uint64][]byte // point -> bytes
	times   map[uint64]time.Time
}

const simBlock = 4096

func newSim(seed uint64, size int, start time.Time) *simStream {
	g := &simStream{r: rand.New(rand.NewPCG(seed, 7)), vol: make([]byte, size), start: start,
		states: map[uint64][]byte{}, times: map[uint64]time.Time{}}
	// The first copy: a diff in two parts.
	g.seq = 10
	tm := start.UnixNano()
	for p := 0; p < 2; p++ {
		b := &Batch{From: 0, To: g.seq, Diff: true, Partial: p == 0, Size: int64(size), Time: tm}
		if p == 0 {
			b.Ops = append(b.Ops, Op{Kind: OpResize, Seq: g.seq, Time: tm, Length: uint64(size)})
		}
		off := p * size / 2
		d := randBytes(g.r, size/4)
		copy(g.vol[off:], d)
		b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: g.seq, Time: tm, Offset: uint64(off), Length: uint64(len(d)), Data: d})
		if !b.Partial {
			b.Ops = append(b.Ops, Op{Kind: OpPoint, Seq: g.seq, Time: tm})
		}
		g.batches = append(g.batches, b)
	}
	g.record(start)
	return g
}

func (g *simStream) record(t time.Time) {
	g.states[g.seq] = slices.Clone(g.vol)
	g.times[g.seq] = t
}

// hour adds the batch of hour n, with about data bytes written.
func (g *simStream) hour(n int, data int) *Batch {
	tm := g.start.Add(time.Duration(n) * time.Hour)
	b := &Batch{From: g.seq, Size: int64(len(g.vol))}
	blocks := len(g.vol) / simBlock
	for written := 0; written < data; {
		g.seq++
		t := tm.Add(time.Duration(g.r.IntN(1000)) * time.Millisecond).UnixNano()
		off := g.r.IntN(blocks-4) * simBlock
		l := (1 + g.r.IntN(4)) * simBlock
		switch k := g.r.IntN(10); {
		case k < 7:
			d := randBytes(g.r, l)
			copy(g.vol[off:], d)
			b.Ops = append(b.Ops, Op{Kind: OpWrite, Seq: g.seq, Time: t, Offset: uint64(off), Length: uint64(l), Data: d})
			written += l
		case k < 8:
			clear(g.vol[off : off+l])
			b.Ops = append(b.Ops, Op{Kind: OpZero, Seq: g.seq, Time: t, Offset: uint64(off), Length: uint64(l), NoHole: true})
		default:
			clear(g.vol[off : off+l])
			b.Ops = append(b.Ops, Op{Kind: OpTrim, Seq: g.seq, Time: t, Offset: uint64(off), Length: uint64(l)})
		}
		b.Ops = append(b.Ops, Op{Kind: OpPoint, Seq: g.seq, Time: t})
	}
	if n%10 == 5 {
		// Shrink by a quarter and grow back: the cut-off tail reads as
		// zeros afterwards.
		g.seq++
		size := len(g.vol)
		clear(g.vol[size*3/4:])
		b.Ops = append(b.Ops, Op{Kind: OpResize, Seq: g.seq, Time: tm.UnixNano(), Length: uint64(size * 3 / 4)},
			Op{Kind: OpPoint, Seq: g.seq, Time: tm.UnixNano()})
		g.seq++
		b.Ops = append(b.Ops, Op{Kind: OpResize, Seq: g.seq, Time: tm.UnixNano(), Length: uint64(size)},
			Op{Kind: OpPoint, Seq: g.seq, Time: tm.UnixNano()})
	}
	if n%24 == 23 {
		b.Ops = append(b.Ops, Op{Kind: OpSnapshot, Seq: g.seq, Time: tm.UnixNano(), Name: fmt.Sprintf("day-%d", n/24)})
	}
	b.To = g.seq
	b.Time = b.Ops[len(b.Ops)-1].Time
	g.batches = append(g.batches, b)
	g.record(time.Unix(0, b.Time))
	return b
}

// shipSim ships a simulated stream of hours hourly batches (about data
// bytes written each) of a volume of size bytes to vol.
func shipSim(t *testing.T, s *S3, vol string, seed uint64, size, hours, data int) (*simStream, time.Time) {
	t.Helper()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	g := newSim(seed, size, start)
	for n := 1; n <= hours; n++ {
		g.hour(n, data)
	}
	ship(t, s, vol, testSource, g.batches)
	return g, start
}

// restoreModel restores vol at point at into memory.
func restoreModel(t *testing.T, s *S3, vol, at string) ([]byte, uint64, int, error) {
	t.Helper()
	var img []byte
	objects := 0
	seq, _, err := restoreS3(context.Background(), s, RestoreOptions{Volume: vol, At: at}, func(b *Batch) error {
		objects++
		img = applyModel(img, b)
		return nil
	})
	return img, seq, objects, err
}

// applyModel applies b's ops to a volume's bytes.
func applyModel(img []byte, b *Batch) []byte {
	for _, op := range b.Ops {
		switch op.Kind {
		case OpResize:
			if int(op.Length) < len(img) {
				img = img[:op.Length]
			} else {
				img = append(img, make([]byte, int(op.Length)-len(img))...)
			}
		case OpWrite:
			copy(img[op.Offset:], op.Data)
		case OpZero, OpTrim:
			clear(img[op.Offset:min(op.Offset+op.Length, uint64(len(img)))])
		}
	}
	return img
}

// checkPoints restores every point in points and compares it with the
// simulation.
func checkPoints(t *testing.T, s *S3, vol string, g *simStream, points []uint64) {
	t.Helper()
	for _, p := range points {
		img, seq, _, err := restoreModel(t, s, vol, fmt.Sprintf("seq:%d", p))
		if err != nil {
			t.Fatalf("restore seq:%d: %v", p, err)
		}
		if seq != p || !slices.Equal(img, g.states[p]) {
			t.Fatalf("restore seq:%d reached seq:%d, bytes equal %t", p, seq, slices.Equal(img, g.states[p]))
		}
	}
}

// keys lists a bucket's object keys under prefix.
func keys(t *testing.T, c *minio.Client, bucket string) []string {
	t.Helper()
	var out []string
	for o := range c.ListObjects(context.Background(), bucket, minio.ListObjectsOptions{Recursive: true}) {
		if o.Err != nil {
			t.Fatal(o.Err)
		}
		out = append(out, o.Key)
	}
	slices.Sort(out)
	return out
}

// manifestKeys is what a manifest says the bucket holds.
func manifestKeys(t *testing.T, s *S3, prefix, vol string) []string {
	t.Helper()
	m, err := s.Manifest(context.Background(), vol)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{prefix + vol + "/" + manifestName}
	for _, e := range m.Batches {
		out = append(out, prefix+vol+"/"+e.Key)
	}
	slices.Sort(out)
	return out
}

// endPoints lists the simulation's batch ends from time from on.
func (g *simStream) endPoints(from time.Time) []uint64 {
	var out []uint64
	for _, b := range g.batches {
		if !b.Partial && !time.Unix(0, b.Time).Before(from) {
			out = append(out, b.To)
		}
	}
	return out
}

func TestS3Compact(t *testing.T) {
	for _, ec := range []bool{false, true} {
		t.Run(fmt.Sprintf("ec=%t", ec), func(t *testing.T) {
			buckets := []string{"cmp1"}
			code := ""
			if ec {
				buckets = []string{"cmp1", "cmp2", "cmp3"}
				code = "2+1"
			}
			endpoint, _, c := testServer(t, buckets...)
			targets := []string{}
			for _, b := range buckets {
				targets = append(targets, b+"/p")
			}
			s := mustParse(t, s3Spec(endpoint, targets...), code)
			g, start := shipSim(t, s, "v", 3, 1<<20, 4*24, 32<<10)
			now := start.Add(4*24*time.Hour + 30*time.Minute)
			ctx := context.Background()
			o := CompactOptions{Retention: Retention{Window: 24 * time.Hour, Policy: "keep-history 1d"}, Now: func() time.Time { return now }, BatchBytes: 256 << 10}
			res, err := s.Compact(ctx, "v", o)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s", res)
			// The window starts at 11-04T00:30, in steps of 3h25m: the
			// oldest kept point is the newest before the step.
			cut := Retention{Window: 24 * time.Hour}.cutoff(now)
			var oldest uint64
			for _, b := range g.batches {
				if !b.Partial && time.Unix(0, b.Time).Before(cut) {
					oldest = b.To
				}
			}
			if res.OldestSeq != oldest || res.Written < 2 || res.Deleted == 0 || res.BatchesAfter >= res.BatchesBefore {
				t.Fatalf("compacted %+v, want oldest seq:%d", res, oldest)
			}
			retained := append([]uint64{oldest}, g.endPoints(cut)...)
			checkPoints(t, s, "v", g, retained)
			// A bounded number of objects for the oldest point: the base.
			_, _, objs, err := restoreModel(t, s, "v", fmt.Sprintf("seq:%d", oldest))
			if err != nil || objs != res.Written {
				t.Fatalf("restore at the oldest point read %d batches (err %v), want the %d of the base", objs, err, res.Written)
			}
			// The snapshot at a kept day end stays, by name.
			m, _ := s.Manifest(ctx, "v")
			if m.Base == nil || m.Base.Seq != oldest || m.Format != manifestFormatBase || len(m.Snapshots) == 0 {
				t.Fatalf("manifest base %+v format %d snapshots %v", m.Base, m.Format, m.Snapshots)
			}
			// Older points are refused, naming the oldest kept.
			_, _, _, err = restoreModel(t, s, "v", fmt.Sprintf("seq:%d", oldest-1))
			if !errors.Is(err, ErrRetention) || !errors.Is(err, cow.ErrPoint) || !strings.Contains(err.Error(), fmt.Sprintf("seq:%d", oldest)) || !strings.Contains(err.Error(), "keep-history 1d") {
				t.Fatalf("restore before the base: %v", err)
			}
			_, _, _, err = restoreModel(t, s, "v", start.Add(time.Hour).Format(time.RFC3339))
			if !errors.Is(err, ErrRetention) {
				t.Fatalf("restore at an old time: %v", err)
			}
			// The bucket holds what the manifest lists, nothing more.
			for _, b := range buckets {
				if got, want := keys(t, c, b), manifestKeys(t, s, "p/", "v"); !slices.Equal(got, want) {
					t.Fatalf("bucket %s holds %v, manifest lists %v", b, got, want)
				}
			}
			// Again at the same time: nothing to do.
			res2, err := s.Compact(ctx, "v", o)
			if err != nil || res2.Written != 0 || res2.Deleted != 0 {
				t.Fatalf("second compaction %+v, %v", res2, err)
			}
			// Shipping goes on after a compaction, and a later one
			// folds the old base into a new one.
			st, err := s.Open(ctx, Hello{Source: testSource, Target: "v"})
			if err != nil || st.Acked != g.seq {
				t.Fatalf("open after compaction: %+v %v", st, err)
			}
			for n := 4*24 + 1; n <= 5*24; n++ {
				if err := s.Send(ctx, g.hour(n, 32<<10)); err != nil {
					t.Fatal(err)
				}
			}
			now = now.Add(24 * time.Hour)
			if res, err = s.Compact(ctx, "v", o); err != nil || res.Written == 0 {
				t.Fatalf("third compaction %+v, %v", res, err)
			}
			cut = Retention{Window: 24 * time.Hour}.cutoff(now)
			checkPoints(t, s, "v", g, append([]uint64{res.OldestSeq}, g.endPoints(cut)...))
			if !slices.Equal(img(t, s, "v", ""), g.vol) {
				t.Fatal("the newest point differs")
			}
		})
	}
}

func img(t *testing.T, s *S3, vol, at string) []byte {
	t.Helper()
	b, _, _, err := restoreModel(t, s, vol, at)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestS3CompactInterrupted stops a compaction after each of its steps,
// as a crash would: the target stays restorable at every point the
// policy keeps, and the next compaction finishes and leaves no leftovers.
func TestS3CompactInterrupted(t *testing.T) {
	endpoint, _, c := testServer(t, "int1", "int2", "int3")
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	now := start.Add(3*24*time.Hour + 30*time.Minute)
	ret := Retention{Window: 24 * time.Hour, Policy: "keep-history 1d"}
	cut := ret.cutoff(now)
	shipped := func(vol string, seed uint64) (*S3, *simStream) {
		s := mustParse(t, s3Spec(endpoint, "int1/x", "int2/x", "int3/x"), "2+1")
		g, _ := shipSim(t, s, vol, seed, 512<<10, 3*24, 16<<10)
		return s, g
	}
	// Count the steps of an uninterrupted run.
	var steps []string
	s, _ := shipped("count", 1)
	if _, err := s.Compact(context.Background(), "count", CompactOptions{Retention: ret, Now: func() time.Time { return now }, BatchBytes: 128 << 10,
		Hook: func(step string) error { steps = append(steps, step); return nil }}); err != nil {
		t.Fatal(err)
	}
	objects := strings.Count(strings.Join(steps, " "), "object")
	if objects < 2 || steps[objects] != "manifest" || len(steps) < objects+3 {
		t.Fatalf("steps %v", steps)
	}
	// After the first and the last new object, the manifest, the first,
	// a middle and the last delete.
	for _, stop := range []int{1, objects, objects + 1, objects + 2, (objects + 2 + len(steps)) / 2, len(steps)} {
		vol := fmt.Sprintf("v%d", stop)
		s, g := shipped(vol, 1)
		calls := 0
		at := steps[stop-1]
		injected := errors.New("injected crash")
		o := CompactOptions{Retention: ret, Now: func() time.Time { return now }, BatchBytes: 128 << 10,
			Hook: func(step string) error {
				calls++
				if calls == stop {
					return injected
				}
				return nil
			}}
		if _, err := s.Compact(context.Background(), vol, o); !errors.Is(err, injected) {
			t.Fatalf("stop %d (%s): %v", stop, at, err)
		}
		// Restorable at every point the policy keeps, from a fresh
		// reader.
		r := mustParse(t, s3Spec(endpoint, "int1/x", "int2/x", "int3/x"), "2+1")
		var oldest uint64
		for _, b := range g.batches {
			if !b.Partial && time.Unix(0, b.Time).Before(cut) {
				oldest = b.To
			}
		}
		checkPoints(t, r, vol, g, append([]uint64{oldest}, g.endPoints(cut)...))
		// The next run finishes the job and deletes the leftovers.
		o.Hook = nil
		res, err := r.Compact(context.Background(), vol, o)
		if err != nil {
			t.Fatalf("stop %d (%s): rerun: %v", stop, at, err)
		}
		checkPoints(t, r, vol, g, append([]uint64{oldest}, g.endPoints(cut)...))
		m, _ := r.Manifest(context.Background(), vol)
		if m.Base == nil || m.Base.Seq != oldest {
			t.Fatalf("stop %d (%s): base %+v, want seq:%d", stop, at, m.Base, oldest)
		}
		for _, b := range []string{"int1", "int2", "int3"} {
			var mine []string
			for _, k := range keys(t, c, b) {
				if strings.HasPrefix(k, "x/"+vol+"/") {
					mine = append(mine, k)
				}
			}
			if want := manifestKeys(t, r, "x/", vol); !slices.Equal(mine, want) {
				t.Fatalf("stop %d (%s): bucket %s holds %d objects, the manifest lists %d (rerun %+v)", stop, at, b, len(mine), len(want), res)
			}
		}
		t.Logf("stopped after step %d of %d (%s): restorable; the rerun wrote %d, deleted %d, cleaned %d leftovers", stop, len(steps), at, res.Written, res.Deleted, res.Leftovers)
	}
}

// TestS3RetentionMonth ships 30 simulated days, a run an hour, to two
// volumes: one keeps everything, one keeps 7 days (compacted after every
// run, as the daemon does). It reports what each holds and what a
// restore at the oldest point kept costs (docs/replication.md quotes it).
func TestS3RetentionMonth(t *testing.T) {
	endpoint, _, _ := testServer(t, "month")
	ctx := context.Background()
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	all := mustParse(t, s3Spec(endpoint, "month/all"), "")
	kept := mustParse(t, s3Spec(endpoint, "month/kept"), "")
	g := newSim(11, 4<<20, start)
	for _, s := range []*S3{all, kept} {
		ship(t, s, "v", testSource, g.batches)
	}
	ret := Retention{Window: 7 * 24 * time.Hour, Policy: "--keep-history 7d"}
	var res Compacted
	for n := 1; n <= 30*24; n++ {
		b := g.hour(n, 24<<10)
		for _, s := range []*S3{all, kept} {
			if err := s.Send(ctx, b); err != nil {
				t.Fatal(err)
			}
		}
		now := time.Unix(0, b.Time)
		c, err := kept.Compact(ctx, "v", CompactOptions{Retention: ret, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatalf("hour %d: %v", n, err)
		}
		if c.Written > 0 {
			res = c
		}
	}
	held := func(s *S3) (int, int64) {
		m, err := s.Manifest(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		var bytes int64
		for _, e := range m.Batches {
			bytes += e.Stored
		}
		return len(m.Batches), bytes
	}
	na, ba := held(all)
	nk, bk := held(kept)
	t.Logf("after 30 days, a run an hour (%d runs): keep everything: %d objects, %d bytes; --keep-history 7d: %d objects, %d bytes (%.1f%%)",
		30*24, na, ba, nk, bk, 100*float64(bk)/float64(ba))
	// 7 days in steps of a day: at most 8 days of hourly batches and
	// the base's parts.
	if nk > 8*24+4 || bk >= ba/2 || na != len(g.batches) {
		t.Fatalf("kept %d objects (%d bytes), all %d (%d bytes)", nk, bk, na, ba)
	}
	oldest := fmt.Sprintf("seq:%d", res.OldestSeq)
	for _, s := range []*S3{kept, all} {
		t0 := time.Now()
		b, seq, objs, err := restoreModel(t, s, "v", oldest)
		if err != nil || seq != res.OldestSeq || !slices.Equal(b, g.states[res.OldestSeq]) {
			t.Fatalf("restore at %s: %v (reached seq:%d)", oldest, err, seq)
		}
		name := "--keep-history 7d"
		if s == all {
			name = "keep everything"
		}
		t.Logf("%s: restore at the oldest point kept (%s, %s) read %d objects in %s", name, oldest, res.OldestTime.Format(time.RFC3339), objs, time.Since(t0).Round(time.Millisecond))
	}
	checkPoints(t, kept, "v", g, []uint64{g.seq})
}

// TestS3CompactKeepRules: with keep rules, the days before the window
// are merged into one diff each; every kept point restores byte for
// byte, and a point between kept ones restores the kept point before it.
func TestS3CompactKeepRules(t *testing.T) {
	endpoint, _, _ := testServer(t, "rules")
	s := mustParse(t, s3Spec(endpoint, "rules/p"), "")
	g, start := shipSim(t, s, "v", 5, 1<<20, 5*24, 16<<10)
	now := start.Add(5*24*time.Hour + 30*time.Minute)
	r := Retention{Window: 12 * time.Hour, Keep: dailyKeep(4), Policy: "keep-history 12h, daily=4"}
	m0, err := s.Manifest(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	for _, i := range retainedEnds(m0, r, now) {
		want = append(want, m0.Batches[i].To)
	}
	res, err := s.Compact(context.Background(), "v", CompactOptions{Retention: r, Now: func() time.Time { return now }, BatchBytes: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", res)
	m, _ := s.Manifest(context.Background(), "v")
	var got []uint64
	for _, e := range m.Batches {
		if !e.Partial {
			got = append(got, e.To)
		}
	}
	if !slices.Equal(got, want) || res.Points != len(want) {
		t.Fatalf("points after compaction %v, want %v", got, want)
	}
	// Day ends before the window: each was merged from 24 batches.
	merged := 0
	for _, e := range m.Batches {
		if e.From != 0 && strings.Contains(e.Key, "-c") {
			merged++
		}
	}
	if merged < 2 {
		t.Fatalf("%d merged diffs between kept days: %v", merged, got)
	}
	checkPoints(t, s, "v", g, want)
	// A point between two kept day ends: the kept one before it.
	mid := g.times[want[1]].Add(3 * time.Hour)
	if !mid.Before(g.times[want[2]]) {
		t.Fatalf("kept points %v are less than 3 hours apart", want)
	}
	b, seq, _, err := restoreModel(t, s, "v", mid.UTC().Format(time.RFC3339Nano))
	if err != nil || seq != want[1] || !slices.Equal(b, g.states[want[1]]) {
		t.Fatalf("restore between kept points reached seq:%d (want seq:%d): %v", seq, want[1], err)
	}
}

// TestS3CompactUnfinishedDiff: a compaction of a target whose last run
// left a diff half shipped drops the diff (as the next Open would), keeps
// its objects until the manifest no longer lists them, and the next Open
// deletes them.
func TestS3CompactUnfinishedDiff(t *testing.T) {
	endpoint, _, c := testServer(t, "tail")
	s := mustParse(t, s3Spec(endpoint, "tail/p"), "")
	g, start := shipSim(t, s, "v", 9, 256<<10, 2*24, 8<<10)
	ctx := context.Background()
	part := &Batch{From: g.seq, To: g.seq + 5, Diff: true, Partial: true, Size: int64(len(g.vol)), Time: g.batches[len(g.batches)-1].Time,
		Ops: []Op{{Kind: OpWrite, Seq: g.seq + 5, Offset: 0, Length: simBlock, Data: make([]byte, simBlock)}}}
	if err := s.Send(ctx, part); err != nil {
		t.Fatal(err)
	}
	now := start.Add(2*24*time.Hour + 30*time.Minute)
	r := mustParse(t, s3Spec(endpoint, "tail/p"), "")
	res, err := r.Compact(ctx, "v", CompactOptions{Retention: Retention{Window: 12 * time.Hour}, Now: func() time.Time { return now }})
	if err != nil || res.Written == 0 {
		t.Fatalf("compact %+v: %v", res, err)
	}
	m, _ := r.Manifest(ctx, "v")
	if last := m.Batches[len(m.Batches)-1]; last.Partial || m.Acked != g.seq {
		t.Fatalf("the unfinished diff is still listed: %+v", last)
	}
	checkPoints(t, r, "v", g, []uint64{res.OldestSeq, g.seq})
	if got, want := keys(t, c, "tail"), manifestKeys(t, r, "p/", "v"); len(got) != len(want)+1 {
		t.Fatalf("before the next Open the bucket holds %d objects, want the %d listed and the diff's part", len(got), len(want))
	}
	if _, err := r.Open(ctx, Hello{Source: testSource, Target: "v"}); err != nil {
		t.Fatal(err)
	}
	if got, want := keys(t, c, "tail"), manifestKeys(t, r, "p/", "v"); !slices.Equal(got, want) {
		t.Fatalf("bucket holds %v, manifest lists %v", got, want)
	}
}

// TestS3CompactRollback compacts a stream with a rollback diff and a
// batch that only names a snapshot (testBatches) into a base past them.
func TestS3CompactRollback(t *testing.T) {
	endpoint, _, _ := testServer(t, "roll")
	s := mustParse(t, s3Spec(endpoint, "roll/p"), "")
	batches := testBatches(4)
	ship(t, s, "v", testSource, batches)
	// Keep only the last batch's point and the one before.
	last := batches[len(batches)-1]
	now := time.Unix(0, last.Time).Add(time.Second)
	res, err := s.Compact(context.Background(), "v", CompactOptions{Retention: Retention{Window: time.Second, Granularity: time.Nanosecond},
		Now: func() time.Time { return now }, BatchBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if res.OldestSeq != last.From || res.Written < 2 {
		t.Fatalf("compacted %+v, want the base at seq:%d in parts", res, last.From)
	}
	var want []byte
	for _, b := range batches[:len(batches)-1] {
		want = applyModel(want, b)
	}
	got, seq, _, err := restoreModel(t, s, "v", fmt.Sprintf("seq:%d", last.From))
	if err != nil || seq != last.From || !slices.Equal(got, want) {
		t.Fatalf("restore at the base reached seq:%d, equal %t: %v", seq, slices.Equal(got, want), err)
	}
	want = applyModel(want, last)
	if got := img(t, s, "v", ""); !slices.Equal(got, want) {
		t.Fatal("the newest point differs")
	}
}

// mergedFixture ships four batches (a copy to seq 10 with snapshot
// "first", then 10-20, 20-30 with snapshot "snap" at 22 and no change
// after it, 30-40) and compacts them keeping the ends of the first and
// the third: 10-20 and 20-30 merge into one diff. It returns the target
// and the volume's bytes at seq 10 and 30 (checked before compaction).
func mergedFixture(t *testing.T, bucket string) (s *S3, at10, at30 []byte) {
	t.Helper()
	endpoint, _, _ := testServer(t, bucket)
	s = mustParse(t, s3Spec(endpoint, bucket+"/p"), "")
	size := 64 << 10
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	tm := func(h int) int64 { return start.Add(time.Duration(h) * time.Hour).UnixNano() }
	fill := func(c byte) []byte { return bytes.Repeat([]byte{c}, 4096) }
	b0 := &Batch{From: 0, To: 10, Diff: true, Size: int64(size), Time: tm(0), Ops: []Op{
		{Kind: OpResize, Seq: 10, Time: tm(0), Length: uint64(size)},
		{Kind: OpWrite, Seq: 10, Time: tm(0), Offset: 0, Length: 4096, Data: fill(1)},
		{Kind: OpSnapshot, Seq: 10, Time: tm(0), Name: "first", Scheduled: true},
		{Kind: OpPoint, Seq: 10, Time: tm(0)}}}
	bA := &Batch{From: 10, To: 20, Size: int64(size), Time: tm(1), Ops: []Op{
		{Kind: OpWrite, Seq: 11, Time: tm(1), Offset: 4096, Length: 4096, Data: fill(2)},
		{Kind: OpPoint, Seq: 11, Time: tm(1)}}}
	bB := &Batch{From: 20, To: 30, Size: int64(size), Time: tm(2), Ops: []Op{
		{Kind: OpWrite, Seq: 21, Time: tm(2), Offset: 8192, Length: 4096, Data: fill(3)},
		{Kind: OpPoint, Seq: 21, Time: tm(2)},
		{Kind: OpSnapshot, Seq: 22, Time: tm(2), Name: "snap", Scheduled: true, AppConsistent: true},
		{Kind: OpPoint, Seq: 22, Time: tm(2)}}}
	bC := &Batch{From: 30, To: 40, Size: int64(size), Time: tm(3), Ops: []Op{
		{Kind: OpWrite, Seq: 31, Time: tm(3), Offset: 12288, Length: 4096, Data: fill(4)},
		{Kind: OpPoint, Seq: 31, Time: tm(3)}}}
	ship(t, s, "v", testSource, []*Batch{b0, bA, bB, bC})
	at10 = applyModel(nil, b0)
	at30 = applyModel(applyModel(slices.Clone(at10), bA), bB)
	if got, _, _, err := restoreModel(t, s, "v", "snap"); err != nil || !slices.Equal(got, at30) {
		t.Fatalf("before compaction: %v, bytes equal %t", err, slices.Equal(got, at30))
	}
	keep := func(times []time.Time) []bool {
		out := make([]bool, len(times))
		out[0], out[2] = true, true
		return out
	}
	now := time.Unix(0, tm(3)).Add(time.Minute)
	if _, err := s.Compact(context.Background(), "v", CompactOptions{Retention: Retention{Keep: keep, Granularity: time.Nanosecond, Policy: "test"},
		Now: func() time.Time { return now }}); err != nil {
		t.Fatal(err)
	}
	m, err := s.Manifest(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Batches) != 3 || !m.Batches[1].Diff || m.Batches[1].From != 10 || m.Batches[1].To != 30 {
		t.Fatalf("compaction did not merge 10-30: %+v", m.Batches)
	}
	return s, at10, at30
}

// TestS3CompactSnapshotInMergedSegment: a snapshot compaction keeps inside
// a merged segment restores its own bytes (its OpSnapshot moves to the
// segment's end, and so must the seq the manifest gives it, with its
// flags).
func TestS3CompactSnapshotInMergedSegment(t *testing.T) {
	s, at10, at30 := mergedFixture(t, "snapmerge")
	m, err := s.Manifest(context.Background(), "v")
	if err != nil {
		t.Fatal(err)
	}
	for _, sn := range m.Snapshots {
		if sn.Name == "snap" && (sn.Seq != 30 || !sn.Scheduled || !sn.AppConsistent) {
			t.Errorf("kept snapshot %+v: want seq 30 (the merged diff's end) and its flags", sn)
		}
	}
	for _, c := range []struct {
		at   string
		want []byte
		seq  uint64
	}{{"snap", at30, 30}, {"first", at10, 10}} {
		got, seq, _, err := restoreModel(t, s, "v", c.at)
		if err != nil || seq != c.seq || !slices.Equal(got, c.want) {
			t.Errorf("restore %s after compaction: seq %d (want %d), err %v, bytes equal %t", c.at, seq, c.seq, err, slices.Equal(got, c.want))
		}
	}
	// A manifest written before this fix (the snapshot's seq inside the
	// merged diff) still restores the snapshot at the diff's end.
	for i := range m.Snapshots {
		if m.Snapshots[i].Name == "snap" {
			m.Snapshots[i].Seq = 22
		}
	}
	if pt, err := resolveS3Point(m, "snap"); err != nil || pt.seq != 30 {
		t.Errorf("snap in an old manifest resolves to %+v, %v; want seq 30", pt, err)
	}
}

// TestS3RestoreReportsPointReached: a restore at seq:N or a time between
// two kept points reports the point it reached, the nearest kept one
// before, not the one asked for.
func TestS3RestoreReportsPointReached(t *testing.T) {
	s, at10, at30 := mergedFixture(t, "reached")
	site := newSite(t)
	start := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for i, c := range []struct {
		at      string
		seq     uint64
		nearest bool
		want    []byte
	}{
		{"seq:25", 10, true, at10}, // inside the merged diff 10-30
		{start.Add(90 * time.Minute).Format(time.RFC3339), 10, true, at10},
		{"seq:30", 30, false, at30},
		{"snap", 30, false, at30},
		{"seq:35", 31, true, nil}, // inside 30-40: its last point before
	} {
		name := fmt.Sprintf("r%d", i)
		res, err := Restore(context.Background(), RestoreOptions{Pool: site.pool, From: s, Volume: "v", At: c.at, NewName: name})
		if err != nil {
			t.Fatalf("restore at %s: %v", c.at, err)
		}
		if res.Seq != c.seq || res.Nearest != c.nearest || res.Point != c.at {
			t.Errorf("restore at %s reported %s seq:%d nearest %t; want seq:%d nearest %t", c.at, res.Point, res.Seq, res.Nearest, c.seq, c.nearest)
		}
		if c.want == nil {
			continue
		}
		if got := site.read(name, ""); !bytes.Equal(got, c.want) {
			t.Errorf("restore at %s: the bytes are not seq:%d's", c.at, c.seq)
		}
	}
}

// TestS3CompactRerunRewritesStaleManifests: a compaction interrupted while
// writing its manifest (one target got it) and run again must bring every
// target's manifest up to date before it deletes the objects the old ones
// list: then losing the one up-to-date manifest still leaves the volume
// restorable.
func TestS3CompactRerunRewritesStaleManifests(t *testing.T) {
	buckets := []string{"stale1", "stale2", "stale3"}
	endpoint, _, c := testServer(t, buckets...)
	spec := s3Spec(endpoint, "stale1/p", "stale2/p", "stale3/p")
	s := mustParse(t, spec, "2+1")
	g, start := shipSim(t, s, "v", 3, 256<<10, 3*24, 8<<10)
	ctx := context.Background()
	get := func(b string) []byte {
		o, err := c.GetObject(ctx, b, "p/v/manifest.json", minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer o.Close()
		d, err := io.ReadAll(o)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	put := func(b string, d []byte) {
		if _, err := c.PutObject(ctx, b, "p/v/manifest.json", bytes.NewReader(d), int64(len(d)), minio.PutObjectOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	old2, old3 := get("stale2"), get("stale3")
	now := start.Add(3*24*time.Hour + 30*time.Minute)
	crash := errors.New("injected crash")
	o := CompactOptions{Retention: Retention{Window: 24 * time.Hour, Policy: "keep-history 1d"}, Now: func() time.Time { return now }, BatchBytes: 64 << 10,
		Hook: func(step string) error {
			if step == "manifest" {
				return crash
			}
			return nil
		}}
	if _, err := mustParse(t, spec, "2+1").Compact(ctx, "v", o); !errors.Is(err, crash) {
		t.Fatal(err)
	}
	// The manifest PUT reached the first target only.
	put("stale2", old2)
	put("stale3", old3)
	o.Hook = nil
	if _, err := mustParse(t, spec, "2+1").Compact(ctx, "v", o); err != nil {
		t.Fatal(err)
	}
	// The first target's manifest is lost: one target's worth of damage,
	// which 2+1 tolerates.
	if err := c.RemoveObject(ctx, "stale1", "p/v/manifest.json", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	img, seq, _, err := restoreModel(t, mustParse(t, spec, "2+1"), "v", "")
	if err != nil || seq != g.seq || !slices.Equal(img, g.states[g.seq]) {
		t.Fatalf("restore the newest after losing one manifest: seq %d (want %d), err %v", seq, g.seq, err)
	}
}
