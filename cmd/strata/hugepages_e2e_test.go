package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestE2EHugePages checks that `strata serve` runs with glibc's huge-page
// tunable where the kernel gives huge pages only on request (THP
// "madvise"), in the same process (the PID a service manager knows), and
// serves as usual; and that an admin's setting is left alone.
func TestE2EHugePages(t *testing.T) {
	mode, err := os.ReadFile(thpEnabled)
	if err != nil || !strings.Contains(string(mode), "[madvise]") {
		t.Skipf("transparent huge pages are not in madvise mode here (%q, %v): serve does not start again", mode, err)
	}
	environ := func(s *server) string {
		t.Helper()
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", s.pid()))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range bytes.Split(b, []byte{0}) {
			if v, ok := bytes.CutPrefix(kv, []byte("GLIBC_TUNABLES=")); ok {
				return string(v)
			}
		}
		return ""
	}

	t.Setenv("GLIBC_TUNABLES", "")
	s := startServer(t, "--volume", "vol0=64MiB")
	if got := environ(s); got != "glibc.malloc.hugetlb=1" {
		t.Fatalf("serve's GLIBC_TUNABLES = %q, want glibc.malloc.hugetlb=1", got)
	}
	if out := s.mustCLI("volume", "list"); !strings.Contains(out, "vol0") {
		t.Fatalf("volume list after the restart with huge pages:\n%s", out)
	}
	if code := s.stop(); code != 0 {
		t.Fatalf("strata serve exited %d", code)
	}

	t.Setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")
	s = startServer(t, "--volume", "vol0=64MiB")
	if got := environ(s); got != "glibc.malloc.hugetlb=0" {
		t.Fatalf("serve changed the admin's GLIBC_TUNABLES to %q", got)
	}
}
