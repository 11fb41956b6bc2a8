package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/daemon"
	"github.com/strata-storage/strata/internal/units"
)

// qosLimitFlags are the names of the limit flags (without a prefix) in
// control.QoSChange's order, and whether each is a bandwidth.
var qosLimitFlags = []struct {
	name string
	bw   bool
}{{"iops-limit", false}, {"read-iops-limit", false}, {"write-iops-limit", false},
	{"bw-limit", true}, {"read-bw-limit", true}, {"write-bw-limit", true}}

// qosFlags are the QoS flags of volume set (prefix "") and of serve's pool
// default (prefix "default-").
func qosFlags(prefix string) []cli.Flag {
	var fl []cli.Flag
	for _, f := range qosLimitFlags {
		dir := strings.TrimSuffix(strings.TrimSuffix(f.name, "iops-limit"), "bw-limit")
		what := map[bool]string{false: "operations a second, e.g. 500", true: "bytes a second, e.g. 100MiB/s"}[f.bw]
		scope := map[string]string{"": "reads and writes together", "read-": "reads", "write-": "writes, trims and zeroes"}[dir]
		if f.bw {
			scope = map[string]string{"": "bytes read and written together", "read-": "bytes read", "write-": "bytes written"}[dir]
		}
		fl = append(fl, &cli.StringFlag{Name: prefix + f.name, Usage: fmt.Sprintf("limit on %s: %s (0 or none: no limit)", scope, what)})
	}
	return append(fl, &cli.StringFlag{Name: prefix + "burst", Usage: fmt.Sprintf("seconds of unused allowance a limit keeps for bursts (e.g. 0.5, 2s; 0: strict pacing; default %gs)", daemon.DefaultBurst)})
}

// qosChange reads the QoS flags given (nil: none).
func qosChange(c *cli.Context, prefix string) (*control.QoSChange, error) {
	var ch control.QoSChange
	set := false
	for i, to := range []**int64{&ch.IOPS, &ch.ReadIOPS, &ch.WriteIOPS, &ch.BW, &ch.ReadBW, &ch.WriteBW} {
		f := qosLimitFlags[i]
		if !c.IsSet(prefix + f.name) {
			continue
		}
		v, err := parseLimit(c.String(prefix+f.name), f.bw)
		if err != nil {
			return nil, fmt.Errorf("--%s%s: %w", prefix, f.name, err)
		}
		*to, set = &v, true
	}
	if c.IsSet(prefix + "burst") {
		s := strings.TrimSuffix(strings.TrimSpace(c.String(prefix+"burst")), "s")
		b, err := strconv.ParseFloat(s, 64)
		if err != nil || b < 0 || b > 3600 {
			return nil, fmt.Errorf("--%sburst %q: give seconds from 0 to 3600, e.g. 1 or 0.5s", prefix, c.String(prefix+"burst"))
		}
		ch.Burst, set = &b, true
	}
	if !set {
		return nil, nil
	}
	return &ch, nil
}

// parseLimit reads "500", "100MiB/s", "0" or "none".
func parseLimit(s string, bw bool) (int64, error) {
	s = strings.TrimSpace(s)
	if strings.EqualFold(s, "none") {
		return 0, nil
	}
	if bw {
		n, err := units.ParseSize(strings.TrimSuffix(s, "/s"))
		if err != nil {
			return 0, fmt.Errorf("%q is not a rate in bytes a second (e.g. 100MiB/s, 512KiB/s; 0 or none: no limit)", s)
		}
		return n, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a number of operations a second (e.g. 500; 0 or none: no limit)", s)
	}
	return n, nil
}

// qosText is a volume's limits in one line ("-": none).
func qosText(q control.QoS, ok bool) string {
	if !ok || !q.Limited() {
		return "-"
	}
	var parts []string
	for i, v := range []int64{q.IOPS, q.ReadIOPS, q.WriteIOPS, q.BW, q.ReadBW, q.WriteBW} {
		if v == 0 {
			continue
		}
		name := strings.TrimSuffix(qosLimitFlags[i].name, "-limit")
		if qosLimitFlags[i].bw {
			parts = append(parts, name+" "+units.FormatSize(v)+"/s")
		} else {
			parts = append(parts, fmt.Sprintf("%s %d", name, v))
		}
	}
	return strings.Join(append(parts, fmt.Sprintf("burst %gs", q.Burst)), ", ")
}
