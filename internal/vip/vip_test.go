package vip

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		addr, dev string
		want      string // VIP.String(), or "" for an error
		errHas    string
	}{
		{addr: "10.77.0.100/24", dev: "eth0", want: "10.77.0.100/24 dev eth0"},
		{addr: "192.0.2.7/32", dev: "bond0.12", want: "192.0.2.7/32 dev bond0.12"},
		{addr: "fd00:77::100/64", dev: "br-lan", want: "fd00:77::100/64 dev br-lan"},
		{addr: "10.77.0.100", dev: "eth0", errHas: "no prefix length"},
		{addr: "10.77.0.300/24", dev: "eth0", errHas: "10.77.0.300"},
		{addr: "10.77.0.100/33", dev: "eth0", errHas: "33"},
		{addr: "host/24", dev: "eth0", errHas: "host"},
		{addr: "10.77.0.100/24", dev: "", errHas: "no device"},
		{addr: "10.77.0.100/24", dev: "a-very-long-device-name", errHas: "longer than 15"},
		{addr: "10.77.0.100/24", dev: "eth 0", errHas: "not a device name"},
		{addr: "10.77.0.100/24", dev: "../x", errHas: "not a device name"},
		{addr: "0.0.0.0/0", dev: "eth0", errHas: "not a unicast"},
		{addr: "224.0.0.1/24", dev: "eth0", errHas: "not a unicast"},
		{addr: "127.0.0.2/8", dev: "lo", errHas: "not a unicast"},
		{addr: "fe80::1/64", dev: "eth0", errHas: "not a unicast"},
		{addr: "::ffff:10.77.0.100/120", dev: "eth0", errHas: "IPv4-mapped"},
	} {
		v, err := Parse(tc.addr, tc.dev)
		if tc.want != "" {
			if err != nil || v.String() != tc.want {
				t.Errorf("Parse(%q, %q) = %v, %v; want %s", tc.addr, tc.dev, v, err, tc.want)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("Parse(%q, %q) error %v; want ErrInvalid mentioning %q", tc.addr, tc.dev, err, tc.errHas)
		}
	}
}

