package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/control"
)

// The kernel NBD client does the attaching: `nbd-client` (Debian package
// nbd-client) speaks netlink, runs several connections and, with -persist,
// reconnects when the daemon restarts instead of failing I/O. attach picks
// sound flags and checks what the kernel and the host lack first.

// errNoNBDModule: the kernel cannot attach NBD devices.
var errNoNBDModule = errors.New("the kernel has no nbd module")

// nbdModulePresent reports whether /dev/nbd* devices can exist.
func nbdModulePresent() bool {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		return true
	}
	_, err := os.Stat("/dev/nbd0")
	return err == nil
}

func noModuleError(vol, sock string) error {
	return fmt.Errorf("%w (no /sys/module/nbd, no /dev/nbd0): load it with `modprobe nbd nbds_max=16` (in linux-modules-extra on some distributions); "+
		"without it, expose the volume as a file and loop device: mkdir -p /tmp/%s && nbdfuse /tmp/%s/disk 'nbd+unix:///%s?socket=%s' & then losetup -f --show /tmp/%s/disk",
		errNoNBDModule, vol, vol, vol, sock, vol)
}

// nbdClientArgs is the nbd-client command line that attaches vol.
func nbdClientArgs(sock, vol, dev string, conns, timeout int) []string {
	// The order of nbd-client(8)'s synopsis: -unix path nbd-device [options].
	return []string{"nbd-client", "-unix", sock, dev, "-N", vol, "-b", "4096",
		"-C", strconv.Itoa(conns), "-t", strconv.Itoa(timeout), "-persist"}
}

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "attach a volume as a kernel block device (/dev/nbdN) through nbd-client",
		ArgsUsage: "VOL [/dev/nbdN]",
		UsageText: `strata attach VOL [/dev/nbdN] [--connections N] [--timeout S] [--print]
strata detach /dev/nbdN

Examples:
   strata attach vm1 /dev/nbd0
   strata attach vm1 --print          # show the nbd-client command instead`,
		Description: `Runs the kernel NBD client (nbd-client, from the nbd-client package) against
this daemon's Unix socket with block size 4096, several connections (the
server allows multi-connection: a flush on one covers all), a dead-connection
timeout, and -persist, so the device reconnects when the daemon restarts
instead of failing I/O. Needs the kernel's nbd module; without it the command
says how to use nbdfuse and a loop device instead.`,
		Flags: []cli.Flag{
			&cli.IntFlag{Name: "connections", Value: 4, Usage: "connections for the device"},
			&cli.IntFlag{Name: "timeout", Value: 30, Usage: "seconds before a dead connection is given up on"},
			&cli.StringFlag{Name: "socket", Usage: "the daemon's NBD socket (default DATA/nbd.sock)"},
			&cli.BoolFlag{Name: "print", Usage: "print the nbd-client command line and exit"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return fmt.Errorf("expected VOL [/dev/nbdN]; see strata attach --help")
			}
			vol := c.Args().Get(0)
			if err := control.ValidateName(vol); err != nil {
				return userErr(err)
			}
			dev := c.Args().Get(1)
			if dev == "" {
				dev = "/dev/nbd0"
			}
			sock := c.String("socket")
			if sock == "" {
				sock = filepath.Join(c.String("data"), "nbd.sock")
			}
			if abs, err := filepath.Abs(sock); err == nil {
				sock = abs
			}
			args := nbdClientArgs(sock, vol, dev, c.Int("connections"), c.Int("timeout"))
			if c.Bool("print") {
				fmt.Println(strings.Join(args, " "))
				return nil
			}
			if !nbdModulePresent() {
				return noModuleError(vol, sock)
			}
			path, err := exec.LookPath("nbd-client")
			if err != nil {
				return fmt.Errorf("nbd-client is not installed: apt-get install nbd-client (or run: %s)", strings.Join(args, " "))
			}
			cmd := exec.Command(path, args[1:]...)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("nbd-client failed: %w", err)
			}
			fmt.Printf("attached %s as %s\n", vol, dev)
			return nil
		},
	}
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "detach a kernel NBD device",
		ArgsUsage: "/dev/nbdN",
		UsageText: "strata detach /dev/nbdN\n\nExample:\n   strata detach /dev/nbd0",
		Action: func(c *cli.Context) error {
			dev, err := oneArg(c, "/dev/nbdN")
			if err != nil {
				return err
			}
			if !nbdModulePresent() {
				return fmt.Errorf("%w: nothing can be attached, so there is nothing to detach", errNoNBDModule)
			}
			path, err := exec.LookPath("nbd-client")
			if err != nil {
				return fmt.Errorf("nbd-client is not installed: apt-get install nbd-client")
			}
			cmd := exec.Command(path, "-d", dev)
			cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("nbd-client -d %s failed: %w", dev, err)
			}
			fmt.Printf("detached %s\n", dev)
			return nil
		},
	}
}
