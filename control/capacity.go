package control

import (
	"context"
	"net/url"
	"strconv"
	"time"
)

// VolumeMeta is what an admin notes on a volume for the capacity and
// sprawl report: who owns it, labels to filter by, and when it may go.
type VolumeMeta struct {
	Owner   string            `json:"owner,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Expires time.Time         `json:"expires,omitzero"`
}

// MetaChange changes a volume's VolumeMeta (volume create and the
// settings request): Owner replaces the owner ("" clears it), each label
// is set (an empty value removes the key), Expires is a date (2027-01-31),
// an RFC 3339 time, a duration from now (30d, 12h) or "never".
type MetaChange struct {
	Owner   *string           `json:"owner,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Expires *string           `json:"expires,omitempty"`
}

// Empty reports whether the change changes nothing.
func (m MetaChange) Empty() bool { return m.Owner == nil && len(m.Labels) == 0 && m.Expires == nil }

// Forecast is the pool's growth and when its filesystem fills at that
// rate. A rate is nil until the daemon has a day of history; DaysUntilFull
// is nil while the pool does not grow.
type Forecast struct {
	UsedBytes int64 `json:"used_bytes"` // journal and index on disk
	FreeBytes int64 `json:"free_bytes"` // left on the filesystem
	// Bytes a day over the last 7 and 30 days (or as many as there are).
	Growth7d  *float64 `json:"growth_per_day_7d,omitempty"`
	Growth30d *float64 `json:"growth_per_day_30d,omitempty"`
	// DaysUntilFull at the faster of the two rates.
	DaysUntilFull *float64 `json:"days_until_full,omitempty"`
	// Warning: DaysUntilFull is under the warning threshold (14 days).
	Warning bool `json:"warning,omitempty"`
}

// VolumeReport is one volume in the capacity and sprawl report.
type VolumeReport struct {
	Name string `json:"name"`
	VolumeMeta
	Size       int64     `json:"size"`
	Written    int64     `json:"written"`
	Created    time.Time `json:"created"`
	Attached   int64     `json:"attached"`
	LastAttach time.Time `json:"last_attach,omitzero"`
	LastWrite  time.Time `json:"last_write,omitzero"`
	// Written in the last 7 and 30 days (bytes the clients sent).
	Written7d  int64 `json:"written_7d"`
	Written30d int64 `json:"written_30d"`
	// Reclaimable is what deleting the volume would free (df's
	// reclaimable: its head, history and snapshots, less what other
	// volumes' clones show).
	Reclaimable int64 `json:"reclaimable"`
	// IdleDays: days since it was last attached or written (or created).
	IdleDays float64 `json:"idle_days"`
	Idle     bool    `json:"idle"`
	Expired  bool    `json:"expired"`
}

// Report is `strata report`: volumes by what deleting them would free,
// the idle and expired ones, and the pool's growth forecast.
type Report struct {
	At       time.Time      `json:"at"`
	IdleDays int            `json:"idle_days"` // the threshold
	Volumes  []VolumeReport `json:"volumes"`   // largest Reclaimable first
	Idle     []string       `json:"idle"`
	Expired  []string       `json:"expired"`
	// IdleBytes and ExpiredBytes: what deleting the idle (expired)
	// volumes would free, each counted alone.
	IdleBytes    int64    `json:"idle_reclaimable"`
	ExpiredBytes int64    `json:"expired_reclaimable"`
	Forecast     Forecast `json:"forecast"`
}

// VolumeMetas is every volume's metadata (volumes without any are left
// out).
func (c *Client) VolumeMetas(ctx context.Context) (map[string]VolumeMeta, error) {
	return request[map[string]VolumeMeta](ctx, c, "GET", "/v1/volmeta", nil)
}

// Report is the capacity and sprawl report; idleDays <= 0 is the
// daemon's default (30).
func (c *Client) Report(ctx context.Context, idleDays int) (Report, error) {
	q := url.Values{}
	if idleDays > 0 {
		q.Set("idle_days", strconv.Itoa(idleDays))
	}
	return request[Report](ctx, c, "GET", "/v1/report?"+q.Encode(), nil)
}
