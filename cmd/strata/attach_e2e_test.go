package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestE2EAttach: `strata attach --print` shows the nbd-client line; where
// the kernel has no nbd module (as on our build machines), attach and detach
// fail at once and say what is missing and how to do without it.
func TestE2EAttach(t *testing.T) {
	dir := shortTempDir(t)
	r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "attach", "vm1", "/dev/nbd3", "--connections", "2", "--print"}, timeout: 10 * time.Second})
	want := "nbd-client -unix " + dir + "/nbd.sock /dev/nbd3 -N vm1 -b 4096 -C 2 -t 30 -persist"
	if r.code != 0 || strings.TrimSpace(r.stdout) != want {
		t.Fatalf("attach --print: %s\nwant %q", r, want)
	}
	if nbdModulePresent() {
		t.Skip("this kernel has the nbd module: the missing-module messages cannot be checked here")
	}
	r = runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "attach", "vm1"}, timeout: 10 * time.Second})
	checkOneLineError(t, "attach without the nbd module", r, "nbd module", "modprobe nbd", "nbdfuse", "losetup")
	r = runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "detach", "/dev/nbd0"}, timeout: 10 * time.Second})
	checkOneLineError(t, "detach without the nbd module", r, "nbd module")
	r = runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "attach", "a/b"}, timeout: 10 * time.Second})
	checkOneLineError(t, "attach of a bad name", r, "invalid volume name")
}

// TestE2EUblk: where the kernel has no ublk driver (as on our build
// machines), `serve --ublk VOL` fails at once, before taking the data
// directory, and says what is missing and what to use instead.
func TestE2EUblk(t *testing.T) {
	if _, err := os.Stat("/dev/ublk-control"); err == nil {
		t.Skip("this kernel has ublk: the missing-driver message cannot be checked here (blockdev/ublk's TestServeReal runs instead)")
	}
	dir := filepath.Join(shortTempDir(t), "data")
	r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", dir, "serve", "--listen", "", "--ublk", "vol0"}, timeout: 10 * time.Second})
	checkOneLineError(t, "serve --ublk without ublk", r, "ublk", "modprobe ublk_drv", "NBD")
	if _, err := os.Stat(dir); err == nil {
		t.Fatal("serve --ublk created the data directory before failing")
	}
}
