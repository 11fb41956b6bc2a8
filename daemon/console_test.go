package daemon

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/strata-storage/strata/control"
)

func TestConsoleAddr(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"8080", "127.0.0.1:8080"},
		{":8080", "127.0.0.1:8080"},
		{"0.0.0.0:8080", "0.0.0.0:8080"},
		{"[::1]:8080", "[::1]:8080"},
		{"localhost:0", "localhost:0"},
	} {
		if got := ConsoleAddr(c.in); got != c.want {
			t.Errorf("ConsoleAddr(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestConsoleToken(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "console.token")
	tok, err := consoleToken(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 || len(tok) < 40 {
		t.Fatalf("created token file mode %04o, token %d characters; want 0600 and 43", st.Mode().Perm(), len(tok))
	}
	again, err := consoleToken(path)
	if err != nil || again != tok {
		t.Fatalf("the second read gives %q, %v; want the token created first", again, err)
	}
	if other, _ := consoleToken(filepath.Join(dir, "other")); other == tok {
		t.Fatal("two created tokens are equal")
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := consoleToken(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a token file others may read: %v", err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := consoleToken(short); err == nil {
		t.Fatal("a 3-character token was accepted")
	}
}

// consoleClient talks to an in-process daemon's console.
type consoleClient struct {
	t      *testing.T
	base   string
	cookie string
	csrf   string
}

func (c *consoleClient) do(method, path, body string, hdr map[string]string) (int, string) {
	c.t.Helper()
	req, err := http.NewRequest(method, c.base+path, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	if c.cookie != "" {
		req.Header.Set("Cookie", c.cookie)
	}
	if c.csrf != "" {
		req.Header.Set("X-Strata-CSRF", c.csrf)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if method == "POST" && path == "/login" && resp.StatusCode == http.StatusOK {
		for _, ck := range resp.Cookies() {
			if ck.Name == consoleCookie {
				c.cookie = ck.Name + "=" + ck.Value
			}
		}
		var s consoleSession
		if err := json.Unmarshal(b, &s); err != nil {
			c.t.Fatalf("login reply %s: %v", b, err)
		}
		c.csrf = s.CSRF
	}
	return resp.StatusCode, string(b)
}

func startConsole(t *testing.T, readOnly bool) (*consoleClient, *control.Client, string) {
	dir := t.TempDir()
	d, cl := start(t, dir, func(o *Options) {
		o.ConsoleListen = "127.0.0.1:0"
		o.ConsoleReadOnly = readOnly
		o.Volumes = []VolumeSpec{{Name: "v0", Size: 8 << 20}}
	})
	tok, err := os.ReadFile(filepath.Join(dir, "console.token"))
	if err != nil {
		t.Fatalf("the console's token file: %v", err)
	}
	if d.ConsoleTokenFile() != filepath.Join(dir, "console.token") {
		t.Fatalf("ConsoleTokenFile() = %q", d.ConsoleTokenFile())
	}
	return &consoleClient{t: t, base: "http://" + d.ConsoleAddr()}, cl, strings.TrimSpace(string(tok))
}

func TestConsoleAPI(t *testing.T) {
	c, cl, tok := startConsole(t, false)
	code, page := c.do("GET", "/", "", nil)
	if code != http.StatusOK || !strings.Contains(page, `<script src="app.js"`) {
		t.Fatalf("GET /: %d %.200s", code, page)
	}
	for _, p := range []string{"/app.js", "/style.css"} {
		if code, _ := c.do("GET", p, "", nil); code != http.StatusOK {
			t.Fatalf("GET %s: %d", p, code)
		}
	}
	if code, body := c.do("GET", "/api/v1/volumes", "", nil); code != http.StatusUnauthorized || !strings.Contains(body, control.CodeAuth) {
		t.Fatalf("the API before login: %d %s", code, body)
	}
	if code, _ := c.do("POST", "/login", `{"token":"wrong-wrong-wrong-wrong"}`, nil); code != http.StatusUnauthorized {
		t.Fatalf("login with a wrong token: %d", code)
	}
	if code, body := c.do("POST", "/login", `{"token":"`+tok+`"}`, nil); code != http.StatusOK || c.csrf == "" || c.cookie == "" {
		t.Fatalf("login: %d %s", code, body)
	}
	// A volume created through the console is the control API's.
	if code, body := c.do("POST", "/api/v1/volumes", `{"name":"v1","size":4194304}`, map[string]string{"Origin": c.base}); code != http.StatusCreated {
		t.Fatalf("create through the console: %d %s", code, body)
	}
	vols, err := cl.Volumes(context.Background())
	if err != nil || len(vols) != 2 || vols[1].Name != "v1" {
		t.Fatalf("volumes on the control socket: %+v, %v", vols, err)
	}
	// Its errors are the control API's too.
	if code, body := c.do("POST", "/api/v1/volumes", `{"name":"v1","size":4194304}`, nil); code != http.StatusConflict || !strings.Contains(body, control.CodeExists) {
		t.Fatalf("create an existing volume: %d %s", code, body)
	}
	csrf := c.csrf
	c.csrf = ""
	if code, _ := c.do("DELETE", "/api/v1/volumes/v1", "", nil); code != http.StatusForbidden {
		t.Fatalf("delete without the CSRF token: %d", code)
	}
	c.csrf = csrf
	if code, _ := c.do("DELETE", "/api/v1/volumes/v1", "", map[string]string{"Origin": "http://evil.example"}); code != http.StatusForbidden {
		t.Fatalf("delete from another origin: %d", code)
	}
	if code, _ := c.do("GET", "/api/v1/volumes", "", map[string]string{"Sec-Fetch-Site": "cross-site"}); code != http.StatusForbidden {
		t.Fatalf("a cross-site read: %d", code)
	}
	if vols, _ := cl.Volumes(context.Background()); len(vols) != 2 {
		t.Fatalf("a refused delete deleted: %+v", vols)
	}
	// DNS rebinding: another name for a loopback console.
	req, _ := http.NewRequest("GET", c.base+"/api/v1/volumes", nil)
	req.Host = "evil.example:8080"
	req.Header.Set("Cookie", c.cookie)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMisdirectedRequest {
		t.Fatalf("a request for host evil.example: %d", resp.StatusCode)
	}
	for _, host := range []string{"localhost", "[::1]:8080"} {
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("a request for host %s: %d", host, resp.StatusCode)
		}
	}
	if code, _ := c.do("POST", "/", "", nil); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST to a page: %d", code)
	}
	if code, _ := c.do("POST", "/logout", "", nil); code != http.StatusOK {
		t.Fatalf("logout: %d", code)
	}
	// A script may use the token itself.
	c.cookie, c.csrf = "", ""
	if code, body := c.do("GET", "/api/v1/status", "", map[string]string{"Authorization": "Bearer " + tok}); code != http.StatusOK || !strings.Contains(body, `"volumes"`) {
		t.Fatalf("status with the bearer token: %d %.200s", code, body)
	}
}

func TestConsoleReadOnly(t *testing.T) {
	c, cl, tok := startConsole(t, true)
	if code, body := c.do("POST", "/login", `{"token":"`+tok+`"}`, nil); code != http.StatusOK || !strings.Contains(body, `"read_only":true`) {
		t.Fatalf("login: %d %s", code, body)
	}
	if code, body := c.do("GET", "/api/v1/volumes", "", nil); code != http.StatusOK || !strings.Contains(body, `"v0"`) {
		t.Fatalf("read through a read-only console: %d %s", code, body)
	}
	if code, body := c.do("POST", "/api/v1/clones", `{"source":"v0@seq:1","name":"c"}`, nil); code != http.StatusForbidden || !strings.Contains(body, "read-only") {
		t.Fatalf("clone through a read-only console: %d %s", code, body)
	}
	if vols, _ := cl.Volumes(context.Background()); len(vols) != 1 {
		t.Fatalf("a read-only console changed the pool: %+v", vols)
	}
}

func TestConsoleOff(t *testing.T) {
	dir := t.TempDir()
	d, _ := start(t, dir, nil)
	if d.ConsoleAddr() != "" || d.ConsoleTokenFile() != "" {
		t.Fatalf("a console without ConsoleListen: %q %q", d.ConsoleAddr(), d.ConsoleTokenFile())
	}
	if _, err := os.Stat(filepath.Join(dir, "console.token")); err == nil {
		t.Fatal("a daemon without a console created a token file")
	}
}
