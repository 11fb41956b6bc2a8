package main

import (
	"slices"
	"testing"
)

func TestHugePageEnv(t *testing.T) {
	const madvise = "always [madvise] never\n"
	for _, tc := range []struct {
		name  string
		env   []string
		mode  string
		want  []string
		again bool
	}{
		{"madvise, no tunables", []string{"PATH=/bin"}, madvise,
			[]string{"PATH=/bin", "GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, true},
		{"madvise, other tunables kept", []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2", "HOME=/root"}, madvise,
			[]string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME=/root"}, true},
		{"madvise, empty tunables", []string{"GLIBC_TUNABLES="}, madvise,
			[]string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, true},
		{"set already: no second start", []string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, madvise,
			[]string{"GLIBC_TUNABLES=glibc.malloc.hugetlb=1"}, false},
		{"turned off by the admin", []string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"}, madvise,
			[]string{"GLIBC_TUNABLES=glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0"}, false},
		{"always", []string{"PATH=/bin"}, "[always] madvise never\n", []string{"PATH=/bin"}, false},
		{"never", []string{"PATH=/bin"}, "always madvise [never]\n", []string{"PATH=/bin"}, false},
	} {
		got, again := hugePageEnv(slices.Clone(tc.env), tc.mode)
		if again != tc.again || !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %q, %v; want %q, %v", tc.name, got, again, tc.want, tc.again)
		}
	}
}
