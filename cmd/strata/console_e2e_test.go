package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// The web console driven by a real browser (headless Chromium through
// chromedp) against a real `strata serve --console`: log in, find a volume
// written over NBD, pick a moment on its time line and read the export the
// page gives, clone from the page, and see the cross-site refusals.
// Screenshots of every page, at a desktop and a phone width, go to
// $STRATA_CONSOLE_SHOTS (default: the test's temporary directory).

// chromiumPath finds Debian's chromium, or skips the test.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH: the console's browser tests need it (apt-get install chromium; make test-deps installs it)")
	return ""
}

// shotDir is where screenshots go.
func shotDir(t *testing.T) string {
	if d := os.Getenv("STRATA_CONSOLE_SHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("STRATA_CONSOLE_SHOTS: %v", err)
		}
		return d
	}
	return t.TempDir()
}

// browser starts headless Chromium; its process ends at cleanup.
func browser(t *testing.T, exe string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(exe), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-dev-shm-usage", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
	})
	// Start the browser now, so a broken install fails here, clearly.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start %s: %v", exe, err)
	}
	return ctx
}

// shoot saves the page at a desktop and a phone width as NAME-desktop.png
// and NAME-narrow.png.
func shoot(t *testing.T, ctx context.Context, dir, name string) {
	t.Helper()
	for _, size := range []struct {
		suffix string
		w, h   int64
	}{{"desktop", 1280, 900}, {"narrow", 390, 844}} {
		browse(t, ctx, "resize for "+name, chromedp.EmulateViewport(size.w, size.h), chromedp.Sleep(700*time.Millisecond))
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s %s: %v", name, size.suffix, err)
		}
		p := filepath.Join(dir, name+"-"+size.suffix+".png")
		if err := os.WriteFile(p, png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("screenshot %s", p)
	}
	browse(t, ctx, "desktop width", chromedp.EmulateViewport(1280, 900))
}

// browse runs steps in the browser, failing the test after 30 seconds.
func browse(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(tctx, steps...); err != nil {
		t.Fatalf("%s: %v%s", what, err, pageState(ctx))
	}
}

// pageState describes the page for a failure message: its address, status
// line and text, and where a screenshot of it went.
func pageState(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	state, err := chromedp.Run(ctx, chromedp.Evaluate[string](`location.href + '\n' + document.body.innerText`))
	if err != nil {
		return fmt.Sprintf(" (page state: %v)", err)
	}
	if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
		f := filepath.Join(os.TempDir(), fmt.Sprintf("strata-console-failure-%d.png", time.Now().UnixNano()))
		if os.WriteFile(f, png, 0o644) == nil {
			state += "\nscreenshot: " + f
		}
	}
	return "\npage:\n" + state
}

// get runs one action in the browser and returns its value.
func get[T any](t *testing.T, ctx context.Context, what string, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		t.Fatalf("%s: %v%s", what, err, pageState(ctx))
	}
	return v
}

// css selects the first element a CSS selector matches.
func css(sel string) chromedp.CSS { return chromedp.CSS(sel) }

// nbdRead reads all of export uri.
func nbdRead(t *testing.T, uri string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	cmd := exec.CommandContext(ctx, "nbdcopy", uri, "-")
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("nbdcopy %s -: %v: %s", uri, err, errb.String())
	}
	return out.Bytes()
}

