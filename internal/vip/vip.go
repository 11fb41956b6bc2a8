// Package vip owns the floating address that follows a synchronous mirror's
// primary, the way Heartbeat's IPaddr2 does: adding it to and removing it
// from a network device over rtnetlink, announcing it so that peers' neighbour
// caches move to the new holder (gratuitous ARP for IPv4, an unsolicited
// neighbour advertisement for IPv6), and running the operator's promotion
// hooks (RunHook).
//
// Every call acts in the network namespace of the calling OS thread: the
// sockets it needs are opened before Acquire returns, on the caller's thread,
// so a caller that locked its goroutine and switched namespace gets them there.
package vip

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Error classes.
var (
	// ErrInvalid: Parse was given an address or device name it cannot use.
	ErrInvalid = errors.New("vip: invalid address")
	// ErrNoDevice: the device does not exist (in this network namespace).
	ErrNoDevice = errors.New("vip: no such device")
	// ErrAnnounce: the address was added but announcing it failed, so peers
	// may keep sending to the previous holder until their cache expires.
	ErrAnnounce = errors.New("vip: announcing the address failed")
)

// VIP is an address the primary holds on a device.
type VIP struct {
	Prefix netip.Prefix // e.g. 10.77.0.100/24: the address and its subnet
	Dev    string       // e.g. eth0
}

// String is "10.77.0.100/24 dev eth0".
func (v VIP) String() string { return v.Prefix.String() + " dev " + v.Dev }

// Parse checks an address with its prefix length ("10.77.0.100/24",
// "fd00:77::100/64") and a device name ("eth0").
func Parse(addr, dev string) (VIP, error) {
	if !strings.Contains(addr, "/") {
		return VIP{}, fmt.Errorf("%w: %q has no prefix length (want ADDR/PREFIX, e.g. 10.77.0.100/24)", ErrInvalid, addr)
	}
	p, err := netip.ParsePrefix(addr)
	if err != nil {
		return VIP{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	a := p.Addr()
	switch {
	case a.Is4In6():
		return VIP{}, fmt.Errorf("%w: %q is an IPv4-mapped IPv6 address; write the IPv4 address", ErrInvalid, addr)
	case a.IsUnspecified(), a.IsMulticast(), a.IsLoopback(), a.IsLinkLocalUnicast():
		return VIP{}, fmt.Errorf("%w: %q is not a unicast address clients can reach", ErrInvalid, addr)
	}
	switch {
	case dev == "":
		return VIP{}, fmt.Errorf("%w: no device given for %s", ErrInvalid, addr)
	case len(dev) >= unix.IFNAMSIZ:
		return VIP{}, fmt.Errorf("%w: device name %q is longer than %d characters", ErrInvalid, dev, unix.IFNAMSIZ-1)
	case dev == "." || dev == ".." || strings.ContainsAny(dev, "/: \t\n"):
		return VIP{}, fmt.Errorf("%w: %q is not a device name", ErrInvalid, dev)
	}
	return VIP{Prefix: p, Dev: dev}, nil
}

// Acquire adds the address to the device (already present is fine) and
// announces it: for IPv4 four gratuitous ARPs, each as a request and as a
// reply, over 2.5 s (announceAt); for IPv6 four unsolicited neighbour advertisements
// with the override flag. The first announcement is sent before Acquire
// returns, the others in the background; they stop early if Release is
// called for the same VIP. IPv6 addresses are added without duplicate
// address detection, because at failover the old primary may still hold the
// address and DAD would leave the new holder's copy unusable.
//
// An error classified ErrAnnounce means the address is held (Held says so)
// but peers were not told; ctx only bounds the work before Acquire returns.
func (v VIP) Acquire(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("vip: acquire %s: %w", v, err)
	}
	idx, err := v.index()
	if err != nil {
		return err
	}
	if err := v.add(idx); err != nil {
		return err
	}
	if err := v.announce(idx); err != nil {
		return fmt.Errorf("%w: %s: %w", ErrAnnounce, v, err)
	}
	return nil
}

// Release removes the address from the device (already absent is fine) and
// stops announcements of it that Acquire left running.
func (v VIP) Release(ctx context.Context) error {
	stopAnnouncing(v)
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("vip: release %s: %w", v, err)
	}
	idx, err := v.index()
	if err != nil {
		return err
	}
	err = addrRequest(unix.RTM_DELADDR, 0, v, idx)
	switch {
	case err == nil, errors.Is(err, unix.EADDRNOTAVAIL):
		return nil
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%w: %s: %w", ErrNoDevice, v.Dev, err)
	}
	return fmt.Errorf("vip: remove %s: %w", v, err)
}

// Held tells whether the address, with this prefix length, is on the device.
func (v VIP) Held() (bool, error) {
	idx, err := v.index()
	if err != nil {
		return false, err
	}
	ifi, err := net.InterfaceByIndex(idx)
	if err != nil {
		return false, fmt.Errorf("vip: %s: %w", v.Dev, err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return false, fmt.Errorf("vip: addresses of %s: %w", v.Dev, err)
	}
	for _, a := range addrs {
		n, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok {
			continue
		}
		ones, _ := n.Mask.Size()
		if ip.Unmap() == v.Prefix.Addr() && ones == v.Prefix.Bits() {
			return true, nil
		}
	}
	return false, nil
}

// index looks the device up with an ioctl rather than net.InterfaceByName,
// so that a missing device is an errno (ENODEV) and not a message.
func (v VIP) index() (int, error) {
	if !v.Prefix.IsValid() || v.Dev == "" {
		return 0, fmt.Errorf("%w: %q dev %q (use Parse)", ErrInvalid, v.Prefix, v.Dev)
	}
	ifr, err := unix.NewIfreq(v.Dev)
	if err != nil {
		return 0, fmt.Errorf("%w: device name %q: %w", ErrInvalid, v.Dev, err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("vip: socket for device lookup: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return 0, fmt.Errorf("%w: %s: %w", ErrNoDevice, v.Dev, err)
		}
		return 0, fmt.Errorf("vip: look up device %s: %w", v.Dev, err)
	}
	return int(ifr.Uint32()), nil
}

// add puts the address on the device; EEXIST means it is already there with
// this prefix length, which is what Acquire wants.
func (v VIP) add(idx int) error {
	err := addrRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, v, idx)
	switch {
	case err == nil, errors.Is(err, unix.EEXIST):
		return nil
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%w: %s: %w", ErrNoDevice, v.Dev, err)
	}
	return fmt.Errorf("vip: add %s: %w", v, err)
}

// announcers holds, per VIP, the cancel function of the background
// announcements Acquire started, so that Release can stop them: a released
// address must not go on being announced.
var announcers struct {
	sync.Mutex
	m map[VIP]context.CancelFunc
}

func startAnnouncing(v VIP) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	announcers.Lock()
	defer announcers.Unlock()
	if announcers.m == nil {
		announcers.m = make(map[VIP]context.CancelFunc)
	}
	if prev := announcers.m[v]; prev != nil {
		prev()
	}
	announcers.m[v] = cancel
	return ctx
}

func stopAnnouncing(v VIP) {
	announcers.Lock()
	defer announcers.Unlock()
	if cancel := announcers.m[v]; cancel != nil {
		cancel()
		delete(announcers.m, v)
	}
}

// doneAnnouncing forgets v's announcer if it is still the one with ctx.
func doneAnnouncing(v VIP, ctx context.Context) {
	announcers.Lock()
	defer announcers.Unlock()
	if cancel := announcers.m[v]; cancel != nil && ctx.Err() == nil {
		cancel()
		delete(announcers.m, v)
	}
}
