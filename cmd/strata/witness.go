package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/strata-storage/strata/internal/units"
	"github.com/strata-storage/strata/replica"
	"github.com/strata-storage/strata/replica/witness"
)

func witnessCommand() *cli.Command {
	return &cli.Command{
		Name:  "witness",
		Usage: "run the tie-breaker of a synchronous mirror (stores no volume data)",
		UsageText: `strata witness --listen ADDR --data DIR --token-file F [--lease 3s] [--tls-cert F --tls-key F | --insecure]
strata witness status --witness ADDR --token-file F [--group G] [--json]

Example: volume vol0 is mirrored between hosts host-a and host-b; a third
machine (not either host) runs the witness:

   head -c 24 /dev/urandom | base64 > /etc/strata/witness.token   # copy it to both hosts
   strata witness --listen 0.0.0.0:10820 --data /var/lib/strata-witness \
       --token-file /etc/strata/witness.token --tls-cert cert.pem --tls-key key.pem
   strata witness status --witness witness-host:10820 --token-file /etc/strata/witness.token`,
		Description: `Two hosts that mirror a volume must never both accept writes, even when
they cannot reach each other. The witness breaks the tie: for each mirror
group (one per mirrored volume; one witness serves many) it records which
host holds the right to accept writes, under which epoch, and which host's
copy is stale. A host holds that right for a lease (--lease, default 3s)
and renews it well before it ends; when it stops renewing, its in-sync peer
may take over once the lease has run out, at the next epoch, and the old
holder, fenced, learns it must step down. A host whose copy misses writes
(outdated) never takes over.

The witness stores no volume data, only a few hundred bytes per group in
DATA/witness.json, written durably on every change of holder, epoch or
outdated member (renewals are kept in memory). After a restart it treats
every held group as leased for one full lease, so no host takes over while
the holder may still believe it holds.

Run it on a third machine (or a small VM elsewhere): on either mirror host
it would fail with that host. Requests carry the token of --token-file;
off loopback, give --tls-cert/--tls-key, or --insecure to accept
plaintext. Stop it with SIGTERM or Ctrl-C.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "address to serve on, e.g. 0.0.0.0:10820 (required)"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the token hosts must present (required; at least 8 characters)"},
			&cli.StringFlag{Name: "lease", Value: "3s", Usage: "how long a grant lasts; a holder must renew it before then"},
			&cli.StringFlag{Name: "tls-cert", Usage: "PEM certificate: serve HTTPS"},
			&cli.StringFlag{Name: "tls-key", Usage: "PEM private key of --tls-cert"},
			&cli.BoolFlag{Name: "insecure", Usage: "allow --listen off loopback without TLS: plaintext tokens to anyone who reaches the address"},
		},
		Action:      runWitness,
		Subcommands: []*cli.Command{witnessStatusCommand()},
	}
}

func runWitness(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("witness takes no arguments (got %q); see strata witness --help", c.Args().First())
	}
	log, err := newLogger(c.String("log-level"))
	if err != nil {
		return err
	}
	addr := c.String("listen")
	if addr == "" {
		return fmt.Errorf("--listen ADDR is required, e.g. --listen 0.0.0.0:10820")
	}
	if !c.IsSet("data") {
		return fmt.Errorf("--data DIR is required: the witness keeps its state (witness.json) there, e.g. --data /var/lib/strata-witness")
	}
	dir, err := filepath.Abs(c.String("data"))
	if err != nil {
		return fmt.Errorf("data directory %q: %w", c.String("data"), err)
	}
	if c.String("token-file") == "" {
		return fmt.Errorf("--token-file is required: a file holding a shared token, e.g. head -c 24 /dev/urandom | base64 > token")
	}
	token, err := readTokenFile(c.String("token-file"))
	if err != nil {
		return err
	}
	lease, err := units.ParseDuration(c.String("lease"))
	if err != nil {
		return fmt.Errorf("--lease: %w", err)
	}
	if lease < 100*time.Millisecond {
		return fmt.Errorf("--lease %s is too short: at least 100ms (hosts need a few round trips per lease)", c.String("lease"))
	}
	var cfg *tls.Config
	switch cert, key := c.String("tls-cert"), c.String("tls-key"); {
	case cert != "" && key != "":
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return fmt.Errorf("--tls-cert/--tls-key: %w", err)
		}
		cfg = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	case cert != "" || key != "":
		return fmt.Errorf("--tls-cert and --tls-key go together")
	}
	if cfg == nil && !replica.IsLoopback(addr) && !c.Bool("insecure") {
		return fmt.Errorf("--listen %s is off loopback: give --tls-cert/--tls-key, or --insecure to accept plaintext requests", addr)
	}
	s, err := witness.NewServer(witness.Options{Dir: dir, Lease: lease, Token: token, Logger: log})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		s.Close()
		return fmt.Errorf("--listen %s: %w", addr, err)
	}
	security := "plaintext"
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
		security = "TLS"
	}
	fmt.Printf("strata %s witness serving %s on %s (%s, lease %s, pid %d)\n", version, dir, ln.Addr(), security, lease, os.Getpid())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case sg := <-sig:
		log.Info("shutting down", "signal", sg.String())
	case err := <-done:
		s.Close()
		return fmt.Errorf("witness stopped serving: %w", err)
	}
	if err := s.Close(); err != nil {
		return err
	}
	if err := <-done; err != nil {
		return err
	}
	log.Info("stopped cleanly")
	return nil
}

func witnessStatusCommand() *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the groups a witness knows: holder, epoch, outdated member, lease left",
		UsageText: `strata witness status --witness ADDR --token-file F [--group G] [--json]

Examples:
   strata witness status --witness 127.0.0.1:10820 --token-file witness.token
   strata witness status --witness witness-host:10820 --token-file /etc/strata/witness.token --tls-ca ca.pem --group vol0`,
		Description: `HOLDER is the host that may accept writes ("-" after a release), EPOCH
rises with every change of holder, OUTDATED is the host whose copy misses
writes ("-": both in sync), LEASE LEFT is how long the holder's lease runs
on the witness's clock.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "witness", Usage: "the witness's HOST:PORT (required)"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the witness's token (required)"},
			&cli.StringFlag{Name: "group", Usage: "show only this group"},
			&cli.StringFlag{Name: "tls-ca", Usage: "PEM CA that signed the witness's certificate"},
			&cli.BoolFlag{Name: "insecure", Usage: "plaintext to a witness off loopback"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("witness status takes no arguments (got %q); see strata witness status --help", c.Args().First())
			}
			wc, err := witnessClient(c)
			if err != nil {
				return err
			}
			defer wc.CloseIdleConnections()
			var groups []witness.State
			if g := c.String("group"); g != "" {
				st, err := wc.Status(c.Context, g)
				if err != nil {
					return err
				}
				groups = []witness.State{st}
			} else if groups, err = wc.List(c.Context); err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(groups)
			}
			if len(groups) == 0 {
				fmt.Println("no groups yet: a mirror creates its group when its primary first asks for the lease")
				return nil
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "GROUP\tEPOCH\tHOLDER\tMEMBERS\tOUTDATED\tLEASE LEFT")
			for _, g := range groups {
				left := "expired"
				switch {
				case g.Holder == "":
					left = "-"
				case g.LeaseLeft > 0:
					left = g.LeaseLeft.Round(time.Millisecond).String()
				}
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\n", g.Group, g.Epoch, dash(g.Holder), g.Members[0]+","+g.Members[1], dash(g.Outdated), left)
			}
			return w.Flush()
		},
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// witnessClient is the client the status flags describe: TLS with
// --tls-ca, plaintext on loopback or with --insecure, else TLS with the
// system's roots.
func witnessClient(c *cli.Context) (*witness.Client, error) {
	addr := c.String("witness")
	if addr == "" {
		return nil, fmt.Errorf("--witness HOST:PORT is required")
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--witness %q: use HOST:PORT, e.g. witness-host:10820", addr)
	}
	if c.String("token-file") == "" {
		return nil, fmt.Errorf("--token-file is required (the file the witness's --token-file names)")
	}
	token, err := readTokenFile(c.String("token-file"))
	if err != nil {
		return nil, err
	}
	o := witness.ClientOptions{Addr: addr, Token: token, Timeout: 3 * time.Second}
	switch {
	case c.String("tls-ca") != "":
		b, err := os.ReadFile(c.String("tls-ca"))
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", c.String("tls-ca"))
		}
		o.TLS = &tls.Config{RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}
	case replica.IsLoopback(addr) || c.Bool("insecure"):
	default:
		o.TLS = &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	}
	return witness.NewClient(o), nil
}

func readTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("--token-file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if len(tok) < 8 {
		return "", fmt.Errorf("token file %s holds %d characters; use at least 8 (e.g. head -c 24 /dev/urandom | base64 > %s)", path, len(tok), path)
	}
	return tok, nil
}
