package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// fioStats is what the QoS test reads from fio's JSON: the jobs' totals
// (--group_reporting) over the measured time, ramp excluded.
type fioStats struct {
	ReadIOPS, WriteIOPS float64
	WriteBW             float64 // bytes a second
}

// qosFio is a fio process started by startQoSFio.
type qosFio struct {
	args []string
	cmd  *exec.Cmd
	out  bytes.Buffer
	errb bytes.Buffer
	stop context.CancelFunc
}

// startQoSFio starts fio with the nbd engine against uri, with JSON output;
// wait collects it on the test's goroutine.
func startQoSFio(t *testing.T, uri string, args ...string) *qosFio {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	r := &qosFio{args: append([]string{"--name=qos", "--ioengine=nbd", "--uri=" + uri, "--output-format=json", "--group_reporting"}, args...), stop: cancel}
	r.cmd = exec.CommandContext(ctx, "fio", r.args...)
	r.cmd.Dir = t.TempDir()
	r.cmd.Stdout, r.cmd.Stderr = &r.out, &r.errb
	if err := r.cmd.Start(); err != nil {
		cancel()
		t.Fatalf("fio: %v", err)
	}
	t.Cleanup(func() { cancel(); _ = r.cmd.Wait() })
	return r
}

func (r *qosFio) wait(t *testing.T) fioStats {
	t.Helper()
	err := r.cmd.Wait()
	r.stop()
	if err != nil {
		t.Fatalf("fio %s: %v\n%s\n%s", quoteArgs(r.args), err, r.out.String(), r.errb.String())
	}
	var rep struct {
		Jobs []struct {
			Error int `json:"error"`
			Read  struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
			Write struct {
				IOPS float64 `json:"iops"`
				BW   float64 `json:"bw_bytes"`
			} `json:"write"`
		} `json:"jobs"`
	}
	text := r.out.String()
	if i := strings.IndexByte(text, '{'); i > 0 {
		text = text[i:] // fio's notes come before the JSON
	}
	if err := json.Unmarshal([]byte(text), &rep); err != nil || len(rep.Jobs) != 1 || rep.Jobs[0].Error != 0 {
		t.Fatalf("fio %s: %v, report:\n%s\n%s", quoteArgs(r.args), err, r.out.String(), r.errb.String())
	}
	j := rep.Jobs[0]
	return fioStats{ReadIOPS: j.Read.IOPS, WriteIOPS: j.Write.IOPS, WriteBW: j.Write.BW}
}

// within fails t unless got is within 10% of want.
func withinTenth(t *testing.T, what string, got, want float64) {
	t.Helper()
	t.Logf("%s: %.1f (limit %.0f)", what, got, want)
	if got < 0.9*want || got > 1.1*want {
		t.Errorf("%s: %.1f, want %.0f ± 10%%", what, got, want)
	}
}

