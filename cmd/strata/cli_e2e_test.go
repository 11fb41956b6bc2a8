package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

type volJSON struct {
	Name     string `json:"name"`
	Size     int64  `json:"size"`
	Written  int64  `json:"written"`
	Attached int64  `json:"attached"`
}

func (s *server) volumes() map[string]volJSON {
	s.t.Helper()
	out := s.mustCLI("volume", "list", "--json")
	var vs []volJSON
	if err := json.Unmarshal([]byte(out), &vs); err != nil {
		s.t.Fatalf("volume list --json: %v\n%s", err, out)
	}
	m := map[string]volJSON{}
	for _, v := range vs {
		m[v.Name] = v
	}
	return m
}

// hasExample: the help shows a concrete command line, under an "Example"
// heading or as a runnable `strata ...` line without placeholders.
func hasExample(help string) bool {
	if strings.Contains(strings.ToLower(help), "example") {
		return true
	}
	for _, l := range strings.Split(help, "\n") {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, "strata ") && strings.Contains(l, " --") && !strings.ContainsAny(l, "[]") &&
			!regexp.MustCompile(`\b[A-Z]{3,}\b`).MatchString(l) {
			return true
		}
	}
	return false
}

func isSocket(p string) bool {
	st, err := os.Lstat(p)
	return err == nil && st.Mode()&fs.ModeSocket != 0
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

// waitStatus polls `strata status` with the given global flags until it
// answers (true) or the timeout passes.
func waitStatus(t *testing.T, p *bgProc, timeout time.Duration, global ...string) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && !p.exited() {
		r := runSpec(t, cmdSpec{name: strataBin, args: append(global, "status"), timeout: 10 * time.Second})
		if r.code == 0 {
			return true
		}
		time.Sleep(30 * time.Millisecond)
	}
	return false
}