func TestE2EConsole(t *testing.T) {
	need(t, "qemu-io", "qemu-img", "nbdcopy")
	exe := chromiumPath(t)
	shots := shotDir(t)
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	nbdAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	replTok := filepath.Join(shortTempDir(t), "token")
	if err := os.WriteFile(replTok, []byte("console-e2e-replication\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The daemon's clock (for the capacity forecast only) moves a day on
	// below, so the pool page has a growth rate to show.
	clock := filepath.Join(shortTempDir(t), "clock")
	if err := os.WriteFile(clock, []byte("0s"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(testClockEnv, clock)
	s := startServer(t, "--volume", "web=16MiB", "--console", strconv.Itoa(port), "--listen", nbdAddr,
		"--replica-listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--replica-token-file", replTok)
	// The banner follows the control socket by a moment.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out, _ := os.ReadFile(s.logs[len(s.logs)-2])
		if strings.Contains(string(out), "console:        "+base+"/ (login token in "+filepath.Join(s.dir, "console.token")+")") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the banner does not give the console's address %s/ and token file:\n%s", base, out)
		}
	}
	tokFile := filepath.Join(s.dir, "console.token")
	st, err := os.Stat(tokFile)
	if err != nil {
		t.Fatalf("no token file: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode %04o, want 0600", st.Mode().Perm())
	}
	raw, err := os.ReadFile(tokFile)
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(raw))

	// Two moments: A (1 MiB of 0xaa), then two seconds later B (0xbb).
	mustQemuIO(t, s.uri("web"), "write -P 0xaa 0 1M")
	afterA := time.Now()
	time.Sleep(2 * time.Second)
	beforeB := time.Now()
	mustQemuIO(t, s.uri("web"), "write -P 0xbb 0 1M")
	wantA := make([]byte, 16<<20)
	copy(wantA, bytes.Repeat([]byte{0xaa}, 1<<20))
	if head := nbdRead(t, s.uri("web")); !bytes.Equal(head[:1<<20], bytes.Repeat([]byte{0xbb}, 1<<20)) {
		t.Fatal("the head does not read 0xbb after the second write")
	}

	s.mustCLI("report") // the pool's size today, for the forecast
	s.mustCLI("volume", "set", "web", "--owner", "alice", "--label", "team=web", "--write-iops-limit", "50000", "--bw-limit", "1GiB/s")
	if err := os.WriteFile(clock, []byte("24h"), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("refusals", func(t *testing.T) { consoleRefusals(t, s, base, token) })

	ctx := browser(t, exe)
	browse(t, ctx, "wrong token",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(css("#login")),
		chromedp.SendKeys(css("#token"), "not-the-token"),
		chromedp.Click(css("#login button[type=submit]")),
		chromedp.Poll[chromedp.Void](`document.getElementById('login-error').textContent !== ''`))
	if msg := get(t, ctx, "login error", chromedp.Text(css("#login-error"))); !strings.Contains(msg, "wrong token") {
		t.Fatalf("a wrong token shows %q", msg)
	}
	browse(t, ctx, "log in",
		chromedp.SetValue(css("#token"), token),
		chromedp.Click(css("#login button[type=submit]")),
		chromedp.WaitVisible(css(`#volumes tr[data-key="web"]`)),
		chromedp.WaitVisible(css(`#pool-cards .card`)))
	row := get(t, ctx, "pool page", chromedp.Text(css(`#volumes tr[data-key="web"]`)))
	if !strings.Contains(row, "16.0 MiB") || !strings.Contains(row, "1.00 MiB") || !strings.Contains(row, "alice") || !strings.Contains(row, "team=web") ||
		!strings.Contains(row, "write-iops 50000") || !strings.Contains(row, "bw 1.00 GiB/s") {
		t.Fatalf("the pool page's row of web says %q; want its size (16.0 MiB), written (1.00 MiB), owner alice, label team=web and limits write-iops 50000, bw 1.00 GiB/s", row)
	}

	// Some I/O for the live charts (after B: the moment picked below
	// does not see it).
	var fio *bgProc
	if _, err := exec.LookPath("fio"); err == nil {
		fio = startBG(t, "fio", "--name=console", "--ioengine=nbd", "--uri="+s.uri("web"), "--rw=randrw", "--bs=4k",
			"--offset=4M", "--size=8M", "--time_based", "--runtime=15", "--rate_iops=300,200")
		t.Cleanup(func() { fio.stop(5 * time.Second) })
	} else {
		mustQemuIO(t, s.uri("web"), "write -P 0xcc 8M 1M")
	}
	// A day on, the pool has grown: the forecast shows the rate and the
	// days until the filesystem is full.
	browse(t, ctx, "capacity forecast",
		chromedp.Poll[chromedp.Void](`document.querySelector('#forecast') && document.querySelector('#forecast').textContent.includes('full in')`))
	if fc := get(t, ctx, "forecast card", chromedp.Text(css(`#forecast`))); !regexp.MustCompile(`full in [0-9,.]+ days`).MatchString(fc) || !strings.Contains(fc, "/day over 7 days") {
		t.Fatalf("the pool page's forecast says %q", fc)
	}

	// Pick a moment between A and B on the time line, with the mouse.
	browse(t, ctx, "volume page",
		chromedp.Click(css(`#volumes a[href="#/volume/web"]`)),
		chromedp.WaitVisible(css(`#timeline svg`)))
	moment := afterA.Add(beforeB.Sub(afterA) / 2)
	var exp, uri string
	for try := 0; ; try++ {
		pt := get(t, ctx, "time line geometry", chromedp.Evaluate[struct{ X, Y float64 }](fmt.Sprintf(`strataTimeline.clientPoint(%d)`, moment.UnixMilli())))
		browse(t, ctx, "click the time line", chromedp.MouseClickXY(pt.X, pt.Y), chromedp.WaitVisible(css("#export-name")))
		exp = get(t, ctx, "export name", chromedp.Text(css("#export-name")))
		uri = get(t, ctx, "export URI", chromedp.Text(css("#export-uri")))
		vol, spec, ok := strings.Cut(exp, "@")
		picked, err := time.Parse(time.RFC3339Nano, spec)
		if !ok || vol != "web" || err != nil {
			t.Fatalf("the picked export is %q; want web@TIME", exp)
		}
		if picked.After(afterA) && picked.Before(beforeB) {
			break
		}
		// The time line redraws every few seconds as now moves on; a
		// redraw between finding the point and clicking it moves it.
		if try == 2 {
			t.Fatalf("clicked %s on the time line, the page picked %s", moment.Format(time.RFC3339Nano), spec)
		}
	}
	if want := "nbd+unix:///" + exp + "?socket=" + s.sock(); uri != want {
		t.Fatalf("the page gives URI %q, want %q", uri, want)
	}
	if got := nbdRead(t, uri); !bytes.Equal(got, wantA) {
		t.Fatalf("the export %s the time line gave does not read the data of that moment (1 MiB of 0xaa)", exp)
	}
	// The same over TCP, with qemu-img, and the commands that attach it.
	tcp := get(t, ctx, "TCP URI", chromedp.Text(css("#export-tcp")))
	if want := "nbd://" + nbdAddr + "/" + exp; tcp != want {
		t.Fatalf("the page gives TCP URI %q, want %q", tcp, want)
	}
	img := filepath.Join(t.TempDir(), "a.img")
	if err := os.WriteFile(img, wantA, 0o600); err != nil {
		t.Fatal(err)
	}
	if r := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", tcp, img); r.code != 0 {
		t.Fatalf("qemu-img compare %s with the data of that moment: %s", tcp, r)
	}
	host, p, _ := strings.Cut(nbdAddr, ":")
	for id, want := range map[string]string{
		"cmd-qemu":       "-drive file=" + tcp + ",format=raw,if=virtio,readonly=on",
		"cmd-nbd-client": "nbd-client -N '" + exp + "' " + host + " " + p + " /dev/nbd0",
	} {
		if got := get(t, ctx, id, chromedp.Text(css("#"+id))); !strings.Contains(got, want) {
			t.Fatalf("#%s says %q; want it to hold %q", id, got, want)
		}
	}

	// Clone that moment from the page.
	browse(t, ctx, "clone dialog",
		chromedp.Click(css("#clone")),
		chromedp.WaitVisible(css("#clone-name")))
	dlg := get(t, ctx, "clone dialog", chromedp.Text(css("#confirm-body")))
	if !strings.Contains(dlg, "is not changed") || !strings.Contains(dlg, "strata clone "+exp) {
		t.Fatalf("the clone confirmation says %q", dlg)
	}
	browse(t, ctx, "clone",
		chromedp.SetValue(css("#clone-name"), "web-then"),
		chromedp.Click(css("#confirm-ok")),
		chromedp.WaitVisible(css("#clone-link")))
	if list := s.mustCLI("volume", "list"); !strings.Contains(list, "web-then") {
		t.Fatalf("strata volume list after cloning from the page:\n%s", list)
	}
	if got := nbdRead(t, s.uri("web-then")); !bytes.Equal(got, wantA) {
		t.Fatal("the clone made from the page does not hold the data of the moment picked")
	}

	if fio != nil {
		// fio writes 200 and reads 300 a second: the charts and cards say so.
		browse(t, ctx, "live charts", chromedp.Poll[chromedp.Void](`(document.querySelector('#chart-iops path.w')?.getAttribute('d') || '').split('L').length > 10`,
			chromedp.WithPollingTimeout(20*time.Second)))
		legend := get(t, ctx, "IOPS legend", chromedp.Text(css("#chart-iops .legend")))
		var r, w float64
		if _, err := fmt.Sscanf(legend, "read %g · write %g", &r, &w); err != nil || r < 100 || w < 100 {
			t.Fatalf("with fio at 300 reads and 200 writes a second, the IOPS chart says %q", legend)
		}
		if cards := get(t, ctx, "volume cards", chromedp.Text(css("#vol-cards"))); !strings.Contains(cards, "local (Unix socket) → web") {
			t.Fatalf("the volume page does not show fio attached:\n%s", cards)
		}
	}
	if space := get(t, ctx, "space", chromedp.Text(css("#space"))); !strings.Contains(space, "snapshot from-console") || !strings.Contains(space, "Provisioned 16.0 MiB") {
		t.Fatalf("the space panel does not give web's line of df:\n%s", space)
	}
	shoot(t, ctx, shots, "volume")
	browse(t, ctx, "the clone's page",
		chromedp.Click(css("#clone-link")),
		chromedp.WaitVisible(css(`#timeline svg`)),
		chromedp.Poll[chromedp.Void](`document.getElementById('vol-name').textContent === 'web-then'`))

	// A target that keeps up and one that cannot be reached.
	replAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	startServer(t, "--replica-listen", replAddr, "--replica-token-file", replTok)
	s.mustCLI("replication", "add", "web", "--to", "strata://"+replAddr+"/web", "--token-file", replTok)
	s.mustCLI("replication", "add", "web-then", "--to", fmt.Sprintf("strata://127.0.0.1:%d/gone", freePort(t)), "--token-file", replTok, "--mode", "interval", "--every", "1h")
	browse(t, ctx, "replication page",
		chromedp.Navigate(base+"/#/replication"),
		chromedp.WaitVisible(css(`#replication .target`)),
		// The live target catches up (after fio stops writing) and says so.
		chromedp.Poll[chromedp.Void](fmt.Sprintf(`[...document.querySelectorAll('#replication .target')].some(p => p.textContent.includes(%q) && p.textContent.includes('0 s, 0 changes') && !p.textContent.includes('seq:0'))`, replAddr+"/web"),
			chromedp.WithPollingTimeout(25*time.Second)))
	if repl := get(t, ctx, "replication page", chromedp.Text(css("#replication"))); !strings.Contains(repl, "connection refused") {
		t.Fatalf("the replication page does not show the unreachable target's error:\n%s", repl)
	}
	// A mirror (to the same site) shows on this page and the pool page.
	s.createVolume("db", "8MiB")
	s.mustCLI("mirror", "add", "db", "--to", "strata://"+replAddr, "--token-file", replTok)
	browse(t, ctx, "mirrors on the replication page",
		chromedp.WaitVisible(css(`#mirrors tr[data-key="db"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelector('#mirrors tr[data-key="db"]').textContent.includes('in sync')`, chromedp.WithPollingTimeout(15*time.Second)))
	if row := get(t, ctx, "mirror row", chromedp.Text(css(`#mirrors tr[data-key="db"]`))); !strings.Contains(row, "primary") || !strings.Contains(row, replAddr) {
		t.Fatalf("the mirror's row says %q; want its role and peer", row)
	}
	shoot(t, ctx, shots, "replication")

	// Roll web back to its snapshot, picked by its mark on the time line,
	// once fio is done with it (a rollback under attached clients needs
	// force).
	for fio != nil && !fio.exited() {
		time.Sleep(100 * time.Millisecond)
	}
	browse(t, ctx, "pick the snapshot",
		chromedp.Navigate(base+"/#/volume/web"),
		chromedp.WaitVisible(css(`#timeline svg`)),
		chromedp.Click(css(`#timeline g.snap[data-snapshot="from-console"] path`)),
		chromedp.Poll[chromedp.Void](`document.getElementById('export-name')?.textContent === 'web@from-console'`),
		chromedp.Poll[chromedp.Void](`document.querySelector('#vol-cards')?.textContent.includes('Attached clients0')`),
		chromedp.Click(css("#rollback")),
		chromedp.WaitVisible(css("#confirm-ok")))
	if dlg := get(t, ctx, "rollback dialog", chromedp.Text(css("#confirm-body"))); !strings.Contains(dlg, "Nothing is destroyed") ||
		!strings.Contains(dlg, "strata rollback web --to from-console") {
		t.Fatalf("the rollback confirmation says %q", dlg)
	}
	shoot(t, ctx, shots, "rollback")
	browse(t, ctx, "roll back",
		chromedp.Click(css("#confirm-ok")),
		chromedp.Poll[chromedp.Void](`document.getElementById('status').textContent.startsWith('Rolled web back')`))
	// The snapshot was taken after B and before fio wrote at 4 MiB.
	wantSnap := make([]byte, 16<<20)
	copy(wantSnap, bytes.Repeat([]byte{0xbb}, 1<<20))
	if got := nbdRead(t, s.uri("web")); !bytes.Equal(got, wantSnap) {
		t.Fatal("after the rollback from the page, web does not read as its snapshot from-console")
	}
	// The time line shows both forks of web's history: the clone and the
	// rollback, each with the point it shows.
	browse(t, ctx, "branches",
		chromedp.Poll[chromedp.Void](`document.getElementById('branches')?.textContent.includes('rolled back to web@seq:')`),
		chromedp.WaitVisible(css(`#timeline g.branch.clone`)),
		chromedp.WaitVisible(css(`#timeline g.branch.rollback`)))
	if br := get(t, ctx, "branches", chromedp.Text(css("#branches"))); !strings.Contains(br, "clone web-then made of web@seq:") {
		t.Fatalf("the time line's branches say:\n%s", br)
	}
	shoot(t, ctx, shots, "history")
	if pit := s.mustCLI("pit", "web"); !strings.Contains(pit, "rolled back to web@seq:") || !strings.Contains(pit, "clone web-then made of web@seq:") {
		t.Fatalf("strata pit does not list the branches the page shows:\n%s", pit)
	}
	browse(t, ctx, "pool page at the end",
		chromedp.Click(css("#nav-pool")),
		chromedp.WaitVisible(css(`#volumes tr[data-key="web-then"]`)),
		chromedp.Poll[chromedp.Void](`document.querySelector('#volumes tr[data-key="web"]').textContent.includes('lag')`),
		chromedp.Poll[chromedp.Void](`document.querySelector('#volumes tr[data-key="db"]').textContent.includes('primary, in sync')`))
	shoot(t, ctx, shots, "pool")
}

// consoleRefusals checks the console's API refuses requests without the
// token, from another origin, and without the CSRF token, and serves the
// same request when it carries them.
func consoleRefusals(t *testing.T, s *server, base, token string) {
	do := func(method, path string, hdr map[string]string, body any) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, err := http.NewRequest(method, base+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := do("GET", "/api/v1/volumes", nil, nil); code != http.StatusUnauthorized {
		t.Fatalf("no token: %d %s", code, body)
	}
	if code, body := do("GET", "/api/v1/volumes", map[string]string{"Authorization": "Bearer wrong"}, nil); code != http.StatusUnauthorized {
		t.Fatalf("wrong bearer token: %d %s", code, body)
	}
	if code, body := do("POST", "/login", map[string]string{"Origin": "http://evil.example"}, map[string]string{"token": token}); code != http.StatusForbidden {
		t.Fatalf("login from another origin: %d %s", code, body)
	}
	req, _ := http.NewRequest("POST", base+"/login", strings.NewReader(`{"token":"`+token+`"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var sess struct {
		CSRF string `json:"csrf"`
	}
	json.NewDecoder(resp.Body).Decode(&sess)
	resp.Body.Close()
	var cookie string
	for _, c := range resp.Cookies() {
		if c.Name == "strata_session" {
			cookie = c.Name + "=" + c.Value
			if c.SameSite != http.SameSiteStrictMode || !c.HttpOnly {
				t.Fatalf("session cookie %+v: want HttpOnly and SameSite=Strict", c)
			}
		}
	}
	if resp.StatusCode != http.StatusOK || cookie == "" || sess.CSRF == "" {
		t.Fatalf("login: %d, cookie %q, csrf %q", resp.StatusCode, cookie, sess.CSRF)
	}
	for _, c := range []struct {
		what string
		hdr  map[string]string
	}{
		{"another origin", map[string]string{"Cookie": cookie, "X-Strata-CSRF": sess.CSRF, "Origin": "http://evil.example"}},
		{"a cross-site fetch", map[string]string{"Cookie": cookie, "X-Strata-CSRF": sess.CSRF, "Sec-Fetch-Site": "cross-site"}},
		{"no CSRF token", map[string]string{"Cookie": cookie, "Origin": base}},
		{"a wrong CSRF token", map[string]string{"Cookie": cookie, "Origin": base, "X-Strata-CSRF": "x" + sess.CSRF}},
	} {
		if code, body := do("POST", "/api/v1/volumes/web/snapshots", c.hdr, map[string]string{"name": "evil"}); code != http.StatusForbidden {
			t.Fatalf("%s: %d %s", c.what, code, body)
		}
	}
	if out := s.mustCLI("snapshot", "list", "web"); strings.Contains(out, "evil") {
		t.Fatalf("a refused request made a snapshot:\n%s", out)
	}
	// The same request from the console itself is served (so the refusals
	// above are the checks', not a malformed request's).
	if code, body := do("POST", "/api/v1/volumes/web/snapshots", map[string]string{"Cookie": cookie, "Origin": base, "X-Strata-CSRF": sess.CSRF}, map[string]string{"name": "from-console"}); code != http.StatusCreated {
		t.Fatalf("the console's own request: %d %s", code, body)
	}
	if out := s.mustCLI("snapshot", "list", "web"); !strings.Contains(out, "from-console") {
		t.Fatalf("the snapshot the console made is not in strata snapshot list:\n%s", out)
	}
	if code, _ := do("GET", "/api/debug/pprof/", map[string]string{"Authorization": "Bearer " + token}, nil); code != http.StatusNotFound {
		t.Fatalf("profiles through the console: %d, want 404", code)
	}
}

// A read-only console shows the pool and the time line but offers no
// action, and its API refuses changes.
func TestE2EConsoleReadOnly(t *testing.T) {
	exe := chromiumPath(t)
	port := freePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	s := startServer(t, "--volume", "web=16MiB", "--console", strconv.Itoa(port), "--console-read-only")
	raw, err := os.ReadFile(filepath.Join(s.dir, "console.token"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := browser(t, exe)
	browse(t, ctx, "log in",
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(css("#login")),
		chromedp.SetValue(css("#token"), strings.TrimSpace(string(raw))),
		chromedp.Click(css("#login button[type=submit]")),
		chromedp.WaitVisible(css("#ro-badge")),
		chromedp.Click(css(`#volumes a[href="#/volume/web"]`)),
		chromedp.WaitVisible(css(`#timeline svg`)),
		chromedp.Click(css("#pick-now")),
		chromedp.WaitVisible(css("#export-name")))
	if n := get(t, ctx, "action buttons", chromedp.Evaluate[int](`document.querySelectorAll('#clone, #rollback, #snapshot').length`)); n != 0 {
		t.Fatalf("a read-only console offers %d actions", n)
	}
	// The page's own request, with its session and CSRF token, is refused.
	msg := get(t, ctx, "clone through the API", chromedp.Evaluate[string](`fetch('/api/v1/clones', {method: 'POST', headers: {'X-Strata-CSRF': S.csrf, 'Content-Type': 'application/json'},
		body: JSON.stringify({source: 'web@seq:1', name: 'c'})}).then(r => r.status + ' ' + r.statusText)`, chromedp.EvalAsValue, chromedp.EvalAwaitPromise))
	if !strings.HasPrefix(msg, "403") {
		t.Fatalf("a clone through a read-only console: %s", msg)
	}
	if list := s.mustCLI("volume", "list"); strings.Contains(list, "\nc ") {
		t.Fatalf("a read-only console created a volume:\n%s", list)
	}
}

func TestE2EConsoleFlags(t *testing.T) {
	for _, args := range [][]string{{"--console-read-only"}, {"--console-token-file", "/tmp/x"}, {"--console", ""}} {
		dir := shortTempDir(t)
		r := run(t, strataBin, append([]string{"--data", dir, "serve", "--listen", ""}, args...)...)
		checkOneLineError(t, strings.Join(args, " "), r, "--console")
	}
	// A token file others may read is refused, saying how to fix it.
	dir := shortTempDir(t)
	tok := filepath.Join(dir, "console.token")
	if err := os.WriteFile(tok, []byte("a-token-of-twenty-chars\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r := run(t, strataBin, "--data", dir, "serve", "--listen", "", "--console", strconv.Itoa(freePort(t)))
	checkOneLineError(t, "token file mode 0644", r, "chmod 600")
}
