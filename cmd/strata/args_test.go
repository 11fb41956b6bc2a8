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
