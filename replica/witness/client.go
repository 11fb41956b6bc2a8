package witness

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// DefaultTimeout is how long the client waits for one answer before it
// calls the witness unreachable.
const DefaultTimeout = time.Second

// ClientOptions configure a Client.
type ClientOptions struct {
	// Addr is the witness's host:port.
	Addr  string
	Token string
	// TLS, when set, speaks HTTPS; nil is plaintext (loopback, or where
	// the caller allows it).
	TLS *tls.Config
	// Timeout bounds each request, connecting included; default
	// DefaultTimeout. A witness that does not answer in time is
	// unreachable: keep it well under the lease.
	Timeout time.Duration
}

// Client talks to a witness. It is safe for concurrent use.
type Client struct {
	o    ClientOptions
	base string
	hc   *http.Client
}

// NewClient returns a client of the witness at o.Addr. It does not
// connect until the first request.
func NewClient(o ClientOptions) *Client {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	scheme := "http"
	if o.TLS != nil {
		scheme = "https"
	}
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: o.Timeout}).DialContext,
		TLSClientConfig:     o.TLS,
		TLSHandshakeTimeout: o.Timeout,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     time.Minute,
	}
	return &Client{o: o, base: scheme + "://" + o.Addr, hc: &http.Client{Transport: tr}}
}

// Acquire asks for group's lease for node (see Server.Acquire). A granted
// answer to node carries ValidUntil.
func (c *Client) Acquire(ctx context.Context, group, node, peer string, epoch uint64) (Grant, error) {
	return c.grant(ctx, "/v1/acquire", node, acquireRequest{Group: group, Node: node, Peer: peer, Epoch: epoch})
}

// SetOutdated marks peer outdated or up to date (see Server.SetOutdated).
func (c *Client) SetOutdated(ctx context.Context, group, node string, epoch uint64, peer string, outdated bool) (Grant, error) {
	return c.grant(ctx, "/v1/outdated", node, outdatedRequest{Group: group, Node: node, Epoch: epoch, Peer: peer, Outdated: outdated})
}

// Release gives up node's lease (see Server.Release).
func (c *Client) Release(ctx context.Context, group, node string, epoch uint64) (Grant, error) {
	return c.grant(ctx, "/v1/release", node, releaseRequest{Group: group, Node: node, Epoch: epoch})
}

// Handover makes to the holder (see Server.Handover).
func (c *Client) Handover(ctx context.Context, group, node string, epoch uint64, to string) (Grant, error) {
	return c.grant(ctx, "/v1/handover", node, handoverRequest{Group: group, Node: node, Epoch: epoch, To: to})
}

// Status is one group's state; ErrUnknownGroup if the witness has none.
func (c *Client) Status(ctx context.Context, group string) (State, error) {
	var st State
	_, err := c.do(ctx, http.MethodGet, "/v1/status?group="+url.QueryEscape(group), nil, &st)
	return st, err
}

// List is every group's state.
func (c *Client) List(ctx context.Context) ([]State, error) {
	var sts []State
	_, err := c.do(ctx, http.MethodGet, "/v1/list", nil, &sts)
	return sts, err
}

func (c *Client) grant(ctx context.Context, path, node string, req any) (Grant, error) {
	var g Grant
	sent, err := c.do(ctx, http.MethodPost, path, req, &g)
	if err != nil {
		return Grant{}, err
	}
	// The witness counts the lease from when it answered; counting from
	// before the request left, less a tenth, makes ours end first even if
	// the clocks run a little apart.
	if g.Granted && g.Holder == node && g.Lease > 0 {
		g.ValidUntil = sent.Add(g.Lease - g.Lease/10)
	}
	return g, nil
}

// do sends one request and decodes the answer into out; it returns when
// the request was sent (monotonic clock).
func (c *Client) do(ctx context.Context, method, path string, in, out any) (time.Time, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return time.Time{}, err
		}
		body = bytes.NewReader(b)
	}
	rctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, method, c.base+path, body)
	if err != nil {
		return time.Time{}, fmt.Errorf("witness %s: %w", c.o.Addr, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.o.Token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	sent := time.Now()
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return sent, fmt.Errorf("witness %s: %w", c.o.Addr, ctx.Err())
		}
		return sent, fmt.Errorf("%w: %s (timeout %s): %v", ErrUnreachable, c.o.Addr, c.o.Timeout, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		if ctx.Err() != nil {
			return sent, fmt.Errorf("witness %s: %w", c.o.Addr, ctx.Err())
		}
		return sent, fmt.Errorf("%w: %s: reading the answer: %v", ErrUnreachable, c.o.Addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		msg := string(bytes.TrimSpace(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		var class error
		switch e.Code {
		case codeUnauthorized:
			class = ErrUnauthorized
		case codeBadRequest:
			class = ErrBadRequest
		case codeUnknownGroup:
			class = ErrUnknownGroup
		case codeFailed:
			// To a host, a witness that cannot save gives no vote.
			return sent, &twoClassError{fmt.Errorf("%w: %s: %s", ErrFailed, c.o.Addr, msg), ErrUnreachable}
		case codeClosed:
			class = ErrUnreachable
		default:
			return sent, fmt.Errorf("witness %s: %s %s: HTTP %d: %s", c.o.Addr, method, path, resp.StatusCode, msg)
		}
		return sent, fmt.Errorf("%w: %s: %s", class, c.o.Addr, msg)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return sent, fmt.Errorf("witness %s: %s %s: answer is not JSON: %v", c.o.Addr, method, path, err)
	}
	return sent, nil
}

// CloseIdleConnections closes the client's idle connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// twoClassError is err that also matches class under errors.Is.
type twoClassError struct {
	err   error
	class error
}

func (e *twoClassError) Error() string   { return e.err.Error() }
func (e *twoClassError) Unwrap() []error { return []error{e.err, e.class} }
