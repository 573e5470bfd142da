package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "l4drop-cmd-")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "l4drop")
	if out, err := exec.Command("go", "build", "-o", binary, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run runs the command and returns its combined output and exit code.
func runCmd(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(binary, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

const rules = `
sample_rate: 0
rules:
  - name: allow-client
    expr: "src host 198.18.0.1 and udp dst port 5353"
    action: pass
  - name: udp-5353
    expr: "udp dst port 5353"
  - name: bad-name
    dns: ["bad.example.com"]
`

func writeFile(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestHelp(t *testing.T) {
	out, code := runCmd(t, "-h")
	if code != 0 || !strings.Contains(out, "l4drop build") || !strings.Contains(out, "Examples:") {
		t.Errorf("help: exit %d\n%s", code, out)
	}
	out, code = runCmd(t, "load", "-h")
	if code != 0 || !strings.Contains(out, "Example:") {
		t.Errorf("load -h: exit %d\n%s", code, out)
	}
}

func TestBadInput(t *testing.T) {
	good := writeFile(t, "good.yaml", rules)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"missing file", []string{"build", "/nonexistent.yaml", "-o", "x.o"}, "nonexistent.yaml"},
		{"broken yaml", []string{"build", writeFile(t, "b.yaml", "rules: [\n"), "-o", "x.o"}, "b.yaml"},
		{"unknown field", []string{"build", writeFile(t, "u.yaml", "rules:\n  - name: x\n    exprr: udp\n"), "-o", "x.o"}, "u.yaml:3:"},
		{"bad expr", []string{"build", writeFile(t, "e.yaml", "rules:\n  - name: x\n    expr: \"udp port fish\"\n"), "-o", "x.o"}, `e.yaml:2: rule "x"`},
		{"bad bytecode", []string{"build", writeFile(t, "c.yaml", "rules:\n  - name: y\n    bpf: \"1,6 0 0\"\n"), "-o", "x.o"}, `c.yaml:2: rule "y"`},
		{"no output", []string{"build", good}, "-o"},
		{"not an object", []string{"load", good, "--iface", "lo"}, "ELF"},
		{"no iface", []string{"status"}, "--iface"},
		{"poll 0", []string{"run", good, "--iface", "lo", "--poll", "0"}, "--poll"},
		{"poll negative", []string{"run", good, "--iface", "lo", "--poll", "-1s"}, "--poll"},
		{"keep negative", []string{"run", good, "--iface", "lo", "--dir", t.TempDir(), "--keep", "-2"}, "--keep"},
		{"rotate 0", []string{"run", good, "--iface", "lo", "--dir", t.TempDir(), "--rotate", "0"}, "--rotate"},
		{"sample rate too big", []string{"load", good, "--iface", "lo", "--sample-rate", "4294967296"}, "-sample-rate"},
		{"sample rate negative", []string{"load", good, "--iface", "lo", "--sample-rate", "-7"}, "-sample-rate"},
		{"samples rate negative", []string{"samples", "--iface", "lo", "--rate", "-1"}, "-rate"},
		{"samples count negative", []string{"samples", "--iface", "lo", "-w", "-", "--count", "-1"}, "--count"},
		{"samples -w and --sflow", []string{"samples", "--iface", "lo", "-w", "-", "--sflow", "127.0.0.1:6343"}, "--sflow"},
		{"run --auto-monitor alone", []string{"run", "x.yaml", "--iface", "lo", "--auto-monitor"}, "--auto"},
		{"run --sflow bad", []string{"run", "x.yaml", "--iface", "lo", "--sflow", "nohostport"}, "--sflow"},
		{"status interval negative", []string{"status", "--iface", "lo", "--interval", "-1s"}, "--interval"},
		{"bpffs not a bpffs", []string{"status", "--iface", "lo", "--bpffs", filepath.Dir(good)}, "--bpffs"},
		{"fingerprint without -r", []string{"fingerprint"}, "-r"},
		{"fingerprint missing capture", []string{"fingerprint", "-r", "/nonexistent.pcap"}, "nonexistent.pcap"},
		{"fingerprint bad coverage", []string{"fingerprint", "-r", good, "--coverage", "1.5"}, "--coverage"},
		{"fingerprint bad name", []string{"fingerprint", "-r", good, "--name", "a b"}, "--name"},
		{"fingerprint not a capture", []string{"fingerprint", "-r", good}, "good.yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, code := runCmd(t, tt.args...)
			if code == 0 {
				t.Fatalf("exit 0\n%s", out)
			}
			if !strings.Contains(out, tt.want) {
				t.Errorf("output lacks %q:\n%s", tt.want, out)
			}
			if strings.Contains(out, "panic:") {
				t.Errorf("panic:\n%s", out)
			}
		})
	}
}

func TestNoClang(t *testing.T) {
	good := writeFile(t, "good.yaml", rules)
	cmd := exec.Command(binary, "build", good, "-o", filepath.Join(t.TempDir(), "x.o"))
	cmd.Env = append(os.Environ(), "CLANG=/nonexistent/clang")
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "clang not found") {
		t.Errorf("build without clang: %v\n%s", err, out)
	}
}

