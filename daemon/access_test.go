package daemon

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"testing"

	"github.com/strata-storage/strata/blockdev/nbd"
)

func TestAccessRules(t *testing.T) {
	path := filepath.Join(t.TempDir(), "access.json")
	m, err := newAccessManager(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	tcp := func(ip string, certs ...*x509.Certificate) nbd.Peer {
		return nbd.Peer{Addr: &net.TCPAddr{IP: net.ParseIP(ip), Port: 5000}, Certs: certs}
	}
	u, _ := url.Parse("spiffe://example.org/host3")
	alice := &x509.Certificate{Subject: pkix.Name{CommonName: "alice"}}
	san := &x509.Certificate{Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"host1.example"},
		EmailAddresses: []string{"ops@example.org"}, URIs: []*url.URL{u}}
	list := func(s ...string) *[]string { return &s }

	if err := m.set("cidr", list("10.0.0.0/8", " 192.0.2.7 ", "fd00::/8"), nil); err != nil {
		t.Fatal(err)
	}
	if err := m.set("cert", nil, list("alice", "host1.example", "ops@example.org", "spiffe://example.org/host3")); err != nil {
		t.Fatal(err)
	}
	if err := m.set("both", list("127.0.0.0/8"), list("alice")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		vol  string
		peer nbd.Peer
		want bool
	}{
		{"open", tcp("198.51.100.1"), true},
		{"cidr", tcp("10.1.2.3"), true},
		{"cidr", tcp("192.0.2.7"), true},
		{"cidr", tcp("192.0.2.8"), false},
		{"cidr", tcp("fd00::1"), true},
		{"cidr", tcp("127.0.0.1"), false},
		{"cidr", nbd.Peer{Addr: &net.UnixAddr{Name: "s", Net: "unix"}, Unix: true}, true},
		{"cert", tcp("127.0.0.1"), false},
		{"cert", tcp("127.0.0.1", alice), true},
		{"cert", tcp("127.0.0.1", san), true},
		{"cert", tcp("127.0.0.1", &x509.Certificate{Subject: pkix.Name{CommonName: "bob"}}), false},
		{"both", tcp("127.0.0.1", alice), true},
		{"both", tcp("10.0.0.1", alice), false},
		{"both", tcp("127.0.0.1", san), false},
	} {
		if got := m.allows(tc.peer, tc.vol); got != tc.want {
			t.Errorf("%s for %v (certs %d): allowed %v, want %v", tc.vol, tc.peer.Addr, len(tc.peer.Certs), got, tc.want)
		}
	}

	// Bad input changes nothing.
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0.0/8/1"} {
		if err := m.set("cidr", list(bad), nil); !errors.Is(err, errBadRequest) {
			t.Errorf("allow %q: %v", bad, err)
		}
	}
	// Rules survive a reload; empty lists clear; forget drops them.
	if err := m.set("both", list(), nil); err != nil {
		t.Fatal(err)
	}
	if err := m.forget("cert"); err != nil {
		t.Fatal(err)
	}
	m2, err := newAccessManager(path, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if r := m2.rules("cidr"); r == nil || len(r.Allow) != 3 || r.Allow[1] != "192.0.2.7" {
		t.Fatalf("cidr after reload: %+v", r)
	}
	if r := m2.rules("both"); r == nil || len(r.Allow) != 0 || len(r.AllowCert) != 1 {
		t.Fatalf("both after clearing allow: %+v", r)
	}
	if r := m2.rules("cert"); r != nil {
		t.Fatalf("forgotten rules came back: %+v", r)
	}
	if err := m2.set("both", nil, list()); err != nil {
		t.Fatal(err)
	}
	if r := m2.rules("both"); r != nil {
		t.Fatalf("both after clearing everything: %+v", r)
	}
	if !m2.allows(tcp("10.0.0.1"), "both") {
		t.Fatal("a volume without rules refused a client")
	}
}
