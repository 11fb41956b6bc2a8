package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// These tests drive the server with real NBD clients (libnbd-bin,
// qemu-utils, python3-libnbd) and skip when a tool is missing.

func need(t *testing.T, tool string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Skipf("%s not installed (Debian: libnbd-bin, qemu-utils, python3-libnbd): %v", tool, err)
	}
	return p
}

// run runs a command; it fails the test unless the exit code is want.
func run(t *testing.T, want int, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %q: %v", name, args, err)
	}
	if code != want {
		t.Fatalf("%s %q: exit %d, want %d\n%s", name, args, code, want, out.String())
	}
	return out.String()
}

func realExporter() *memExporter {
	x := newMemExporter()
	x.add("vol", newMemDev(4<<20), "the default volume")
	x.add("ro", newMemDev(1<<20), "a read-only point in time")
	x.ro["ro"] = true
	return x
}

func TestNbdinfoJSON(t *testing.T) {
	need(t, "nbdinfo")
	ts := startServer(t, realExporter(), Options{})
	for _, tc := range []struct {
		export string
		size   float64
		ro     bool
	}{{"vol", 4 << 20, false}, {"ro", 1 << 20, true}} {
		out := run(t, 0, "nbdinfo", "--json", ts.uri(tc.export))
		var v struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(out), &v); err != nil || len(v.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
		e := v.Exports[0]
		want := map[string]any{
			"export-size":          tc.size,
			"is_read_only":         tc.ro,
			"is_rotational":        false,
			"can_flush":            true,
			"can_fua":              !tc.ro, // read-only exports offer nothing that writes
			"can_trim":             !tc.ro,
			"can_zero":             !tc.ro,
			"can_fast_zero":        !tc.ro,
			"can_multi_conn":       true,
			"can_df":               true,
			"can_cache":            true,
			"block_size_minimum":   float64(1),
			"block_size_preferred": float64(4096),
			"block_size_maximum":   float64(32 << 20),
		}
		for k, w := range want {
			if e[k] != w {
				t.Errorf("%s: %s = %v, want %v", tc.export, k, e[k], w)
			}
		}
		if d, _ := e["description"].(string); !strings.Contains(d, "volume") && !strings.Contains(d, "point in time") {
			t.Errorf("%s: description %q", tc.export, d)
		}
		ctxs, _ := e["contexts"].([]any)
		if len(ctxs) != 1 || ctxs[0] != metaBaseAllocation {
			t.Errorf("%s: contexts %v", tc.export, e["contexts"])
		}
	}
}

func TestNbdinfoCan(t *testing.T) {
	need(t, "nbdinfo")
	ts := startServer(t, realExporter(), Options{})
	for _, can := range []string{"fua", "flush", "trim", "zero", "fast-zero", "multi-conn", "df", "cache", "structured-replies"} {
		run(t, 0, "nbdinfo", "--can", can, ts.uri("vol"))
	}
	run(t, 0, "nbdinfo", "--is", "read-only", ts.uri("ro"))
	run(t, 2, "nbdinfo", "--is", "read-only", ts.uri("vol"))
	run(t, 2, "nbdinfo", "--is", "rotational", ts.uri("vol"))
}

