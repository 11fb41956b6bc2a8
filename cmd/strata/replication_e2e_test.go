package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// replSites starts a source site and a replica site that accepts streams
// with a token.
func replSites(t *testing.T) (a, b *server, bAddr, tok string) {
	t.Helper()
	need(t, "qemu-img", "qemu-io", "nbdcopy")
	tok = filepath.Join(shortTempDir(t), "token")
	if err := os.WriteFile(tok, []byte("e2e-replication-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	aAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	bAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a = startServer(t, "--replica-listen", aAddr, "--replica-token-file", tok)
	b = startServer(t, "--replica-listen", bAddr, "--replica-token-file", tok)
	return a, b, bAddr, tok
}

// fillRandom writes n random bytes at off into export uri (nbdcopy from a
// file), so compression cannot hide what travels.
func fillRandom(t *testing.T, uri string, off, n int64) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "rand")
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "qemu-io", "-f", "raw", uri, "-c", fmt.Sprintf("write -s %s %d %d", f, off, n), "-c", "flush")
}

// sameContent compares two exports block by block (qemu-img compare).
func sameContent(t *testing.T, what, u1, u2 string) {
	t.Helper()
	r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", u1, u2)
	if r.code != 0 {
		t.Fatalf("%s: %s and %s differ: %s", what, u1, u2, r)
	}
}

func shipJSON(t *testing.T, s *server, args ...string) control.ShipResult {
	t.Helper()
	out := s.mustCLI(append([]string{"replicate"}, append(args, "--once", "--json")...)...)
	var res control.ShipResult
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("replicate --json: %v: %s", err, out)
	}
	return res
}