// TestE2ECLI checks the strata command line as a user meets it: help,
// locking, validation messages, volume lifecycle with attached clients,
// the ways to find the daemon, and a clean SIGTERM.
func TestE2ECLI(t *testing.T) {
	s := startServer(t)

	t.Run("help", func(t *testing.T) {
		s.on(t)
		for _, path := range [][]string{{}, {"serve"}, {"volume"}, {"volume", "create"}, {"volume", "list"},
			{"volume", "delete"}, {"volume", "resize"}, {"status"}} {
			r := runSpec(t, cmdSpec{name: strataBin, args: append(append([]string{}, path...), "--help"), timeout: 10 * time.Second})
			name := strings.Join(append([]string{"strata"}, path...), " ") + " --help"
			if r.code != 0 {
				t.Errorf("%s: %s", name, r)
				continue
			}
			if !hasExample(r.stdout) {
				t.Errorf("%s shows no example:\n%s", name, r.stdout)
			}
		}
	})

	t.Run("second serve", func(t *testing.T) {
		s.on(t)
		r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", s.dir, "serve", "--listen", ""}, timeout: 10 * time.Second})
		checkOneLineError(t, "second strata serve on the same DIR", r, fmt.Sprintf("pid %d", s.pid()))
		if !s.running() {
			t.Fatal("the first serve stopped")
		}
		s.mustCLI("status")
	})

	t.Run("control socket mode", func(t *testing.T) {
		s.on(t)
		st, err := os.Stat(filepath.Join(s.dir, "control.sock"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != 0o600 {
			t.Errorf("control.sock mode %v, want a socket with mode 0600 (only its owner may control the daemon)", st.Mode())
		}
	})

	t.Run("bad names", func(t *testing.T) {
		s.on(t)
		for _, name := range []string{"a/b", ".x", strings.Repeat("n", 65)} {
			r := s.cli("volume", "create", name, "--size", "64MiB")
			checkOneLineError(t, "volume create "+name, r, "letters, digits", "64 characters")
		}
	})

	t.Run("bad sizes", func(t *testing.T) {
		s.on(t)
		for _, tc := range []struct{ size, want string }{
			{"1X", "KiB, MiB, GiB"},
			{"0", "greater than zero"},
			{"1000", "multiple of 4 KiB"},
		} {
			r := s.cli("volume", "create", "sz", "--size", tc.size)
			checkOneLineError(t, "volume create --size "+tc.size, r, tc.want)
		}
		if _, ok := s.volumes()["sz"]; ok {
			t.Error("a volume with a bad size was created")
		}
	})

	t.Run("create", func(t *testing.T) {
		s.on(t)
		out := s.mustCLI("volume", "create", "late", "--size", "1G") // flag after the name
		if !strings.Contains(out, "created volume late (1 GiB)") {
			t.Errorf("volume create late --size 1G printed %q", out)
		}
		if v := s.volumes()["late"]; v.Size != 1<<30 {
			t.Errorf("volume late: %+v, want size 1 GiB", v)
		}
		r := s.cli("volume", "create", "late", "--size", "2G")
		checkOneLineError(t, "duplicate volume create", r, "late", "exists")
		if v := s.volumes()["late"]; v.Size != 1<<30 {
			t.Errorf("duplicate create changed the volume: %+v", v)
		}
	})

	t.Run("written", func(t *testing.T) {
		s.on(t)
		need(t, "qemu-io")
		s.createVolume("wr", "64MiB")
		if v := s.volumes()["wr"]; v.Written != 0 {
			t.Fatalf("new volume: written %d, want 0", v.Written)
		}
		mustQemuIO(t, s.uri("wr"), "write -P 0x42 8M 1M")
		if v := s.volumes()["wr"]; v.Written != 1<<20 {
			t.Errorf("after writing 1 MiB: written %d, want %d", v.Written, 1<<20)
		}
		table := s.mustCLI("volume", "list")
		if !regexp.MustCompile(`(?m)^wr\s+64 MiB\s+1 MiB\s`).MatchString(table) {
			t.Errorf("volume list does not show wr with 64 MiB size and 1 MiB written:\n%s", table)
		}
	})

	t.Run("resize", func(t *testing.T) {
		s.on(t)
		need(t, "qemu-io", "nbdinfo")
		s.createVolume("rs", "64MiB")
		mustQemuIO(t, s.uri("rs"), "write -P 0x61 60M 1M")
		out := s.mustCLI("volume", "resize", "rs", "--size", "128MiB")
		if v := s.volumes()["rs"]; v.Size != 128<<20 {
			t.Fatalf("after grow to 128MiB (%q): %+v", out, v)
		}
		if sz := strings.TrimSpace(mustRun(t, "nbdinfo", "--size", s.uri("rs")).stdout); sz != fmt.Sprint(128<<20) {
			t.Errorf("nbdinfo --size after grow: %s", sz)
		}
		mustQemuIO(t, s.uri("rs"), "read -P 0x61 60M 1M", "write -P 0x62 100M 4k", "read -P 0 127M 1M")
		r := s.cli("volume", "resize", "rs", "--size", "32MiB")
		checkOneLineError(t, "shrink over written data", r, "--force")
		if v := s.volumes()["rs"]; v.Size != 128<<20 || v.Written != 1<<20+4096 {
			t.Errorf("a refused shrink changed the volume: %+v", v)
		}
		s.mustCLI("volume", "resize", "rs", "--size", "32MiB", "--force")
		v := s.volumes()["rs"]
		if v.Size != 32<<20 || v.Written != 0 {
			t.Errorf("after forced shrink to 32MiB: %+v, want size 32 MiB and written 0", v)
		}
		// Growing back exposes zeros, not the discarded data.
		s.mustCLI("volume", "resize", "rs", "--size", "64MiB")
		mustQemuIO(t, s.uri("rs"), "read -P 0 60M 1M")
	})

	t.Run("delete attached", func(t *testing.T) {
		s.on(t)
		need(t, "nbdsh", "qemu-io")
		needPython(t)
		s.createVolume("att", "64MiB")
		mustQemuIO(t, s.uri("att"), "write -P 0x99 0 1M")
		trig := filepath.Join(t.TempDir(), "go")
		script := fmt.Sprintf(`
import os, time
print("ready", flush=True)
while not os.path.exists(%q):
    time.sleep(0.02)
try:
    h.pread(4096, 0)
    print("read-ok", flush=True)
except nbd.Error as e:
    print("read-failed:", e, flush=True)
time.sleep(3600)
`, trig)
		needPython(t)
		p := startBGEnv(t, systemPythonEnv(), "nbdsh", "-u", s.uri("att"), "-c", script)
		if err := p.waitOutput("ready", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if v := s.volumes()["att"]; v.Attached != 1 {
			t.Errorf("volume list: att attached %d, want 1", v.Attached)
		}
		r := s.cli("volume", "delete", "att")
		checkOneLineError(t, "delete of an attached volume", r, "att")
		if _, ok := s.volumes()["att"]; !ok {
			t.Fatal("refused delete removed the volume")
		}
		out := s.mustCLI("volume", "delete", "att", "--force")
		if !strings.Contains(out, "disconnected 1 client") || !strings.Contains(out, "deleted volume att") {
			t.Errorf("volume delete --force printed %q", out)
		}
		if _, ok := s.volumes()["att"]; ok {
			t.Error("volume att still listed after delete --force")
		}
		if err := os.WriteFile(trig, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := p.waitOutput("read-", 30*time.Second); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.output(), "read-failed") {
			t.Errorf("the nbdsh client can still read a force-deleted volume:\n%s", p.output())
		}
		if _, err := os.Stat("/usr/bin/nbdinfo"); err == nil {
			if r := run(t, "nbdinfo", s.uri("att")); r.code == 0 {
				t.Errorf("nbdinfo of a deleted volume succeeded:\n%s", r)
			}
		}
		// A new volume of the same name starts empty.
		s.createVolume("att", "64MiB")
		if v := s.volumes()["att"]; v.Written != 0 {
			t.Errorf("re-created volume att: written %d, want 0", v.Written)
		}
		mustQemuIO(t, s.uri("att"), "read -P 0 0 1M")
	})

	t.Run("usage errors", func(t *testing.T) {
		s.on(t)
		r := s.cli("volume", "create", "u1", "--size", "1G", "--bogus")
		checkOneLineError(t, "unknown flag", r, "bogus", "--help")
		r = s.cli("volume", "create", "--size", "1G")
		checkOneLineError(t, "missing NAME", r, "NAME", "--help")
		r = s.cli("volume", "create", "u2")
		checkOneLineError(t, "missing --size", r, "size")
		if r.stdout != "" {
			t.Errorf("usage error printed help on stdout:\n%s", r.stdout)
		}
	})

	t.Run("no server", func(t *testing.T) {
		s.on(t)
		empty := shortTempDir(t)
		for _, args := range [][]string{{"status"}, {"volume", "list"}, {"volume", "create", "x", "--size", "1G"}} {
			r := runSpec(t, cmdSpec{name: strataBin, args: append([]string{"--data", empty}, args...), timeout: 10 * time.Second})
			checkOneLineError(t, "strata "+strings.Join(args, " ")+" without a server", r, "no strata serve answers")
		}
	})

	t.Run("STRATA_DATA", func(t *testing.T) {
		s.on(t)
		r := runSpec(t, cmdSpec{name: strataBin, args: []string{"volume", "list", "--json"},
			env: []string{"STRATA_DATA=" + s.dir, "STRATA_CONTROL="}, timeout: 10 * time.Second})
		if r.code != 0 || !strings.Contains(r.stdout, `"late"`) {
			t.Errorf("STRATA_DATA=%s strata volume list --json: %s", s.dir, r)
		}
	})

	t.Run("control socket outside DIR", func(t *testing.T) {
		s.on(t)
		csock := filepath.Join(shortTempDir(t), "ctl.sock")
		cs := startServerWith(t, []string{"--control-socket", csock})
		if !isSocket(csock) {
			t.Fatalf("%s is not a socket", csock)
		}
		if exists(filepath.Join(cs.dir, "control.sock")) {
			t.Errorf("DIR/control.sock exists although --control-socket put it elsewhere")
		}
		cs.mustCLI("volume", "create", "c1", "--size", "64MiB") // --data DIR --control-socket S
		r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--control-socket", csock, "volume", "list"}, timeout: 10 * time.Second})
		if r.code != 0 || !strings.Contains(r.stdout, "c1") {
			t.Errorf("strata --control-socket S volume list: %s", r)
		}
		r = runSpec(t, cmdSpec{name: strataBin, args: []string{"volume", "list"}, env: []string{"STRATA_CONTROL=" + csock}, timeout: 10 * time.Second})
		if r.code != 0 || !strings.Contains(r.stdout, "c1") {
			t.Errorf("STRATA_CONTROL=S strata volume list: %s", r)
		}
		if code := cs.stop(); code != 0 {
			t.Errorf("serve exited %d on SIGTERM", code)
		}
		if exists(csock) {
			t.Errorf("%s left behind after SIGTERM", csock)
		}
	})

	t.Run("flags after serve", func(t *testing.T) {
		s.on(t)
		// serve --help shows `strata serve --data /var/lib/strata`.
		dir := shortTempDir(t)
		csock := filepath.Join(shortTempDir(t), "c.sock")
		p := startBG(t, strataBin, "serve", "--data", dir, "--control-socket", csock, "--listen", "")
		if !waitStatus(t, p, 10*time.Second, "--control-socket", csock) {
			t.Fatalf("strata serve --data DIR --control-socket S --listen '' (as in strata serve --help) did not start:\n%s", p.output())
		}
		if !isSocket(filepath.Join(dir, "nbd.sock")) {
			t.Errorf("strata serve --data %s did not serve in %s", dir, dir)
		}
		if code := p.stop(10 * time.Second); code != 0 {
			t.Errorf("serve exited %d on SIGTERM:\n%s", code, p.output())
		}
	})

	t.Run("delete under load", func(t *testing.T) {
		s.on(t)
		need(t, "fio", "qemu-io")
		s.createVolume("load", "64MiB")
		f := startBG(t, "fio", "--name=load", "--ioengine=nbd", "--uri="+s.uri("load"), "--rw=randrw",
			"--bs=64k", "--iodepth=32", "--numjobs=2", "--size=32M", "--offset_increment=32M",
			"--time_based", "--runtime=60", "--fsync=4", "--directory="+t.TempDir())
		// Wait until both fio jobs are connected (fio starts slowly on a
		// loaded machine).
		deadline := time.Now().Add(20 * time.Second)
		for {
			var st control.Status
			if err := json.Unmarshal([]byte(s.mustCLI("status", "--json")), &st); err != nil {
				t.Fatal(err)
			}
			if len(st.Connections) >= 2 {
				break
			}
			if f.exited() || time.Now().After(deadline) {
				t.Fatalf("fio did not connect its 2 jobs (%d connections):\n%s", len(st.Connections), f.output())
			}
			time.Sleep(50 * time.Millisecond)
		}
		out := s.mustCLI("volume", "delete", "load", "--force")
		if !strings.Contains(out, "disconnected 2 client") {
			t.Errorf("volume delete --force under load printed %q, want 2 clients disconnected", out)
		}
		select {
		case <-f.done:
		case <-time.After(20 * time.Second):
			t.Errorf("fio still running 20 s after its volume was force-deleted")
		}
		s.mustCLI("status")
		s.createVolume("load", "64MiB")
		mustQemuIO(t, s.uri("load"), "read -P 0 0 64M")
	})

	t.Run("sigterm", func(t *testing.T) {
		s.on(t)
		// With clients attached, one of them busy: SIGTERM still stops the
		// server at once and cleanly, and a write acknowledged without a
		// flush survives (the journal is synced on the way out).
		var pending *bgProc
		if _, err := exec.LookPath("nbdsh"); err == nil && exists(python3) {
			s.createVolume("term", "64MiB")
			pending = startBGEnv(t, systemPythonEnv(), "nbdsh", "-u", s.uri("term"), "-c",
				`import time; h.pwrite(b"\x5c" * 65536, 1 << 20); print("written", flush=True); time.sleep(3600)`)
			if err := pending.waitOutput("written", 30*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := exec.LookPath("fio"); err == nil {
			f := startBG(t, "fio", "--name=busy", "--ioengine=nbd", "--uri="+s.uri("wr"), "--rw=randwrite",
				"--bs=64k", "--iodepth=16", "--offset=16M", "--size=32M", "--time_based", "--runtime=60",
				"--directory="+t.TempDir())
			time.Sleep(time.Second)
			if f.exited() {
				t.Fatalf("fio stopped early:\n%s", f.output())
			}
		}
		start := time.Now()
		if code := s.stop(); code != 0 {
			t.Fatalf("strata serve exited %d on SIGTERM", code)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("strata serve took %s to stop on SIGTERM", d)
		}
		for _, f := range []string{"nbd.sock", "control.sock"} {
			if exists(filepath.Join(s.dir, f)) {
				t.Errorf("%s left behind after SIGTERM", f)
			}
		}
		s.start() // the lock is free at once
		vols := s.volumes()
		if _, ok := vols["late"]; !ok {
			t.Errorf("volume late missing after restart: %v", vols)
		}
		// What deletes and forced shrinks discarded stays discarded.
		if v, ok := vols["rs"]; ok && (v.Size != 64<<20 || v.Written != 0) {
			t.Errorf("after restart rs is %+v, want size 64 MiB, written 0", v)
		}
		if v, ok := vols["att"]; ok && v.Written != 0 {
			t.Errorf("after restart re-created att has written %d, want 0", v.Written)
		}
		if _, err := exec.LookPath("qemu-io"); err == nil {
			if _, ok := vols["rs"]; ok {
				mustQemuIO(t, s.uri("rs"), "read -P 0 60M 1M")
			}
			if _, ok := vols["att"]; ok {
				mustQemuIO(t, s.uri("att"), "read -P 0 0 1M")
			}
			if _, ok := vols["wr"]; ok {
				mustQemuIO(t, s.uri("wr"), "read -P 0x42 8M 1M")
			}
			if pending != nil {
				mustQemuIO(t, s.uri("term"), "read -P 0x5c 1M 64k", "read -P 0 0 1M")
			}
		}
	})
}
