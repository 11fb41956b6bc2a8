package main

import (
	"encoding/json"
	"fmt"
	"testing"
)

// TestE2ETCP serves NBD on a TCP port too: nbdinfo and qemu-io work over
// nbd://127.0.0.1:PORT/NAME and see the same data as the Unix socket.
func TestE2ETCP(t *testing.T) {
	need(t, "nbdinfo", "qemu-io")
	port := freePort(t)
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	s := startServer(t, "--listen", addr)
	s.createVolume("net", "64MiB")
	uri := fmt.Sprintf("nbd://%s/net", addr)

	r := mustRun(t, "nbdinfo", "--json", uri)
	var v struct {
		Exports []struct {
			Name string  `json:"export-name"`
			Size float64 `json:"export-size"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &v); err != nil || len(v.Exports) != 1 ||
		v.Exports[0].Name != "net" || v.Exports[0].Size != 64<<20 {
		t.Fatalf("nbdinfo --json %s: %+v (err %v)\n%s", uri, v, err, r.stdout)
	}
	var st struct {
		NBDListen string `json:"nbd_listen"`
	}
	if err := json.Unmarshal([]byte(s.mustCLI("status", "--json")), &st); err != nil || st.NBDListen != addr {
		t.Errorf("status --json: nbd_listen %q (err %v), want %q", st.NBDListen, err, addr)
	}

	mustQemuIO(t, uri, "write -P 0x7e 0 1M", "write -f -P 0x7f 3M 512k", "write -P 0x10 5000 700", "flush",
		"read -P 0x7e 0 5000", "read -P 0x10 5000 700", "read -P 0x7f 3M 512k")
	// A second TCP connection and the Unix socket read the same bytes.
	mustQemuIO(t, uri, "read -P 0x7e 0 5000", "read -P 0x10 5000 700", "read -P 0x7e 5700 1042876", "read -P 0x7f 3M 512k", "read -P 0 4M 1M")
	mustQemuIO(t, s.uri("net"), "read -P 0x10 5000 700", "read -P 0x7f 3M 512k")
	// And an unknown export over TCP fails.
	if r := run(t, "nbdinfo", fmt.Sprintf("nbd://%s/nosuch", addr)); r.code == 0 {
		t.Errorf("nbdinfo of an unknown export over TCP succeeded:\n%s", r)
	}
}
