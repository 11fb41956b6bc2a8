package main

import (
	"strings"
	"testing"
)

func TestPermuteArgs(t *testing.T) {
	app := newApp()
	for _, tc := range []struct{ in, want string }{
		{"strata volume create vol0 --size 10GiB", "strata volume create --size 10GiB vol0"},
		{"strata volume create --size 1G vol0", "strata volume create --size 1G vol0"},
		{"strata serve --data /d --listen ''", "strata --data /d serve --listen ''"},
		{"strata --data /d volume list --json", "strata --data /d volume list --json"},
		{"strata volume delete v --force --data=/x", "strata --data=/x volume delete --force v"},
		{"strata volume resize v -s 2G -f", "strata volume resize -s 2G -f v"},
		{"strata status --control-socket /c.sock", "strata --control-socket /c.sock status"},
		{"strata volume create -- -odd", "strata volume create -- -odd"},
	} {
		got := strings.Join(permuteArgs(app, strings.Fields(tc.in)), " ")
		if got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"4096": 4096, "10GiB": 10 << 30, "10G": 10 << 30, "10gb": 10 << 30, "1.5M": 3 << 19,
		"512B": 512, "2T": 2 << 40, "2 TiB": 2 << 40, "64K": 64 << 10, "1KiB": 1024,
	} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "G", "1X", "-1", "1.2.3G", "0.3B", "99999999999T", "ten"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) accepted", bad)
		}
	}
	for n, want := range map[int64]string{512: "512 B", 1 << 30: "1 GiB", 3 << 19: "1.5 MiB", 10 << 40: "10 TiB"} {
		if got := formatSize(n); got != want {
			t.Errorf("formatSize(%d) = %q, want %q", n, got, want)
		}
	}
}
