package nbd

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/strata-storage/strata/blockdev"
)

// peerExporter lets a peer use "secret" only with a certificate whose CN
// is alice, and records the peers it was asked about.
type peerExporter struct {
	*memExporter
	mu    sync.Mutex
	peers []Peer
}

func (x *peerExporter) may(p Peer, name string) bool {
	x.mu.Lock()
	x.peers = append(x.peers, p)
	x.mu.Unlock()
	return name != "secret" || p.Unix || (len(p.Certs) > 0 && p.Certs[0].Subject.CommonName == "alice")
}

func (x *peerExporter) OpenFor(p Peer, name string) (Export, error) {
	if !x.may(p, name) {
		return nil, fmt.Errorf("refused: %w", blockdev.ErrNotFound)
	}
	return x.Open(name)
}

func (x *peerExporter) ListFor(p Peer) ([]ExportInfo, error) {
	all, err := x.List()
	return slices.DeleteFunc(all, func(e ExportInfo) bool { return !x.may(p, e.Name) }), err
}

// clientCert makes a client certificate with common name cn signed by a
// fresh CA, and returns it with a pool holding that CA.
func clientCert(t *testing.T, cn string, pool *x509.CertPool) tls.Certificate {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "client CA " + cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool.AddCert(ca)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func (c *client) listNames() []string {
	c.t.Helper()
	c.sendOpt(optList, nil)
	var names []string
	for _, r := range c.optReplies() {
		if r.typ == repServer {
			n := binary.BigEndian.Uint32(r.data)
			names = append(names, string(r.data[4:4+n]))
		} else if r.typ != repAck {
			c.t.Fatalf("LIST: reply %#x", r.typ)
		}
	}
	slices.Sort(names)
	return names
}

// TestAccessPeerExporter: a PeerExporter sees who asks (address, Unix or
// not, the verified certificate after STARTTLS); what it refuses is left
// out of LIST and answered like a name that does not exist.
func TestAccessPeerExporter(t *testing.T) {
	cfg, serverPool := testCA(t, "")
	clientCAs := x509.NewCertPool()
	alice := clientCert(t, "alice", clientCAs)
	bob := clientCert(t, "bob", clientCAs)
	cfg.ClientCAs, cfg.ClientAuth = clientCAs, tls.VerifyClientCertIfGiven

	x := &peerExporter{memExporter: newTestExporter()}
	x.add("secret", newMemDev(64<<10), "")
	srv, err := NewServer(x, Options{Logger: testLogger(t), TLS: cfg})
	if err != nil {
		t.Fatal(err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "nbdt")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "s")
	unix, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(tcp) }()
	go func() { errc <- srv.Serve(unix) }()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		for range 2 {
			if err := <-errc; err != nil {
				t.Errorf("Serve: %v", err)
			}
		}
		if n := x.open.Load(); n != 0 {
			t.Errorf("%d exports left open", n)
		}
	}()

	connect := func(network, addr string, cert *tls.Certificate) *client {
		t.Helper()
		nc, err := net.Dial(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		nc.SetDeadline(time.Now().Add(30 * time.Second))
		c := &client{t: t, nc: nc, br: bufio.NewReader(nc), readLens: map[uint64]uint32{}, simple: true}
		c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
		if cert != nil {
			c.sendOpt(optStartTLS, nil)
			if r := c.readOptReply(); r.typ != repAck {
				t.Fatalf("STARTTLS: reply %#x", r.typ)
			}
			tc := tls.Client(nc, &tls.Config{RootCAs: serverPool, ServerName: "localhost", Certificates: []tls.Certificate{*cert}})
			if err := tc.Handshake(); err != nil {
				t.Fatalf("TLS handshake: %v", err)
			}
			c.nc, c.br = tc, bufio.NewReader(tc)
		}
		return c
	}
	refused := func(c *client, name string) {
		t.Helper()
		for _, opt := range []uint32{optInfo, optGo} {
			c.sendOpt(opt, infoPayload(name))
			rs := c.optReplies()
			last := rs[len(rs)-1]
			if len(rs) != 1 || last.typ != repErrUnknown {
				t.Fatalf("option %d for refused %q: replies %+v, want one ERR_UNKNOWN", opt, name, rs)
			}
			if want := fmt.Sprintf("no export %q", name); string(last.data) != want {
				t.Fatalf("refusal says %q, want %q (what a missing name gets)", last.data, want)
			}
		}
	}
	addr := tcp.Addr().String()

	// Plain TCP, and TLS without a certificate: "secret" does not exist.
	for _, c := range []*client{connect("tcp", addr, nil)} {
		if got := c.listNames(); !slices.Equal(got, []string{"other", "vol"}) {
			t.Fatalf("LIST for a stranger: %q", got)
		}
		refused(c, "secret")
		refused(c, "missing")
		c.goTo("vol", true, false)
	}
	// bob's certificate does not open it either; EXPORT_NAME closes.
	c := connect("tcp", addr, &bob)
	if got := c.listNames(); !slices.Equal(got, []string{"other", "vol"}) {
		t.Fatalf("LIST for bob: %q", got)
	}
	refused(c, "secret")
	c.sendOpt(optExportName, []byte("secret"))
	c.expectClosed()

	// alice's does; so does any Unix-socket client.
	c = connect("tcp", addr, &alice)
	if got := c.listNames(); !slices.Equal(got, []string{"other", "secret", "vol"}) {
		t.Fatalf("LIST for alice: %q", got)
	}
	c.goTo("secret", true, false)
	if r := c.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: errno %d", r.errno)
	}
	u := connect("unix", sock, nil)
	if got := u.listNames(); !slices.Equal(got, []string{"other", "secret", "vol"}) {
		t.Fatalf("LIST over the Unix socket: %q", got)
	}
	u.sendOpt(optInfo, infoPayload("secret"))
	if _, typ := parseInfos(t, u.optReplies()); typ != repAck {
		t.Fatalf("INFO secret over the Unix socket: %#x", typ)
	}

	// What the exporter saw.
	x.mu.Lock()
	defer x.mu.Unlock()
	var sawAlice, sawBob, sawUnix, sawTCP bool
	for _, p := range x.peers {
		switch {
		case p.Unix:
			sawUnix = p.Certs == nil
		case len(p.Certs) > 0 && p.Certs[0].Subject.CommonName == "alice":
			sawAlice = p.Addr.(*net.TCPAddr).IP.IsLoopback()
		case len(p.Certs) > 0 && p.Certs[0].Subject.CommonName == "bob":
			sawBob = len(p.Certs) == 2 // leaf and its CA: the verified chain
		default:
			sawTCP = p.Addr.Network() == "tcp"
		}
	}
	if !sawAlice || !sawBob || !sawUnix || !sawTCP {
		t.Fatalf("peers seen: alice %v, bob %v, unix %v, plain tcp %v", sawAlice, sawBob, sawUnix, sawTCP)
	}
}
