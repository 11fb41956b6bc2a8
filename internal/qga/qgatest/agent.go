// Package qgatest is a QEMU guest agent for tests: it speaks the agent's
// protocol (JSON lines, guest-sync-delimited, guest-fsfreeze-*) on a Unix
// socket and keeps a pretend freeze state, so freeze and thaw paths run
// without a VM and without freezing anything real.
package qgatest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"path/filepath"
	"sync"
	"testing"
)

// Behaviour of the agent's guest-fsfreeze-freeze.
type Behaviour int

const (
	// Obey freezes and answers.
	Obey Behaviour = iota
	// Hang freezes and never answers (a guest stuck in its freeze).
	Hang
	// Refuse freezes part of the guest, then answers with an error, as
	// an agent does whose freeze hook failed half-way.
	Refuse
	// StayFrozen freezes, and answers a thaw without thawing.
	StayFrozen
)

// Agent is a running test agent.
type Agent struct {
	Socket string
	ln     net.Listener

	mu       sync.Mutex
	frozen   bool
	commands []string
	hung     chan struct{}
	wg       sync.WaitGroup
}

// Start runs an agent on a socket in a temporary directory until the test
// ends.
func Start(t testing.TB, b Behaviour) *Agent {
	t.Helper()
	a := &Agent{Socket: filepath.Join(t.TempDir(), "qga.sock"), hung: make(chan struct{})}
	ln, err := net.Listen("unix", a.Socket)
	if err != nil {
		t.Fatalf("qgatest: %v", err)
	}
	a.ln = ln
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				a.serve(c, b)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		close(a.hung)
		a.wg.Wait()
	})
	return a
}

// Frozen reports whether the pretend guest is frozen.
func (a *Agent) Frozen() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.frozen
}

// Commands lists the commands received, in order (guest-sync-delimited
// included).
func (a *Agent) Commands() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.commands...)
}

type reply map[string]any

func (a *Agent) serve(c net.Conn, b Behaviour) {
	defer c.Close()
	go func() { <-a.hung; c.Close() }()
	r := bufio.NewReader(c)
	enc := json.NewEncoder(c)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		// Clients send 0xFF to reset the agent's parser.
		line = bytes.TrimLeft(line, "\xff")
		var req struct {
			Execute   string         `json:"execute"`
			Arguments map[string]any `json:"arguments"`
		}
		if err := json.Unmarshal(line, &req); err != nil {
			enc.Encode(reply{"error": reply{"class": "GenericError", "desc": "bad JSON"}})
			continue
		}
		a.mu.Lock()
		a.commands = append(a.commands, req.Execute)
		a.mu.Unlock()
		switch req.Execute {
		case "guest-sync-delimited":
			c.Write([]byte{0xFF})
			enc.Encode(reply{"return": req.Arguments["id"]})
		case "guest-sync":
			enc.Encode(reply{"return": req.Arguments["id"]})
		case "guest-fsfreeze-freeze":
			a.setFrozen(true)
			switch b {
			case Hang:
				<-a.hung
				return
			case Refuse:
				enc.Encode(reply{"error": reply{"class": "GenericError", "desc": "failed to freeze /var/lib/db: Device or resource busy"}})
			default:
				enc.Encode(reply{"return": 2})
			}
		case "guest-fsfreeze-thaw":
			if b == StayFrozen {
				enc.Encode(reply{"return": 0})
				continue
			}
			n := 0
			if a.setFrozen(false) {
				n = 2
			}
			enc.Encode(reply{"return": n})
		case "guest-fsfreeze-status":
			s := "thawed"
			if a.Frozen() {
				s = "frozen"
			}
			enc.Encode(reply{"return": s})
		default:
			enc.Encode(reply{"error": reply{"class": "CommandNotFound", "desc": "The command " + req.Execute + " has not been found"}})
		}
	}
}

// setFrozen sets the state and returns the old one.
func (a *Agent) setFrozen(f bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	old := a.frozen
	a.frozen = f
	return old
}
