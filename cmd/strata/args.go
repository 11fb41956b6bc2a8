package main

import (
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
