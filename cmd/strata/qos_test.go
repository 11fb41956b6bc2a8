package main

import (
	"testing"

	"github.com/strata-storage/strata/control"
)

func TestParseLimit(t *testing.T) {
	for _, c := range []struct {
		in   string
		bw   bool
		want int64
		ok   bool
	}{
		{"500", false, 500, true},
		{"none", false, 0, true},
		{"0", true, 0, true},
		{"100MiB/s", true, 100 << 20, true},
		{"512K", true, 512 << 10, true},
		{"NONE", true, 0, true},
		{"-1", false, 0, false},
		{"5k", false, 0, false},
		{"fast", true, 0, false},
	} {
		got, err := parseLimit(c.in, c.bw)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseLimit(%q, bw %v) = %d, %v; want %d, ok %v", c.in, c.bw, got, err, c.want, c.ok)
		}
	}
}

func TestQoSText(t *testing.T) {
	if got := qosText(control.QoS{Burst: 1}, true); got != "-" {
		t.Errorf("no limits: %q", got)
	}
	q := control.QoS{IOPS: 500, WriteIOPS: 200, ReadBW: 50 << 20, Burst: 0.5}
	if got, want := qosText(q, true), "iops 500, write-iops 200, read-bw 50 MiB/s, burst 0.5s"; got != want {
		t.Errorf("qosText = %q, want %q", got, want)
	}
}
