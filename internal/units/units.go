// Package units reads and prints the sizes and durations that Strata's
// flags, messages and tools share: sizes in binary units ("10GiB", "1.5 MiB")
// and durations with a day unit ("7d").
package units

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// ParseSize reads "10GiB", "512M", "4096", "1.5T". Units are powers of
// 1024 (K, KiB and KB all mean 1024 bytes: block devices count that way).
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	k := len(t)
	for k > 0 && (t[k-1] < '0' || t[k-1] > '9') && t[k-1] != '.' {
		k--
	}
	num, unit := strings.TrimSpace(t[:k]), strings.ToLower(strings.TrimSpace(t[k:]))
	mult, ok := sizeUnits[unit]
	if num == "" || !ok {
		return 0, fmt.Errorf("invalid size %q: use a number with an optional unit B, KiB, MiB, GiB or TiB (K, M, G, T also work), e.g. 10GiB", s)
	}
	if strings.Contains(num, ".") {
		f, err := strconv.ParseFloat(num, 64)
		if err != nil || f < 0 || f*float64(mult) >= math.MaxInt64 {
			return 0, fmt.Errorf("invalid size %q", s)
		}
		v := f * float64(mult)
		if v != math.Trunc(v) {
			return 0, fmt.Errorf("invalid size %q: it is not a whole number of bytes", s)
		}
		return int64(v), nil
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("invalid size %q: use a number with an optional unit, e.g. 10GiB", s)
	}
	if n > math.MaxInt64/mult {
		return 0, fmt.Errorf("invalid size %q: too large", s)
	}
	return n * mult, nil
}

// FormatSize prints bytes with a binary unit: "10 GiB", "1.5 MiB", "512 B".
func FormatSize(n int64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	f := float64(n)
	u := 0
	for f >= 1024 && u < len(units)-1 {
		f /= 1024
		u++
	}
	if u == 0 {
		return fmt.Sprintf("%d B", n)
	}
	s := strconv.FormatFloat(f, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + units[u]
}

// ParseDuration reads a duration with an optional day unit ("7d", "36h",
// "90m"); negative durations are refused.
func ParseDuration(s string) (time.Duration, error) {
	if d, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(d, 64)
		if err == nil && n >= 0 {
			return time.Duration(n * float64(24*time.Hour)), nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("invalid retention %q: use a duration such as 90m, 24h or 7d", s)
	}
	return d, nil
}
