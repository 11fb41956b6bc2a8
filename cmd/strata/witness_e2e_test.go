package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/replica/witness"
)

// startWitness runs `strata witness` on dir and waits for its banner.
func startWitness(t *testing.T, dir, addr, tokenFile string, args ...string) *bgProc {
	t.Helper()
	if strataBin == "" {
		t.Fatal("the strata binary was not built: TestMain builds it only when -run selects a TestE2E test")
	}
	full := append([]string{"witness", "--listen", addr, "--data", dir, "--token-file", tokenFile}, args...)
	p := startBG(t, strataBin, full...)
	if err := p.waitOutput("witness serving", 10*time.Second); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestE2EWitness(t *testing.T) {
	tmp := shortTempDir(t)
	dir := filepath.Join(tmp, "w")
	tok := filepath.Join(tmp, "token")
	if err := os.WriteFile(tok, []byte("e2e-witness-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(tmp, "bad-token")
	if err := os.WriteFile(bad, []byte("not-the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const lease = 500 * time.Millisecond
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	w := startWitness(t, dir, addr, tok, "--lease", "500ms")
	ctx := context.Background()
	c := witness.NewClient(witness.ClientOptions{Addr: addr, Token: "e2e-witness-token"})
	defer c.CloseIdleConnections()

	g, err := c.Acquire(ctx, "vol0", "host-a", "host-b", 0)
	if err != nil || !g.Granted || g.Epoch != 1 || g.Holder != "host-a" || g.Lease != lease || g.ValidUntil.IsZero() {
		t.Fatalf("host-a acquires: %+v %v", g, err)
	}
	if g, err = c.Acquire(ctx, "vol0", "host-b", "host-a", 0); err != nil || g.Granted || g.Holder != "host-a" || !strings.Contains(g.Reason, "outdated") && !strings.Contains(g.Reason, "lease runs") {
		t.Fatalf("host-b while host-a holds: %+v %v", g, err)
	}
	if g, err = c.SetOutdated(ctx, "vol0", "host-a", 1, "host-b", false); err != nil || !g.Granted || g.Outdated != "" {
		t.Fatalf("host-a marks host-b in sync: %+v %v", g, err)
	}
	if g, err = c.Acquire(ctx, "vol0", "host-b", "host-a", 0); err != nil || g.Granted || !strings.Contains(g.Reason, "lease runs") {
		t.Fatalf("host-b before expiry: %+v %v", g, err)
	}
	// host-a stops renewing; its lease runs out.
	time.Sleep(lease + 100*time.Millisecond)
	if g, err = c.Acquire(ctx, "vol0", "host-b", "host-a", 0); err != nil || !g.Granted || g.Epoch != 2 || g.Holder != "host-b" {
		t.Fatalf("host-b after expiry: %+v %v", g, err)
	}
	// host-a comes back and renews with its old epoch: fenced, and told
	// who holds now.
	if g, err = c.Acquire(ctx, "vol0", "host-a", "host-b", 1); err != nil || g.Granted || g.Epoch != 2 || g.Holder != "host-b" {
		t.Fatalf("fenced host-a: %+v %v", g, err)
	}

	// strata witness status, as a table and as JSON.
	r := run(t, strataBin, "witness", "status", "--witness", addr, "--token-file", tok)
	if r.code != 0 {
		t.Fatalf("witness status: %s", r)
	}
	t.Logf("witness status:\n%s", r.stdout)
	if !regexp.MustCompile(`(?m)^GROUP +EPOCH +HOLDER +MEMBERS +OUTDATED +LEASE LEFT$`).MatchString(r.stdout) ||
		!regexp.MustCompile(`(?m)^vol0 +2 +host-b +host-a,host-b +- +\d+ms$`).MatchString(r.stdout) {
		t.Fatalf("witness status table:\n%s", r.stdout)
	}
	r = run(t, strataBin, "witness", "status", "--witness", addr, "--token-file", tok, "--group", "vol0", "--json")
	var sts []witness.State
	if err := json.Unmarshal([]byte(r.stdout), &sts); err != nil || len(sts) != 1 || sts[0].Epoch != 2 || sts[0].Holder != "host-b" {
		t.Fatalf("witness status --json: %v %s", err, r)
	}
	checkOneLineError(t, "status of an unknown group", run(t, strataBin, "witness", "status", "--witness", addr, "--token-file", tok, "--group", "nope"), "unknown group")

	// A bad token is refused, by the Go client and by the CLI.
	bc := witness.NewClient(witness.ClientOptions{Addr: addr, Token: "not-the-token"})
	if _, err := bc.Acquire(ctx, "vol0", "host-a", "host-b", 2); !errors.Is(err, witness.ErrUnauthorized) {
		t.Fatalf("bad token: %v", err)
	}
	bc.CloseIdleConnections()
	checkOneLineError(t, "status with a bad token", run(t, strataBin, "witness", "status", "--witness", addr, "--token-file", bad), "wrong token")

	// A second witness on the same directory is refused.
	r = run(t, strataBin, "witness", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--data", dir, "--token-file", tok)
	checkOneLineError(t, "second witness on the dir", r, "is used by another strata witness", "pid")
	// Off loopback without TLS is refused unless --insecure.
	r = run(t, strataBin, "witness", "--listen", "0.0.0.0:0", "--data", filepath.Join(tmp, "other"), "--token-file", tok)
	checkOneLineError(t, "off loopback without TLS", r, "off loopback", "--insecure")

	// Restart: the epoch survives, and host-b's lease is held for one full
	// lease from the restart although host-b has not renewed since.
	if code := w.stop(10 * time.Second); code != 0 {
		t.Fatalf("witness exited %d on SIGTERM:\n%s", code, w.output())
	}
	if !strings.Contains(w.output(), "stopped cleanly") {
		t.Fatalf("no clean stop:\n%s", w.output())
	}
	time.Sleep(lease)
	w = startWitness(t, dir, addr, tok, "--lease", "500ms")
	if g, err = c.Acquire(ctx, "vol0", "host-a", "host-b", 1); err != nil || g.Granted || g.Epoch != 2 || g.Holder != "host-b" {
		t.Fatalf("host-a right after the restart: %+v %v", g, err)
	}
	st, err := c.Status(ctx, "vol0")
	if err != nil || st.Epoch != 2 || st.Holder != "host-b" || st.LeaseLeft <= 0 {
		t.Fatalf("status after restart: %+v %v", st, err)
	}
	time.Sleep(lease + 100*time.Millisecond)
	if g, err = c.Acquire(ctx, "vol0", "host-a", "host-b", 1); err != nil || !g.Granted || g.Epoch != 3 || g.Holder != "host-a" {
		t.Fatalf("host-a after the restart window: %+v %v", g, err)
	}
	if code := w.stop(10 * time.Second); code != 0 {
		t.Fatalf("witness exited %d on SIGTERM:\n%s", code, w.output())
	}
	// With the witness gone, the client says so.
	if _, err := c.Acquire(ctx, "vol0", "host-a", "host-b", 3); !errors.Is(err, witness.ErrUnreachable) {
		t.Fatalf("stopped witness: %v", err)
	}
}
