package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// writeClientPKI writes a CA and a server certificate for localhost into
// dir (as writePKI does), and for each cn a directory dir/cn holding what
// libnbd's tls-certificates wants: the CA and a client certificate with
// that common name.
func writeClientPKI(t *testing.T, dir string, cns ...string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(d, name, typ string, der []byte) {
		if err := os.WriteFile(filepath.Join(d, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	issue := func(d, prefix, cn string, serial int64, usage x509.ExtKeyUsage) {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames, tmpl.IPAddresses = []string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
		write(d, prefix+"-cert.pem", "CERTIFICATE", der)
		write(d, prefix+"-key.pem", "PRIVATE KEY", keyDER)
	}
	write(dir, "ca-cert.pem", "CERTIFICATE", caDER)
	issue(dir, "server", "localhost", 2, x509.ExtKeyUsageServerAuth)
	for i, cn := range cns {
		d := filepath.Join(dir, cn)
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		write(d, "ca-cert.pem", "CERTIFICATE", caDER)
		issue(d, "client", cn, int64(10+i), x509.ExtKeyUsageClientAuth)
	}
}

// TestE2EVolumeAccess: `volume set --allow/--allow-cert` hides a volume
// from the TCP and TLS clients it does not name (not in LIST, not
// openable, logged and counted) and serves the ones it names; the rules
// survive a restart.
func TestE2EVolumeAccess(t *testing.T) {
	need(t, "nbdinfo")
	port := strconv.Itoa(freePort(t))
	s := startServer(t, "--listen", "127.0.0.1:"+port)
	s.createVolume("private", "4MiB")
	s.createVolume("public", "4MiB")
	base := "nbd://127.0.0.1:" + port + "/"
	lists := func(uri, name string) bool {
		t.Helper()
		return strings.Contains(mustRun(t, "nbdinfo", "--list", uri).stdout, "export=\""+name+"\"")
	}
	hidden := func(base string, suffix string) {
		t.Helper()
		if lists(base+suffix, "private") {
			t.Fatalf("a volume the client may not use is listed")
		}
		if !lists(base+suffix, "public") {
			t.Fatalf("a volume without rules is not listed")
		}
		r := run(t, "nbdinfo", base+"private"+suffix)
		if r.code == 0 {
			t.Fatalf("a volume the client may not use opened: %s", r)
		}
		if strings.Contains(r.stderr, "public") {
			t.Fatalf("the refusal names another volume: %s", r)
		}
		mustRun(t, "nbdinfo", base+"public"+suffix)
	}

	out := s.mustCLI("volume", "set", "private", "--allow", "10.0.0.0/8")
	if !strings.Contains(out, "volume private is open to 10.0.0.0/8") {
		t.Fatalf("volume set --allow said:\n%s", out)
	}
	hidden(base, "")
	s.mustCLI("snapshot", "create", "private", "s1")
	if r := run(t, "nbdinfo", base+"private@s1"); r.code == 0 {
		t.Fatalf("a point in time of a refused volume opened: %s", r)
	}
	mustRun(t, "nbdinfo", s.uri("private")) // Unix-socket clients are local
	if list := s.mustCLI("volume", "list"); !strings.Contains(list, "ACCESS") || !strings.Contains(list, "10.0.0.0/8") {
		t.Fatalf("volume list does not show the rules:\n%s", list)
	}
	// Each refused open request counts: nbdinfo asks twice per
	// connection (NBD_OPT_INFO, then NBD_OPT_GO).
	fams, text := s.scrape(t)
	if v, err := fams.Value("strata_access_denied_total", "volume", "private"); err != nil || v != 4 {
		t.Fatalf("strata_access_denied_total{volume=private} = %v, %v; want 4\n%s", v, err, text)
	}
	var logs string
	for _, f := range s.logs {
		b, _ := os.ReadFile(f)
		logs += string(b)
	}
	if !strings.Contains(logs, "not allowed to the volume") {
		t.Fatal("a refused client is not logged")
	}

	// Rules survive a restart.
	s.restart()
	hidden(base, "")
	s.mustCLI("volume", "set", "private", "--allow", "127.0.0.1/32")
	mustRun(t, "nbdinfo", base+"private")
	if !lists(base, "private") {
		t.Fatal("an allowed volume is not listed")
	}
	// Bad input: one line saying what is wrong.
	r := runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", s.dir, "volume", "set", "private", "--allow", "10.0.0.0/33"}, timeout: 10 * time.Second})
	checkOneLineError(t, "volume set --allow with a bad network", r, "10.0.0.0/33")
	r = runSpec(t, cmdSpec{name: strataBin, args: []string{"--data", s.dir, "volume", "set", "private", "--allow-cert", "alice"}, timeout: 10 * time.Second})
	checkOneLineError(t, "volume set --allow-cert without --tls-ca", r, "--tls-ca")
	s.stop()

	// TLS with client certificates: alice's opens it, bob's does not.
	pki := shortTempDir(t)
	writeClientPKI(t, pki, "alice", "bob")
	port = strconv.Itoa(freePort(t))
	tlsS := startServer(t, "--listen", "127.0.0.1:"+port, "--tls-cert", filepath.Join(pki, "server-cert.pem"),
		"--tls-key", filepath.Join(pki, "server-key.pem"), "--tls-ca", filepath.Join(pki, "ca-cert.pem"), "--tls=require")
	tlsS.createVolume("private", "4MiB")
	tlsS.createVolume("public", "4MiB")
	tlsS.mustCLI("volume", "set", "private", "--allow-cert", "alice")
	tbase := "nbds://127.0.0.1:" + port + "/"
	as := func(who string) string {
		return "?tls-certificates=" + filepath.Join(pki, who) + "&tls-hostname=localhost"
	}
	hidden(tbase, as("bob"))
	if !lists(tbase+as("alice"), "private") {
		t.Fatal("alice does not see the volume allowed to her")
	}
	mustRun(t, "nbdinfo", tbase+"private"+as("alice"))
	fams, text = tlsS.scrape(t)
	if v, err := fams.Value("strata_access_denied_total", "volume", "private"); err != nil || v != 2 {
		t.Fatalf("strata_access_denied_total{volume=private} = %v, %v; want 2\n%s", v, err, text)
	}
	// Deleting the volume drops its rules.
	tlsS.mustCLI("volume", "delete", "private")
	tlsS.createVolume("private", "4MiB")
	mustRun(t, "nbdinfo", tbase+"private"+as("bob"))
}