func mustParse(t *testing.T, addr, dev string) VIP {
	t.Helper()
	v, err := Parse(addr, dev)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// held asks, in namespace ns, whether v is held there.
func held(t *testing.T, ns string, v VIP) bool {
	t.Helper()
	var h bool
	if err := inNetns(ns, func() (err error) { h, err = v.Held(); return err }); err != nil {
		t.Fatalf("Held in %s: %v", ns, err)
	}
	return h
}

func acquire(t *testing.T, ns string, v VIP) {
	t.Helper()
	if err := inNetns(ns, func() error { return v.Acquire(context.Background()) }); err != nil {
		t.Fatalf("Acquire in %s: %v", ns, err)
	}
}

func release(t *testing.T, ns string, v VIP) {
	t.Helper()
	if err := inNetns(ns, func() error { return v.Release(context.Background()) }); err != nil {
		t.Fatalf("Release in %s: %v", ns, err)
	}
}

// TestFailoverIPv4 is the failover a mirror does: a holds the address and
// c talks to it; a dies without releasing it; b acquires it, and its
// gratuitous ARP moves c's neighbour entry to b.
func TestFailoverIPv4(t *testing.T) {
	l := newLAN(t)
	vip := netip.MustParseAddr(l.v4 + ".100")
	v := mustParse(t, vip.String()+"/24", "eth0")

	acquire(t, l.a, v)
	acquire(t, l.a, v) // already held
	if !held(t, l.a, v) || held(t, l.b, v) {
		t.Fatalf("after a acquired: held in a %v, in b %v", held(t, l.a, v), held(t, l.b, v))
	}
	l.ping(t, vip)
	if got := l.neighbour(t, vip); got != l.macA {
		t.Fatalf("c maps %s to %q, want a's %s", vip, got, l.macA)
	}

	// The control: the address alone, without an announcement, does not
	// move c, which still has a's entry.
	if err := inNetns(l.b, func() error {
		idx, err := v.index()
		if err != nil {
			return err
		}
		return v.add(idx)
	}); err != nil {
		t.Fatalf("add in b: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := l.neighbour(t, vip); got != l.macA {
		t.Fatalf("c maps %s to %q before b announced, want a's %s", vip, got, l.macA)
	}

	capture := l.captureARP(t, vip, l.macB, announceAt[len(announceAt)-1]+300*time.Millisecond)
	start := time.Now()
	acquire(t, l.b, v) // already added: Acquire must still announce
	if d := time.Since(start); d >= announceAt[1] {
		t.Errorf("Acquire took %v; only the first announcement should be waited for", d)
	}
	l.waitNeighbour(t, vip, l.macB, time.Second)
	if req, rep := capture.wait(); req != announceCount || rep != announceCount {
		t.Errorf("c saw %d ARP requests and %d replies announcing %s from b, want %d of each", req, rep, vip, announceCount)
	}
	l.ping(t, vip)
	if got := l.neighbour(t, vip); got != l.macB {
		t.Fatalf("after ping c maps %s to %q, want b's %s", vip, got, l.macB)
	}

	release(t, l.b, v)
	release(t, l.b, v) // already absent
	if held(t, l.b, v) || !held(t, l.a, v) {
		t.Fatalf("after b released: held in b %v, in a %v", held(t, l.b, v), held(t, l.a, v))
	}
	// Another prefix length is another address.
	if held(t, l.a, mustParse(t, vip.String()+"/32", "eth0")) {
		t.Errorf("Held of %s/32 is true while %s/24 is on the device", vip, vip)
	}
}

// TestReleaseStopsAnnouncing: a released address is not announced again.
func TestReleaseStopsAnnouncing(t *testing.T) {
	l := newLAN(t)
	vip := netip.MustParseAddr(l.v4 + ".100")
	v := mustParse(t, vip.String()+"/24", "eth0")
	capture := l.captureARP(t, vip, l.macA, announceAt[len(announceAt)-1]+300*time.Millisecond)
	acquire(t, l.a, v)
	release(t, l.a, v)
	if req, rep := capture.wait(); req != 1 || rep != 1 {
		t.Errorf("c saw %d requests and %d replies from a after Acquire and Release, want 1 and 1", req, rep)
	}
	if held(t, l.a, v) {
		t.Error("Held after Release")
	}
}

// TestFailoverIPv6 is TestFailoverIPv4 with an unsolicited neighbour
// advertisement doing the moving.
func TestFailoverIPv6(t *testing.T) {
	l := newLAN(t)
	vip := netip.MustParseAddr(l.v6 + "100")
	v := mustParse(t, vip.String()+"/64", "eth0")

	acquire(t, l.a, v)
	if !held(t, l.a, v) {
		t.Fatal("not held in a after Acquire")
	}
	l.ping(t, vip)
	if got := l.neighbour(t, vip); got != l.macA {
		t.Fatalf("c maps %s to %q, want a's %s", vip, got, l.macA)
	}
	acquire(t, l.b, v)
	l.waitNeighbour(t, vip, l.macB, time.Second)
	l.ping(t, vip)
	release(t, l.b, v)
	release(t, l.b, v)
	if held(t, l.b, v) {
		t.Fatal("held in b after Release")
	}
	release(t, l.a, v)
}

func TestNoDevice(t *testing.T) {
	l := newLAN(t)
	v := mustParse(t, l.v4+".100/24", "nosuchdev0")
	err := inNetns(l.a, func() error {
		ctx := context.Background()
		if err := v.Acquire(ctx); !errors.Is(err, ErrNoDevice) || !strings.Contains(err.Error(), "nosuchdev0") {
			t.Errorf("Acquire: %v, want ErrNoDevice naming the device", err)
		}
		if err := v.Release(ctx); !errors.Is(err, ErrNoDevice) {
			t.Errorf("Release: %v, want ErrNoDevice", err)
		}
		if _, err := v.Held(); !errors.Is(err, ErrNoDevice) {
			t.Errorf("Held: %v, want ErrNoDevice", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Acquire acts in the calling thread's namespace: c has no eth0.
	eth0 := mustParse(t, l.v4+".100/24", "eth0")
	if err := inNetns(l.c, func() error { return eth0.Acquire(context.Background()) }); !errors.Is(err, ErrNoDevice) {
		t.Errorf("Acquire on eth0 in c (which has no eth0): %v, want ErrNoDevice", err)
	}
}
