package daemon

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/vip"
)

func (d *Daemon) mirrorHandlers(mux *http.ServeMux) {
	m := d.mirrors
	mux.HandleFunc("GET /v1/mirrors", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, m.statuses(r.Context()))
	})
	mux.HandleFunc("POST /v1/mirrors", func(w http.ResponseWriter, r *http.Request) {
		var req control.MirrorAddRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		st, err := m.add(r.Context(), req)
		if err != nil {
			writeClassified(w, err, replErrorClasses)
			return
		}
		writeJSON(w, http.StatusCreated, st)
	})
	mux.HandleFunc("DELETE /v1/mirrors/{name}", func(w http.ResponseWriter, r *http.Request) {
		if err := m.remove(r.PathValue("name")); err != nil {
			writeErr(w, err)
			return
		}
		writeJSON(w, http.StatusOK, struct{}{})
	})
	mux.HandleFunc("POST /v1/mirrors/{name}/switchover", func(w http.ResponseWriter, r *http.Request) {
		var req control.MirrorSwitchoverRequest
		if err := decodeBody(r, &req); err != nil {
			writeErr(w, err)
			return
		}
		rep, err := m.switchover(r.Context(), r.PathValue("name"), req.Final)
		if err != nil {
			writeClassified(w, err, replErrorClasses)
			return
		}
		writeJSON(w, http.StatusOK, rep)
	})
}

// onMirrorRole runs when this host becomes the primary or the secondary of
// a mirrored volume: the floating address follows the primary (held while
// this host is the primary of any mirrored volume), then the --on-promote
// hook hears of it.
func (d *Daemon) onMirrorRole(vol, role string, epoch uint64) {
	log := d.opts.Logger
	d.vipMu.Lock()
	if d.vip != nil {
		// The address goes where the mirrors' current state says (see
		// wantsAddress); a volume that migrated here (no longer mirrored)
		// takes it too.
		want := d.mirrors.wantsAddress() || (role == control.RolePrimary && !d.mirrors.mirrored(vol))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var err error
		if want {
			err = d.vip.Acquire(ctx)
		} else {
			err = d.vip.Release(ctx)
		}
		cancel()
		if err != nil {
			log.Error("mirror: moving the floating address failed", "vip", d.vip.String(), "hold", want, "err", err)
		} else {
			log.Info("mirror: floating address", "vip", d.vip.String(), "held", want, "volume", vol, "role", role)
		}
	}
	d.vipMu.Unlock()
	if d.opts.OnPromote != "" {
		env := map[string]string{"STRATA_VOLUME": vol, "STRATA_ROLE": role, "STRATA_EPOCH": strconv.FormatUint(epoch, 10)}
		if err := vip.RunHook(context.Background(), d.opts.OnPromote, env, 30*time.Second, log); err != nil {
			log.Warn("mirror: --on-promote failed", "volume", vol, "role", role, "err", err)
		}
	}
}
