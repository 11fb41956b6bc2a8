package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/strata-storage/strata/control"
	"github.com/strata-storage/strata/internal/metricstest"
)

// start runs a daemon in-process on dir, with the options that edit sets,
// and stops it at the end of the test.
func start(t *testing.T, dir string, edit func(*Options)) (*Daemon, *control.Client) {
	t.Helper()
	o := Options{Dir: dir, NBDSocket: filepath.Join(dir, "nbd.sock"), Logger: testLogger(), Version: "test"}
	o.Pool.SegmentSize = 1 << 20
	o.Pool.GCInterval = -1
	if edit != nil {
		edit(&o)
	}
	d, err := Start(o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return d, control.NewClient(filepath.Join(dir, "control.sock"))
}

// apiCode is the control API's error code of err ("" for other errors).
func apiCode(err error) string {
	var ce *control.Error
	if errors.As(err, &ce) {
		return ce.Code
	}
	return ""
}

func TestStartServeClose(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	d, c := start(t, dir, func(o *Options) { o.Volumes = []VolumeSpec{{Name: "v0", Size: 16 << 20}} })
	if _, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "v1", Size: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	sn, err := c.CreateSnapshot(ctx, "v1", control.SnapshotRequest{Name: "s1", Label: "first"})
	if err != nil || sn.Name != "s1" {
		t.Fatalf("CreateSnapshot: %+v, %v", sn, err)
	}
	if _, err := c.Clone(ctx, control.CloneRequest{Source: "v1@s1", Name: "v2"}); err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "test" || st.DataDir != dir || st.PID != os.Getpid() || len(st.Volumes) != 3 || st.Connections == nil {
		t.Fatalf("status: %+v", st)
	}
	if _, err := c.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := c.Status(ctx); st.LastGC == nil {
		t.Fatal("status has no last GC after a pass")
	}
	m, err := c.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fams, err := metricstest.Parse(m)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := fams.Value("strata_volume_size_bytes", "volume", "v0"); err != nil || v != 16<<20 {
		t.Fatalf("metrics: size of v0 %v, %v\n%s", v, err, m)
	}

	if err := d.Close(ctx); err != nil {
		t.Fatal(err)
	}
	for _, sock := range []string{"control.sock", "nbd.sock"} {
		if _, err := os.Stat(filepath.Join(dir, sock)); err == nil {
			t.Errorf("%s left behind after Close", sock)
		}
	}
	if _, err := c.Volumes(ctx); !errors.Is(err, control.ErrNoDaemon) {
		t.Fatalf("request to a closed daemon: %v", err)
	}

	// The lock is released and the pool kept everything.
	_, c = start(t, dir, nil)
	vols, err := c.Volumes(ctx)
	if err != nil || len(vols) != 3 {
		t.Fatalf("volumes after a restart: %+v, %v", vols, err)
	}
	snaps, err := c.Snapshots(ctx, "v1")
	if err != nil || len(snaps) != 1 || snaps[0].Label != "first" {
		t.Fatalf("snapshots after a restart: %+v, %v", snaps, err)
	}
}

func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	_, c := start(t, dir, nil)
	_, err := Start(Options{Dir: dir, ControlSocket: filepath.Join(dir, "other.sock"), Logger: slog.New(slog.DiscardHandler)})
	if !errors.Is(err, ErrDataInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second Start on %s: %v", dir, err)
	}
	if _, err := c.Status(context.Background()); err != nil {
		t.Fatalf("the first daemon stopped answering: %v", err)
	}
}

func TestOptionsChecked(t *testing.T) {
	short := filepath.Join(t.TempDir(), "short")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		edit func(*Options)
		want string
	}{
		{"no token file", func(o *Options) { o.ReplicaListen = "127.0.0.1:0" }, "--replica-listen needs --replica-token-file"},
		{"short token", func(o *Options) { o.ReplicaListen, o.ReplicaTokenFile = "127.0.0.1:0", short }, "holds 3 characters"},
		{"plaintext off loopback", func(o *Options) {
			o.ReplicaListen, o.ReplicaTokenFile = "0.0.0.0:0", filepath.Join("testdata", "token")
		}, "is off loopback"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			o := Options{Dir: dir, Logger: slog.New(slog.DiscardHandler)}
			tc.edit(&o)
			d, err := Start(o)
			if err == nil {
				d.Close(context.Background())
				t.Fatal("Start accepted the options")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start: %v; want %q", err, tc.want)
			}
			if _, err := os.Stat(dir); err == nil {
				t.Fatal("Start created the data directory before refusing its options")
			}
		})
	}
}

