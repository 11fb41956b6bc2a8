package metricstest

import (
	"strings"
	"testing"
)

const scrape = `# HELP a_seconds Latency.
# TYPE a_seconds histogram
a_seconds_bucket{op="read",volume="v",le="0.001"} 2
a_seconds_bucket{op="read",volume="v",le="+Inf"} 3
a_seconds_sum{op="read",volume="v"} 0.5
a_seconds_count{op="read",volume="v"} 3
a_seconds_bucket{op="write",volume="v",le="0.001"} 0
a_seconds_bucket{op="write",volume="v",le="+Inf"} 1
a_seconds_sum{op="write",volume="v"} 2
a_seconds_count{op="write",volume="v"} 1
# HELP b_total Things.
# TYPE b_total counter
b_total{volume="v"} 1.6777216e+07
b_total{volume="w"} 7
# HELP c A gauge.
# TYPE c gauge
c 0.25
`

func TestValue(t *testing.T) {
	f, err := Parse(scrape)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"a_seconds_bucket", []string{"op", "read", "le", "0.001"}, 2},
		{"a_seconds_bucket", []string{"op", "read", "le", "+Inf"}, 3},
		{"a_seconds_sum", []string{"op", "write"}, 2},
		{"a_seconds_count", []string{"volume", "v", "op", "read"}, 3},
		{"b_total", []string{"volume", "v"}, 16 << 20},
		{"c", nil, 0.25},
	} {
		if v, err := f.Value(tc.name, tc.labels...); err != nil || v != tc.want {
			t.Errorf("%s%q: %v, %v; want %v", tc.name, tc.labels, v, err, tc.want)
		}
	}
	for _, tc := range []struct {
		name   string
		labels []string
		err    string
	}{
		{"b_total", nil, "2 series"},                            // ambiguous
		{"b_total", []string{"volume", "x"}, "0 series"},        // no match
		{"d", nil, "no series d"},                               // absent
		{"c_count", nil, "no series"},                           // a gauge has no _count
		{"a_seconds_bucket", []string{"op", "read"}, "give le"}, // bucket without le
		{"a_seconds_count", []string{"le", "1"}, "give le"},     // le off a bucket
		{"a_seconds_bucket", []string{"op", "read", "le", "0.5"}, "no bucket"},
		{"c", []string{"volume"}, "pairs"},
	} {
		if _, err := f.Value(tc.name, tc.labels...); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s%q: %v; want an error with %q", tc.name, tc.labels, err, tc.err)
		}
	}
	for name, want := range map[string]bool{"a_seconds": true, "a_seconds_bucket": true, "a_seconds_sum": true,
		"b_total": true, "b_total_count": false, "c": true, "c_sum": false, "nope": false} {
		if f.Has(name) != want {
			t.Errorf("Has(%s) = %v", name, !want)
		}
	}
}

func TestParseRejects(t *testing.T) {
	for _, bad := range []string{
		"# TYPE x counter\nx{a=\"b\" 1\n",              // unclosed labels
		"# TYPE x gauge\nx 1\n# TYPE x counter\nx 2\n", // a family twice
		"x one\n", // not a number
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