func TestE2EReplication(t *testing.T) {
	a, b, bAddr, tok := replSites(t)
	to := "strata://" + bAddr
	a.createVolume("v", "64MiB")
	fillRandom(t, a.uri("v"), 0, 8<<20)
	mustRun(t, "qemu-io", "-f", "raw", a.uri("v"), "-c", "write -z 1M 1M", "-c", "discard 3M 1M", "-c", "flush")
	a.mustCLI("snapshot", "create", "v", "s1")
	fillRandom(t, a.uri("v"), 4<<20, 4<<20)
	a.mustCLI("snapshot", "create", "v", "s2")

	// A plain run: the first one copies the volume.
	r := a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once")
	if r.code != 0 || !strings.Contains(r.stdout, "full copy") || !strings.Contains(r.stdout, "lag: none") {
		t.Fatalf("first run: %s", r)
	}
	t.Logf("first run:\n%s", r.stdout)
	sameContent(t, "head", a.uri("v"), b.uri("v"))

	// Later points travel as records; only the delta travels.
	fillRandom(t, a.uri("v"), 16<<20, 2<<20)
	a.mustCLI("snapshot", "create", "v", "s3")
	fillRandom(t, a.uri("v"), 20<<20, 1<<20)
	a.mustCLI("snapshot", "create", "v", "s4")
	res := shipJSON(t, a, "v", "--to", to, "--token-file", tok)
	if res.Full || res.DataBytes != 3<<20 {
		t.Fatalf("delta run shipped %d bytes (full=%v), want exactly the 3 MiB written", res.DataBytes, res.Full)
	}
	for _, p := range []string{"s3", "s4"} {
		sameContent(t, "snapshot "+p, a.uri("v@"+p), b.uri("v@"+p))
	}
	sameContent(t, "head", a.uri("v"), b.uri("v"))
	// The replica serves read-only; its snapshots are listed by name.
	if r := run(t, "qemu-io", "-f", "raw", b.uri("v"), "-c", "write -P 1 0 4k"); r.code == 0 {
		t.Fatal("the replica accepted a write over NBD")
	}
	if out := b.mustCLI("snapshot", "list", "v"); !strings.Contains(out, "s3") || !strings.Contains(out, "s4") {
		t.Fatalf("replica snapshots: %s", out)
	}
	// Idempotent: nothing new, nothing travels.
	idle := shipJSON(t, a, "v", "--to", to, "--token-file", tok)
	if idle.Batches != 0 {
		t.Fatalf("idle run: %+v", idle)
	}

	t.Run("bad token", func(t *testing.T) {
		a.on(t)
		bad := filepath.Join(t.TempDir(), "bad")
		os.WriteFile(bad, []byte("not-the-token"), 0o600)
		checkOneLineError(t, "wrong token", a.cli("replicate", "v", "--to", to, "--token-file", bad, "--once"), "wrong replication token")
	})

	t.Run("busy and killed runs resume", func(t *testing.T) {
		a.on(t)
		fillRandom(t, a.uri("v"), 24<<20, 16<<20)
		// A slow run (1 MiB/s) in the background; a second one exits 75.
		slow := startBG(t, strataBin, "--data", a.dir, "replicate", "v", "--to", to, "--token-file", tok, "--once", "--bwlimit", "1MiB/s")
		time.Sleep(1500 * time.Millisecond)
		r := a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once")
		if r.code != exitBusy || !strings.Contains(r.stderr, "already running") {
			t.Fatalf("second run: %s", r)
		}
		// kill -9 the daemon mid-transfer (the shipper), restart it, rerun.
		a.kill9()
		slow.stop(5 * time.Second)
		a.start()
		res := shipJSON(t, a, "v", "--to", to, "--token-file", tok)
		t.Logf("rerun after kill -9: from seq %d, %d bytes", res.Start, res.DataBytes)
		if res.Start <= idle.Acked || res.Full || res.DataBytes >= 16<<20 {
			t.Fatalf("rerun resent more than the unacknowledged tail: %+v (the killed run started at seq %d)", res, idle.Acked)
		}
		sameContent(t, "head after a killed run", a.uri("v"), b.uri("v"))
	})

	t.Run("kill -9 of the client cancels its run", func(t *testing.T) {
		a.on(t)
		target := func() control.ReplicationStatus {
			for _, st := range replicationList(t, a) {
				if st.Target == to {
					return st
				}
			}
			t.Fatalf("no status for %s: %+v", to, replicationList(t, a))
			return control.ReplicationStatus{}
		}
		before := target().Acked
		// 16 records of 1 MiB; a slow run (1 MiB/s, batches of 1 MiB)
		// takes about 16 s. Once the target holds a few, kill -9 the CLI
		// that started it.
		for i := int64(0); i < 16; i++ {
			fillRandom(t, a.uri("v"), (48+i)<<20, 1<<20)
		}
		slow := startBG(t, strataBin, "--data", a.dir, "replicate", "v", "--to", to, "--token-file", tok, "--once", "--bwlimit", "1MiB/s")
		var mid control.ReplicationStatus
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			if mid = target(); mid.Running && mid.Acked >= before+3 {
				break
			}
			if time.Now().After(deadline) || slow.exited() {
				t.Fatalf("the slow run acknowledged nothing: %+v\n%s", mid, slow.output())
			}
		}
		slow.kill()
		// The rerun at once: not "already running"; it goes on from the
		// point the target holds.
		r := a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once", "--json")
		if r.code != 0 {
			t.Fatalf("rerun right after kill -9 of the client: %s", r)
		}
		var res control.ShipResult
		if err := json.Unmarshal([]byte(r.stdout), &res); err != nil {
			t.Fatalf("rerun: %v: %s", err, r.stdout)
		}
		t.Logf("killed at acked seq %d (run started at %d); rerun from seq %d, %d bytes", mid.Acked, before, res.Start, res.DataBytes)
		if res.Full || res.Start < mid.Acked || res.DataBytes == 0 || res.DataBytes >= 16<<20 {
			t.Fatalf("rerun did not resume from the target's point: %+v (killed run started at %d, target held %d)", res, before, mid.Acked)
		}
		if st := target(); st.Running || st.LagRecords != 0 {
			t.Fatalf("after the rerun: %+v", st)
		}
		sameContent(t, "head after a killed client", a.uri("v"), b.uri("v"))
	})

	t.Run("continuous through cut connections", func(t *testing.T) {
		a.on(t)
		px := newE2EProxy(t, bAddr)
		pto := "strata://" + px.addr() + "/v"
		a.mustCLI("replication", "add", "v", "--to", pto, "--token-file", tok)
		waitLag := func(what string) {
			deadline := time.Now().Add(30 * time.Second)
			for {
				for _, s := range replicationList(t, a) {
					if s.Target == pto && s.LagRecords == 0 && s.LastError == "" && !s.LastOK.IsZero() {
						return
					}
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: lag did not return to zero: %+v", what, replicationList(t, a))
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		waitLag("start")
		fillRandom(t, a.uri("v"), 40<<20, 1<<20)
		waitLag("after a write")
		px.cutAll()
		px.refuse(true)
		fillRandom(t, a.uri("v"), 44<<20, 1<<20)
		time.Sleep(1500 * time.Millisecond)
		var errSeen string
		for _, s := range replicationList(t, a) {
			if s.Target == pto {
				errSeen = s.LastError
				if s.LagRecords == 0 {
					t.Fatalf("lag is zero while the target is cut off: %+v", s)
				}
			}
		}
		t.Logf("while cut: last error %q", errSeen)
		px.refuse(false)
		waitLag("after the connection came back")
		sameContent(t, "head after continuous shipping", a.uri("v"), b.uri("v"))
		fams, mb := a.scrape(t)
		if lag, err := fams.Value("strata_replication_lag_records", "volume", "v", "target", pto); err != nil || lag != 0 {
			t.Fatalf("metrics: lag %v, %v:\n%s", lag, err, mb)
		}
		out := a.mustCLI("status")
		if !strings.Contains(out, pto) {
			t.Fatalf("status does not show the target:\n%s", out)
		}
		a.mustCLI("replication", "remove", "v", "--to", pto)
	})

	t.Run("promote and fail back", func(t *testing.T) {
		a.on(t)
		b.on(t)
		if r := b.cli("promote", "v"); r.code != 0 {
			t.Fatalf("promote: %s", r)
		}
		fillRandom(t, b.uri("v"), 8<<20, 2<<20)
		// The old primary refuses nothing yet; shipping onto the promoted
		// replica is refused.
		checkOneLineError(t, "ship onto promoted", a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once"), "promoted")
		aTo := "strata://" + a.replicaAddr()
		res := shipJSON(t, b, "v", "--to", aTo, "--token-file", tok)
		t.Logf("failback: %s: %d bytes", res.Message, res.DataBytes)
		if res.Full || res.DataBytes != 2<<20 {
			t.Fatalf("failback shipped %d bytes (full=%v), want only the 2 MiB written since", res.DataBytes, res.Full)
		}
		sameContent(t, "head after failback", a.uri("v"), b.uri("v"))
	})
}

func (s *server) replicaAddr() string {
	for i, a := range s.args {
		if a == "--replica-listen" {
			return s.args[i+1]
		}
	}
	s.t.Fatal("no --replica-listen")
	return ""
}

func replicationList(t *testing.T, s *server) []control.ReplicationStatus {
	t.Helper()
	var list []control.ReplicationStatus
	if err := json.Unmarshal([]byte(s.mustCLI("replication", "list", "--json")), &list); err != nil {
		t.Fatal(err)
	}
	return list
}

// e2eProxy forwards TCP to a target; it can cut every connection and
// refuse new ones.
type e2eProxy struct {
	l       net.Listener
	mu      sync.Mutex
	conns   []net.Conn
	refused bool
}

func newE2EProxy(t *testing.T, target string) *e2eProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &e2eProxy{l: l}
	t.Cleanup(func() { l.Close(); p.cutAll() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			if p.refused {
				p.mu.Unlock()
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				p.mu.Unlock()
				c.Close()
				continue
			}
			p.conns = append(p.conns, c, u)
			p.mu.Unlock()
			go func() { io.Copy(u, c); u.Close() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
	return p
}

func (p *e2eProxy) addr() string { return p.l.Addr().String() }

func (p *e2eProxy) cutAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *e2eProxy) refuse(on bool) {
	p.mu.Lock()
	p.refused = on
	p.mu.Unlock()
}

// TestE2EReplicationTLS: strata:// over TLS, verified with --tls-ca, while
// the target also requires NBD client certificates (--tls-ca on serve must
// not apply to shippers, who authenticate with the token). A plaintext
// shipper is refused.
func TestE2EReplicationTLS(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	pki := shortTempDir(t)
	writePKI(t, pki, true)
	tok := filepath.Join(pki, "token")
	os.WriteFile(tok, []byte("e2e-replication-token\n"), 0o600)
	bAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := startServer(t)
	b := startServer(t, "--replica-listen", bAddr, "--replica-token-file", tok,
		"--tls-cert", filepath.Join(pki, "server-cert.pem"), "--tls-key", filepath.Join(pki, "server-key.pem"),
		"--tls-ca", filepath.Join(pki, "ca-cert.pem"))
	a.createVolume("v", "8MiB")
	fillRandom(t, a.uri("v"), 0, 2<<20)
	to := "strata://" + bAddr
	if r := a.cli("replicate", "v", "--to", to, "--token-file", tok, "--tls-ca", filepath.Join(pki, "ca-cert.pem"), "--once"); r.code != 0 {
		t.Fatalf("replicate over TLS: %s", r)
	}
	sameContent(t, "head over TLS", a.uri("v"), b.uri("v"))
	if banner, _ := os.ReadFile(b.logs[0]); !strings.Contains(string(banner), "replication:    "+bAddr+" (TLS;") {
		t.Errorf("the serve banner does not show the TLS replication listener:\n%s", banner)
	}
	// Mismatches say what is wrong.
	checkOneLineError(t, "plaintext shipper, TLS listener", a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once"), "requires TLS", "--tls-ca")
	cAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startServer(t, "--replica-listen", cAddr, "--replica-token-file", tok)
	checkOneLineError(t, "TLS shipper, plaintext listener",
		a.cli("replicate", "v", "--to", "strata://"+cAddr, "--token-file", tok, "--tls-ca", filepath.Join(pki, "ca-cert.pem"), "--once"), "TLS handshake", "plaintext")
}

// TestE2EReplicationTargetFull: the replica site's data directory is a
// small tmpfs. A run that does not fit fails with a clear no-space error;
// the replica stays at a complete point of the source (no batch half
// applied), keeps serving, and the source keeps every unshipped record
// (through GC); once the target has room, a rerun ships the rest.
func TestE2EReplicationTargetFull(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "mount", "umount")
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as the replica site's data directory")
	}
	tok := filepath.Join(shortTempDir(t), "token")
	os.WriteFile(tok, []byte("e2e-replication-token\n"), 0o600)
	bDir := shortTempDir(t)
	if r := run(t, "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", bDir); r.code != 0 {
		t.Skipf("cannot mount a tmpfs here: %s", r)
	}
	t.Cleanup(func() { run(t, "umount", bDir) }) // after the daemon stops (cleanups run last first)
	bAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	a := startServer(t)
	b := startServerAt(t, bDir, nil, "--replica-listen", bAddr, "--replica-token-file", tok, "--segment-size", "8MiB")
	to := "strata://" + bAddr
	a.createVolume("v", "128MiB")
	fillRandom(t, a.uri("v"), 0, 4<<20)
	a.mustCLI("snapshot", "create", "v", "s1")
	if r := a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once"); r.code != 0 {
		t.Fatalf("first run: %s", r)
	}

	// 80 MiB of incompressible data do not fit in what is left of 64 MiB.
	fillRandom(t, a.uri("v"), 8<<20, 80<<20)
	a.mustCLI("snapshot", "create", "v", "s2")
	r := a.cli("replicate", "v", "--to", to, "--token-file", tok, "--once")
	// Progress lines, then the error.
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	last := lines[len(lines)-1]
	if r.code != 1 || !strings.HasPrefix(last, "strata: ") || !strings.Contains(last, "out of space") || !strings.Contains(last, "free") {
		t.Fatalf("target full: want exit 1 and a no-space error naming the free space: %s", r)
	}
	t.Logf("target full:\n%s", r.stderr)
	if !b.running() {
		t.Fatal("the replica site's daemon died when its disk filled up")
	}
	// The replica reads as the source did at the point it acknowledged.
	var vols []struct {
		Name    string `json:"name"`
		Replica *struct {
			Acked uint64 `json:"acked"`
		} `json:"replica"`
	}
	if err := json.Unmarshal([]byte(b.mustCLI("volume", "list", "--json")), &vols); err != nil {
		t.Fatal(err)
	}
	if len(vols) != 1 || vols[0].Replica == nil || vols[0].Replica.Acked == 0 {
		t.Fatalf("replica site volumes: %+v", vols)
	}
	acked := vols[0].Replica.Acked
	t.Logf("replica holds source seq %d", acked)
	sameContent(t, "replica at its last complete point", a.uri(fmt.Sprintf("v@seq:%d", acked)), b.uri("v"))
	if out := b.mustCLI("snapshot", "list", "v"); strings.Contains(out, "s2") {
		t.Fatalf("the replica lists s2, which did not arrive whole:\n%s", out)
	}

	// The source loses nothing: GC keeps what the target has not taken.
	if out := a.mustCLI("gc", "--now"); !strings.Contains(out, "kept for replication: ") || !strings.Contains(out, "of v not yet shipped to "+to) {
		t.Errorf("gc does not say what replication keeps:\n%s", out)
	}
	if r := run(t, "mount", "-o", "remount,size=512m", bDir); r.code != 0 {
		t.Fatalf("grow the tmpfs: %s", r)
	}
	res := shipJSON(t, a, "v", "--to", to, "--token-file", tok)
	if res.Start != acked {
		t.Errorf("the rerun started at seq %d, want the acknowledged %d", res.Start, acked)
	}
	sameContent(t, "s2 after the target got room", a.uri("v@s2"), b.uri("v@s2"))
	sameContent(t, "head after the target got room", a.uri("v"), b.uri("v"))
}