func TestAPIErrors(t *testing.T) {
	ctx := context.Background()
	_, c := start(t, t.TempDir(), func(o *Options) { o.Volumes = []VolumeSpec{{Name: "v", Size: 8 << 20}} })
	for _, tc := range []struct {
		name string
		call func() error
		code string
	}{
		{"bad name", func() error {
			_, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "a/b", Size: 1 << 20})
			return err
		}, control.CodeInvalid},
		{"unaligned size", func() error {
			_, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "odd", Size: 1000})
			return err
		}, control.CodeInvalid},
		{"exists", func() error {
			_, err := c.CreateVolume(ctx, control.CreateVolumeRequest{Name: "v", Size: 1 << 20})
			return err
		}, control.CodeExists},
		{"missing volume", func() error {
			_, err := c.DeleteVolume(ctx, "nosuch", false)
			return err
		}, control.CodeNotFound},
		{"missing point", func() error {
			_, err := c.Rollback(ctx, "v", control.RollbackRequest{To: "nosuch"})
			return err
		}, control.CodePoint},
		{"clone of no point", func() error {
			_, err := c.Clone(ctx, control.CloneRequest{Source: "v", Name: "w"})
			return err
		}, control.CodeInvalid},
		{"unknown target", func() error {
			_, err := c.AddReplication(ctx, control.AddReplicationRequest{Volume: "v", TargetSpec: control.TargetSpec{To: "ftp://x"}})
			return err
		}, control.CodeInvalid},
		{"remove unknown replication", func() error {
			return c.RemoveReplication(ctx, "v -> strata://nowhere:1")
		}, control.CodeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if got := apiCode(err); got != tc.code {
				t.Fatalf("error %v has code %q, want %q", err, got, tc.code)
			}
			if strings.Contains(err.Error(), "cow: ") || strings.Contains(err.Error(), "blockdev: ") {
				t.Fatalf("message carries a package prefix: %v", err)
			}
		})
	}
}

// freeAddr is a loopback TCP address nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// replicaSite starts a daemon that accepts replication streams, and
// returns its client and the target that ships to it.
func replicaSite(t *testing.T) (*control.Client, control.TargetSpec) {
	t.Helper()
	token, err := filepath.Abs(filepath.Join("testdata", "token"))
	if err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	_, c := start(t, t.TempDir(), func(o *Options) { o.ReplicaListen, o.ReplicaTokenFile = addr, token })
	return c, control.TargetSpec{To: "strata://" + addr, TokenFile: token}
}

// TestReplication ships between two in-process daemons: once, then
// continuously until the replication is removed.
func TestReplication(t *testing.T) {
	ctx := context.Background()
	_, src := start(t, t.TempDir(), func(o *Options) { o.Volumes = []VolumeSpec{{Name: "v", Size: 8 << 20}} })
	dst, target := replicaSite(t)

	res, err := src.Replicate(ctx, control.ReplicateRequest{Volume: "v", TargetSpec: target}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Acked == 0 {
		t.Fatalf("replicate: %+v", res)
	}
	vols, err := dst.Volumes(ctx)
	if err != nil || len(vols) != 1 || vols[0].Name != "v" || !vols[0].ReadOnly {
		t.Fatalf("replica site holds %+v, %v", vols, err)
	}

	if _, err := src.AddReplication(ctx, control.AddReplicationRequest{Volume: "v", TargetSpec: target}); err != nil {
		t.Fatal(err)
	}
	if _, err := src.AddReplication(ctx, control.AddReplicationRequest{Volume: "v", TargetSpec: target}); apiCode(err) != control.CodeExists {
		t.Fatalf("second add of the same replication: %v", err)
	}
	if _, err := src.CreateSnapshot(ctx, "v", control.SnapshotRequest{Name: "s"}); err != nil {
		t.Fatal(err)
	}
	id := control.ReplicationID("v", target)
	deadline := time.Now().Add(20 * time.Second)
	for {
		list, err := src.Replications(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) == 1 && list[0].ID == id && list[0].Mode == "continuous" && list[0].Acked > res.Acked && list[0].LagRecords == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("continuous replication did not ship the snapshot: %+v", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if snaps, err := dst.Snapshots(ctx, "v"); err != nil || len(snaps) != 1 {
		t.Fatalf("replica's snapshots: %+v, %v", snaps, err)
	}
	if err := src.RemoveReplication(ctx, id); err != nil {
		t.Fatal(err)
	}
	if list, err := src.Replications(ctx); err != nil || len(list) != 0 {
		t.Fatalf("replications after remove: %+v, %v", list, err)
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("STRATA_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}
