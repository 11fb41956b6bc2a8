// Package metricstest reads a scrape of /metrics for tests: it parses the
// Prometheus text format with Prometheus's own parser (so a family that
// does not parse fails the test), and finds series by name and labels the
// way PromQL names them, a histogram's _bucket, _sum and _count included.
package metricstest

import (
	"fmt"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families is a parsed scrape, by family name.
type Families map[string]*dto.MetricFamily

// Parse parses a scrape in the Prometheus text format; an error names the
// line that does not parse.
func Parse(text string) (Families, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parse the Prometheus text format: %w", err)
	}
	return Families(fams), nil
}

// Has reports whether name is a series name of the scrape: a family's
// name or, for a histogram or summary, its _bucket (histograms only),
// _sum or _count series.
func (f Families) Has(name string) bool {
	fam, _ := f.family(name)
	return fam != nil
}

// family finds the family a series name belongs to, and the suffix that
// took it there ("" for the family's own name).
func (f Families) family(name string) (*dto.MetricFamily, string) {
	if fam := f[name]; fam != nil {
		return fam, ""
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		fam := f[base]
		if fam == nil {
			continue
		}
		switch fam.GetType() {
		case dto.MetricType_HISTOGRAM:
			return fam, suffix
		case dto.MetricType_SUMMARY:
			if suffix != "_bucket" {
				return fam, suffix
			}
		}
	}
	return nil, ""
}

// Value is the value of the series name whose labels include every pair of
// labels (name, value, name, value...); for a histogram's _bucket, "le"
// picks the bucket ("+Inf" too). It fails when no series or more than one
// matches.
func (f Families) Value(name string, labels ...string) (float64, error) {
	if len(labels)%2 != 0 {
		return 0, fmt.Errorf("%s: labels come in name, value pairs: %q", name, labels)
	}
	fam, suffix := f.family(name)
	if fam == nil {
		return 0, fmt.Errorf("the scrape has no series %s", name)
	}
	want := map[string]string{}
	for i := 0; i < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	le, byLe := want["le"]
	delete(want, "le")
	if byLe != (suffix == "_bucket") {
		return 0, fmt.Errorf("%s: give le for a histogram's _bucket series, and only there", name)
	}
	var out []float64
	for _, m := range fam.Metric {
		if !hasLabels(m, want) {
			continue
		}
		v, err := seriesValue(fam.GetType(), m, suffix, le)
		if err != nil {
			return 0, fmt.Errorf("%s%v: %w", name, labels, err)
		}
		out = append(out, v)
	}
	if len(out) != 1 {
		return 0, fmt.Errorf("%d series %s match the labels %q", len(out), name, labels)
	}
	return out[0], nil
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, lp := range m.Label {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func seriesValue(typ dto.MetricType, m *dto.Metric, suffix, le string) (float64, error) {
	switch typ {
	case dto.MetricType_COUNTER:
		return m.GetCounter().GetValue(), nil
	case dto.MetricType_GAUGE:
		return m.GetGauge().GetValue(), nil
	case dto.MetricType_UNTYPED:
		return m.GetUntyped().GetValue(), nil
	case dto.MetricType_SUMMARY:
		switch suffix {
		case "_sum":
			return m.GetSummary().GetSampleSum(), nil
		case "_count":
			return float64(m.GetSummary().GetSampleCount()), nil
		}
	case dto.MetricType_HISTOGRAM:
		h := m.GetHistogram()
		switch suffix {
		case "_sum":
			return h.GetSampleSum(), nil
		case "_count":
			return float64(h.GetSampleCount()), nil
		case "_bucket":
			bound, err := strconv.ParseFloat(le, 64)
			if err != nil {
				return 0, fmt.Errorf("le %q: %w", le, err)
			}
			for _, b := range h.Bucket {
				if b.GetUpperBound() == bound {
					return float64(b.GetCumulativeCount()), nil
				}
			}
			return 0, fmt.Errorf("no bucket le=%q", le)
		}
	}
	return 0, fmt.Errorf("a %s has no series with suffix %q", typ, suffix)
}
