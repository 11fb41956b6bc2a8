package vip

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// netlinkTimeout bounds the wait for the kernel's answer, which normally
// comes at once; it only guards against a request that is never answered.
const netlinkTimeout = 5 * time.Second

var netlinkSeq atomic.Uint32

// addrRequest sends one RTM_NEWADDR or RTM_DELADDR for v on device idx and
// returns the kernel's answer as an errno (nil for success), as `ip addr add`
// and `ip addr del` would do, without the message parsing.
func addrRequest(typ uint16, flags uint16, v VIP, idx int) error {
	a := v.Prefix.Addr()
	family, ifaFlags := byte(unix.AF_INET), byte(0)
	if a.Is6() {
		family, ifaFlags = unix.AF_INET6, unix.IFA_F_NODAD
	}
	raw := a.AsSlice()

	body := make([]byte, unix.SizeofIfAddrmsg)
	body[0] = family
	body[1] = byte(v.Prefix.Bits())
	body[2] = ifaFlags
	body[3] = unix.RT_SCOPE_UNIVERSE
	binary.NativeEndian.PutUint32(body[4:], uint32(idx))
	// IFA_LOCAL is the address itself, IFA_ADDRESS the peer's on a
	// point-to-point link and the same address otherwise; IPv6 knows only
	// IFA_ADDRESS.
	if a.Is4() {
		body = appendAttr(body, unix.IFA_LOCAL, raw)
	}
	body = appendAttr(body, unix.IFA_ADDRESS, raw)
	return netlinkDo(typ, flags, body)
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	l := unix.SizeofRtAttr + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%unix.NLMSG_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

// netlinkDo sends one request with NLM_F_ACK on a fresh rtnetlink socket
// and waits for its acknowledgement.
func netlinkDo(typ, flags uint16, body []byte) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(netlinkTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink bind: %w", err)
	}

	seq := netlinkSeq.Add(1)
	msg := make([]byte, unix.SizeofNlMsghdr, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.SizeofNlMsghdr+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK|flags)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}

	buf := make([]byte, 1<<16)
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if err == unix.EAGAIN {
				return fmt.Errorf("netlink: no answer from the kernel in %v", netlinkTimeout)
			}
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("netlink: malformed answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq || m.Header.Type != unix.NLMSG_ERROR {
				continue
			}
			if len(m.Data) < 4 {
				return fmt.Errorf("netlink: short error message (%d bytes)", len(m.Data))
			}
			if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
				return unix.Errno(-e)
			}
			return nil
		}
	}
}
