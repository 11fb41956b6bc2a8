package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestE2EReadOnlyVolume: `volume set --read-only` serves the head read-only
// to new connections (READ_ONLY flag, writes refused) until set back.
func TestE2EReadOnlyVolume(t *testing.T) {
	need(t, "nbdinfo", "qemu-io")
	s := startServer(t)
	s.createVolume("golden", "8MiB")
	mustQemuIO(t, s.uri("golden"), "write -P 0x33 0 64k")
	s.mustCLI("volume", "set", "golden", "--read-only", "true")
	if out := mustRun(t, "nbdinfo", "--json", s.uri("golden")).stdout; !strings.Contains(out, `"is_read_only": true`) {
		t.Fatalf("read-only volume not advertised read-only:\n%s", out)
	}
	if r := run(t, "qemu-io", "-f", "raw", s.uri("golden"), "-c", "write -P 0x44 0 4k"); r.code == 0 && !strings.Contains(r.stdout+r.stderr, "failed") {
		t.Fatalf("write to a read-only volume succeeded: %s", r)
	}
	if r := run(t, "qemu-io", "-r", "-f", "raw", s.uri("golden"), "-c", "read -P 0x33 0 64k"); r.code != 0 {
		t.Fatalf("read of a read-only volume: %s", r)
	}
	if out := s.mustCLI("volume", "list"); !strings.Contains(out, "ro") {
		t.Fatalf("volume list does not show the read-only mode:\n%s", out)
	}
	s.mustCLI("volume", "set", "golden", "--read-only", "false")
	mustQemuIO(t, s.uri("golden"), "write -P 0x44 0 4k", "read -P 0x44 0 4k")
	r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", s.dir, "volume", "set", "golden", "--read-only", "maybe"}, timeout: 10 * time.Second})
	checkOneLineError(t, "volume set --read-only maybe", r, "true or false")
	r = runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", s.dir, "volume", "set", "golden"}, timeout: 10 * time.Second})
	checkOneLineError(t, "volume set with nothing", r, "nothing to set")
}

// TestE2EAllow: --allow keeps TCP clients outside the listed networks out.
func TestE2EAllow(t *testing.T) {
	need(t, "nbdinfo")
	port := strconv.Itoa(freePort(t))
	s := startServer(t, "--listen", "127.0.0.1:"+port, "--allow", "10.0.0.0/8,192.168.0.0/16")
	s.createVolume("a", "4MiB")
	if r := run(t, "nbdinfo", "nbd://127.0.0.1:"+port+"/a"); r.code == 0 {
		t.Fatalf("client outside --allow served: %s", r)
	}
	// Unix-socket clients are local: not subject to --allow.
	mustRun(t, "nbdinfo", s.uri("a"))
	s.stop()

	port2 := strconv.Itoa(freePort(t))
	s2 := startServer(t, "--listen", "127.0.0.1:"+port2, "--allow", "127.0.0.1")
	s2.createVolume("b", "4MiB")
	mustRun(t, "nbdinfo", "nbd://127.0.0.1:"+port2+"/b")

	dir := shortTempDir(t)
	r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "serve", "--listen", "", "--allow", "10.0.0.0/99"}, timeout: 10 * time.Second})
	checkOneLineError(t, "serve --allow with a bad network", r, "allow")
}

// TestE2EListenOffLoopback: NBD over TCP beyond loopback in the clear, to
// anyone, is refused unless asked for with --insecure; with an --allow
// list it is served; the banner says who may connect.
func TestE2EListenOffLoopback(t *testing.T) {
	need(t, "nbdinfo")
	port := strconv.Itoa(freePort(t))
	dir := shortTempDir(t)
	r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "serve", "--listen", "0.0.0.0:" + port}, timeout: 10 * time.Second})
	checkOneLineError(t, "serve --listen 0.0.0.0 in the clear", r, "off loopback", "--tls-cert", "--allow", "--insecure")

	banner := func(s *server) string {
		t.Helper()
		b, err := os.ReadFile(s.logs[len(s.logs)-2]) // the run's stdout
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	s := startServer(t, "--listen", "0.0.0.0:"+port, "--insecure")
	s.createVolume("a", "4MiB")
	mustRun(t, "nbdinfo", "nbd://127.0.0.1:"+port+"/a")
	if b := banner(s); !strings.Contains(b, "0.0.0.0:"+port+" (any host that reaches it, plaintext)") {
		t.Errorf("banner with --insecure does not say who may connect:\n%s", b)
	}
	s.stop()

	s = startServer(t, "--listen", "0.0.0.0:"+port, "--allow", "127.0.0.1")
	s.createVolume("b", "4MiB")
	mustRun(t, "nbdinfo", "nbd://127.0.0.1:"+port+"/b")
	if b := banner(s); !strings.Contains(b, "(clients from 127.0.0.1/32, plaintext)") {
		t.Errorf("banner with --allow does not say who may connect:\n%s", b)
	}
	s.stop()

	s = startServer(t, "--listen", "127.0.0.1:"+port)
	if b := banner(s); !strings.Contains(b, "(this host only, plaintext)") {
		t.Errorf("banner on loopback does not say who may connect:\n%s", b)
	}
}
