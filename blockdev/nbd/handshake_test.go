package nbd

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"
)

func newTestExporter() *memExporter {
	x := newMemExporter()
	x.add("vol", newMemDev(1<<20), "the default volume")
	x.add("other", newMemDev(64<<10), "")
	return x
}

func TestGreeting(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	c := dial(t, ts)
	if got := c.greet(clientFlagFixedNewstyle); got != flagFixedNewstyle|flagNoZeroes {
		t.Fatalf("handshake flags %#x", got)
	}
	// Unknown client flags: the spec says to drop the connection.
	c = dial(t, ts)
	c.greet(clientFlagFixedNewstyle | 1<<5)
	c.expectClosed()
}

func TestExportName(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cflags   uint32
		export   string
		size     uint64
		noZeroes bool
	}{
		{"zeroes", clientFlagFixedNewstyle, "vol", 1 << 20, false},
		{"no zeroes", clientFlagFixedNewstyle | clientFlagNoZeroes, "vol", 1 << 20, true},
		{"default export", clientFlagFixedNewstyle | clientFlagNoZeroes, "", 1 << 20, true},
		{"other", clientFlagNoZeroes, "other", 64 << 10, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, newTestExporter(), Options{})
			c := dial(t, ts)
			c.greet(tc.cflags)
			c.sendOpt(optExportName, []byte(tc.export))
			b := c.read(10)
			if got := binary.BigEndian.Uint64(b); got != tc.size {
				t.Errorf("size %d, want %d", got, tc.size)
			}
			flags := binary.BigEndian.Uint16(b[8:])
			want := tfHasFlags | tfSendFlush | tfSendFUA | tfSendTrim | tfSendWriteZeroes |
				tfSendFastZero | tfCanMultiConn | tfSendCache
			if flags != want {
				t.Errorf("flags %#x, want %#x", flags, want)
			}
			if !tc.noZeroes {
				if z := c.read(124); !bytes.Equal(z, make([]byte, 124)) {
					t.Errorf("padding not zero")
				}
			}
			// Transmission works, with simple replies.
			r := c.do(0, cmdWrite, 0, 4, []byte("abcd"))
			if r.errno != 0 || r.structured {
				t.Fatalf("write: %+v", r)
			}
			if got := readData(t, c.do(0, cmdRead, 0, 4, nil)); string(got) != "abcd" {
				t.Fatalf("read %q", got)
			}
			c.sendReq(0, cmdDisc, 1, 0, 0, nil)
			c.expectClosed()
		})
	}
}

func TestExportNameUnknownCloses(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	for _, name := range []string{"nope", "bad@name", strings.Repeat("x", 4097), "nul\x00name"} {
		c := dial(t, ts)
		c.greet(clientFlagFixedNewstyle)
		c.sendOpt(optExportName, []byte(name))
		c.expectClosed()
	}
}

func TestInfoGo(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	for _, tc := range []struct {
		name     string
		opt      uint32
		export   string
		infos    []uint16
		wantName string
		wantDesc string
	}{
		{"info bare", optInfo, "vol", nil, "", ""},
		{"info all", optInfo, "vol", []uint16{infoName, infoDescription, infoBlockSize, 99}, "vol", "the default volume"},
		{"go with block size", optGo, "vol", []uint16{infoBlockSize}, "", ""},
		{"go without block size", optGo, "other", nil, "", ""},
		{"go default, name", optGo, "", []uint16{infoName, infoDescription}, "vol", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOpt(tc.opt, infoPayload(tc.export, tc.infos...))
			ei, typ := parseInfos(t, c.optReplies())
			if typ != repAck {
				t.Fatalf("reply %#x", typ)
			}
			wantSize := uint64(1 << 20)
			if tc.export == "other" {
				wantSize = 64 << 10
			}
			if ei.size != wantSize || ei.flags&tfHasFlags == 0 || ei.flags&tfSendDF != 0 {
				t.Errorf("size %d flags %#x", ei.size, ei.flags)
			}
			if !ei.bs || ei.min != 1 || ei.pref != 4096 || ei.max != 32<<20 {
				t.Errorf("block size %v %d/%d/%d, want always sent 1/4096/32M", ei.bs, ei.min, ei.pref, ei.max)
			}
			if ei.hasName != slices.Contains(tc.infos, infoName) || ei.name != tc.wantName {
				t.Errorf("name %v %q", ei.hasName, ei.name)
			}
			if tc.wantDesc != "" && ei.desc != tc.wantDesc {
				t.Errorf("description %q", ei.desc)
			}
			if tc.opt == optInfo {
				// Still negotiating: GO works after INFO.
				c.goTo(tc.export, true, false)
			}
			if r := c.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
				t.Fatalf("flush: %+v", r)
			}
		})
	}
}

