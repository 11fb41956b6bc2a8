package daemon

import (
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"

	"github.com/strata-storage/strata/blockdev"
	"github.com/strata-storage/strata/blockdev/nbd"
	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/cow"
)

// accessRule is one volume's access rules as access.json keeps them.
type accessRule struct {
	Volume string `json:"volume"`
	control.Access
}

// accessManager holds the per-volume access rules (DATA/access.json) and
// decides which NBD clients may see and open a volume. Its methods are
// safe for concurrent use; a volume without rules is open to every client
// the listener lets in.
type accessManager struct {
	path string
	log  *slog.Logger

	mu struct {
		sync.Mutex
		rules  map[string]*accessRule
		nets   map[string][]*net.IPNet // parsed rules[vol].Allow
		denied map[string]int64        // refused opens by volume
	}
}

func newAccessManager(path string, log *slog.Logger) (*accessManager, error) {
	rules, err := loadEntries(path, func(r *accessRule) string { return r.Volume })
	if err != nil {
		return nil, err
	}
	m := &accessManager{path: path, log: log}
	m.mu.rules, m.mu.nets, m.mu.denied = rules, map[string][]*net.IPNet{}, map[string]int64{}
	for vol, r := range rules {
		nets, err := parseNets(r.Allow)
		if err != nil {
			return nil, fmt.Errorf("%s: volume %s: %w", path, vol, err)
		}
		m.mu.nets[vol] = nets
	}
	return m, nil
}

// parseNets parses CIDRs and bare addresses (one host).
func parseNets(list []string) ([]*net.IPNet, error) {
	var out []*net.IPNet
	for _, s := range list {
		if !strings.Contains(s, "/") {
			ip := net.ParseIP(s)
			if ip == nil {
				return nil, fmt.Errorf("%w: allow %q: not an address or a CIDR (10.0.0.0/8, 192.0.2.7, fd00::/8)", errBadRequest, s)
			}
			bits := 128
			if ip.To4() != nil {
				ip, bits = ip.To4(), 32
			}
			out = append(out, &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)})
			continue
		}
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("%w: allow %q: not an address or a CIDR (10.0.0.0/8, 192.0.2.7, fd00::/8)", errBadRequest, s)
		}
		out = append(out, n)
	}
	return out, nil
}

// set changes vol's rules: a non-nil list replaces that rule (an empty one
// clears it). The file is saved before the change takes effect.
func (m *accessManager) set(vol string, allow, allowCert *[]string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	r := accessRule{Volume: vol}
	if old := m.mu.rules[vol]; old != nil {
		r = *old
	}
	if allow != nil {
		r.Allow = clean(*allow)
	}
	if allowCert != nil {
		r.AllowCert = clean(*allowCert)
	}
	nets, err := parseNets(r.Allow)
	if err != nil {
		return err
	}
	next := make(map[string]*accessRule, len(m.mu.rules)+1)
	for k, v := range m.mu.rules {
		next[k] = v
	}
	if len(r.Allow) == 0 && len(r.AllowCert) == 0 {
		delete(next, vol)
	} else {
		next[vol] = &r
	}
	if err := saveEntries(m.path, next); err != nil {
		return err
	}
	m.mu.rules = next
	m.mu.nets[vol] = nets
	return nil
}

