// Package nbd owns Strata's NBD server: the fixed newstyle handshake, option
// haggling (INFO/GO, LIST, structured replies, the base:allocation metadata
// context) and the transmission phase, written to the protocol specification
// (NetworkBlockDevice/nbd, doc/proto.md). It serves any blockdev.Device that an
// Exporter resolves by export name, and it is the only place where blockdev's
// error classes become NBD errno values.
//
// Each connection has one goroutine that parses requests (and reads WRITE
// payloads) and a pool of workers that run them, bounded by
// Options.MaxRequestsInFlight and Options.MaxBytesInFlight. A READ that a
// blockdev.FastReader has in memory is served by the parsing goroutine
// itself. Replies go out in completion order, gathered in a per-connection
// buffer so that many of them share one write to the socket (replies.go).
//
// TLS is negotiated with NBD_OPT_STARTTLS when Options.TLS is set
// (Options.RequireTLS refuses plaintext option haggling). Oldstyle
// negotiation and extended headers are not supported.
package nbd
