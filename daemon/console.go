package daemon

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/replica"
)

// The web console: the static pages in console/ (plain HTML, CSS and JS,
// built into the binary) and the control API under /api/, behind a login
// token. Every action the pages offer is a control API request, answered
// by the same handler the control socket serves: the console adds
// authentication and cross-site protection, never a second code path.
//
// Authentication: POST /login with the token (from ConsoleTokenFile) sets
// a session cookie (HttpOnly, SameSite=Strict) and returns a CSRF token;
// scripts may instead send "Authorization: Bearer TOKEN". Requests that
// change state must come from the console's own origin (Origin and
// Sec-Fetch-Site, when the browser sends them) and, with the cookie, carry
// the CSRF token in X-Strata-CSRF.

//go:embed console
var consoleFiles embed.FS

const (
	consoleCookie     = "strata_session"
	consoleCSRFHeader = "X-Strata-CSRF"
)

// ConsoleAddr is addr with the host defaulted to loopback: "8080" and
// ":8080" become "127.0.0.1:8080".
func ConsoleAddr(addr string) string {
	if !strings.Contains(addr, ":") {
		return net.JoinHostPort("127.0.0.1", addr)
	}
	host, port, err := net.SplitHostPort(addr)
	if err == nil && host == "" {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// consoleToken reads the console's login token from path, creating the file
// (mode 0600, 32 random bytes in base64) when it does not exist. A file
// others may read is refused: the token is as good as the control socket.
func consoleToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return createToken(path)
	}
	if err != nil {
		return "", fmt.Errorf("read console token: %w", err)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("console token: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("console token file %s has mode %04o: others may read it; chmod 600 %s", path, st.Mode().Perm(), path)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 16 {
		return "", fmt.Errorf("console token file %s holds %d characters; use at least 16 (delete it to have one generated)", path, len(tok))
	}
	return tok, nil
}

// createToken writes a new random token: a temporary file, synced, renamed
// into place, the directory synced, so a crash leaves no empty token file.
func createToken(path string) (string, error) {
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", fmt.Errorf("console token: random: %w", err)
	}
	tok := base64.RawURLEncoding.EncodeToString(raw)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("create console token: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("write console token %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("sync console token %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("close console token %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("install console token: %w", err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return "", fmt.Errorf("sync directory of console token: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return "", fmt.Errorf("sync directory of console token: %w", err)
	}
	return tok, nil
}

// console serves the web console.
type console struct {
	api      http.Handler // the control API's handler
	token    string
	session  string // the session cookie's value
	csrf     string
	readOnly bool
	// loopback: the console listens on loopback only, so a request
	// naming another host came through DNS rebinding (or a proxy that
	// should say which host it serves) and is refused.
	loopback bool
}

func newConsole(api http.Handler, token string, readOnly, loopback bool) *console {
	derive := func(purpose string) string {
		m := hmac.New(sha256.New, []byte(token))
		io.WriteString(m, purpose)
		return hex.EncodeToString(m.Sum(nil))
	}
	return &console{api: api, token: token, session: derive("strata console session"), csrf: derive("strata console csrf"), readOnly: readOnly, loopback: loopback}
}

// consoleSession is the reply to a login and to GET /session.
type consoleSession struct {
	CSRF     string `json:"csrf"`
	ReadOnly bool   `json:"read_only"`
}

func (c *console) handler() (http.Handler, error) {
	mux := http.NewServeMux()
	static, err := fs.Sub(consoleFiles, "console")
	if err != nil {
		return nil, fmt.Errorf("console pages: %w", err)
	}
	files := http.FileServerFS(static)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if changes(r) {
			refuse(w, http.StatusMethodNotAllowed, control.CodeInvalid, r.Method+" "+r.URL.Path+": the console's pages are only read")
			return
		}
		files.ServeHTTP(w, r)
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		if err := sameOrigin(r); err != nil {
			refuse(w, http.StatusForbidden, control.CodeRefused, err.Error())
			return
		}
		var req struct {
			Token string `json:"token"`
		}
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		if !equal(strings.TrimSpace(req.Token), c.token) {
			refuse(w, http.StatusUnauthorized, control.CodeAuth, "wrong token")
			return
		}
		http.SetCookie(w, &http.Cookie{Name: consoleCookie, Value: c.session, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
		writeJSON(w, http.StatusOK, consoleSession{CSRF: c.csrf, ReadOnly: c.readOnly})
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(w, r) {
			return
		}
		http.SetCookie(w, &http.Cookie{Name: consoleCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("GET /session", func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(w, r) {
			return
		}
		writeJSON(w, http.StatusOK, consoleSession{CSRF: c.csrf, ReadOnly: c.readOnly})
	})
	api := http.StripPrefix("/api", c.api)
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		if !c.authorized(w, r) {
			return
		}
		if strings.HasPrefix(r.URL.Path, "/api/debug/") {
			refuse(w, http.StatusNotFound, control.CodeNotFound, "profiles are only on the control socket")
			return
		}
		if changes(r) && c.readOnly {
			refuse(w, http.StatusForbidden, control.CodeRefused, "the console is read-only (strata serve --console-read-only): use the CLI")
			return
		}
		api.ServeHTTP(w, r)
	})
	return c.guard(mux), nil
}

// authorized checks the session (or bearer token) and, for requests that
// change state, that they come from the console itself. It answers the
// refusal itself.
func (c *console) authorized(w http.ResponseWriter, r *http.Request) bool {
	if err := notCrossSite(r); err != nil {
		refuse(w, http.StatusForbidden, control.CodeRefused, err.Error())
		return false
	}
	bearer, hasBearer := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	switch {
	case hasBearer:
		if !equal(strings.TrimSpace(bearer), c.token) {
			refuse(w, http.StatusUnauthorized, control.CodeAuth, "wrong token")
			return false
		}
	default:
		ck, err := r.Cookie(consoleCookie)
		if err != nil || !equal(ck.Value, c.session) {
			refuse(w, http.StatusUnauthorized, control.CodeAuth, "log in first: the token is in the file strata serve printed")
			return false
		}
	}
	if !changes(r) {
		return true
	}
	if err := sameOrigin(r); err != nil {
		refuse(w, http.StatusForbidden, control.CodeRefused, err.Error())
		return false
	}
	// A bearer token is never sent by a browser on its own, so only the
	// cookie needs the CSRF token beside it.
	if !hasBearer && !equal(r.Header.Get(consoleCSRFHeader), c.csrf) {
		refuse(w, http.StatusForbidden, control.CodeRefused, "missing or wrong "+consoleCSRFHeader+" header")
		return false
	}
	return true
}

// changes says whether r may change state.
func changes(r *http.Request) bool {
	return r.Method != http.MethodGet && r.Method != http.MethodHead
}

// notCrossSite refuses requests a browser says another site made.
func notCrossSite(r *http.Request) error {
	switch s := r.Header.Get("Sec-Fetch-Site"); s {
	case "", "same-origin", "none":
		return nil
	default:
		return fmt.Errorf("refused a %s request (Sec-Fetch-Site: %s)", s, s)
	}
}

// sameOrigin refuses requests from another origin than the console's.
func sameOrigin(r *http.Request) error {
	if err := notCrossSite(r); err != nil {
		return err
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return nil // not from a browser's script or form
	}
	if o != "http://"+r.Host && o != "https://"+r.Host {
		return fmt.Errorf("refused a request from origin %s (the console is http://%s)", o, r.Host)
	}
	return nil
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

func refuse(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, control.Error{Message: msg, Code: code})
}

// guard sets the headers that keep the pages from being framed, cached or
// given scripts from elsewhere, and refuses hosts a loopback console
// cannot be.
func (c *console) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c.loopback && !replica.IsLoopback(r.Host) {
			refuse(w, http.StatusMisdirectedRequest, control.CodeRefused, fmt.Sprintf("this console serves 127.0.0.1, localhost and [::1], not %q", r.Host))
			return
		}
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("X-Frame-Options", "DENY")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("Cache-Control", "no-store")
		h.ServeHTTP(w, r)
	})
}

// startConsole listens on o.ConsoleListen and serves the console, with
// api, the control socket's handler, under /api/.
func (d *Daemon) startConsole(api http.Handler) error {
	o := d.opts
	if o.ConsoleListen == "" {
		return nil
	}
	tok, err := consoleToken(o.ConsoleTokenFile)
	if err != nil {
		return fmt.Errorf("--console: %w", err)
	}
	l, err := net.Listen("tcp", o.ConsoleListen)
	if err != nil {
		return fmt.Errorf("--console %s: %w", o.ConsoleListen, err)
	}
	if !replica.IsLoopback(o.ConsoleListen) {
		o.Logger.Warn("the console is served off loopback over plain HTTP: its token and session cross the network in the clear; prefer an SSH tunnel to a loopback console", "addr", l.Addr().String())
	}
	h, err := newConsole(api, tok, o.ConsoleReadOnly, replica.IsLoopback(o.ConsoleListen)).handler()
	if err != nil {
		l.Close()
		return err
	}
	d.consoleAt = l.Addr().String()
	d.consoleSrv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go d.consoleSrv.Serve(l)
	return nil
}

// ConsoleAddr is the address the console listens on ("": none).
func (d *Daemon) ConsoleAddr() string { return d.consoleAt }

// ConsoleTokenFile is the file that holds the console's login token ("":
// no console).
func (d *Daemon) ConsoleTokenFile() string {
	if d.consoleSrv == nil {
		return ""
	}
	return d.opts.ConsoleTokenFile
}