func TestInfoGoErrors(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	long := strings.Repeat("n", 4097)
	for _, tc := range []struct {
		name    string
		opt     uint32
		payload []byte
		want    uint32
	}{
		{"unknown export go", optGo, infoPayload("nope"), repErrUnknown},
		{"unknown export info", optInfo, infoPayload("nope", infoBlockSize), repErrUnknown},
		{"invalid export name", optGo, infoPayload("bad@name"), repErrInvalid},
		{"too short", optGo, []byte{0, 0, 0, 0, 0}, repErrInvalid},
		{"name past payload", optInfo, []byte{0, 0, 0, 9, 'v', 'o', 'l', 0, 0}, repErrInvalid},
		{"count mismatch", optGo, append(infoPayload("vol"), 0, 1), repErrInvalid},
		{"count too high", optGo, []byte{0, 0, 0, 0, 0, 5, 0, 1}, repErrInvalid},
		{"name too long", optGo, infoPayload(long), repErrInvalid},
		{"name with NUL", optGo, infoPayload("v\x00l"), repErrInvalid},
		{"name not UTF-8", optGo, infoPayload("v\xffl"), repErrInvalid},
		{"list with payload", optList, []byte{1}, repErrInvalid},
		{"structured with payload", optStructuredReply, []byte{1}, repErrInvalid},
		{"starttls", optStartTLS, nil, repErrUnsup},
		{"starttls with payload", optStartTLS, []byte{1}, repErrInvalid},
		{"extended headers", optExtendedHeaders, nil, repErrUnsup},
		{"peek export", 4, nil, repErrUnsup},
		{"unknown option", 4242, []byte("whatever"), repErrUnsup},
		{"meta before structured", optSetMetaContext, metaPayload("vol", metaBaseAllocation), repErrInvalid},
		{"list meta before structured", optListMetaContext, metaPayload("vol"), repErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOpt(tc.opt, tc.payload)
			rs := c.optReplies()
			last := rs[len(rs)-1]
			if last.typ != tc.want || last.opt != tc.opt {
				t.Fatalf("reply opt %d type %#x %q, want type %#x", last.opt, last.typ, last.data, tc.want)
			}
			if len(rs) != 1 {
				t.Errorf("%d replies before the error", len(rs)-1)
			}
			// The connection survives: negotiation goes on.
			c.goTo("vol", false, false)
		})
	}
}

func TestList(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle)
	c.sendOpt(optList, nil)
	rs := c.optReplies()
	var got []string
	for _, r := range rs[:len(rs)-1] {
		if r.typ != repServer {
			t.Fatalf("reply type %#x", r.typ)
		}
		n := binary.BigEndian.Uint32(r.data)
		got = append(got, string(r.data[4:4+n])+"|"+string(r.data[4+n:]))
	}
	if want := "other||vol|the default volume"; strings.Join(got, "|") != want {
		t.Errorf("list %q, want %q", strings.Join(got, "|"), want)
	}
	if rs[len(rs)-1].typ != repAck {
		t.Errorf("final reply %#x", rs[len(rs)-1].typ)
	}
}

func TestAbort(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle)
	c.sendOpt(optAbort, nil)
	if r := c.readOptReply(); r.typ != repAck || r.opt != optAbort {
		t.Fatalf("abort reply %+v", r)
	}
	c.expectClosed()
}

