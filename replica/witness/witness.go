// Package witness owns the tie-breaker of Strata's synchronous mirror: a
// small server that, for each mirror group (one mirrored volume on two
// hosts), records which member may accept writes (the holder), under which
// epoch, for how long (a lease), and which member's copy is stale (the
// outdated one). It stores no volume data. The package holds the rules
// (who may acquire, renew, release, hand over, mark outdated), their
// durable state (DIR/witness.json), the HTTP server and its Go client.
//
// Safety rests on three things: a member becomes holder only when the
// previous holder's lease has run out or was given up, every change of
// holder raises the epoch (so a fenced holder's epoch is refused), and an
// outdated member never becomes holder. The lease is counted by the witness
// from when it answers and by the client from when it sent the request,
// minus a safety margin, so the client's view always ends first.
package witness

import (
	"errors"
	"fmt"
	"time"
)

// DefaultLease is the lease the server grants unless Options.Lease says
// otherwise.
const DefaultLease = 3 * time.Second

var (
	// ErrUnreachable: the witness did not answer within the client's
	// timeout (or could not be reached at all). A caller that needs a vote
	// treats it as "no vote".
	ErrUnreachable = errors.New("witness: unreachable")
	// ErrUnauthorized: the token was wrong.
	ErrUnauthorized = errors.New("witness: wrong token")
	// ErrBadRequest: the request was malformed (bad JSON, bad ids).
	ErrBadRequest = errors.New("witness: bad request")
	// ErrUnknownGroup: Status of a group the witness has never seen.
	ErrUnknownGroup = errors.New("witness: unknown group")
	// ErrFailed: the witness could not save its state durably and stopped
	// accepting changes and renewals until it is restarted. Errors of this
	// class also match ErrUnreachable on the client side: to a host it is
	// a witness that gives no vote.
	ErrFailed = errors.New("witness: state could not be saved; stopped accepting changes")
	// ErrClosed: the server was closed.
	ErrClosed = errors.New("witness: closed")
	// ErrDirInUse: another witness holds the data directory's lock.
	ErrDirInUse = errors.New("witness: data directory in use")
)

// State is one mirror group as the witness knows it.
type State struct {
	Group string `json:"group"`
	// Epoch rises by one with every change of holder; a holder presents it
	// on renewal, so one that was replaced is refused.
	Epoch uint64 `json:"epoch"`
	// Holder is the member that may accept writes; "" after a Release.
	Holder  string    `json:"holder"`
	Members [2]string `json:"members"`
	// Outdated is the member whose copy misses writes the holder
	// acknowledged ("" when both are in sync); it may not become holder.
	Outdated string `json:"outdated"`
	// LeaseUntil is, on the witness's clock, when the holder's lease ends
	// (zero: none). Kept in memory only; after a restart every group with
	// a holder is leased for one full lease.
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	// LeaseLeft is LeaseUntil less the witness's time of the answer
	// (0 when expired), the clock-independent view for clients.
	LeaseLeft time.Duration `json:"lease_left_ns"`
}

// Grant is the witness's answer to a request that asks for, or changes,
// a group. A refusal is not an error: Granted is false, Reason says why,
// and Epoch, Holder and Outdated say how the group stands, so a fenced
// holder learns it has to step down.
type Grant struct {
	Granted  bool   `json:"granted"`
	Epoch    uint64 `json:"epoch"`
	Holder   string `json:"holder"`
	Outdated string `json:"outdated"`
	// Lease is what the witness granted (0 when it granted none).
	Lease  time.Duration `json:"lease_ns"`
	Reason string        `json:"reason,omitempty"`
	// ValidUntil is set by the Client when the caller holds a lease from
	// this answer: the time the request was sent (monotonic clock) plus
	// Lease less a tenth of it. Never sent over the wire.
	ValidUntil time.Time `json:"-"`
}

// maxIDLen bounds group and node ids.
const maxIDLen = 128

// validID checks a group or node id: 1 to 128 of letters, digits and
// . _ - : @ /, so ids print safely in logs and tables.
func validID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: %s is empty", ErrBadRequest, what)
	}
	if len(id) > maxIDLen {
		return fmt.Errorf("%w: %s is %d bytes long; at most %d", ErrBadRequest, what, len(id), maxIDLen)
	}
	for _, r := range id {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case r == '.' || r == '_' || r == '-' || r == ':' || r == '@' || r == '/':
		default:
			return fmt.Errorf("%w: %s %q: use letters, digits and . _ - : @ /", ErrBadRequest, what, id)
		}
	}
	return nil
}