// TestE2EQoS drives volumes with per-volume limits with fio's nbd engine:
// the limits hold within 10% at QD1 and QD32, for IOPS and bandwidth,
// across two connections, change on open connections, and an unlimited
// volume keeps its throughput while a limited one is hammered.
func TestE2EQoS(t *testing.T) {
	need(t, "fio")
	s := startServer(t)
	for _, v := range []string{"qd1", "qd32", "bw", "mc", "live", "free"} {
		s.createVolume(v, "64MiB")
	}
	// Each measured run: 1 s of ramp (it spends the burst allowance), 3 s
	// measured. fio leaves the requests in flight at the end uncounted: at
	// QD32 and 300 IOPS that is 32 of ~900, 3.5% under the limit.
	timed := []string{"--time_based", "--ramp_time=1", "--runtime=3"}
	rw4k := append([]string{"--rw=randwrite", "--bs=4k", "--size=64M"}, timed...)

	out := s.mustCLI("volume", "set", "qd1", "--iops-limit", "200")
	if !strings.Contains(out, "volume qd1 limits: iops 200, burst 1s") {
		t.Errorf("volume set --iops-limit 200 printed %q", out)
	}
	s.mustCLI("volume", "set", "qd32", "--write-iops-limit", "300", "--burst", "0.5")
	s.mustCLI("volume", "set", "bw", "--bw-limit", "20MiB/s")
	s.mustCLI("volume", "set", "mc", "--iops-limit", "250")
	list := s.mustCLI("volume", "list")
	for _, want := range []string{"iops 200, burst 1s", "write-iops 300, burst 0.5s", "bw 20 MiB/s, burst 1s"} {
		if !strings.Contains(list, want) {
			t.Errorf("volume list lacks %q:\n%s", want, list)
		}
	}

	// Three limited volumes at once, each held to its own limit.
	qd1 := startQoSFio(t, s.uri("qd1"), append(rw4k, "--iodepth=1")...)
	qd32 := startQoSFio(t, s.uri("qd32"), append(rw4k, "--iodepth=32")...)
	bw := startQoSFio(t, s.uri("bw"), append([]string{"--rw=write", "--bs=256k", "--size=64M", "--iodepth=8"}, timed...)...)
	withinTenth(t, "write IOPS at QD1", qd1.wait(t).WriteIOPS, 200)
	withinTenth(t, "write IOPS at QD32", qd32.wait(t).WriteIOPS, 300)
	withinTenth(t, "write bandwidth (MiB/s) at QD8", bw.wait(t).WriteBW/(1<<20), 20)

	// Two connections share one volume's limit.
	mc := startQoSFio(t, s.uri("mc"), append(rw4k, "--iodepth=16", "--numjobs=2")...)
	withinTenth(t, "write IOPS of two connections", mc.wait(t).WriteIOPS, 250)

	// A limit changed while fio is connected applies to its requests.
	s.mustCLI("volume", "set", "live", "--iops-limit", "100")
	live := startQoSFio(t, s.uri("live"), "--rw=randwrite", "--bs=4k", "--size=64M", "--iodepth=8", "--time_based", "--runtime=4")
	time.Sleep(1500 * time.Millisecond)
	w0, t0 := s.writes(t, "live"), time.Now()
	time.Sleep(time.Second)
	w1, t1 := s.writes(t, "live"), time.Now()
	s.mustCLI("volume", "set", "live", "--iops-limit", "400")
	time.Sleep(200 * time.Millisecond)
	w2, t2 := s.writes(t, "live"), time.Now()
	time.Sleep(time.Second)
	w3, t3 := s.writes(t, "live"), time.Now()
	live.wait(t)
	withinTenth(t, "write IOPS before the change", (w1-w0)/t1.Sub(t0).Seconds(), 100)
	withinTenth(t, "write IOPS after the change", (w3-w2)/t3.Sub(t2).Seconds(), 400)

	// The throttled time shows per volume, and the limits as gauges.
	fams, _ := s.scrape(t)
	if v, err := fams.Value("strata_volume_throttled_seconds_total", "volume", "qd32", "op", "write"); err != nil || v < 1 {
		t.Errorf("throttled write seconds of qd32: %v, %v; want over 1 (32 requests waiting for 3 s)", v, err)
	}
	if v, err := fams.Value("strata_volume_qos_limit", "volume", "bw", "unit", "bytes", "op", "total"); err != nil || v != 20<<20 {
		t.Errorf("bandwidth limit gauge of bw: %v, %v", v, err)
	}

	// Noisy neighbour: reads of the unlimited volume alone, next to the
	// limited one hammered by 64 requests in flight, and alone again. The
	// machine is shared, so the ratio is logged and only a collapse fails
	// the test (docs/operations.md has the figure measured on an idle
	// machine).
	rand := []string{"--rw=randread", "--bs=4k", "--size=64M", "--iodepth=16", "--time_based", "--ramp_time=1", "--runtime=2"}
	solo1 := startQoSFio(t, s.uri("free"), rand...).wait(t).ReadIOPS
	noisy := startQoSFio(t, s.uri("qd1"), append(rw4k, "--iodepth=32", "--numjobs=2", "--runtime=4")...)
	time.Sleep(500 * time.Millisecond)
	shared := startQoSFio(t, s.uri("free"), rand...).wait(t).ReadIOPS
	noisy.wait(t)
	solo2 := startQoSFio(t, s.uri("free"), rand...).wait(t).ReadIOPS
	solo := (solo1 + solo2) / 2
	t.Logf("noisy neighbour: unlimited volume %.0f and %.0f read IOPS alone, %.0f next to the hammered limited one (%.2fx)", solo1, solo2, shared, shared/solo)
	if shared < 0.5*solo {
		t.Errorf("the unlimited volume fell to %.0f IOPS from %.0f alone while the limited one was hammered", shared, solo)
	}

	// Limits survive a restart; 0 and none clear them. The daemon stops
	// at once even with requests owing minutes of debt.
	s.mustCLI("volume", "set", "bw", "--bw-limit", "4KiB/s", "--burst", "0")
	startQoSFio(t, s.uri("bw"), "--rw=write", "--bs=64k", "--size=64M", "--iodepth=8", "--time_based", "--runtime=60")
	time.Sleep(time.Second)
	t0 = time.Now()
	s.restart()
	if el := time.Since(t0); el > 5*time.Second {
		t.Errorf("a restart with throttled requests waiting took %v", el)
	}
	if st := s.mustCLI("status"); !strings.Contains(st, "limits:   qd1: iops 200, burst 1s") {
		t.Errorf("status after a restart lacks qd1's limits:\n%s", st)
	}
	if out := s.mustCLI("volume", "set", "qd1", "--iops-limit", "none"); !strings.Contains(out, "volume qd1 limits: none") {
		t.Errorf("clearing the limit printed %q", out)
	}
	r := s.cli("volume", "set", "qd1", "--bw-limit", "fast")
	checkOneLineError(t, "a bad limit", r, "--bw-limit")
}

// writes is the writes the daemon has served to vol.
func (s *server) writes(t *testing.T, vol string) float64 {
	t.Helper()
	fams, _ := s.scrape(t)
	v, err := fams.Value("strata_io_seconds_count", "volume", vol, "op", "write")
	if err != nil {
		t.Fatal(err)
	}
	return v
}
