package vip

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// Wire constants that golang.org/x/sys/unix does not define.
const (
	arpRequest     = 1   // ARP operation
	arpReply       = 2   // ARP operation
	neighborAdvert = 136 // ICMPv6 type
)

// announceAt is when the announcements go out, from the first: a few, so
// that one lost frame does not leave a peer pointing at the old holder
// (IPaddr2's send_arp and arping -U send a few too), spread over more than
// a second because Linux ignores an ARP update for an entry it updated less
// than neigh locktime (1 s by default) ago: a client that reached the old
// holder a moment before the takeover takes only a later announcement.
var announceAt = []time.Duration{0, 200 * time.Millisecond, 1200 * time.Millisecond, 2500 * time.Millisecond}

// announceCount is how many announcements Acquire sends.
var announceCount = len(announceAt)

// announce sends the first announcement of v on device idx and leaves the
// others to a goroutine. The socket is opened here, on the caller's thread,
// so it belongs to the caller's network namespace. A device without an
// Ethernet address (loopback, tun, WireGuard) has no neighbour caches to
// update, and nothing is sent.
func (v VIP) announce(idx int) error {
	ifi, err := net.InterfaceByIndex(idx)
	if err != nil {
		return fmt.Errorf("device %s: %w", v.Dev, err)
	}
	mac := ifi.HardwareAddr
	if len(mac) != 6 {
		return nil
	}
	var a announcer
	if v.Prefix.Addr().Is4() {
		a, err = newARPAnnouncer(idx, mac, v.Prefix.Addr())
	} else {
		a, err = newNAAnnouncer(idx, v.Dev, mac, v.Prefix.Addr())
	}
	if err != nil {
		return err
	}
	if err := a.send(); err != nil {
		a.close()
		return err
	}
	ctx := startAnnouncing(v)
	go func() {
		defer a.close()
		defer doneAnnouncing(v, ctx)
		start := time.Now()
		for _, at := range announceAt[1:] {
			t := time.NewTimer(time.Until(start.Add(at)))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			// Nobody is left to hear about a failure here: the first
			// announcement went out, and the later ones are insurance.
			_ = a.send()
		}
	}()
	return nil
}

type announcer struct {
	fd      int
	to      unix.Sockaddr
	packets [][]byte
}

func (a announcer) send() error {
	for _, p := range a.packets {
		if err := unix.Sendto(a.fd, p, 0, a.to); err != nil {
			return fmt.Errorf("send announcement: %w", err)
		}
	}
	return nil
}

func (a announcer) close() { unix.Close(a.fd) }

// newARPAnnouncer prepares gratuitous ARP for ip from mac, broadcast on
// device idx, in both forms: a request (sender IP = target IP = ip), which
// Linux and most stacks take as an update of an entry they hold, and a reply
// with target MAC = sender MAC (RFC 5944 section 4.6), which some older
// stacks and switches only honour.
func newARPAnnouncer(idx int, mac net.HardwareAddr, ip netip.Addr) (announcer, error) {
	// Protocol 0: this socket only sends, so it receives nothing.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return announcer{}, fmt.Errorf("packet socket: %w", err)
	}
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: idx, Halen: 6}
	copy(to.Addr[:], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	return announcer{fd: fd, to: to, packets: [][]byte{
		arpPacket(arpRequest, mac, ip, make(net.HardwareAddr, 6)),
		arpPacket(arpReply, mac, ip, mac),
	}}, nil
}

// arpPacket is an Ethernet/IPv4 ARP packet about ip (RFC 826) whose sender
// and target protocol addresses are both ip.
func arpPacket(op uint16, sha net.HardwareAddr, ip netip.Addr, tha net.HardwareAddr) []byte {
	p := make([]byte, 0, 28)
	p = binary.BigEndian.AppendUint16(p, 1) // hardware type: Ethernet
	p = binary.BigEndian.AppendUint16(p, unix.ETH_P_IP)
	p = append(p, 6, 4)
	p = binary.BigEndian.AppendUint16(p, op)
	ip4 := ip.As4()
	p = append(p, sha...)
	p = append(p, ip4[:]...)
	p = append(p, tha...)
	p = append(p, ip4[:]...)
	return p
}

// newNAAnnouncer prepares an unsolicited neighbour advertisement for ip
// from mac to all nodes (RFC 4861 section 7.2.6), with the override flag so
// that receivers replace the link-layer address they hold. The kernel fills
// in the ICMPv6 checksum of a raw ICMPv6 socket.
func newNAAnnouncer(idx int, dev string, mac net.HardwareAddr, ip netip.Addr) (announcer, error) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMPV6)
	if err != nil {
		return announcer{}, fmt.Errorf("ICMPv6 socket: %w", err)
	}
	setup := func() error {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev); err != nil {
			return fmt.Errorf("bind to device %s: %w", dev, err)
		}
		// Receivers drop neighbour discovery that did not come from the link.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_HOPS, 255); err != nil {
			return fmt.Errorf("hop limit: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_IF, idx); err != nil {
			return fmt.Errorf("multicast device: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: ip.As16()}); err != nil {
			return fmt.Errorf("bind to %s: %w", ip, err)
		}
		return nil
	}
	if err := setup(); err != nil {
		unix.Close(fd)
		return announcer{}, err
	}
	allNodes := &unix.SockaddrInet6{Addr: netip.IPv6LinkLocalAllNodes().As16(), ZoneId: uint32(idx)}
	return announcer{fd: fd, to: allNodes, packets: [][]byte{naPacket(mac, ip)}}, nil
}

func naPacket(mac net.HardwareAddr, ip netip.Addr) []byte {
	const overrideFlag = 0x20
	p := make([]byte, 0, 32)
	p = append(p, neighborAdvert, 0, 0, 0) // type, code, checksum
	p = append(p, overrideFlag, 0, 0, 0)
	t := ip.As16()
	p = append(p, t[:]...)
	p = append(p, 2, 1) // option: target link-layer address, 8 bytes
	return append(p, mac...)
}

// htons turns v into network byte order, as the packet socket API wants
// its protocol numbers.
func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
