package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
)

// The capacity and sprawl report through the real CLI and daemon:
// volumes created with owners, labels and expiry, written with nbdcopy,
// aged 40 days on the daemon's test clock (STRATA_TEST_CLOCK_FILE); the
// report finds the idle and the expired ones, what it says deleting one
// frees is what df then shows freed, and a restart keeps it all.
func TestE2EReport(t *testing.T) {
	need(t, "nbdcopy")
	clock := filepath.Join(t.TempDir(), "clock")
	setClock := func(d time.Duration) {
		t.Helper()
		if err := os.WriteFile(clock, []byte(d.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	setClock(0)
	t.Setenv(testClockEnv, clock)
	s := startServer(t)
	s.mustCLI("volume", "create", "web", "--size", "16MiB", "--owner", "alice", "--label", "team=web", "--expires", "400d")
	s.mustCLI("volume", "create", "scratch", "--size", "16MiB", "--owner", "bob", "--label", "team=ci", "--label", "tmp=yes", "--expires", "10d")
	s.mustCLI("volume", "create", "old", "--size", "16MiB", "--label", "team=db")
	s.mustCLI("volume", "set", "scratch", "--unlabel", "tmp")
	data := filepath.Join(s.dir, "data")
	copyIn := func(vol string, mib int) {
		t.Helper()
		b := make([]byte, mib<<20)
		for i := range b {
			b[i] = byte(i*7 + mib)
		}
		if err := os.WriteFile(data, b, 0o600); err != nil {
			t.Fatal(err)
		}
		mustRun(t, "nbdcopy", "--flush", data, s.uri(vol))
	}
	copyIn("web", 2)
	copyIn("scratch", 4)
	copyIn("old", 3)
	report := func(args ...string) control.Report {
		t.Helper()
		var rep control.Report
		if err := json.Unmarshal([]byte(s.mustCLI(append([]string{"report", "--json"}, args...)...)), &rep); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	if rep := report(); len(rep.Idle) != 0 || len(rep.Expired) != 0 {
		t.Fatalf("fresh volumes idle %v, expired %v", rep.Idle, rep.Expired)
	}
	setClock(40 * 24 * time.Hour)
	copyIn("web", 1)
	rep := report()
	if !slices.Equal(slices.Sorted(slices.Values(rep.Idle)), []string{"old", "scratch"}) || !slices.Equal(rep.Expired, []string{"scratch"}) {
		t.Fatalf("40 days on: idle %v, expired %v; want [old scratch] and [scratch]", rep.Idle, rep.Expired)
	}
	by := map[string]control.VolumeReport{}
	for _, v := range rep.Volumes {
		by[v.Name] = v
	}
	if w := by["web"]; w.Owner != "alice" || w.LastWrite.Before(time.Now().Add(39*24*time.Hour)) || w.Written7d != 1<<20 || w.Idle {
		t.Fatalf("web: %+v", w)
	}
	if sc := by["scratch"]; sc.Reclaimable != 4<<20 || sc.Owner != "bob" || len(sc.Labels) != 1 || sc.Labels["team"] != "ci" {
		t.Fatalf("scratch: %+v", sc)
	}
	if out := s.mustCLI("volume", "list", "--label", "team=ci"); !strings.Contains(out, "scratch") || strings.Contains(out, "web") || strings.Contains(out, "old ") {
		t.Fatalf("volume list --label team=ci:\n%s", out)
	}
	text := s.mustCLI("report")
	for _, want := range []string{"idle (not attached or written for 30 days): 2, deleting them frees 7 MiB", "expired: 1, deleting them frees 4 MiB", "capacity:"} {
		if !strings.Contains(text, want) {
			t.Fatalf("strata report lacks %q:\n%s", want, text)
		}
	}
	if rep := report("--idle-days", "50"); len(rep.Idle) != 0 {
		t.Fatalf("--idle-days 50: idle %v", rep.Idle)
	}

	// A restart keeps owners, labels, expiry and activity.
	s.restart()
	rep2 := report()
	if !slices.Equal(rep2.Idle, rep.Idle) || !slices.Equal(rep2.Expired, rep.Expired) {
		t.Fatalf("after a restart: idle %v, expired %v", rep2.Idle, rep2.Expired)
	}
	for _, v := range rep2.Volumes {
		if v.Name == "web" && (!v.LastWrite.Equal(by["web"].LastWrite) || v.Owner != "alice") {
			t.Fatalf("web after a restart: %+v, before: %+v", v, by["web"])
		}
	}

	// Deleting the expired volume frees what the report said.
	df := func() control.Space {
		t.Helper()
		var sp control.Space
		if err := json.Unmarshal([]byte(s.mustCLI("df", "--json")), &sp); err != nil {
			t.Fatal(err)
		}
		return sp
	}
	before := df()
	s.mustCLI("volume", "delete", "scratch")
	if freed := before.LiveBytes - df().LiveBytes; freed != by["scratch"].Reclaimable {
		t.Fatalf("deleting scratch freed %d bytes, the report said %d", freed, by["scratch"].Reclaimable)
	}
	if out := s.mustCLI("volume", "list", "--json"); strings.Contains(out, "bob") {
		t.Fatalf("the deleted volume's owner is still listed:\n%s", out)
	}
}