func TestNbdinfoList(t *testing.T) {
	need(t, "nbdinfo")
	ts := startServer(t, realExporter(), Options{})
	out := run(t, 0, "nbdinfo", "--list", ts.uri(""))
	for _, want := range []string{"export=\"ro\"", "export=\"vol\"", "the default volume", "a read-only point in time"} {
		if !strings.Contains(out, want) {
			t.Errorf("nbdinfo --list lacks %q:\n%s", want, out)
		}
	}
	out = run(t, 0, "nbdinfo", "--list", "--json", ts.uri(""))
	var v struct {
		Exports []map[string]any `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || len(v.Exports) != 2 {
		t.Fatalf("nbdinfo --list --json: %v\n%s", err, out)
	}
}

func TestNbdinfoMap(t *testing.T) {
	need(t, "nbdinfo")
	x := realExporter()
	dev := x.devs["vol"]
	dev.WriteAt(bytes.Repeat([]byte{1}, 8192), 0)
	dev.WriteZeroes(8192, 4096, true)
	ts := startServer(t, x, Options{})
	out := run(t, 0, "nbdinfo", "--map", "--json", ts.uri("vol"))
	var m []struct {
		Offset, Length int64
		Type           uint32
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	want := []struct {
		Offset, Length int64
		Type           uint32
	}{{0, 8192, 0}, {8192, 4096, stateZero}, {12288, 4<<20 - 12288, stateHole | stateZero}}
	if len(m) != len(want) {
		t.Fatalf("map %+v, want %+v", m, want)
	}
	for i := range m {
		if m[i] != want[i] {
			t.Fatalf("map %+v, want %+v", m, want)
		}
	}
	if text := run(t, 0, "nbdinfo", "--map", ts.uri("vol")); !strings.Contains(text, "hole,zero") {
		t.Errorf("nbdinfo --map:\n%s", text)
	}
}

func TestQemuIO(t *testing.T) {
	need(t, "qemu-io")
	x := realExporter()
	ts := startServer(t, x, Options{})
	uri := ts.uri("vol")
	run(t, 0, "qemu-io", "-f", "raw", uri,
		"-c", "write -P 0xab 0 1M",
		"-c", "write -f -P 0xcd 1M 64k",
		"-c", "write -P 0x11 1000 3000",
		"-c", "write -z 2M 1M",
		"-c", "discard 3M 512k",
		"-c", "flush",
		"-c", "read -P 0xab 0 1000",
		"-c", "read -P 0x11 1000 3000",
		"-c", "read -P 0xab 4000 96",
		"-c", "read -P 0xab 4096 1040384",
		"-c", "read -P 0xcd 1M 64k",
		"-c", "read -P 0 2M 1M")
	// A second connection sees it all (CAN_MULTI_CONN), and the device
	// holds the pattern.
	run(t, 0, "qemu-io", "-f", "raw", "-r", uri, "-c", "read -P 0x11 1000 3000", "-c", "read -P 0xcd 1M 64k")
	got := make([]byte, 3000)
	x.devs["vol"].ReadAt(got, 1000)
	if !bytes.Equal(got, bytes.Repeat([]byte{0x11}, 3000)) {
		t.Fatal("device does not hold the unaligned write")
	}
	// A pattern mismatch is detected (the check above can fail).
	out := run(t, 1, "qemu-io", "-f", "raw", "-r", uri, "-c", "read -P 0x99 0 4096")
	if !strings.Contains(out, "Pattern verification failed") {
		t.Fatalf("qemu-io mismatch output:\n%s", out)
	}
	// qemu honours READ_ONLY: it refuses to open the export for writing.
	out = run(t, 1, "qemu-io", "-f", "raw", ts.uri("ro"), "-c", "write -P 1 0 4096")
	if !strings.Contains(out, "Permission denied") {
		t.Fatalf("read-write open of a read-only export:\n%s", out)
	}
	run(t, 0, "qemu-io", "-f", "raw", "-r", ts.uri("ro"), "-c", "read -P 0 0 1M")
}

func TestQemuImgMap(t *testing.T) {
	need(t, "qemu-img")
	x := realExporter()
	x.devs["vol"].WriteAt(bytes.Repeat([]byte{1}, 65536), 1<<20)
	ts := startServer(t, x, Options{})
	out := run(t, 0, "qemu-img", "map", "--output=json", "-f", "raw", ts.uri("vol"))
	var m []struct {
		Start, Length int64
		Data, Zero    bool
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	var data int64
	for _, e := range m {
		if e.Data {
			data += e.Length
			if e.Start != 1<<20 {
				t.Errorf("data at %d", e.Start)
			}
		}
	}
	if data != 65536 {
		t.Fatalf("qemu-img map shows %d data bytes:\n%s", data, out)
	}
}

const libnbdScript = `
import errno, sys
import nbd

uri, ro_uri = sys.argv[1], sys.argv[2]

def expect_err(what, fn, want):
    try:
        fn()
    except nbd.Error as e:
        if e.errnum != want:
            sys.exit("%s: errno %s (%s), want %d" % (what, e.errnum, e.string, want))
        return
    sys.exit("%s: succeeded, want errno %d" % (what, want))

def ignore(*args):
    return 0

h = nbd.NBD()
h.set_strict_mode(0)
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
size = h.get_size()
assert h.get_structured_replies_negotiated()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
h.pwrite(b"\xab" * 8192, 0, nbd.CMD_FLAG_FUA)
assert h.pread(8192, 0) == b"\xab" * 8192
expect_err("read past end", lambda: h.pread(4096, size - 2048), errno.EINVAL)
expect_err("read at end", lambda: h.pread(512, size), errno.EINVAL)
expect_err("read offset overflow", lambda: h.pread(4096, (1 << 64) - 2048), errno.EINVAL)
expect_err("write past end", lambda: h.pwrite(b"x" * 4096, size - 2048), errno.ENOSPC)
expect_err("trim past end", lambda: h.trim(4096, size), errno.EINVAL)
expect_err("zero past end", lambda: h.zero(4096, size), errno.ENOSPC)
expect_err("cache past end", lambda: h.cache(4096, size), errno.EINVAL)
expect_err("block status past end", lambda: h.block_status(4096, size, ignore), errno.EINVAL)
# Any alignment works (minimum block size 1).
h.pwrite(b"y" * 100, 3)
assert h.pread(102, 2) == b"\xab" + b"y" * 100 + b"\xab"
h.pwrite(b"\xab" * 100, 3)
expect_err("oversized read", lambda: h.pread((32 << 20) + 512, 0), errno.EINVAL)
expect_err("oversized write", lambda: h.pwrite(b"x" * ((32 << 20) + 512), 0), errno.EINVAL)
expect_err("bad flag", lambda: h.pread(512, 0, nbd.CMD_FLAG_NO_HOLE), errno.EINVAL)
# The connection survived all of that.
assert h.pread(512, 0) == b"\xab" * 512
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FAST_ZERO)
h.trim(4096, 12288)
h.cache(4096, 0)
entries = []
def collect(meta, off, ents, err):
    entries.extend(ents)
    return 0
h.block_status(65536, 0, collect)
assert entries == [8192, 0, 4096, 2, 65536 - 12288, 3], entries
entries = []
h.block_status(65536, 0, collect, nbd.CMD_FLAG_REQ_ONE)
assert entries == [8192, 0], entries
h.flush()
h.shutdown()

# libnbd's default strict mode sends a 4-byte read at offset 0: it checks
# requests against the advertised minimum block size before sending them.
h = nbd.NBD()
h.connect_uri(uri)
assert h.pread(4, 0) == b"\xab" * 4
h.pwrite(b"z", 8191)
assert h.pread(2, 8190) == b"\xabz"
h.pwrite(b"\xab", 8191)
h.shutdown()

# Simple replies only.
h = nbd.NBD()
h.set_strict_mode(0)
h.set_request_structured_replies(False)
h.connect_uri(uri)
assert not h.get_structured_replies_negotiated()
assert not h.can_df()
assert h.pread(4096, 0) == b"\xab" * 4096
h.pwrite(b"\x11" * 512, 512)
assert h.pread(1024, 0) == b"\xab" * 512 + b"\x11" * 512
expect_err("simple read past end", lambda: h.pread(4096, size - 2048), errno.EINVAL)
expect_err("simple write past end", lambda: h.pwrite(b"x" * 4096, size), errno.ENOSPC)
expect_err("simple oversized read", lambda: h.pread((32 << 20) + 512, 0), errno.EINVAL)
assert h.pread(512, 512) == b"\x11" * 512
h.shutdown()

# A read-only export refuses writes with EPERM.
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(ro_uri)
assert h.is_read_only()
expect_err("ro write", lambda: h.pwrite(b"x" * 4096, 0), errno.EPERM)
expect_err("ro trim", lambda: h.trim(4096, 0), errno.EPERM)
expect_err("ro zero", lambda: h.zero(4096, 0), errno.EPERM)
assert h.pread(4096, 0) == bytes(4096)
h.shutdown()
print("OK")
`

func TestPythonLibnbd(t *testing.T) {
	py := "/usr/bin/python3"
	if _, err := exec.LookPath(py); err != nil {
		t.Skipf("system python3 missing: %v", err)
	}
	if out, err := exec.Command(py, "-c", "import nbd").CombinedOutput(); err != nil {
		t.Skipf("python3-libnbd not installed: %v %s", err, out)
	}
	ts := startServer(t, realExporter(), Options{})
	out := run(t, 0, py, "-c", libnbdScript, ts.uri("vol"), ts.uri("ro"))
	if strings.TrimSpace(out) != "OK" {
		t.Fatalf("libnbd script:\n%s", out)
	}
}
