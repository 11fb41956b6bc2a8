package witness

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
)

// Wire requests: JSON bodies of the POST endpoints.
type (
	acquireRequest struct {
		Group string `json:"group"`
		Node  string `json:"node"`
		Peer  string `json:"peer"`
		Epoch uint64 `json:"epoch"`
	}
	outdatedRequest struct {
		Group    string `json:"group"`
		Node     string `json:"node"`
		Epoch    uint64 `json:"epoch"`
		Peer     string `json:"peer"`
		Outdated bool   `json:"outdated"`
	}
	releaseRequest struct {
		Group string `json:"group"`
		Node  string `json:"node"`
		Epoch uint64 `json:"epoch"`
	}
	handoverRequest struct {
		Group string `json:"group"`
		Node  string `json:"node"`
		Epoch uint64 `json:"epoch"`
		To    string `json:"to"`
	}
	// errorResponse is every non-200 answer; Code classifies it for the
	// client (one of the code* constants).
	errorResponse struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
)

// Error codes of errorResponse.
const (
	codeUnauthorized = "unauthorized"
	codeBadRequest   = "bad_request"
	codeUnknownGroup = "unknown_group"
	codeFailed       = "failed"
	codeClosed       = "closed"
	codeOther        = "other"
)

// maxBody bounds a request body; real ones are a few hundred bytes.
const maxBody = 64 << 10

// Handler serves the witness API, JSON over HTTP:
//
//	POST /v1/acquire   {group, node, peer, epoch}            -> Grant
//	POST /v1/outdated  {group, node, epoch, peer, outdated}  -> Grant
//	POST /v1/release   {group, node, epoch}                  -> Grant
//	POST /v1/handover  {group, node, epoch, to}              -> Grant
//	GET  /v1/status?group=G                                   -> State
//	GET  /v1/list                                             -> [State]
//
// Every request carries "Authorization: Bearer TOKEN" (401 otherwise).
// Errors are {"error": "...", "code": "..."} with 400 (bad input), 404
// (unknown group or endpoint), 405, 503 (the witness failed or is closed).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/acquire", post(s, func(r *http.Request, q *acquireRequest) (any, error) {
		return s.Acquire(r.Context(), q.Group, q.Node, q.Peer, q.Epoch)
	}))
	mux.HandleFunc("/v1/outdated", post(s, func(r *http.Request, q *outdatedRequest) (any, error) {
		return s.SetOutdated(r.Context(), q.Group, q.Node, q.Epoch, q.Peer, q.Outdated)
	}))
	mux.HandleFunc("/v1/release", post(s, func(r *http.Request, q *releaseRequest) (any, error) {
		return s.Release(r.Context(), q.Group, q.Node, q.Epoch)
	}))
	mux.HandleFunc("/v1/handover", post(s, func(r *http.Request, q *handoverRequest) (any, error) {
		return s.Handover(r.Context(), q.Group, q.Node, q.Epoch, q.To)
	}))
	mux.HandleFunc("/v1/status", get(s, func(r *http.Request) (any, error) {
		return s.Status(r.Context(), r.URL.Query().Get("group"))
	}))
	mux.HandleFunc("/v1/list", get(s, func(r *http.Request) (any, error) {
		return s.List(r.Context())
	}))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, codeOther, fmt.Sprintf("no such endpoint %s; the witness serves /v1/acquire, /v1/outdated, /v1/release, /v1/handover, /v1/status, /v1/list", r.URL.Path))
	})
	return mux
}

func (s *Server) authorized(w http.ResponseWriter, r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || !s.checkToken(tok) {
		writeError(w, http.StatusUnauthorized, codeUnauthorized, "the client's --token-file must hold what the witness's --token-file holds")
		return false
	}
	return true
}

func post[Q any](s *Server, f func(*http.Request, *Q) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, http.StatusMethodNotAllowed, codeOther, r.URL.Path+" takes POST")
			return
		}
		if !s.authorized(w, r) {
			return
		}
		var q Q
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("reading the request: %v", err))
			return
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&q); err != nil {
			writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("request body is not the JSON %s expects: %v", r.URL.Path, err))
			return
		}
		if dec.More() {
			writeError(w, http.StatusBadRequest, codeBadRequest, fmt.Sprintf("request body of %s has data after its JSON object", r.URL.Path))
			return
		}
		answer(w)(f(r, &q))
	}
}

func get(s *Server, f func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			writeError(w, http.StatusMethodNotAllowed, codeOther, r.URL.Path+" takes GET")
			return
		}
		if !s.authorized(w, r) {
			return
		}
		answer(w)(f(r))
	}
}

// answer writes a handler's result: the value, or the error with its status.
func answer(w http.ResponseWriter) func(any, error) {
	return func(v any, err error) {
		if err != nil {
			status, code, class := classOf(err)
			// The code carries the class; the message says the rest.
			writeError(w, status, code, strings.TrimPrefix(err.Error(), class.Error()+": "))
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func classOf(err error) (int, string, error) {
	switch {
	case errors.Is(err, ErrBadRequest):
		return http.StatusBadRequest, codeBadRequest, ErrBadRequest
	case errors.Is(err, ErrUnknownGroup):
		return http.StatusNotFound, codeUnknownGroup, ErrUnknownGroup
	case errors.Is(err, ErrFailed):
		return http.StatusServiceUnavailable, codeFailed, ErrFailed
	case errors.Is(err, ErrClosed):
		return http.StatusServiceUnavailable, codeClosed, ErrClosed
	}
	return http.StatusInternalServerError, codeOther, errors.New("")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorResponse{Error: msg, Code: code})
}
