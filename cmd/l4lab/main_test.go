package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/lab"
)

func TestGenCommand(t *testing.T) {
	fixture.RequireRoot(t)
	var stdout, stderr bytes.Buffer
	code := run([]string{"gen", "-q", "-n", "5000", "-rate", "100000", "dns,name=*.attack.example,weight=3", "syn,port=80,weight=1"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"sent 5000 packets", "  3750  dns,name=*.attack.example,weight=3", "  1250  syn,port=80,weight=1"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// The server's interface may also see a stray IPv6 neighbour message.
	m := regexp.MustCompile(`received (\d+),`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("output lacks the server's count:\n%s", out)
	}
	if n, _ := strconv.Atoi(m[1]); n < 5000 || n > 5010 {
		t.Errorf("server received %d, want 5000 (and a few strays at most)", n)
	}
}

func TestCommandErrors(t *testing.T) {
	for _, tt := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{}, 2, "Usage"},
		{[]string{"nonsense"}, 2, "unknown command"},
		{[]string{"gen", "-rate", "x"}, 2, "invalid value"},
		{[]string{"gen", "icmp"}, 1, "unknown kind"},
		{[]string{"gen", "-r", "/nonexistent.pcap"}, 1, "no such file"},
		{[]string{"bench", "-rules", "0"}, 1, "bad rule count"},
		{[]string{"scenario"}, 2, "want one scenario name"},
		{[]string{"scenario", "smurf"}, 1, "unknown scenario"},
		{[]string{"scenario", "syn-flood", "--mode", "magic"}, 1, "want auto, none or rules=FILE"},
		{[]string{"scenario", "syn-flood", "--mode", "rules=/nonexistent.yaml"}, 1, "nonexistent.yaml"},
		{[]string{"scenario", "syn-flood", "--sample-rate", "0"}, 1, "--sample-rate"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(tt.args, &stdout, &stderr)
		if code != tt.code || !strings.Contains(stderr.String(), tt.msg) {
			t.Errorf("l4lab %v: exit %d, stderr %q; want exit %d with %q", tt.args, code, stderr.String(), tt.code, tt.msg)
		}
	}
}

// TestDemoShort runs `l4lab demo -short` as `make demo` would, with the
// commands built next to it, and checks its claims and that it leaves
// nothing behind.
func TestDemoShort(t *testing.T) {
	fixture.RequireRoot(t)
	bin := fixture.BuildCommands(t, "./cmd/...")
	demo := exec.Command(filepath.Join(bin, "l4lab"), "demo", "-short")
	out, err := demo.CombinedOutput()
	t.Logf("l4lab demo -short:\n%s", out)
	if err != nil {
		t.Fatalf("l4lab demo -short: %v", err)
	}
	for _, claim := range []string{"✔ L4Drop dropped", "legitimate queries sent reached the server", "✔ the attack did not reach the stack", "✔ xdpcap captured", "✔ a rule appeared by itself", "✔ the rule expired by itself"} {
		if !bytes.Contains(out, []byte(claim)) {
			t.Errorf("no %q in the output", claim)
		}
	}
	if bytes.Contains(out, []byte("✘")) {
		t.Error("a claim failed")
	}
	m := regexp.MustCompile(`namespaces (l4lab-\S+)-inet`).FindSubmatch(out)
	if m == nil {
		t.Fatal("the demo did not name its namespaces")
	}
	prefix := string(m[1])
	for _, suffix := range []string{"-inet", "-srv"} {
		if netns.Exists(prefix + suffix) {
			t.Errorf("namespace %s%s left behind", prefix, suffix)
		}
	}
	pins, _ := os.ReadDir("/sys/fs/bpf/l4drop")
	for _, p := range pins {
		if strings.Contains(p.Name(), prefix) {
			t.Errorf("pins left behind: /sys/fs/bpf/l4drop/%s", p.Name())
		}
	}
}

func TestGenIntoNamespace(t *testing.T) {
	fixture.RequireRoot(t)
	l, err := lab.New()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before, err := l.ServerCounters()
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	code := run([]string{"gen", "-q", "-netns", l.Inet.Name, "-iface", l.InetIf, "-n", "2000", "-rate", "100000", "udp,port=9,v6"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	time.Sleep(100 * time.Millisecond)
	after, err := l.ServerCounters()
	if err != nil {
		t.Fatal(err)
	}
	if got := after.Sub(before).UDPNoPorts; got != 2000 {
		t.Errorf("server: %d datagrams to a closed port, want 2000 (output %q)", got, stdout.String())
	}
}