func writePcap(t *testing.T, frames [][]byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "in.pcap")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(262144, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, fr := range frames {
		ci := gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: len(fr), Length: len(fr)}
		if err := w.WritePacket(ci, fr); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestBuildLoadStatusTest drives the commands the way an operator would.
func TestBuildLoadStatusTest(t *testing.T) {
	fixture.RequireRoot(t)
	rulesFile := writeFile(t, "rules.yaml", rules)
	obj := filepath.Join(t.TempDir(), "rules.o")
	if out, code := runCmd(t, "build", rulesFile, "-o", obj); code != 0 || !strings.Contains(out, "3 rules in 1 program") {
		t.Fatalf("build: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, "build", rulesFile, "--emit-c"); code != 0 || !strings.Contains(out, "RULE_0_ENABLED") {
		t.Fatalf("build --emit-c: exit %d", code)
	}
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	frames := [][]byte{
		fixture.UDP4(c4, s4, 1, 5353, nil),
		fixture.UDP4("198.18.0.7", s4, 1, 5353, nil),
		fixture.UDP4(c4, s4, 1, 53, fixture.DNSQuery("bad.example.com", 1)),
		fixture.UDP4(c4, s4, 1, 53, fixture.DNSQuery("good.example.com", 1)),
		fixture.UDP4("198.18.0.7", s4, 1, 5353, nil),
		// XDP never sees these two: too short, and (a BIG TCP
		// capture, say) longer than a multi-buffer packet.
		fixture.UDP4(c4, s4, 1, 5353, nil)[:10],
		fixture.UDP4(c4, s4, 1, 5353, make([]byte, 100000)),
	}
	pcap := writePcap(t, frames)
	out, code := runCmd(t, "test", rulesFile, "-r", pcap, "-v")
	if code != 0 {
		t.Fatalf("test: exit %d\n%s", code, out)
	}
	for _, want := range []string{"1\tpass\tallow-client", "2\tdrop\tudp-5353", "3\tdrop\tbad-name", "4\tpass\t(no rule)", "udp-5353             drop    2        2,5",
		"(never seen by XDP)  -       2        6-7", "2 of 7 packets"} {
		if !strings.Contains(out, want) {
			t.Errorf("test output lacks %q:\n%s", want, out)
		}
	}

	out, code = runCmd(t, "test", rulesFile, "-r", pcap, "--json")
	if code != 0 {
		t.Fatalf("test --json: exit %d\n%s", code, out)
	}
	var tj struct {
		Packets, Unmatched, Unseen int
		Rules                      []struct {
			Name, Action string
			Packets      int
		}
	}
	if err := json.Unmarshal([]byte(out), &tj); err != nil {
		t.Fatalf("test --json: %v\n%s", err, out)
	}
	got := fmt.Sprintf("%d %d %d %+v", tj.Packets, tj.Unmatched, tj.Unseen, tj.Rules)
	if want := "7 1 2 [{Name:allow-client Action:pass Packets:1} {Name:udp-5353 Action:drop Packets:2} {Name:bad-name Action:drop Packets:1}]"; got != want {
		t.Errorf("test --json: %s, want %s", got, want)
	}
	if out, code := runCmd(t, "test", rulesFile, "-r", pcap, "--json", "-v"); code == 0 || !strings.Contains(out, "give one") {
		t.Errorf("test --json -v: exit %d\n%s", code, out)
	}

	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	where := []string{"--iface", lab.ServerIf, "--netns", lab.Server.Name, "--bpffs", root}
	if out, code := runCmd(t, append([]string{"load", obj}, where...)...); code != 0 || !strings.Contains(out, "3 of 3 rules on") {
		t.Fatalf("load: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, append([]string{"load", obj, "--disable", "udp-5353"}, where...)...); code != 0 || !strings.Contains(out, "replaced") {
		t.Fatalf("reload: exit %d\n%s", code, out)
	}
	// An auto rule in slot 1 (slot 0 empty), as l4drop run --auto deploys.
	h, err := l4drop.Open(l4drop.Dir(root, lab.ServerIf, lab.Server.Name))
	if err != nil {
		t.Fatal(err)
	}
	auto := l4drop.AutoRule{State: l4drop.AutoDrop, Family: 4, Proto: 17,
		Conds: []l4drop.AutoCond{{Base: l4drop.BaseIP, Size: 1, Off: 8, Mask: 0xff, Min: 50, Max: 60}}}
	err = h.SetAutoRule(1, auto)
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, code = runCmd(t, append([]string{"status", "--json", "--interval", "0"}, where...)...)
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	var st struct {
		Rules []struct {
			Name    string
			Enabled bool
			Packets uint64
		}
		AutoRules []struct {
			Name  string
			Auto  bool
			State string
			Since string
			Expr  string
		} `json:"auto_rules"`
		Samples, Lost uint64
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(st.Rules) != 3 || st.Rules[1].Name != "udp-5353" || st.Rules[1].Enabled || !st.Rules[2].Enabled {
		t.Errorf("status: %+v", st)
	}
	if len(st.AutoRules) != 1 {
		t.Fatalf("status: auto rules %+v, want the one in slot 1", st.AutoRules)
	}
	a := st.AutoRules[0]
	since, err := time.Parse(time.RFC3339, a.Since)
	if a.Name != "auto-1" || !a.Auto || a.State != "drop" || err != nil || time.Since(since) > time.Minute || a.Expr != auto.Expr() {
		t.Errorf("status: auto rule %+v (since: %v), want auto-1, drop, now, %q", a, err, auto.Expr())
	}
	// The expression is one a rules file takes.
	if _, err := cbpf.Compile(a.Expr, cbpf.LinkTypeRaw, 0); err != nil {
		t.Errorf("auto rule's expr %q: %v", a.Expr, err)
	}
	if out, code := runCmd(t, append([]string{"load", obj, "--enable", "nope"}, where...)...); code != 1 || !strings.Contains(out, "nope") {
		t.Errorf("load --enable nope: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, append([]string{"unload"}, where...)...); code != 0 {
		t.Fatalf("unload: exit %d\n%s", code, out)
	}
	if out, code := runCmd(t, append([]string{"status"}, where...)...); code != 1 || !strings.Contains(out, "no L4Drop rule set loaded") {
		t.Errorf("status after unload: exit %d\n%s", code, out)
	}
}

// TestRun starts the daemon: it loads, serves metrics, reloads when the file
// changes (and keeps the loaded set when the new file is broken), writes
// samples to pcapng files, and leaves on SIGINT.
func TestRun(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	rulesFile := writeFile(t, "rules.yaml", strings.Replace(rules, "sample_rate: 0", "sample_rate: 1", 1))
	dir := t.TempDir()
	cmd := exec.Command(binary, "run", rulesFile, "--iface", lab.ServerIf, "--netns", lab.Server.Name, "--bpffs", root,
		"--dir", dir, "--metrics", "127.0.0.1:0", "--poll", "100ms")
	var log strings.Builder
	var logMu sync.Mutex
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := pr.Read(buf)
			logMu.Lock()
			log.Write(buf[:n])
			logMu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		runCmd(t, "unload", "--iface", lab.ServerIf, "--netns", lab.Server.Name, "--bpffs", root)
	}()
	waitLog := func(re string) []string {
		t.Helper()
		rx := regexp.MustCompile(re)
		for i := 0; i < 300; i++ {
			logMu.Lock()
			m := rx.FindStringSubmatch(log.String())
			logMu.Unlock()
			if m != nil {
				return m
			}
			time.Sleep(50 * time.Millisecond)
		}
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("log lacks %q:\n%s", re, log.String())
		return nil
	}
	addr := waitLog(`addr=(http://\S+/metrics)`)[1]

	frames := [][]byte{
		fixture.UDP4("198.18.0.7", fixture.ServerIPv4, 1, 5353, nil),
		fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, fixture.DNSQuery("bad.example.com", 1)),
	}
	sendFrames(t, lab, frames)
	metrics := func() string {
		t.Helper()
		resp, err := http.Get(addr)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b)
	}
	m := metrics()
	for _, want := range []string{`l4drop_rule_packets_total{action="drop",iface="veth0",rule="udp-5353"} 1`, `l4drop_rule_packets_total{action="drop",iface="veth0",rule="bad-name"} 1`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %q:\n%s", want, m)
		}
	}
	// A broken file: logged, the loaded set stays.
	os.WriteFile(rulesFile, []byte("rules: [\n"), 0o644)
	waitLog(`reload failed`)
	sendFrames(t, lab, frames[:1])
	if m := metrics(); !strings.Contains(m, `l4drop_rule_packets_total{action="drop",iface="veth0",rule="udp-5353"} 2`) {
		t.Errorf("after a failed reload:\n%s", m)
	}
	os.WriteFile(rulesFile, []byte(strings.Replace(rules, "udp-5353", "udp-5353-new", 1)), 0o644)
	waitLog(`replaced=true`)
	if m := metrics(); !strings.Contains(m, `rule="udp-5353-new"`) {
		t.Errorf("after reload:\n%s", m)
	}
	cmd.Process.Signal(os.Interrupt)
	waitLog(`stopping`)
	cmd.Wait()
	files, _ := filepath.Glob(filepath.Join(dir, "samples-*.pcapng"))
	n := 0
	for _, f := range files {
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
		if err == nil {
			for {
				if _, _, err := ng.ReadPacketData(); err != nil {
					break
				}
				n++
			}
		}
		r.Close()
	}
	if n < len(frames)+1 {
		t.Errorf("%d samples in %d files, want at least %d", n, len(files), len(frames)+1)
	}
}

// sendFrames sends Ethernet frames from the lab's client with an AF_PACKET
// socket.
func sendFrames(t *testing.T, lab *fixture.LabPair, frames [][]byte) {
	t.Helper()
	err := lab.Client.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: lab.ClientIndex, Halen: 6}
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
}

