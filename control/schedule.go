package control

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrBadSpec: a keep policy, schedule or command line that does not parse.
var ErrBadSpec = errors.New("control: invalid specification")

// Keep is a thinning policy, grandfather-father-son as sanoid keeps it: the
// newest scheduled snapshot always stays; Frequent keeps the newest N; each
// other rule keeps the newest snapshot in each of the N most recent hours
// (days, weeks from Monday, months, years; UTC) that have one. Snapshots
// taken by hand are never pruned.
type Keep struct {
	Frequent int `json:"frequent,omitempty"`
	Hourly   int `json:"hourly,omitempty"`
	Daily    int `json:"daily,omitempty"`
	Weekly   int `json:"weekly,omitempty"`
	Monthly  int `json:"monthly,omitempty"`
	Yearly   int `json:"yearly,omitempty"`
}

// keepRules names Keep's fields for ParseKeep and String, in order.
func (k *Keep) rules() []struct {
	name string
	n    *int
} {
	return []struct {
		name string
		n    *int
	}{{"frequent", &k.Frequent}, {"hourly", &k.Hourly}, {"daily", &k.Daily}, {"weekly", &k.Weekly}, {"monthly", &k.Monthly}, {"yearly", &k.Yearly}}
}

// ParseKeep parses "hourly=24,daily=14,weekly=8,monthly=12" (rules:
// frequent, hourly, daily, weekly, monthly, yearly; at least one).
func ParseKeep(s string) (Keep, error) {
	var k Keep
	if strings.TrimSpace(s) == "" {
		return k, fmt.Errorf("%w: empty keep policy (e.g. hourly=24,daily=14,weekly=8,monthly=12)", ErrBadSpec)
	}
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		n, err := strconv.Atoi(val)
		if !ok || err != nil || n < 0 || n > 100000 {
			return Keep{}, fmt.Errorf("%w: keep rule %q is not RULE=N (e.g. daily=14)", ErrBadSpec, part)
		}
		found := false
		for _, r := range k.rules() {
			if r.name == name {
				*r.n, found = n, true
			}
		}
		if !found {
			return Keep{}, fmt.Errorf("%w: unknown keep rule %q (frequent, hourly, daily, weekly, monthly, yearly)", ErrBadSpec, name)
		}
		if seen[name] {
			return Keep{}, fmt.Errorf("%w: keep rule %q given twice", ErrBadSpec, name)
		}
		seen[name] = true
	}
	if k.IsZero() {
		return Keep{}, fmt.Errorf("%w: keep policy %q keeps nothing but the newest snapshot", ErrBadSpec, s)
	}
	return k, nil
}

// IsZero reports whether no rule is set.
func (k Keep) IsZero() bool { return k == Keep{} }

// String is the policy as ParseKeep reads it.
func (k Keep) String() string {
	var parts []string
	for _, r := range k.rules() {
		if *r.n > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", r.name, *r.n))
		}
	}
	return strings.Join(parts, ",")
}

// DefaultFreezeTimeout bounds a freeze when Quiesce.Timeout is zero.
const DefaultFreezeTimeout = 10 * time.Second

// Quiesce says how the daemon freezes the application or guest around a
// snapshot: commands it runs (argv, no shell: give sh -c to have one), or
// a QEMU guest agent socket. If the freeze has not finished within
// Timeout, the thaw runs anyway and the snapshot is crash-consistent.
type Quiesce struct {
	FreezeCmd []string      `json:"freeze_cmd,omitempty"`
	ThawCmd   []string      `json:"thaw_cmd,omitempty"`
	QGA       string        `json:"qga,omitempty"` // the guest agent's Unix socket
	Timeout   time.Duration `json:"timeout,omitempty"`
}

