package control

import (
	"context"
	"errors"
	"time"

	"github.com/strata-storage/strata/cow"
)

// Scrub API:
//
//	GET  /v1/scrub                 -> ScrubStatus
//	POST /v1/scrub  ScrubRequest   -> NDJSON events: Scrub (progress), then ScrubReport
type (
	ScrubReport   = cow.ScrubReport
	ScrubProgress = cow.ScrubProgress
	DamagedBlock  = cow.DamagedBlock
)

// ScrubRequest runs one pass now (`strata scrub --now`).
type ScrubRequest struct {
	// Volume limits the pass to one volume ("": the pool).
	Volume string `json:"volume,omitempty"`
	// Rate bounds the bytes read a second (0: the daemon's --scrub-rate;
	// -1: unbounded).
	Rate int64 `json:"rate,omitempty"`
	// From are sites to fetch good copies of damaged blocks from, besides
	// the strata:// targets the volumes replicate to (strata replication
	// add).
	From []TargetSpec `json:"from,omitempty"`
	// NoRepair only reports.
	NoRepair bool `json:"no_repair,omitempty"`
}

// ScrubStatus is the scrubber's state: the pass running, the last one, the
// schedule.
type ScrubStatus struct {
	Running  *ScrubProgress `json:"running,omitempty"`
	Last     *ScrubReport   `json:"last,omitempty"`
	Interval time.Duration  `json:"interval"` // 0: no background passes
	Rate     int64          `json:"rate"`     // bytes a second (0: unbounded)
	Next     time.Time      `json:"next,omitzero"`
	// LastError: the last pass failed (a read error other than a
	// checksum, the pool closing) at LastErrorAt, after Last.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// ScrubStatus returns the scrubber's state and the last pass's report.
func (c *Client) ScrubStatus(ctx context.Context) (ScrubStatus, error) {
	return request[ScrubStatus](ctx, c, "GET", "/v1/scrub", nil)
}

// Scrub runs one pass in the daemon and waits for its report, calling
// progress now and then while it runs.
func (c *Client) Scrub(ctx context.Context, req ScrubRequest, progress func(ScrubProgress)) (ScrubReport, error) {
	var res *ScrubReport
	err := c.stream(ctx, "/v1/scrub", req, func(ev Event) {
		if ev.Scrub != nil && progress != nil {
			progress(*ev.Scrub)
		}
		if ev.ScrubReport != nil {
			res = ev.ScrubReport
		}
	})
	if err == nil && res == nil {
		err = errors.New("the daemon ended the scrub without a report")
	}
	if err != nil {
		return ScrubReport{}, err
	}
	return *res, nil
}
