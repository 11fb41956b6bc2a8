package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/strata-storage/strata/replica"
	"github.com/strata-storage/strata/replica/witness"
)

func init() { newWitnessClient = dialWitness }

// dialWitness makes the client of e's witness: TLS when the mirror's
// streams use it (the same CA), plaintext on loopback or with --insecure.
func dialWitness(e *mirrorEntry) (witnessClient, error) {
	file := e.WitnessTokenFile
	if file == "" {
		file = e.TokenFile
	}
	token, err := readToken(file)
	if err != nil {
		return nil, fmt.Errorf("witness token: %w", err)
	}
	o := witness.ClientOptions{Addr: e.Witness, Token: token}
	switch {
	case e.TLSCA != "":
		b, err := os.ReadFile(e.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in it", e.TLSCA)
		}
		host := e.Witness[:max(strings.LastIndex(e.Witness, ":"), 0)]
		o.TLS = &tls.Config{RootCAs: roots, ServerName: strings.Trim(host, "[]"), MinVersion: tls.VersionTLS12}
	case replica.IsLoopback(e.Witness) || e.Insecure:
	default:
		return nil, fmt.Errorf("%w: the witness %s is off loopback: give --tls-ca (the witness runs with --tls-cert/--tls-key), or --insecure for plaintext", errBadRequest, e.Witness)
	}
	return witnessAdapter{witness.NewClient(o)}, nil
}

// witnessAdapter turns the witness client's grants into votes.
type witnessAdapter struct{ c *witness.Client }

func voteOf(g witness.Grant, err error) (vote, error) {
	return vote{Granted: g.Granted, Epoch: g.Epoch, Holder: g.Holder, Outdated: g.Outdated, Reason: g.Reason, ValidUntil: g.ValidUntil}, err
}

func (a witnessAdapter) Acquire(ctx context.Context, group, node, peer string, epoch uint64) (vote, error) {
	return voteOf(a.c.Acquire(ctx, group, node, peer, epoch))
}

func (a witnessAdapter) SetOutdated(ctx context.Context, group, node string, epoch uint64, peer string, outdated bool) (vote, error) {
	return voteOf(a.c.SetOutdated(ctx, group, node, epoch, peer, outdated))
}

func (a witnessAdapter) Handover(ctx context.Context, group, node string, epoch uint64, to string) (vote, error) {
	return voteOf(a.c.Handover(ctx, group, node, epoch, to))
}

func (a witnessAdapter) Release(ctx context.Context, group, node string, epoch uint64) (vote, error) {
	return voteOf(a.c.Release(ctx, group, node, epoch))
}

func (a witnessAdapter) Exists(ctx context.Context, group string) (bool, error) {
	_, err := a.c.Status(ctx, group)
	if errors.Is(err, witness.ErrUnknownGroup) {
		return false, nil
	}
	return err == nil, err
}
