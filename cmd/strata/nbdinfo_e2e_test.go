package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestE2ENbdinfo checks what a real NBD client (nbdinfo) sees of a volume:
// size, every capability flag, block sizes, the base:allocation context,
// the export list, and that an unknown export name fails.
func TestE2ENbdinfo(t *testing.T) {
	need(t, "nbdinfo")
	s := startServer(t)
	s.createVolume("alpha", "64MiB")
	s.createVolume("beta", "1GiB")

	t.Run("json", func(t *testing.T) {
		s.on(t)
		r := mustRun(t, "nbdinfo", "--json", s.uri("alpha"))
		var v struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || len(v.Exports) != 1 {
			t.Fatalf("nbdinfo --json: %v, %d exports\n%s", err, len(v.Exports), r.stdout)
		}
		e := v.Exports[0]
		want := map[string]any{
			"export-name":          "alpha",
			"export-size":          float64(64 << 20),
			"is_read_only":         false,
			"can_flush":            true,
			"can_fua":              true,
			"can_trim":             true,
			"can_zero":             true,
			"can_fast_zero":        true,
			"can_multi_conn":       true,
			"can_df":               true,
			"block_size_minimum":   float64(1),
			"block_size_preferred": float64(4096),
			"block_size_maximum":   float64(33554432),
		}
		for k, w := range want {
			if got, ok := e[k]; !ok || got != w {
				t.Errorf("nbdinfo --json: %s = %v (present %v), want %v", k, got, ok, w)
			}
		}
		ctxs, _ := e["contexts"].([]any)
		found := false
		for _, c := range ctxs {
			if c == "base:allocation" {
				found = true
			}
		}
		if !found {
			t.Errorf("nbdinfo --json: contexts %v lack base:allocation", e["contexts"])
		}
		if t.Failed() {
			t.Logf("nbdinfo --json output:\n%s", r.stdout)
		}
	})

	t.Run("list", func(t *testing.T) {
		s.on(t)
		r := mustRun(t, "nbdinfo", "--list", "--json", "nbd+unix:///?socket="+s.sock())
		var v struct {
			Exports []map[string]any `json:"exports"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &v); err != nil {
			t.Fatalf("nbdinfo --list --json: %v\n%s", err, r.stdout)
		}
		sizes := map[string]float64{}
		for _, e := range v.Exports {
			name, _ := e["export-name"].(string)
			size, _ := e["export-size"].(float64)
			sizes[name] = size
		}
		if len(sizes) != 2 || sizes["alpha"] != 64<<20 || sizes["beta"] != 1<<30 {
			t.Errorf("nbdinfo --list: exports %v, want alpha=64MiB beta=1GiB\n%s", sizes, r.stdout)
		}
		// The plain text listing names both too.
		txt := mustRun(t, "nbdinfo", "--list", "nbd+unix:///?socket="+s.sock()).stdout
		for _, n := range []string{`export="alpha"`, `export="beta"`} {
			if !strings.Contains(txt, n) {
				t.Errorf("nbdinfo --list lacks %s:\n%s", n, txt)
			}
		}
	})

	t.Run("can", func(t *testing.T) {
		s.on(t)
		for _, c := range []string{"flush", "fua", "trim", "zero", "fast-zero", "multi-conn", "df"} {
			r := run(t, "nbdinfo", "--can", c, s.uri("beta"))
			if r.code != 0 {
				t.Errorf("nbdinfo --can %s: %s", c, r)
			}
		}
		// And the one thing a writable volume is not.
		if r := run(t, "nbdinfo", "--is", "read-only", s.uri("beta")); r.code != 2 {
			t.Errorf("nbdinfo --is read-only: %s (want exit 2: false)", r)
		}
	})

	t.Run("unknown export", func(t *testing.T) {
		s.on(t)
		r := run(t, "nbdinfo", s.uri("nosuch"))
		if r.code == 0 {
			t.Fatalf("nbdinfo of an unknown export succeeded:\n%s", r)
		}
		if !strings.Contains(r.stderr, "nosuch") {
			t.Errorf("nbdinfo error does not name the export:\n%s", r)
		}
	})
}

// conformanceScript runs libnbd as clients nobody here wrote do: in its
// default strict mode (it checks requests against the advertised block
// sizes before sending them) a 4-byte read at offset 0; and, as a client
// that never asked for block sizes may, READs and WRITEs of 40 and 64 MiB,
// past the 32 MiB maximum (the spec's default maximum is the export size).
const conformanceScript = `
import sys, nbd
uri = sys.argv[1]
h = nbd.NBD()
h.connect_uri(uri)
h.pwrite(b"abcdefgh", 0)
assert h.pread(4, 0) == b"abcd"
assert h.pread(3, 5) == b"fgh"
h.shutdown()

h = nbd.NBD()
h.set_strict_mode(0)
h.set_request_block_size(False)
h.connect_uri(uri)
for n in (40 << 20, 64 << 20):
    data = bytes([n >> 20]) * 4096 + bytes(range(256)) * ((n - 8192) // 256) + bytes([7]) * 4096
    h.pwrite(data, 12345, nbd.CMD_FLAG_FUA)
    got = h.pread(n, 12345)
    assert got == data, "%d MiB read back differs" % (n >> 20)
h.shutdown()
print("OK")
`

// TestE2ENBDConformance: libnbd's strict mode reads 4 bytes at offset 0
// (minimum block size 1), and a client that did not negotiate block sizes
// reads and writes 40 and 64 MiB at once.
func TestE2ENBDConformance(t *testing.T) {
	needPython(t)
	s := startServer(t)
	s.createVolume("big", "256MiB")
	r := runSpec(t, cmdSpec{name: python3, args: []string{"-c", conformanceScript, s.uri("big")}})
	if r.code != 0 || strings.TrimSpace(r.stdout) != "OK" {
		t.Fatalf("libnbd: %v", r)
	}
}
