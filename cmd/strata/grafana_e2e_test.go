package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

// dashboardPath is the Grafana dashboard shipped in contrib/.
const dashboardPath = "../../contrib/grafana/strata.json"

// promqlKeywords are the words of PromQL that are not metric names where
// an identifier stands outside braces and brackets.
var promqlKeywords = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"bool": true, "offset": true, "and": true, "or": true, "unless": true, "atan2": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
}

// promqlGrouping are the keywords whose parenthesized list holds label
// names, not expressions.
var promqlGrouping = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

// promqlMetricNames returns the metric names a PromQL expression selects
// (as written: a histogram's strata_io_seconds_bucket stays so). Grafana
// variables ($volume, ${x}, $__rate_interval) may stand anywhere a value
// does. It reads PromQL's lexical shape only: strings, label matchers
// {...} and ranges [...] hold no names; an identifier before "(", or
// before by/without, is a function or an aggregation; by/without/on/ignoring/group_left/
// group_right lists hold labels. Prometheus's own parser
// (prometheus/prometheus/promql/parser) would bring that whole module and
// its dependencies into go.mod for this one test.
func promqlMetricNames(expr string) ([]string, error) {
	var names []string
	isIdentStart := func(c byte) bool { return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }
	isIdent := func(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }
	// skipString returns the index after the string that opens at i.
	skipString := func(i int) (int, error) {
		q := expr[i]
		for j := i + 1; j < len(expr); j++ {
			switch {
			case expr[j] == '\\' && q != '`':
				j++
			case expr[j] == q:
				return j + 1, nil
			}
		}
		return 0, fmt.Errorf("unterminated string in %q", expr)
	}
	// skip returns the index after the bracket that closes the one at i,
	// stepping over strings.
	skip := func(i int, open, close byte) (int, error) {
		depth := 0
		for i < len(expr) {
			switch c := expr[i]; c {
			case '"', '\'', '`':
				j, err := skipString(i)
				if err != nil {
					return 0, err
				}
				i = j
				continue
			case open:
				depth++
			case close:
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			}
			i++
		}
		return 0, fmt.Errorf("unbalanced %c%c in %q", open, close, expr)
	}
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '{':
			j, err := skip(i, '{', '}')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '[':
			j, err := skip(i, '[', ']')
			if err != nil {
				return nil, err
			}
			i = j
		case c == '"' || c == '\'' || c == '`':
			j, err := skipString(i)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '$':
			// A Grafana variable: $name, ${name}, $__rate_interval.
			i++
			if i < len(expr) && expr[i] == '{' {
				j, err := skip(i, '{', '}')
				if err != nil {
					return nil, err
				}
				i = j
				continue
			}
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			// A number or a duration (1e3, 0.99, 5m, 1h30m).
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.' ||
				(expr[i] == '+' || expr[i] == '-') && (expr[i-1] == 'e' || expr[i-1] == 'E')) {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(expr) && isIdent(expr[j]) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && expr[k] == ' ' {
				k++
			}
			call := k < len(expr) && expr[k] == '('
			if !call {
				// An aggregation with its grouping first: sum by (l) (...).
				n := k
				for n < len(expr) && isIdent(expr[n]) {
					n++
				}
				call = expr[k:n] == "by" || expr[k:n] == "without"
			}
			switch {
			case promqlGrouping[word] && call:
				end, err := skip(k, '(', ')')
				if err != nil {
					return nil, err
				}
				j = end
			case call, promqlKeywords[word]:
			default:
				names = append(names, word)
			}
			i = j
		default:
			i++
		}
	}
	return names, nil
}

func TestPromQLMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up`, []string{"up"}},
		{`sum by (volume, op) (rate(strata_io_bytes_total{volume=~"$volume",op=~"read|write"}[$__rate_interval]))`, []string{"strata_io_bytes_total"}},
		{`histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="}{"}[5m])))`, []string{"a_bucket"}},
		{`sum(rate(a_sum[1h30m])) by (le) / sum without (op) (rate(a_count[5m]) > 0)`, []string{"a_sum", "a_count"}},
		{`a - on (job, instance) group_left(volume) b offset 5m`, []string{"a", "b"}},
		{`sum(x{i=~"${instance}"} and on (job, instance) y) or vector(0)`, []string{"x", "y"}},
		{`predict_linear(j[6h], 7 * 86400) + 1e3 - 2.5e-3 * time()`, []string{"j"}},
		{`max(a) > bool 0 unless ignoring (t) b`, []string{"a", "b"}},
	} {
		got, err := promqlMetricNames(tc.expr)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, %v; want %q", tc.expr, got, err, tc.want)
		}
	}
	for _, bad := range []string{`a{x="y"`, `rate(a[5m)`, `a{x="y}`} {
		if _, err := promqlMetricNames(bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// dashboard is what the test reads of a Grafana dashboard.
type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		ID      int    `json:"id"`
		Type    string `json:"type"`
		Title   string `json:"title"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	} `json:"panels"`
	Templating struct {
		List []struct {
			Name  string          `json:"name"`
			Type  string          `json:"type"`
			Query json.RawMessage `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// dashboardExprs reads the dashboard and returns its PromQL: every panel
// target's, and every query variable's label_values(EXPR, label).
func dashboardExprs(t *testing.T) (map[string]string, dashboard) {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no uid, title or panels", dashboardPath)
	}
	exprs := map[string]string{} // expression -> where
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" {
				t.Errorf("panel %q: a target without expr or refId", p.Title)
			}
			exprs[tg.Expr] = "panel " + p.Title
		}
	}
	labelValues := regexp.MustCompile(`^label_values\((.+),\s*[a-zA-Z_]\w*\)$`)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		var q struct {
			Query string `json:"query"`
		}
		if err := json.Unmarshal(v.Query, &q); err != nil {
			t.Fatalf("variable %s: %v", v.Name, err)
		}
		m := labelValues.FindStringSubmatch(q.Query)
		if m == nil {
			t.Fatalf("variable %s: %q is not label_values(EXPR, label)", v.Name, q.Query)
		}
		exprs[m[1]] = "variable " + v.Name
	}
	return exprs, d
}

// TestE2EGrafanaDashboard: every metric the dashboard's queries name is in
// a scrape of a running daemon that has served I/O, run a GC pass and
// replicated once (the families that only then appear), and the dashboard
// covers what it is for: I/O per volume, journal and cache, replication
// lag, capacity.
func TestE2EGrafanaDashboard(t *testing.T) {
	exprs, _ := dashboardExprs(t)
	used := map[string][]string{} // metric -> where
	for e, where := range exprs {
		names, err := promqlMetricNames(e)
		if err != nil {
			t.Fatalf("%s: %v", where, err)
		}
		if len(names) == 0 {
			t.Errorf("%s: %q names no metric", where, e)
		}
		for _, n := range names {
			used[n] = append(used[n], where)
		}
	}
	for _, want := range []string{"strata_io_seconds_count", "strata_io_bytes_total", "strata_io_seconds_bucket",
		"strata_journal_fsync_seconds_bucket", "strata_journal_bytes", "strata_cache_hits_total",
		"strata_replication_lag_seconds", "strata_volume_written_bytes", "strata_volume_size_bytes", "strata_mirror_state", "strata_mirror_lag_bytes"} {
		if used[want] == nil {
			t.Errorf("the dashboard does not show %s", want)
		}
	}

	a, _, bAddr, tok := replSites(t)
	a.createVolume("v", "16MiB")
	fillRandom(t, a.uri("v"), 0, 1<<20)
	mustQemuIO(t, a.uri("v"), "read 0 64k", "discard 2M 1M", "write -z 4M 1M")
	a.mustCLI("gc", "--now")
	a.mustCLI("replicate", "v", "--to", "strata://"+bAddr, "--token-file", tok, "--once")
	// A mirror of another volume (its families appear only then).
	a.createVolume("m", "16MiB")
	a.mustCLI("mirror", "add", "m", "--to", "strata://"+bAddr, "--token-file", tok)
	fams, text := a.scrape(t)
	var missing []string
	for n, where := range used {
		if !fams.Has(n) {
			missing = append(missing, fmt.Sprintf("%s (%s)", n, strings.Join(where, ", ")))
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Fatalf("the dashboard names metrics the daemon does not serve:\n%s\n--- scrape:\n%s", strings.Join(missing, "\n"), text)
	}
	t.Logf("%d queries name %d metrics, all in the scrape", len(exprs), len(used))
}
