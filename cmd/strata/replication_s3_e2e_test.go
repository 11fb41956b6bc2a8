package main

import (
	"fmt"
	"go/build"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startS3 runs versitygw (a real S3 server) on loopback over a posix
// directory with buckets b1, b2 and b3, and returns its endpoint and root.
func startS3(t *testing.T) (endpoint, root string) {
	t.Helper()
	bin := filepath.Join(build.Default.GOPATH, "bin", "versitygw")
	if p, err := exec.LookPath("versitygw"); err == nil {
		bin = p
	}
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("versitygw is not installed (make test-deps runs go install github.com/versity/versitygw/cmd/versitygw@v1.0.14)")
	}
	root = shortTempDir(t)
	for _, b := range []string{"bk1", "bk2", "bk3"} {
		os.Mkdir(filepath.Join(root, b), 0o755)
	}
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// The daemons inherit these: the standard AWS variables.
	t.Setenv("AWS_ACCESS_KEY_ID", "strata-e2e")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "strata-e2e-secret")
	t.Setenv("AWS_REGION", "us-east-1")
	t.Setenv("AWS_ENDPOINT_URL", "http://"+addr)
	p := startBG(t, bin, "--quiet", "--access", "strata-e2e", "--secret", "strata-e2e-secret", "--port", addr, "posix", root)
	t.Cleanup(func() { p.kill() })
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "http://" + addr, root
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw did not listen on %s: %s", addr, p.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestE2EReplicationS3(t *testing.T) {
	need(t, "qemu-img", "qemu-io")
	_, root := startS3(t)
	a := startServer(t)
	a.createVolume("v", "32MiB")
	fillRandom(t, a.uri("v"), 0, 6<<20)
	a.mustCLI("snapshot", "create", "v", "s1")
	fillRandom(t, a.uri("v"), 2<<20, 6<<20)
	mustRun(t, "qemu-io", "-f", "raw", a.uri("v"), "-c", "discard 0 1M", "-c", "flush")
	a.mustCLI("snapshot", "create", "v", "s2")

	// One bucket: ship twice (the second run carries only records), then
	// restore at two points and at the newest.
	r := a.cli("replicate", "v", "--to", "s3://bk1/strata", "--once")
	if r.code != 0 {
		t.Fatalf("replicate to S3: %s", r)
	}
	t.Logf("%s", r.stdout)
	fillRandom(t, a.uri("v"), 20<<20, 2<<20)
	a.mustCLI("snapshot", "create", "v", "s3")
	res := shipJSON(t, a, "v", "--to", "s3://bk1/strata")
	if res.Full || res.DataBytes != 2<<20 {
		t.Fatalf("second S3 run shipped %+v, want only the 2 MiB written", res)
	}
	for _, p := range []string{"s1", "s2", "s3"} {
		out := a.mustCLI("restore", "s3://bk1/strata", "v", "--at", p, "r-"+p)
		t.Logf("%s", strings.TrimSpace(out))
		sameContent(t, "S3 restore at "+p, a.uri("v@"+p), a.uri("r-"+p))
	}
	a.mustCLI("restore", "s3://bk1/strata", "v", "r-newest")
	sameContent(t, "S3 restore at the newest point", a.uri("v"), a.uri("r-newest"))
	objs, _ := filepath.Glob(filepath.Join(root, "bk1", "strata", "v", "*"))
	t.Logf("objects for v in bk1: %d", len(objs))
	if len(objs) > 4 {
		t.Fatalf("%d objects for two runs of a small volume: %v", len(objs), objs)
	}

	// Three buckets, 2+1: lose one bucket's objects, restore still matches.
	ec := "s3://bk1/ec,s3://bk2/ec,s3://bk3/ec"
	a.mustCLI("replicate", "v", "--to", ec, "--ec", "2+1", "--once")
	if err := os.RemoveAll(filepath.Join(root, "bk2", "ec")); err != nil {
		t.Fatal(err)
	}
	a.mustCLI("restore", ec, "--ec", "2+1", "v", "--at", "s2", "ec-s2")
	sameContent(t, "EC restore with a bucket lost", a.uri("v@s2"), a.uri("ec-s2"))
	a.mustCLI("restore", ec, "--ec", "2+1", "v", "ec-newest")
	sameContent(t, "EC restore (newest) with a bucket lost", a.uri("v"), a.uri("ec-newest"))

	// A corrupt object: a clear error, and no half-restored volume.
	objs, _ = filepath.Glob(filepath.Join(root, "bk1", "strata", "v", "b-*"))
	if len(objs) == 0 {
		t.Fatal("no batch objects found")
	}
	b, err := os.ReadFile(objs[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x55
	os.WriteFile(objs[0], b, 0o644)
	checkOneLineError(t, "corrupt object", a.cli("restore", "s3://bk1/strata", "v", "r-bad"), "corrupt")
	if out := a.mustCLI("volume", "list"); strings.Contains(out, "r-bad") {
		t.Fatalf("a failed restore left its volume:\n%s", out)
	}
}
