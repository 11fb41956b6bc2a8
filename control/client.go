package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// ErrNoDaemon: nothing answers on the control socket.
var ErrNoDaemon = errors.New("strata daemon not reachable")

// Client talks to a running daemon over its control socket. A failed
// request returns an *Error with the daemon's message and code, or an error
// that wraps ErrNoDaemon. Its methods are safe for concurrent use.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client of the daemon whose control socket is socket.
// It connects on each request.
func NewClient(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{
		Timeout: 5 * time.Minute,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

func (c *Client) Volumes(ctx context.Context) ([]VolumeInfo, error) {
	return request[[]VolumeInfo](ctx, c, "GET", "/v1/volumes", nil)
}

func (c *Client) CreateVolume(ctx context.Context, req CreateVolumeRequest) (VolumeInfo, error) {
	return request[VolumeInfo](ctx, c, "POST", "/v1/volumes", req)
}

// DeleteVolume deletes a volume; force disconnects its NBD clients first.
func (c *Client) DeleteVolume(ctx context.Context, name string, force bool) (DeleteReply, error) {
	path := volumePath(name)
	if force {
		path += "?force=1"
	}
	return request[DeleteReply](ctx, c, "DELETE", path, nil)
}

func (c *Client) ResizeVolume(ctx context.Context, name string, req ResizeRequest) (VolumeInfo, error) {
	return request[VolumeInfo](ctx, c, "POST", volumePath(name, "resize"), req)
}

func (c *Client) SetVolume(ctx context.Context, name string, req SettingsRequest) error {
	return c.do(ctx, "POST", volumePath(name, "settings"), req, nil)
}

func (c *Client) Status(ctx context.Context) (Status, error) {
	return request[Status](ctx, c, "GET", "/v1/status", nil)
}

func (c *Client) CreateSnapshot(ctx context.Context, vol string, req SnapshotRequest) (Snapshot, error) {
	return request[Snapshot](ctx, c, "POST", volumePath(vol, "snapshots"), req)
}

// CreateSnapshotQuiesced is CreateSnapshot with the reply's warning (a
// freeze that timed out).
func (c *Client) CreateSnapshotQuiesced(ctx context.Context, vol string, req SnapshotRequest) (SnapshotCreated, error) {
	return request[SnapshotCreated](ctx, c, "POST", volumePath(vol, "snapshots"), req)
}

func (c *Client) Snapshots(ctx context.Context, vol string) ([]SnapshotInfo, error) {
	return request[[]SnapshotInfo](ctx, c, "GET", volumePath(vol, "snapshots"), nil)
}

func (c *Client) DeleteSnapshot(ctx context.Context, vol, name string) error {
	return c.do(ctx, "DELETE", volumePath(vol, "snapshots", name), nil, nil)
}

func (c *Client) Rollback(ctx context.Context, vol string, req RollbackRequest) (Point, error) {
	return request[Point](ctx, c, "POST", volumePath(vol, "rollback"), req)
}

// History is the volume's points in time, with its writes in buckets rows.
func (c *Client) History(ctx context.Context, vol string, buckets int) (History, error) {
	return request[History](ctx, c, "GET", volumePath(vol, "history")+"?buckets="+strconv.Itoa(buckets), nil)
}

func (c *Client) Clone(ctx context.Context, req CloneRequest) (VolumeInfo, error) {
	return request[VolumeInfo](ctx, c, "POST", "/v1/clones", req)
}

func (c *Client) Space(ctx context.Context) (Space, error) {
	return request[Space](ctx, c, "GET", "/v1/df", nil)
}

// GC runs a garbage collection pass now.
func (c *Client) GC(ctx context.Context) (GCStats, error) {
	return request[GCStats](ctx, c, "POST", "/v1/gc", nil)
}

// Replicate ships a volume once, calling progress now and then while it runs.
func (c *Client) Replicate(ctx context.Context, req ReplicateRequest, progress func(Progress)) (ShipResult, error) {
	return streamResult(ctx, c, "/v1/replicate", req, progress, func(ev Event) *ShipResult { return ev.Result },
		"the daemon ended the run without a result")
}

func (c *Client) Replications(ctx context.Context) ([]ReplicationStatus, error) {
	return request[[]ReplicationStatus](ctx, c, "GET", "/v1/replication", nil)
}

func (c *Client) AddReplication(ctx context.Context, req AddReplicationRequest) (Replication, error) {
	return request[Replication](ctx, c, "POST", "/v1/replication", req)
}

// RemoveReplication stops a replication (id is ReplicationID's) and
// releases the journal it keeps.
func (c *Client) RemoveReplication(ctx context.Context, id string) error {
	return c.do(ctx, "DELETE", "/v1/replication?id="+url.QueryEscape(id), nil, nil)
}

func (c *Client) Promote(ctx context.Context, vol string) (ReplicaState, error) {
	return request[ReplicaState](ctx, c, "POST", volumePath(vol, "promote"), struct{}{})
}

func (c *Client) Demote(ctx context.Context, vol string, req DemoteRequest) (DemoteReply, error) {
	return request[DemoteReply](ctx, c, "POST", volumePath(vol, "demote"), req)
}

// Restore rebuilds a volume from a target, calling progress as it goes.
func (c *Client) Restore(ctx context.Context, req RestoreRequest, progress func(Progress)) (Restored, error) {
	return streamResult(ctx, c, "/v1/restore", req, progress, func(ev Event) *Restored { return ev.Restore },
		"the daemon ended the restore without a result")
}

// CompactS3 applies an S3 target's retention policy now.
func (c *Client) CompactS3(ctx context.Context, req CompactRequest, progress func(Progress)) (Compacted, error) {
	return streamResult(ctx, c, "/v1/s3/compact", req, progress, func(ev Event) *Compacted { return ev.Compact },
		"the daemon ended the compaction without a result")
}

// Metrics is the daemon's counters in the Prometheus text format.
func (c *Client) Metrics(ctx context.Context) (string, error) {
	b, err := c.call(ctx, "GET", "/metrics", nil)
	return string(b), err
}

// volumePath is the path of a volume's resource.
func volumePath(name string, rest ...string) string {
	p := "/v1/volumes/" + url.PathEscape(name)
	for _, r := range rest {
		p += "/" + url.PathEscape(r)
	}
	return p
}

// send makes a request and returns the reply of a request that succeeded.
func (c *Client) send(ctx context.Context, hc *http.Client, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://strata"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("%w: no strata serve answers on %s (%v)", ErrNoDaemon, c.socket, rootCause(err))
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var ae Error
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		if json.Unmarshal(b, &ae) == nil && ae.Message != "" {
			return nil, &ae
		}
		return nil, fmt.Errorf("daemon answered %s", resp.Status)
	}
	return resp, nil
}

// request makes a request and decodes its reply into a T.
func request[T any](ctx context.Context, c *Client, method, path string, body any) (T, error) {
	var out T
	err := c.do(ctx, method, path, body, &out)
	return out, err
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	b, err := c.call(ctx, method, path, body)
	if err != nil || out == nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// call makes a request and returns the reply's body.
func (c *Client) call(ctx context.Context, method, path string, body any) ([]byte, error) {
	resp, err := c.send(ctx, c.http, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read reply from daemon: %w", err)
	}
	return b, nil
}

// streamResult posts a request whose reply is NDJSON events, passes their
// progress on and returns the result that result finds in them; a stream
// without one fails with the message missing.
func streamResult[T any](ctx context.Context, c *Client, path string, body any, progress func(Progress), result func(Event) *T, missing string) (T, error) {
	var res *T
	err := c.stream(ctx, path, body, func(ev Event) {
		if ev.Progress != nil && progress != nil {
			progress(*ev.Progress)
		}
		if r := result(ev); r != nil {
			res = r
		}
	})
	if err == nil && res == nil {
		err = errors.New(missing)
	}
	if err != nil {
		var zero T
		return zero, err
	}
	return *res, nil
}

// stream posts a request whose reply is NDJSON events, calling fn for each
// until one carries an error.
func (c *Client) stream(ctx context.Context, path string, body any, fn func(Event)) error {
	hc := *c.http
	hc.Timeout = 0 // runs take as long as they take
	resp, err := c.send(ctx, &hc, "POST", path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad reply from the daemon: %w", err)
		}
		if ev.Error != "" {
			return &Error{Message: ev.Error, Code: ev.Code}
		}
		fn(ev)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("the daemon stopped answering: %w", err)
	}
	return nil
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// Access returns the volumes' access rules by volume (volumes without
// rules are left out).
func (c *Client) Access(ctx context.Context) (map[string]Access, error) {
	return request[map[string]Access](ctx, c, "GET", "/v1/access", nil)
}

// QoS returns the volumes' I/O limits by volume (volumes without limits
// are left out).
func (c *Client) QoS(ctx context.Context) (map[string]QoS, error) {
	return request[map[string]QoS](ctx, c, "GET", "/v1/qos", nil)
}
