package control

import (
	"errors"
	"slices"
	"testing"
	"time"
)

func TestParseKeep(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Keep
		ok   bool
	}{
		{"hourly=24,daily=14,weekly=8,monthly=12", Keep{Hourly: 24, Daily: 14, Weekly: 8, Monthly: 12}, true},
		{" frequent=4, yearly=2 ", Keep{Frequent: 4, Yearly: 2}, true},
		{"", Keep{}, false},
		{"daily", Keep{}, false},
		{"daily=x", Keep{}, false},
		{"daily=-1", Keep{}, false},
		{"minutely=5", Keep{}, false},
		{"daily=1,daily=2", Keep{}, false},
		{"daily=0", Keep{}, false},
	} {
		got, err := ParseKeep(tc.in)
		if tc.ok != (err == nil) || got != tc.want {
			t.Errorf("ParseKeep(%q) = %+v, %v", tc.in, got, err)
		}
		if err != nil && !errors.Is(err, ErrBadSpec) {
			t.Errorf("ParseKeep(%q): %v is not ErrBadSpec", tc.in, err)
		}
		if err == nil {
			if back, err := ParseKeep(got.String()); err != nil || back != got {
				t.Errorf("%q does not read back: %+v %v", got.String(), back, err)
			}
		}
	}
}

func TestScheduleValidate(t *testing.T) {
	k := Keep{Daily: 7}
	for _, tc := range []struct {
		s  Schedule
		ok bool
	}{
		{Schedule{Volume: "v", Every: 15 * time.Minute, Keep: k}, true},
		{Schedule{Volume: "v", Keep: k}, true}, // thin only (a replica)
		{Schedule{Volume: "v", Every: 48 * time.Hour, Keep: k}, true},
		{Schedule{Volume: "v", Every: 7 * time.Minute, Keep: k}, false},
		{Schedule{Volume: "v", Every: 30 * time.Second, Keep: k}, false},
		{Schedule{Volume: "v", Every: time.Hour}, false},
		{Schedule{Volume: "v", Every: time.Hour, Keep: k, Quiesce: &Quiesce{FreezeCmd: []string{"true"}}}, false},
		{Schedule{Volume: "v", Every: time.Hour, Keep: k, Quiesce: &Quiesce{QGA: "/s", ThawCmd: []string{"true"}}}, false},
		{Schedule{Volume: "v", Every: time.Hour, Keep: k, Quiesce: &Quiesce{QGA: "/s"}}, true},
	} {
		if err := tc.s.Validate(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.s, err)
		}
	}
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"fsfreeze -f /mnt/db", []string{"fsfreeze", "-f", "/mnt/db"}},
		{`sh -c 'sync; fsfreeze -f "/mnt/a b"'`, []string{"sh", "-c", `sync; fsfreeze -f "/mnt/a b"`}},
		{`a "b \"c\" \\" d\ e`, []string{"a", `b "c" \`, "d e"}},
		{`x''y ""`, []string{"xy", ""}},
		{"  a\tb  ", []string{"a", "b"}},
		{"", nil},
		{"'open", nil},
		{`"open`, nil},
		{`trailing\`, nil},
	} {
		got, err := SplitCommand(tc.in)
		if !slices.Equal(got, tc.want) || (err == nil) != (tc.want != nil) {
			t.Errorf("SplitCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func FuzzSplitCommand(f *testing.F) {
	for _, s := range []string{"fsfreeze -f /mnt", `sh -c 'a; b'`, `"x\"y"`, `a\ b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		words, err := SplitCommand(s)
		if err == nil && len(words) == 0 {
			t.Fatalf("%q: no words and no error", s)
		}
	})
}

func FuzzParseKeep(f *testing.F) {
	f.Add("hourly=24,daily=14")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKeep(s)
		if err != nil {
			return
		}
		if back, err := ParseKeep(k.String()); err != nil || back != k {
			t.Fatalf("%q -> %+v does not read back: %+v %v", s, k, back, err)
		}
	})
}