// TestLoadOnly: l4drop built with -tags loadonly loads, runs and reads
// prebuilt rule sets, and links neither cgo nor clang nor the build side.
func TestLoadOnly(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "l4drop-loadonly")
	build := exec.Command("go", "build", "-tags", "loadonly", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("CGO_ENABLED=0 go build -tags loadonly: %v\n%s", err, out)
	}
	list := exec.Command("go", "list", "-tags", "loadonly", "-deps", "-f", "{{.ImportPath}} {{len .CgoFiles}}", ".")
	list.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := list.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(deps) < 10 {
		t.Fatalf("go list -deps gave %d packages", len(deps))
	}
	for _, line := range deps {
		pkg, ncgo, _ := strings.Cut(line, " ")
		switch {
		case ncgo != "0", pkg == "runtime/cgo", pkg == "C",
			strings.HasPrefix(pkg, "github.com/l4drop/l4drop/l4drop/build"),
			pkg == "github.com/l4drop/l4drop/cbpf", // libpcap
			pkg == "github.com/l4drop/l4drop/internal/clang":
			t.Errorf("the load-only l4drop links %s (%s cgo files)", pkg, ncgo)
		}
	}
	cmd := exec.Command(bin, "build", "x.yaml", "-o", "x.o")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), `unknown command "build"`) {
		t.Errorf("load-only build: %v\n%s", err, out)
	}
	cmd = exec.Command(bin, "run", "rules.yaml", "--iface", "lo", "--metrics", "")
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "load-only") {
		t.Errorf("load-only run of a rules file: %v\n%s", err, out)
	}
}