func clean(list []string) []string {
	var out []string
	for _, s := range list {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// forget drops a deleted volume's rules.
func (m *accessManager) forget(vol string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.mu.rules[vol]; !ok {
		return nil
	}
	next := make(map[string]*accessRule, len(m.mu.rules))
	for k, v := range m.mu.rules {
		if k != vol {
			next[k] = v
		}
	}
	if err := saveEntries(m.path, next); err != nil {
		return err
	}
	m.mu.rules = next
	delete(m.mu.nets, vol)
	delete(m.mu.denied, vol)
	return nil
}

// rules returns vol's rules (nil: none).
func (m *accessManager) rules(vol string) *control.Access {
	m.mu.Lock()
	defer m.mu.Unlock()
	if r := m.mu.rules[vol]; r != nil {
		a := r.Access
		return &a
	}
	return nil
}

// allows says whether p may use vol: a Unix-socket client always; else its
// address must be in an allowed network (when Allow is set) and its
// verified certificate must carry an allowed name (when AllowCert is set).
func (m *accessManager) allows(p nbd.Peer, vol string) bool {
	if p.Unix {
		return true
	}
	m.mu.Lock()
	r, nets := m.mu.rules[vol], m.mu.nets[vol]
	m.mu.Unlock()
	if r == nil {
		return true
	}
	if len(r.Allow) > 0 {
		a, ok := p.Addr.(*net.TCPAddr)
		if !ok || !allowed(nets, a.IP) {
			return false
		}
	}
	if len(r.AllowCert) > 0 {
		if len(p.Certs) == 0 || !certMatches(p.Certs[0], r.AllowCert) {
			return false
		}
	}
	return true
}

// certMatches: the certificate's CN or one of its DNS, email or URI SANs
// is one of names.
func certMatches(c *x509.Certificate, names []string) bool {
	ids := []string{c.Subject.CommonName}
	ids = append(ids, c.DNSNames...)
	ids = append(ids, c.EmailAddresses...)
	for _, u := range c.URIs {
		ids = append(ids, u.String())
	}
	for _, id := range ids {
		for _, n := range names {
			if id != "" && id == n {
				return true
			}
		}
	}
	return false
}

// deny logs and counts a refused open.
func (m *accessManager) deny(p nbd.Peer, vol, name string) {
	m.mu.Lock()
	m.mu.denied[vol]++
	m.mu.Unlock()
	args := []any{"volume", vol, "export", name, "remote", fmt.Sprint(p.Addr)}
	if len(p.Certs) > 0 {
		args = append(args, "cert", p.Certs[0].Subject.CommonName)
	}
	m.log.Warn("NBD client refused: not allowed to the volume", args...)
}

// deniedCounts is the refused opens by volume since start.
func (m *accessManager) deniedCounts() map[string]int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]int64, len(m.mu.denied))
	for k, v := range m.mu.denied {
		out[k] = v
	}
	return out
}

// exportVolume is the volume an export name serves ("" with the pool's
// only volume, VOL@POINT: VOL).
func (e exporter) exportVolume(name string) string {
	if vol, _, ok := cow.ParsePoint(name); ok {
		return vol
	}
	if name == "" {
		if vols := e.p.Volumes(); len(vols) == 1 {
			return vols[0].Name
		}
	}
	return name
}

func (e exporter) OpenFor(p nbd.Peer, name string) (nbd.Export, error) {
	if vol := e.exportVolume(name); e.access != nil && !e.access.allows(p, vol) {
		e.access.deny(p, vol, name)
		// What a name that does not exist gets: nothing about the volume.
		return nil, fmt.Errorf("%w: not allowed", blockdev.ErrNotFound)
	}
	return e.Open(name)
}

func (e exporter) ListFor(p nbd.Peer) ([]nbd.ExportInfo, error) {
	all, err := e.List()
	if err != nil || e.access == nil {
		return all, err
	}
	out := all[:0]
	for _, x := range all {
		if e.access.allows(p, e.exportVolume(x.Name)) {
			out = append(out, x)
		}
	}
	return out, nil
}

// setAccess validates and sets vol's access rules (the settings API).
func (d *Daemon) setAccess(vol string, allow, allowCert *[]string) error {
	if _, err := d.pool.VolumeInfo(vol); err != nil {
		return err
	}
	if allowCert != nil && len(clean(*allowCert)) > 0 {
		if t := d.opts.TLS; t == nil || t.ClientCAs == nil {
			return fmt.Errorf("%w: --allow-cert needs client certificates: restart strata serve with --tls-cert, --tls-key and --tls-ca (the CA that signs the clients' certificates)", errBadRequest)
		}
	}
	if allow != nil {
		if _, err := parseNets(clean(*allow)); err != nil {
			return err
		}
	}
	return d.access.set(vol, allow, allowCert)
}
