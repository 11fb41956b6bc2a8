// Package qga is a client of the QEMU guest agent's freeze commands: JSON
// lines over the agent's Unix socket (the chardev QEMU or libvirt exposes
// for the VM's virtio-serial channel org.qemu.guest_agent.0). Each call
// connects, synchronises with guest-sync-delimited (which skips a stale
// reply a previous, abandoned call left in the channel), runs one command
// and disconnects, so a call that hung never blocks the next.
package qga

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"time"
)

// Error classes.
var (
	// ErrAgent: the agent answered with an error (it refused the command).
	ErrAgent = errors.New("qga: guest agent error")
	// ErrProtocol: the agent's reply does not follow the protocol.
	ErrProtocol = errors.New("qga: protocol error")
)

// Freeze freezes the guest's filesystems (guest-fsfreeze-freeze) and
// returns how many it froze.
func Freeze(ctx context.Context, socket string) (int, error) {
	var n int
	err := call(ctx, socket, "guest-fsfreeze-freeze", &n)
	return n, err
}

// Thaw thaws them (guest-fsfreeze-thaw); an agent with nothing frozen
// thaws nothing and succeeds.
func Thaw(ctx context.Context, socket string) (int, error) {
	var n int
	err := call(ctx, socket, "guest-fsfreeze-thaw", &n)
	return n, err
}

// Status is "frozen" or "thawed" (guest-fsfreeze-status).
func Status(ctx context.Context, socket string) (string, error) {
	var s string
	err := call(ctx, socket, "guest-fsfreeze-status", &s)
	return s, err
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
}

type reply struct {
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
}

// call runs one command on a fresh connection; ctx bounds all of it.
func call(ctx context.Context, socket, cmd string, out any) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return fmt.Errorf("qga: connect to %s: %w", socket, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	err = session(conn, cmd, out)
	if ctx.Err() != nil {
		return fmt.Errorf("qga: %s on %s: %w", cmd, socket, ctx.Err())
	}
	if err != nil {
		return fmt.Errorf("qga: %s on %s: %w", cmd, socket, err)
	}
	return nil
}

// maxSession bounds what one session reads: the agent runs inside the
// guest, which the daemon does not trust.
const maxSession = 1 << 20

func session(conn net.Conn, cmd string, out any) error {
	r := bufio.NewReader(io.LimitReader(conn, maxSession))
	enc := json.NewEncoder(conn)
	id := rand.Int64N(1 << 53)
	// A 0xFF byte first makes the agent drop whatever an earlier client
	// left half-written in the channel.
	if _, err := conn.Write([]byte{0xFF}); err != nil {
		return err
	}
	if err := enc.Encode(request{Execute: "guest-sync-delimited", Arguments: map[string]int64{"id": id}}); err != nil {
		return err
	}
	// The reply to guest-sync-delimited starts with 0xFF; whatever comes
	// before it is left over from an earlier session.
	if _, err := r.ReadBytes(0xFF); err != nil {
		return fmt.Errorf("waiting for the reply to guest-sync-delimited: %w", err)
	}
	var got int64
	if err := readReply(r, "guest-sync-delimited", &got); err != nil {
		return err
	}
	if got != id {
		return fmt.Errorf("%w: guest-sync-delimited returned id %d, sent %d", ErrProtocol, got, id)
	}
	if err := enc.Encode(request{Execute: cmd}); err != nil {
		return err
	}
	return readReply(r, cmd, out)
}

func readReply(r *bufio.Reader, cmd string, out any) error {
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return fmt.Errorf("reading the reply to %s: %w", cmd, err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var rep reply
		if err := json.Unmarshal(line, &rep); err != nil {
			return fmt.Errorf("%w: reply to %s is not JSON: %q", ErrProtocol, cmd, line)
		}
		if rep.Error != nil {
			return fmt.Errorf("%w: %s: %s (%s)", ErrAgent, cmd, rep.Error.Desc, rep.Error.Class)
		}
		if rep.Return == nil {
			// An event or other chatter; the reply is still to come.
			continue
		}
		if err := json.Unmarshal(rep.Return, out); err != nil {
			return fmt.Errorf("%w: %s returned %s", ErrProtocol, cmd, rep.Return)
		}
		return nil
	}
}
