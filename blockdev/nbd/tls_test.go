package nbd

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCA makes a CA and a server certificate for localhost signed by it,
// and writes ca-cert.pem, server-cert.pem and server-key.pem into dir (the
// names GnuTLS clients such as libnbd look for).
func testCA(t testing.TB, dir string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	if dir != "" {
		os.WriteFile(filepath.Join(dir, "ca-cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644)
		os.WriteFile(filepath.Join(dir, "server-cert.pem"), certPEM, 0o644)
		os.WriteFile(filepath.Join(dir, "server-key.pem"), keyPEM, 0o600)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, pool
}

// upgrade sends STARTTLS and moves the client onto TLS.
func (c *client) upgrade(pool *x509.CertPool) {
	c.t.Helper()
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repAck {
		c.t.Fatalf("STARTTLS: reply %x", r.typ)
	}
	tc := tls.Client(c.nc, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.nc, c.br = tc, bufio.NewReader(tc)
}

func TestStartTLS(t *testing.T) {
	cfg, pool := testCA(t, "")
	ts := startServer(t, newTestExporter(), Options{TLS: cfg})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.upgrade(pool)
	// STARTTLS twice is invalid.
	c.sendOpt(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("second STARTTLS: %x", r.typ)
	}
	c.goTo("vol", true, false)
	if r := c.do(0, cmdWrite, 4096, 4096, bytes.Repeat([]byte{0x42}, 4096)); r.errno != 0 {
		t.Fatalf("write over TLS: errno %d", r.errno)
	}
	if d := readData(t, c.do(0, cmdRead, 4096, 4096, nil)); !bytes.Equal(d, bytes.Repeat([]byte{0x42}, 4096)) {
		t.Fatal("read over TLS returned other data")
	}
}

func TestRequireTLS(t *testing.T) {
	cfg, pool := testCA(t, "")
	ts := startServer(t, newTestExporter(), Options{TLS: cfg, RequireTLS: true})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	for _, opt := range []uint32{optList, optInfo, optGo, optStructuredReply} {
		var payload []byte
		if opt == optInfo || opt == optGo {
			payload = infoPayload("vol")
		}
		c.sendOpt(opt, payload)
		if r := c.readOptReply(); r.typ != repErrTLSReqd {
			t.Fatalf("option %d in the clear: reply %x, want TLS_REQD", opt, r.typ)
		}
	}
	c.upgrade(pool)
	c.goTo("vol", true, false)
	if r := c.do(0, cmdFlush, 0, 0, nil); r.errno != 0 {
		t.Fatalf("flush: errno %d", r.errno)
	}
	// EXPORT_NAME in the clear has no error reply: the connection closes.
	d := dial(t, ts)
	d.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	d.sendOpt(optExportName, []byte("vol"))
	d.expectClosed()
	// Without a configuration, RequireTLS is refused.
	if _, err := NewServer(newTestExporter(), Options{RequireTLS: true}); err == nil {
		t.Fatal("RequireTLS without TLS accepted")
	}
}

// A client that does not trust the server's CA fails the handshake, and
// the server survives it.
func TestStartTLSUntrusted(t *testing.T) {
	cfg, _ := testCA(t, "")
	ts := startServer(t, newTestExporter(), Options{TLS: cfg})
	c := dial(t, ts)
	c.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	c.sendOpt(optStartTLS, nil)
	c.readOptReply()
	tc := tls.Client(c.nc, &tls.Config{ServerName: "localhost"}) // system roots only
	if err := tc.Handshake(); err == nil {
		t.Fatal("handshake with an untrusted certificate succeeded")
	}
	ok := dial(t, ts)
	ok.greet(clientFlagFixedNewstyle | clientFlagNoZeroes)
	ok.goTo("vol", false, false)
}