// Validate checks that q names one way to freeze and to thaw.
func (q *Quiesce) Validate() error {
	switch {
	case q.QGA != "" && (len(q.FreezeCmd) > 0 || len(q.ThawCmd) > 0):
		return fmt.Errorf("%w: give either --qga or --freeze-cmd/--thaw-cmd, not both", ErrBadSpec)
	case q.QGA == "" && (len(q.FreezeCmd) == 0) != (len(q.ThawCmd) == 0):
		return fmt.Errorf("%w: --freeze-cmd and --thaw-cmd go together (a freeze with no thaw would leave the application frozen)", ErrBadSpec)
	case q.QGA == "" && len(q.FreezeCmd) == 0:
		return fmt.Errorf("%w: no freeze given (--freeze-cmd/--thaw-cmd or --qga)", ErrBadSpec)
	case q.Timeout < 0:
		return fmt.Errorf("%w: negative freeze timeout", ErrBadSpec)
	}
	return nil
}

// Schedule snapshots a volume every Every and thins its scheduled
// snapshots by Keep. Volume "" is the pool-wide default (strata serve
// --schedule-every/--schedule-keep), which volumes without a schedule of
// their own follow. On a replica the schedule takes no snapshots: it
// thins the copies of the source's scheduled snapshots by its own Keep.
type Schedule struct {
	Volume  string        `json:"volume"`
	Every   time.Duration `json:"every,omitempty"` // 0: take none, only thin
	Keep    Keep          `json:"keep"`
	Quiesce *Quiesce      `json:"quiesce,omitempty"`
}

// Validate checks a schedule.
func (s *Schedule) Validate() error {
	if s.Every != 0 && s.Every < time.Minute {
		return fmt.Errorf("%w: --every %s is shorter than a minute", ErrBadSpec, s.Every)
	}
	if s.Every > 0 && (24*time.Hour)%s.Every != 0 && s.Every%(24*time.Hour) != 0 {
		return fmt.Errorf("%w: --every %s does not divide a day (nor is whole days): snapshots would drift across the clock", ErrBadSpec, s.Every)
	}
	if s.Keep.IsZero() {
		return fmt.Errorf("%w: a schedule needs a keep policy (--keep hourly=24,daily=14,...)", ErrBadSpec)
	}
	if s.Quiesce != nil {
		return s.Quiesce.Validate()
	}
	return nil
}

// ScheduleStatus is a volume's effective schedule and what it last did.
type ScheduleStatus struct {
	Schedule
	// Default: the volume follows the pool-wide default.
	Default bool `json:"default,omitempty"`
	// Replica: the volume receives replication; the schedule only thins.
	Replica   bool      `json:"replica,omitempty"`
	Scheduled int       `json:"scheduled"` // scheduled snapshots it holds
	Last      time.Time `json:"last,omitzero"`
	Next      time.Time `json:"next,omitzero"`
	Pruned    int64     `json:"pruned"` // snapshots thinned since the daemon started
	LastError string    `json:"last_error,omitempty"`
}

func (c *Client) Schedules(ctx context.Context) ([]ScheduleStatus, error) {
	return request[[]ScheduleStatus](ctx, c, "GET", "/v1/schedules", nil)
}

func (c *Client) SetSchedule(ctx context.Context, s Schedule) (Schedule, error) {
	return request[Schedule](ctx, c, "PUT", "/v1/schedules/"+url.PathEscape(s.Volume), s)
}

func (c *Client) RemoveSchedule(ctx context.Context, vol string) error {
	return c.do(ctx, "DELETE", "/v1/schedules/"+url.PathEscape(vol), nil, nil)
}

// SplitCommand splits a command line into words as a shell would for
// simple quoting: blanks separate words, '...' keeps everything literally,
// "..." keeps blanks and takes \" and \\, and a backslash outside quotes
// escapes the next character. Nothing is expanded: to have a shell, say
// so: sh -c '...'.
func SplitCommand(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == ' ' || ch == '\t' || ch == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case ch == '\'':
			end := strings.IndexByte(s[i+1:], '\'')
			if end < 0 {
				return nil, fmt.Errorf("%w: unterminated ' in %q", ErrBadSpec, s)
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case ch == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("%w: unterminated \" in %q", ErrBadSpec, s)
			}
			inWord = true
		case ch == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("%w: trailing backslash in %q", ErrBadSpec, s)
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(ch)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	if len(words) == 0 {
		return nil, fmt.Errorf("%w: empty command", ErrBadSpec)
	}
	return words, nil
}