// TestFingerprint makes captures of a scenario's attack and of its
// legitimate traffic with the lab's templates, turns them into a rules file
// with l4drop fingerprint, and judges it with l4drop test --json on traffic
// of other seeds: every attack packet dropped, no legitimate one.
func TestFingerprint(t *testing.T) {
	fixture.RequireRoot(t)
	sc, err := lab.LookupScenario("dns-random-subdomain")
	if err != nil {
		t.Fatal(err)
	}
	attackT, legitT, err := sc.Templates()
	if err != nil {
		t.Fatal(err)
	}
	// A capture of an attack holds some legitimate traffic too.
	attack := append(lab.Frames(attackT, 1, 1500), lab.Frames(legitT, 2, 30)...)
	out, code := runCmd(t, "fingerprint", "-r", writePcap(t, attack), "--baseline", writePcap(t, lab.Frames(legitT, 3, 2000)), "--name", "rsd")
	if code != 0 || !strings.Contains(out, "- name: rsd-1") {
		t.Fatalf("fingerprint: exit %d\n%s", code, out)
	}
	t.Logf("rules:\n%s", out)
	rulesFile := writeFile(t, "fp.yaml", out)
	judge := func(frames [][]byte) (matched, unmatched int) {
		t.Helper()
		out, code := runCmd(t, "test", rulesFile, "-r", writePcap(t, frames), "--json")
		if code != 0 {
			t.Fatalf("test --json: exit %d\n%s", code, out)
		}
		var tj struct {
			Unmatched int
			Rules     []struct{ Packets int }
		}
		if err := json.Unmarshal([]byte(out), &tj); err != nil {
			t.Fatalf("test --json: %v\n%s", err, out)
		}
		for _, r := range tj.Rules {
			matched += r.Packets
		}
		return matched, tj.Unmatched
	}
	if m, _ := judge(lab.Frames(attackT, 11, 3000)); m*100 < 3000*99 {
		t.Errorf("the rules drop %d of 3000 attack packets of another seed, want 99%%", m)
	}
	if m, u := judge(lab.Frames(legitT, 12, 5000)); m != 0 || u != 5000 {
		t.Errorf("the rules match %d of 5000 legitimate packets of another seed (%d unmatched), want none", m, u)
	}
	// No attack in the capture: no rule, and an error saying so.
	if out, code := runCmd(t, "fingerprint", "-r", writePcap(t, lab.Frames(legitT, 4, 500)), "--baseline", writePcap(t, lab.Frames(legitT, 5, 500))); code == 0 || !strings.Contains(out, "no fingerprint") {
		t.Errorf("fingerprint of legitimate traffic against itself: exit %d\n%s", code, out)
	}
}
