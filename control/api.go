// Package control is the control API of a running strata daemon: JSON over
// HTTP on the daemon's control socket (DATA/control.sock, mode 0600, so only
// the daemon's user and root can use it). It owns the one definition of the
// API's requests and replies, and Client, the Go client the CLI and tests
// use. The daemon package serves it.
//
//	GET    /v1/volumes                      -> []VolumeInfo
//	POST   /v1/volumes        CreateVolumeRequest -> VolumeInfo
//	DELETE /v1/volumes/NAME?force=1         -> DeleteReply
//	POST   /v1/volumes/NAME/resize ResizeRequest -> VolumeInfo
//	POST   /v1/volumes/NAME/settings SettingsRequest
//	GET    /v1/access                       -> map[VOL]Access
//	GET    /v1/volmeta                      -> map[VOL]VolumeMeta
//	GET    /v1/report?idle_days=N           -> Report
//	GET    /v1/qos                          -> map[VOL]QoS
//	GET    /v1/status                       -> Status
//	POST   /v1/volumes/NAME/snapshots SnapshotRequest -> SnapshotCreated
//	GET    /v1/volumes/NAME/snapshots       -> []SnapshotInfo
//	DELETE /v1/volumes/NAME/snapshots/SNAP
//	POST   /v1/volumes/NAME/rollback RollbackRequest -> Point
//	GET    /v1/volumes/NAME/history?buckets=N -> History
//	POST   /v1/clones         CloneRequest  -> VolumeInfo
//	GET    /v1/df                           -> Space
//	POST   /v1/gc                           -> GCStats
//	POST   /v1/replicate      ReplicateRequest -> Event stream (NDJSON)
//	GET    /v1/replication                  -> []ReplicationStatus
//	POST   /v1/replication    AddReplicationRequest -> Replication
//	DELETE /v1/replication?id=ID
//	POST   /v1/s3/compact     CompactRequest -> Event stream (NDJSON)
//	POST   /v1/volumes/NAME/promote         -> ReplicaState
//	POST   /v1/volumes/NAME/demote DemoteRequest -> DemoteReply
//	POST   /v1/restore        RestoreRequest -> Event stream (NDJSON)
//	GET    /v1/schedules                    -> []ScheduleStatus
//	PUT    /v1/schedules/VOL  Schedule      -> Schedule
//	DELETE /v1/schedules/VOL
//	GET    /metrics                         -> Prometheus text format
//	GET    /debug/pprof/...                 -> Go profiles (net/http/pprof)
//
// Errors are Error ({"error": "...", "code": "..."}) with a matching HTTP
// status; a streamed reply ends with an Event that carries them instead.
//
// The web console (strata serve --console) serves the same API under /api/
// to a logged-in browser or to "Authorization: Bearer TOKEN" (all but
// /debug/); its refusals are CodeAuth (no or a wrong token) and
// CodeRefused (cross-site, no CSRF token, or a read-only console).
package control

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/cow"
	"github.com/strata-storage/strata/replica"
)

// The replies that are the engine's own values, under the API's names.
type (
	VolumeInfo   = cow.VolumeInfo
	Snapshot     = cow.Snapshot
	Point        = cow.Point
	History      = cow.History
	Branch       = cow.Branch
	Space        = cow.Space
	GCStats      = cow.GCStats
	PoolStats    = cow.Stats
	ReplicaState = cow.ReplicaState
	Connection   = nbd.ConnInfo
	Progress     = replica.Progress
	ShipResult   = replica.Result
	Restored     = replica.Restored
	Compacted    = replica.Compacted
)

// Branch kinds (History.Branches).
const (
	BranchOrigin   = cow.BranchOrigin
	BranchRollback = cow.BranchRollback
	BranchClone    = cow.BranchClone
)

// Error is a failed request's reply. Code classifies it (one of the Code
// constants); Message is what users read.
type Error struct {
	Message string `json:"error"`
	Code    string `json:"code"`
}

func (e *Error) Error() string { return e.Message }

