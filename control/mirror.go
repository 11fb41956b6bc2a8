package control

import (
	"context"
	"net/url"
	"time"
)

// Mirror roles and states (MirrorStatus).
const (
	RolePrimary   = "primary"
	RoleSecondary = "secondary"

	// MirrorSyncing: the secondary is being brought up to date (a first
	// copy, or a resync after an outage); it may not take over yet.
	MirrorSyncing = "syncing"
	// MirrorInSync: every FLUSH and FUA write completes only once the
	// secondary holds it too.
	MirrorInSync = "in sync"
	// MirrorDegraded: the secondary is unreachable; the primary serves
	// alone (the witness agreed), recording what the secondary misses.
	MirrorDegraded = "degraded"
	// MirrorFenced: the primary lost its lease at the witness: it holds
	// I/O until it gets it back or another host takes over.
	MirrorFenced = "fenced"
	// MirrorFollowing: a secondary taking the primary's stream.
	MirrorFollowing = "following"
)

// MirrorAddRequest starts mirroring a volume to another host.
type MirrorAddRequest struct {
	Volume string `json:"volume"`
	// To is the secondary's replica listener (strata://HOST:PORT).
	To string `json:"to"`
	// Self is where the secondary reaches this host's replica listener
	// once it ships back (strata://HOST:PORT); default: this daemon's
	// --replica-listen address when it names a host.
	Self string `json:"self,omitempty"`
	// TokenFile holds the token both hosts' --replica-token-file hold
	// (and the witness's, unless WitnessTokenFile).
	TokenFile string `json:"token_file"`
	TLSCA     string `json:"tls_ca,omitempty"`
	Insecure  bool   `json:"insecure,omitempty"`
	// Witness is the witness's HOST:PORT ("": none, so no automatic
	// failover).
	Witness          string `json:"witness,omitempty"`
	WitnessTokenFile string `json:"witness_token_file,omitempty"`
}

// MirrorStatus is one mirrored volume's state on this host.
type MirrorStatus struct {
	Volume  string `json:"volume"`
	Group   string `json:"group"`
	Role    string `json:"role"`
	State   string `json:"state"`
	Epoch   uint64 `json:"epoch"`
	PeerURL string `json:"peer_url"`
	SelfURL string `json:"self_url,omitempty"`
	Witness string `json:"witness,omitempty"`
	// Primary: the point the secondary holds durably, the volume's newest
	// change, and the data the secondary does not hold yet.
	Acked     uint64 `json:"acked,omitempty"`
	Head      uint64 `json:"head,omitempty"`
	LagBytes  int64  `json:"lag_bytes,omitempty"` // -1: unknown (the secondary has not connected since this host took over)
	LeaseLeft string `json:"lease_left,omitempty"`
	// Syncing: data shipped by the copy in progress.
	SyncedBytes int64     `json:"synced_bytes,omitempty"`
	Since       time.Time `json:"since"` // when the state began
	LastError   string    `json:"last_error,omitempty"`
}

// MirrorSwitchoverRequest swaps roles with the secondary (planned).
// Final also ends the mirror afterwards and deletes the volume here (a
// migration).
type MirrorSwitchoverRequest struct {
	Final bool `json:"final,omitempty"`
}

// MirrorSwitchoverReply says what happened.
type MirrorSwitchoverReply struct {
	Message string `json:"message"`
	// Paused is how long I/O waited.
	Paused time.Duration `json:"paused_ns"`
}

// Mirrors lists the mirrored volumes.
func (c *Client) Mirrors(ctx context.Context) ([]MirrorStatus, error) {
	return request[[]MirrorStatus](ctx, c, "GET", "/v1/mirrors", nil)
}

// AddMirror starts mirroring a volume.
func (c *Client) AddMirror(ctx context.Context, req MirrorAddRequest) (MirrorStatus, error) {
	return request[MirrorStatus](ctx, c, "POST", "/v1/mirrors", req)
}

// RemoveMirror stops mirroring vol here (the other host keeps its copy).
func (c *Client) RemoveMirror(ctx context.Context, vol string) error {
	_, err := request[struct{}](ctx, c, "DELETE", "/v1/mirrors/"+url.PathEscape(vol), nil)
	return err
}

// Switchover hands vol's primary role to the secondary.
func (c *Client) Switchover(ctx context.Context, vol string, req MirrorSwitchoverRequest) (MirrorSwitchoverReply, error) {
	return request[MirrorSwitchoverReply](ctx, c, "POST", "/v1/mirrors/"+url.PathEscape(vol)+"/switchover", req)
}
