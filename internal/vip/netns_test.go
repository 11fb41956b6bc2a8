package vip

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// lan is three network namespaces on one Ethernet segment: hosts a and b
// (device eth0, the two mirror members) and client c, which holds the
// bridge br0 both hosts' veth pairs plug into, and its own address on it.
type lan struct {
	a, b, c    string // namespace names
	macA, macB string
	v4         string // first three octets of the IPv4 subnet, "10.77.N"
	v6         string // the IPv6 /64 without its host part, "fd00:77:N::"
}

var lanSeq atomic.Int32

// newLAN builds a lan with names unique to this process and test, and
// removes it when the test ends (deleting a namespace deletes its devices).
// It skips the test where namespaces cannot be made.
func newLAN(t *testing.T) *lan {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the test builds network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip (iproute2) to build network namespaces")
	}
	n := lanSeq.Add(1)
	id := fmt.Sprintf("svip%d-%d", os.Getpid(), n)
	l := &lan{a: id + "a", b: id + "b", c: id + "c",
		v4: fmt.Sprintf("10.77.%d", n%250), v6: fmt.Sprintf("fd00:77:%x::", n)}
	for i, ns := range []string{l.a, l.b, l.c} {
		out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
		if err != nil {
			if i == 0 {
				t.Skipf("ip netns add does not work here: %v: %s", err, bytes.TrimSpace(out))
			}
			t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
		}
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Errorf("ip netns del %s: %v: %s", ns, err, out)
			}
		})
	}
	ip(t, "-n", l.c, "link", "add", "br0", "type", "bridge")
	ip(t, "-n", l.c, "link", "set", "br0", "up")
	ip(t, "-n", l.c, "addr", "add", l.v4+".3/24", "dev", "br0")
	ip(t, "-n", l.c, "addr", "add", l.v6+"3/64", "dev", "br0", "nodad")
	for i, h := range []string{l.a, l.b} {
		port := fmt.Sprintf("p%d", i)
		ip(t, "-n", h, "link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", l.c)
		ip(t, "-n", l.c, "link", "set", port, "master", "br0", "up")
		ip(t, "-n", h, "link", "set", "eth0", "up")
		ip(t, "-n", h, "link", "set", "lo", "up")
		ip(t, "-n", h, "addr", "add", fmt.Sprintf("%s.%d/24", l.v4, i+1), "dev", "eth0")
		ip(t, "-n", h, "addr", "add", fmt.Sprintf("%s%d/64", l.v6, i+1), "dev", "eth0", "nodad")
	}
	l.macA, l.macB = mac(t, l.a), mac(t, l.b)
	return l
}

// ip runs ip(8) and fails the test on an error.
func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mac(t *testing.T, ns string) string {
	t.Helper()
	f := strings.Fields(ip(t, "-n", ns, "-br", "link", "show", "eth0"))
	if len(f) < 3 {
		t.Fatalf("ip -br link show eth0 in %s: %q", ns, f)
	}
	return f[2]
}

// neighbour is the link-layer address c's neighbour table holds for addr,
// or "" for none.
func (l *lan) neighbour(t *testing.T, addr netip.Addr) string {
	t.Helper()
	f := strings.Fields(ip(t, "-n", l.c, "neigh", "show", addr.String(), "dev", "br0"))
	for i := range f {
		if f[i] == "lladdr" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return ""
}

// waitNeighbour waits up to d for c's entry for addr to be want.
func (l *lan) waitNeighbour(t *testing.T, addr netip.Addr, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := l.neighbour(t, addr)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("c's neighbour entry for %s is %q after %v, want %q", addr, got, d, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ping sends echo requests from c to addr until one is answered (three
// tries: the first may wait on address resolution).
func (l *lan) ping(t *testing.T, addr netip.Addr) {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping (Debian package iputils-ping)")
	}
	var out []byte
	var err error
	for range 3 {
		out, err = exec.Command("ip", "netns", "exec", l.c, "ping", "-n", "-c1", "-W1", addr.String()).CombinedOutput()
		if err == nil {
			return
		}
	}
	t.Fatalf("ping %s from c: %v: %s", addr, err, out)
}

// inNetns runs f on an OS thread that joined namespace ns. The thread stays
// locked to the goroutine, which then exits, so the runtime ends the thread
// instead of handing a thread in the wrong namespace to other goroutines.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/var/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("open namespace %s: %w", ns, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("join namespace %s: %w", ns, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// arpCapture counts the ARP packets about addr from mac that arrive on c's
// bridge: requests and replies.
type arpCapture struct {
	done chan [2]int
}

// captureARP listens on c's br0 for d.
func (l *lan) captureARP(t *testing.T, addr netip.Addr, from string, d time.Duration) *arpCapture {
	t.Helper()
	hw, err := net.ParseMAC(from)
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	err = inNetns(l.c, func() error {
		br, err := net.InterfaceByName("br0")
		if err != nil {
			return err
		}
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ARP)))
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: br.Index})
	})
	if err != nil {
		t.Fatalf("capture in %s: %v", l.c, err)
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	c := &arpCapture{done: make(chan [2]int, 1)}
	a4 := addr.As4()
	go func() {
		defer unix.Close(fd)
		var n [2]int
		buf := make([]byte, 1500)
		for end := time.Now().Add(d); time.Now().Before(end); {
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || m < 28 {
				continue
			}
			p := buf[:m]
			op := int(p[6])<<8 | int(p[7])
			if (op == arpRequest || op == arpReply) && bytes.Equal(p[8:14], hw) && bytes.Equal(p[14:18], a4[:]) {
				n[op-1]++
			}
		}
		c.done <- n
	}()
	return c
}

// wait returns how many requests and replies arrived.
func (c *arpCapture) wait() (requests, replies int) {
	n := <-c.done
	return n[0], n[1]
}