func TestMetaContext(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	type ctx struct {
		id   uint32
		name string
	}
	contexts := func(rs []optReply) (out []ctx, final uint32) {
		for _, r := range rs {
			if r.typ == repMetaContext {
				out = append(out, ctx{binary.BigEndian.Uint32(r.data), string(r.data[4:])})
			}
		}
		return out, rs[len(rs)-1].typ
	}
	for _, tc := range []struct {
		name    string
		opt     uint32
		payload []byte
		want    []ctx
		final   uint32
	}{
		{"list all", optListMetaContext, metaPayload("vol"), []ctx{{0, metaBaseAllocation}}, repAck},
		{"list base:", optListMetaContext, metaPayload("vol", "base:"), []ctx{{0, metaBaseAllocation}}, repAck},
		{"list exact", optListMetaContext, metaPayload("vol", "qemu:x", metaBaseAllocation), []ctx{{0, metaBaseAllocation}}, repAck},
		{"list other namespace", optListMetaContext, metaPayload("vol", "qemu:dirty-bitmap:x"), nil, repAck},
		{"list unknown export", optListMetaContext, metaPayload("nope"), nil, repErrUnknown},
		{"set", optSetMetaContext, metaPayload("vol", metaBaseAllocation), []ctx{{metaContextID, metaBaseAllocation}}, repAck},
		{"set base: selects nothing", optSetMetaContext, metaPayload("vol", "base:"), nil, repAck},
		{"set no queries", optSetMetaContext, metaPayload("vol"), nil, repAck},
		{"set unknown leaf", optSetMetaContext, metaPayload("vol", "base:other"), nil, repAck},
		{"set unknown export", optSetMetaContext, metaPayload("nope", metaBaseAllocation), nil, repErrUnknown},
		{"truncated query", optSetMetaContext, metaPayload("vol", metaBaseAllocation)[:20], nil, repErrInvalid},
		{"query count too high", optSetMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, nil, repErrInvalid},
		{"trailing bytes", optListMetaContext, append(metaPayload("vol"), 0), nil, repErrInvalid},
		{"no query count", optListMetaContext, []byte{0, 0, 0, 0}, nil, repErrInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
			c.sendOpt(optStructuredReply, nil)
			c.readOptReply()
			c.sendOpt(tc.opt, tc.payload)
			got, final := contexts(c.optReplies())
			if final != tc.final || len(got) != len(tc.want) || (len(got) == 1 && got[0] != tc.want[0]) {
				t.Fatalf("got %v final %#x, want %v final %#x", got, final, tc.want, tc.final)
			}
		})
	}
}

// TestMetaContextExportMismatch: contexts set for one export do not carry
// over to a GO on another.
func TestMetaContextExportMismatch(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	for _, tc := range []struct {
		setFor, goTo string
		want         uint32
	}{
		{"vol", "vol", 0},
		{"other", "vol", errnoInval},
		{"vol", "", errnoInval}, // same device, different name
	} {
		c := dial(t, ts)
		c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
		c.sendOpt(optStructuredReply, nil)
		c.readOptReply()
		c.sendOpt(optSetMetaContext, metaPayload(tc.setFor, metaBaseAllocation))
		c.optReplies()
		c.sendOpt(optGo, infoPayload(tc.goTo))
		if _, typ := parseInfos(t, c.optReplies()); typ != repAck {
			t.Fatalf("GO: %#x", typ)
		}
		if r := c.do(0, cmdBlockStatus, 0, 4096, nil); r.errno != tc.want {
			t.Errorf("set for %q, go to %q: errno %d, want %d", tc.setFor, tc.goTo, r.errno, tc.want)
		}
	}
}

func TestOptionTooBig(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})

	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle)
	c.sendOpt(4242, make([]byte, 100<<10))
	if r := c.readOptReply(); r.typ != repErrTooBig {
		t.Fatalf("reply %#x, want ERR_TOO_BIG", r.typ)
	}
	c.sendOpt(optInfo, append(infoPayload("vol"), make([]byte, 70<<10)...))
	if r := c.readOptReply(); r.typ != repErrTooBig {
		t.Fatalf("reply %#x, want ERR_TOO_BIG", r.typ)
	}
	c.goTo("vol", true, true)

	// Beyond the hard cap, and EXPORT_NAME (which has no error reply),
	// close the connection.
	c = dial(t, ts)
	c.greet(clientFlagFixedNewstyle)
	b := binary.BigEndian.AppendUint64(nil, magicOption)
	b = binary.BigEndian.AppendUint32(b, optInfo)
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)
	c.write(b)
	c.expectClosed()

	c = dial(t, ts)
	c.greet(clientFlagFixedNewstyle)
	c.sendOpt(optExportName, make([]byte, 100<<10))
	c.expectClosed()
}

func TestBadOptionMagicCloses(t *testing.T) {
	ts := startServer(t, newTestExporter(), Options{})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle)
	c.write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.expectClosed()
}

// A client that connects and then says nothing is cut off after the
// handshake timeout; one that reached transmission may idle.
func TestHandshakeTimeout(t *testing.T) {
	x := newMemExporter()
	x.add("a", newMemDev(1<<20), "")
	ts := startServer(t, x, Options{HandshakeTimeout: 300 * time.Millisecond})
	idle := dial(t, ts)
	idle.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	start := time.Now()
	idle.expectClosed()
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("idle negotiating client was closed after %v", d)
	}

	busy := dial(t, ts)
	busy.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	busy.goTo("a", false, false)
	time.Sleep(600 * time.Millisecond)
	if r := busy.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush after idling in transmission: errno %d", r.errno)
	}
}
