package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// permuteArgs lets flags follow positional arguments
// (`strata volume create vol0 --size 10GiB`) and global flags follow the
// command (`strata serve --data DIR`): urfave/cli v2 stops at the first
// positional argument and knows global flags only before the command. It
// walks the command path and rebuilds the line as
// prog GLOBAL-FLAGS COMMANDS LEAF-FLAGS POSITIONALS.
func permuteArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	var globals, path, leafFlags, pos []string
	cmds, flags := app.Commands, app.Flags
	leaf := false
	for k := 1; k < len(args); k++ {
		a := args[k]
		if a == "--" {
			pos = append(pos, args[k:]...)
			break
		}
		if strings.HasPrefix(a, "-") && a != "-" {
			dst := &leafFlags
			arity := flagArity(flags, a)
			if !hasFlag(flags, a) && hasFlag(app.Flags, a) {
				dst, arity = &globals, flagArity(app.Flags, a)
			} else if len(path) == 0 {
				dst = &globals
			}
			*dst = append(*dst, a)
			if arity == 1 && k+1 < len(args) {
				*dst = append(*dst, args[k+1])
				k++
			}
			continue
		}
		if !leaf {
			if c := findCommand(cmds, a); c != nil {
				path = append(path, a)
				cmds, flags = c.Subcommands, c.Flags
				leaf = len(c.Subcommands) == 0
				continue
			}
		}
		pos = append(pos, a)
	}
	out := append([]string{args[0]}, globals...)
	out = append(out, path...)
	out = append(out, leafFlags...)
	return append(out, pos...)
}

func hasFlag(flags []cli.Flag, arg string) bool {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// flagArity is 1 when the flag takes a separate value argument.
func flagArity(flags []cli.Flag, arg string) int {
	if strings.Contains(arg, "=") {
		return 0
	}
	name := strings.TrimLeft(arg, "-")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				if _, ok := f.(*cli.BoolFlag); ok {
					return 0
				}
				return 1
			}
		}
	}
	return 0
}

var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// parseSize reads "10GiB", "512M", "4096", "1.5T". Units are powers of
// 1024 (K, KiB and KB all mean 1024 bytes: block devices count that way).
func parseSize(s string) (int64, error) {
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

// formatSize prints bytes with a binary unit: "10 GiB", "1.5 MiB", "512 B".
func formatSize(n int64) string {
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