// Error codes.
const (
	CodeNotFound   = "not_found"
	CodeExists     = "exists"
	CodeBusy       = "busy" // another run holds it: try again later
	CodeShrinkData = "shrink_data"
	CodePoint      = "point" // a point in time that is not available
	CodeInvalid    = "invalid"
	CodeNoSpace    = "no_space"
	CodeIO         = "io"
	CodeAuth       = "auth"
	CodeRefused    = "refused"
	CodeCorrupt    = "corrupt"
	CodeInternal   = "internal"
)

// NameRules says what a volume or snapshot name may be.
const NameRules = cow.NameRules

// ValidateName checks a volume or snapshot name by the rules the daemon
// applies, so a client can refuse a bad name before it sends a request.
func ValidateName(name string) error { return cow.ValidateName(name) }

// UserMessage is err's text as the API and the CLI show it: without the
// package prefixes ("cow: ", "blockdev: ") that error classes carry for
// developers.
func UserMessage(err error) string {
	msg := err.Error()
	for _, p := range []string{"cow: ", "blockdev: ", "cdp: ", "control: ", "qga: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return msg
}

type CreateVolumeRequest struct {
	Name string `json:"name"`
	Size int64  `json:"size"`
	MetaChange
}

type ResizeRequest struct {
	Size  int64 `json:"size"`
	Force bool  `json:"force"` // shrink even if it discards written data
}

// SettingsRequest changes the settings that are set (non-nil).
type SettingsRequest struct {
	Retention *time.Duration `json:"retention"` // 0: the pool's
	ReadOnly  *bool          `json:"read_only"`
	// Allow and AllowCert replace the volume's access rules (an empty
	// list clears one); see Access.
	Allow     *[]string `json:"allow,omitempty"`
	AllowCert *[]string `json:"allow_cert,omitempty"`
	MetaChange
	// QoS changes the volume's I/O limits; see QoSChange.
	QoS *QoSChange `json:"qos,omitempty"`
}

// QoS is a volume's I/O limits, shared by all its connections. A zero
// limit is no limit. Reads count against IOPS, ReadIOPS, BW and ReadBW;
// writes against IOPS, WriteIOPS, BW and WriteBW; a trim or write-zeroes
// counts as one write operation and no bytes; flushes are not limited. A
// request over a limit is delayed, never refused.
type QoS struct {
	IOPS      int64 `json:"iops,omitempty"`
	ReadIOPS  int64 `json:"read_iops,omitempty"`
	WriteIOPS int64 `json:"write_iops,omitempty"`
	BW        int64 `json:"bw,omitempty"` // bytes a second
	ReadBW    int64 `json:"read_bw,omitempty"`
	WriteBW   int64 `json:"write_bw,omitempty"`
	// Burst is the unused allowance a limit keeps, in seconds of it: a
	// volume idle for a while may go that much over the limit at once.
	Burst float64 `json:"burst"`
}

// Limited says whether any limit is set.
func (q QoS) Limited() bool {
	return q.IOPS > 0 || q.ReadIOPS > 0 || q.WriteIOPS > 0 || q.BW > 0 || q.ReadBW > 0 || q.WriteBW > 0
}

// QoSChange changes the limits that are set (non-nil); 0 clears one.
type QoSChange struct {
	IOPS      *int64   `json:"iops,omitempty"`
	ReadIOPS  *int64   `json:"read_iops,omitempty"`
	WriteIOPS *int64   `json:"write_iops,omitempty"`
	BW        *int64   `json:"bw,omitempty"`
	ReadBW    *int64   `json:"read_bw,omitempty"`
	WriteBW   *int64   `json:"write_bw,omitempty"`
	Burst     *float64 `json:"burst,omitempty"`
}

// Apply returns q with the change made.
func (c QoSChange) Apply(q QoS) QoS {
	for _, f := range []struct {
		from *int64
		to   *int64
	}{{c.IOPS, &q.IOPS}, {c.ReadIOPS, &q.ReadIOPS}, {c.WriteIOPS, &q.WriteIOPS}, {c.BW, &q.BW}, {c.ReadBW, &q.ReadBW}, {c.WriteBW, &q.WriteBW}} {
		if f.from != nil {
			*f.to = *f.from
		}
	}
	if c.Burst != nil {
		q.Burst = *c.Burst
	}
	return q
}

// Access is a volume's access rules for TCP NBD clients (Unix-socket
// clients are local and always allowed). A client may see and open the
// volume (and its VOL@POINT exports) when its address is in one of Allow's
// networks (if Allow is set) and its verified TLS client certificate's CN
// or a DNS, email or URI SAN is in AllowCert (if AllowCert is set).
type Access struct {
	Allow     []string `json:"allow,omitempty"`      // CIDRs or addresses
	AllowCert []string `json:"allow_cert,omitempty"` // certificate names
}

type DeleteReply struct {
	Disconnected int `json:"disconnected"` // NBD clients a forced delete cut off
}

type SnapshotRequest struct {
	Name  string `json:"name"`
	Label string `json:"label"`
	// Quiesce: freeze the application or guest around the snapshot.
	Quiesce *Quiesce `json:"quiesce,omitempty"`
}

// SnapshotCreated is the reply to a snapshot create: the snapshot, and
// what went wrong with a freeze that did not stop it (a freeze that timed
// out: the snapshot is crash-consistent).
type SnapshotCreated struct {
	Snapshot
	Warning string `json:"warning,omitempty"`
}

type SnapshotInfo struct {
	Snapshot
	Exclusive int64 `json:"exclusive"` // bytes only this snapshot holds
}

type RollbackRequest struct {
	To    string `json:"to"`    // a point: snapshot, RFC 3339 time or seq:N
	Force bool   `json:"force"` // even while clients are attached read-write
}

type CloneRequest struct {
	Source string `json:"source"` // VOL@POINT
	Name   string `json:"name"`
}

// Status is the daemon, its pool, volumes and connections.
type Status struct {
	Version     string              `json:"version"`
	PID         int                 `json:"pid"`
	DataDir     string              `json:"data_dir"`
	Started     time.Time           `json:"started"`
	NBDSocket   string              `json:"nbd_socket,omitempty"`
	NBDListen   string              `json:"nbd_listen,omitempty"`
	Control     string              `json:"control_socket"`
	Pool        PoolStats           `json:"pool"`
	Retention   time.Duration       `json:"retention"`
	RetainSize  int64               `json:"retention_size,omitempty"`
	HistoryCut  time.Time           `json:"history_cut,omitzero"`
	LastGC      *GCReport           `json:"last_gc,omitempty"`
	Volumes     []VolumeInfo        `json:"volumes"`
	Connections []Connection        `json:"connections"`
	Replication []ReplicationStatus `json:"replication,omitempty"`
	Capacity    *Forecast           `json:"capacity,omitempty"`
	Scrub       *ScrubStatus        `json:"scrub,omitempty"`
	QoS         map[string]QoS      `json:"qos,omitempty"` // limited volumes
}

// GCReport is the last garbage collection pass, background or manual.
type GCReport struct {
	At    time.Time `json:"at"`
	Stats GCStats   `json:"stats"`
	Error string    `json:"error,omitempty"`
}

// TargetSpec says where and how to ship: a strata:// site or S3 URLs. The
// daemon reads the files it names: give absolute paths.
type TargetSpec struct {
	To        string `json:"to"`
	TokenFile string `json:"token_file,omitempty"`
	TLSCA     string `json:"tls_ca,omitempty"`
	Insecure  bool   `json:"insecure,omitempty"`
	EC        string `json:"ec,omitempty"`      // erasure coding K+M over S3 targets
	BWLimit   int64  `json:"bwlimit,omitempty"` // bytes a second (0: none)
	// KeepHistory and Keep: the S3 target's retention policy (none:
	// everything stays). History older than KeepHistory is compacted,
	// but for the points the Keep rules keep.
	KeepHistory time.Duration `json:"keep_history,omitempty"`
	Keep        *Keep         `json:"keep,omitempty"`
}

// HasRetention reports whether the target has a retention policy.
func (t TargetSpec) HasRetention() bool { return t.KeepHistory > 0 || t.Keep != nil }

// RetentionPolicy describes the retention policy as the flags set it.
func (t TargetSpec) RetentionPolicy() string {
	var parts []string
	if t.KeepHistory > 0 {
		parts = append(parts, "--keep-history "+FormatDays(t.KeepHistory))
	}
	if t.Keep != nil {
		parts = append(parts, "--keep "+t.Keep.String())
	}
	return strings.Join(parts, " ")
}

// FormatDays prints a duration in days when it is whole days ("7d").
func FormatDays(d time.Duration) string {
	if d > 0 && d%(24*time.Hour) == 0 {
		return fmt.Sprintf("%dd", d/(24*time.Hour))
	}
	return d.String()
}

// Redacted is the target without credentials, for keys and messages.
func (t TargetSpec) Redacted() string {
	var parts []string
	for _, s := range strings.Split(t.To, ",") {
		if u, err := url.Parse(strings.TrimSpace(s)); err == nil {
			u.User = nil
			u.RawQuery = ""
			s = u.String()
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, ",")
}

// SlotID names a (volume, target) pair for the one run at a time that
// ships to or compacts a target: ReplicationID with each target's path
// cleaned of trailing slashes, so that s3://b/p and s3://b/p/ (the same
// objects) share one slot.
func SlotID(volume string, t TargetSpec) string {
	parts := strings.Split(t.Redacted(), ",")
	for i, s := range parts {
		if u, err := url.Parse(s); err == nil && u.Scheme != "" {
			u.Path = strings.TrimRight(u.Path, "/")
			u.RawPath = ""
			parts[i] = u.String()
		}
	}
	return volume + " -> " + strings.Join(parts, ",")
}

// ReplicationID names a (volume, target) pair: the id of its replication,
// its journal pin and its lock.
func ReplicationID(volume string, t TargetSpec) string { return volume + " -> " + t.Redacted() }

// Replication is a configured replication (`strata replication add`).
type Replication struct {
	ID     string `json:"id"`
	Volume string `json:"volume"`
	TargetSpec
	Mode  string        `json:"mode"` // continuous or interval
	Every time.Duration `json:"every,omitempty"`
}

// ReplicationStatus is what the daemon knows of one target.
type ReplicationStatus struct {
	ID         string    `json:"id"`
	Volume     string    `json:"volume"`
	Target     string    `json:"target"`
	Mode       string    `json:"mode"` // continuous, interval, or once (pinned by replicate --once)
	Acked      uint64    `json:"acked_seq"`
	LagRecords int64     `json:"lag_records"`
	LagBytes   int64     `json:"lag_bytes"`
	LagSeconds float64   `json:"lag_seconds"`
	Running    bool      `json:"running"`
	LastRun    time.Time `json:"last_run,omitempty"`
	LastOK     time.Time `json:"last_ok,omitempty"`
	LastError  string    `json:"last_error,omitempty"`
	Shipped    int64     `json:"shipped_bytes"` // data shipped since the daemon started
}

// ReplicateRequest ships a volume once (`strata replicate --once`).
type ReplicateRequest struct {
	Volume string `json:"volume"`
	TargetSpec
}

type AddReplicationRequest struct {
	Volume string `json:"volume"`
	TargetSpec
	Mode  string `json:"mode"`  // continuous (default) or interval
	Every string `json:"every"` // interval mode: a duration such as 5m or 1d
}

type RestoreRequest struct {
	TargetSpec
	Volume string `json:"volume"` // the volume's name at the target
	At     string `json:"at"`     // a point (default: the newest shipped)
	New    string `json:"new"`    // the volume created here
}

// CompactRequest applies an S3 target's retention policy by hand: the
// target's flags, or else the policy of the replication configured for
// the volume and target.
type CompactRequest struct {
	TargetSpec
	Volume string `json:"volume"` // the volume's name at the target
}

type DemoteRequest struct {
	DiscardLocal bool `json:"discard_local"`
}

type DemoteReply struct {
	Message string `json:"message"`
}

// Event is one line of a streamed reply (replicate, restore): progress, then
// the result or an error.
type Event struct {
	Progress *Progress   `json:"progress,omitempty"`
	Result   *ShipResult `json:"result,omitempty"`
	Restore  *Restored   `json:"restore,omitempty"`
	// Scrub is a scrub pass's progress; ScrubReport its result.
	Scrub       *ScrubProgress `json:"scrub,omitempty"`
	ScrubReport *ScrubReport   `json:"scrub_report,omitempty"`
	Compact     *Compacted     `json:"compact,omitempty"`
	Error       string         `json:"error,omitempty"`
	Code        string         `json:"code,omitempty"`
}
