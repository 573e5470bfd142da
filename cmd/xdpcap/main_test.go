package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/xdpcap"
	"github.com/l4drop/l4drop/xdpcap/xdpcaptest"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	binDir    string
)

// xdpcapBin builds the command once per test binary.
func xdpcapBin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "xdpcap-bin-")
		if buildErr != nil {
			return
		}
		// Readable by all: one test runs it as nobody.
		if buildErr = os.Chmod(binDir, 0o755); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "xdpcap")
		out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// lab is a veth pair with the example C program on the server side,
// exposing the hook pinned at hookPath.
type lab struct {
	*fixture.LabPair
	hookPath string
	hook     *ebpf.Map
}

func newLab(t *testing.T) *lab {
	t.Helper()
	fixture.RequireRoot(t)
	l := &lab{LabPair: fixture.Lab(t), hookPath: filepath.Join(fixture.BPFFS(t), "hook")}
	hook, err := xdpcap.CreateHook(l.hookPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hook.Close() })
	l.hook = hook
	fixture.AttachXDP(t, l.Server, l.ServerIndex, xdpcaptest.LoadExample(t, hook))
	// Frames an XDP program bounces (XDP_TX) into a veth need NAPI on the
	// peer, which an XDP program there turns on.
	fixture.AttachXDP(t, l.Client, l.ClientIndex, fixture.PassProgram(t))
	fixture.ListenUDP(t, l.Server, fixture.ServerIPv4, 5000)
	return l
}

// filled returns how many slots of the hook hold a program.
func (l *lab) filled(t testing.TB) int {
	t.Helper()
	n := 0
	for slot := uint32(0); slot < xdpcap.NumActions; slot++ {
		var id uint32
		if err := l.hook.Lookup(slot, &id); err == nil && id != 0 {
			n++
		}
	}
	return n
}

// waitFilled waits until the hook has want filters in.
func (l *lab) waitFilled(t testing.TB, want int) {
	t.Helper()
	for range 500 {
		if l.filled(t) == want {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("hook has %d filters, want %d", l.filled(t), want)
}

// traffic sends what the example program drops (UDP to 9), passes (UDP to
// 5000) and bounces (ICMP echo): 3, 2 and 2 packets.
func (l *lab) traffic(t testing.TB) {
	t.Helper()
	fixture.SendUDP(t, l.Client, fixture.ServerIPv4, 9, 3)
	fixture.SendUDP(t, l.Client, fixture.ServerIPv4, 5000, 2)
	if n := fixture.Ping(t, l.Client, fixture.ServerIPv4, 2); n != 2 {
		t.Errorf("%d echo replies, want 2", n)
	}
}

type proc struct {
	cmd            *exec.Cmd
	stdout, stderr bytes.Buffer
}

func start(t testing.TB, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(xdpcapBin(t), args...)}
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p
}

// stop sends sig and waits for the exit.
func (p *proc) stop(t testing.TB, sig os.Signal) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	return p.cmd.Wait()
}

func tcpdumpRead(t testing.TB, path string) []string {
	t.Helper()
	out, err := exec.Command("tcpdump", "-nn", "-r", path).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v", path, err)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

var statsRE = regexp.MustCompile(`^XDPAborted: (\d+)/(\d+)   XDPDrop: (\d+)/(\d+)   XDPPass: (\d+)/(\d+)   XDPTx: (\d+)/(\d+)   XDPRedirect: (\d+)/(\d+)   Total: (\d+)/(\d+)   Lost: (\d+)   \(received/matched packets\)$`)

func TestLiveCommand(t *testing.T) {
	l := newLab(t)
	for _, tc := range []struct {
		name, format string
		flags        []string
	}{
		{"pcap", "pcap", nil},
		{"pcapng", "pcapng", nil},
		{"perf", "pcapng", []string{"-perf"}},
	} {
		format := tc.format
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out."+format)
			args := append(append([]string{"-interval", "100ms"}, tc.flags...), l.hookPath, out, "udp", "or", "icmp")
			p := start(t, args...)
			l.waitFilled(t, xdpcap.NumActions)
			l.traffic(t)
			time.Sleep(300 * time.Millisecond) // a stats line or two
			if err := p.stop(t, os.Interrupt); err != nil {
				t.Fatalf("xdpcap: %v\n%s", err, &p.stderr)
			}
			if n := l.filled(t); n != 0 {
				t.Errorf("%d filters left in the hook", n)
			}

			lines := tcpdumpRead(t, out)
			var drops, passes, echoReplies int
			for _, line := range lines {
				switch {
				case strings.Contains(line, ".9: UDP"):
					drops++
				case strings.Contains(line, ".5000: UDP"):
					passes++
				case strings.Contains(line, "ICMP echo reply"):
					echoReplies++
				}
			}
			if len(lines) != 7 || drops != 3 || passes != 2 || echoReplies != 2 {
				t.Errorf("tcpdump -r shows %d packets (%d to port 9, %d to 5000, %d echo replies), want 7 (3, 2, 2):\n%s",
					len(lines), drops, passes, echoReplies, strings.Join(lines, "\n"))
			}

			// Stats: periodic lines, the last one exact, then a summary.
			var stats [][]string
			for _, line := range strings.Split(p.stderr.String(), "\n") {
				if m := statsRE.FindStringSubmatch(line); m != nil {
					stats = append(stats, m)
				}
			}
			if len(stats) < 2 {
				t.Fatalf("want periodic stats and a summary on stderr, got:\n%s", &p.stderr)
			}
			last := stats[len(stats)-1]
			// Drop 3/3, Tx 2/2; Pass: at least the 2 datagrams.
			if last[3] != "3" || last[4] != "3" || last[7] != "2" || last[8] != "2" || last[6] != "2" || last[13] != "0" {
				t.Errorf("final stats %q: want XDPDrop 3/3, XDPPass n/2, XDPTx 2/2, Lost 0", last[0])
			}
			if !strings.Contains(p.stderr.String(), "7 packets captured") {
				t.Errorf("summary missing: %s", &p.stderr)
			}

			if format == "pcapng" {
				checkPcapngActions(t, out, map[string]int{"hook:XDPDrop": 3, "hook:XDPPass": 2, "hook:XDPTx": 2})
			}
		})
	}
}

// TestCount stops after -c packets by itself.
func TestCount(t *testing.T) {
	l := newLab(t)
	out := filepath.Join(t.TempDir(), "count.pcap")
	p := start(t, "-c", "2", l.hookPath, out, "udp")
	l.waitFilled(t, xdpcap.NumActions)
	fixture.SendUDP(t, l.Client, fixture.ServerIPv4, 9, 3)
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("xdpcap: %v\n%s", err, &p.stderr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("xdpcap -c 2 did not stop after 3 packets")
	}
	if n := len(tcpdumpRead(t, out)); n != 2 {
		t.Errorf("%d packets written, want 2", n)
	}
	if n := l.filled(t); n != 0 {
		t.Errorf("%d filters left in the hook", n)
	}
}

// TestTwoHooks captures from two hooks given as two arguments.
func TestTwoHooks(t *testing.T) {
	l := newLab(t)
	otherPath := filepath.Join(filepath.Dir(l.hookPath), "other")
	other, err := xdpcap.CreateHook(otherPath)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// A program that uses the second hook (attached nowhere).
	insns := append(asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}, xdpcap.Exit(asm.R6, "other", xdpcap.Pass)...)
	if err := insns.AssociateMap("other", other); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	filled := func() int {
		n := 0
		for slot := uint32(0); slot < xdpcap.NumActions; slot++ {
			var id uint32
			if other.Lookup(slot, &id) == nil && id != 0 {
				n++
			}
		}
		return n
	}
	out := filepath.Join(t.TempDir(), "two.pcapng")
	p := start(t, "-actions", "drop", l.hookPath, otherPath, out, "udp")
	l.waitFilled(t, 1)
	// xdpcap fills the hooks one after the other.
	for deadline := time.Now().Add(5 * time.Second); filled() != 1 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := filled(); n != 1 {
		t.Errorf("second hook has %d filters, want 1", n)
	}
	fixture.SendUDP(t, l.Client, fixture.ServerIPv4, 9, 3)
	time.Sleep(100 * time.Millisecond)
	if err := p.stop(t, os.Interrupt); err != nil {
		t.Fatalf("xdpcap: %v\n%s", err, &p.stderr)
	}
	if l.filled(t) != 0 || filled() != 0 {
		t.Errorf("filters left: %d and %d", l.filled(t), filled())
	}
	checkPcapngActions(t, out, map[string]int{"hook:XDPDrop": 3})
	for _, want := range []string{"  hook: XDPAborted: 0/0   XDPDrop: 3/3", "  other: XDPAborted: 0/0   XDPDrop: 0/0"} {
		if !strings.Contains(p.stderr.String(), want) {
			t.Errorf("per-hook summary %q missing:\n%s", want, &p.stderr)
		}
	}
}

// checkPcapngActions counts the packets of a pcapng file per interface
// name and checks each packet's verdict option matches its interface.
func checkPcapngActions(t *testing.T, path string, want map[string]int) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for {
		_, ci, err := r.ReadPacketData()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		iface, err := r.Interface(ci.InterfaceIndex)
		if err != nil {
			t.Fatal(err)
		}
		if iface.LinkType != layers.LinkTypeEthernet {
			t.Errorf("interface %q has link type %v", iface.Name, iface.LinkType)
		}
		got[iface.Name]++
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("packets per interface %v, want %v", got, want)
	}
	// The verdict options, read raw: type 2 (XDP) and the action.
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	verdicts := map[byte]int{}
	for i := 0; i+13 <= len(raw); i++ {
		// option code 7, length 9, type 2
		if raw[i] == 7 && raw[i+1] == 0 && raw[i+2] == 9 && raw[i+3] == 0 && raw[i+4] == 2 {
			verdicts[raw[i+5]]++
		}
	}
	wantVerdicts := map[byte]int{}
	for name, n := range want {
		_, action, _ := strings.Cut(name, ":")
		a, err := xdpcap.ParseAction(action)
		if err != nil {
			t.Fatal(err)
		}
		wantVerdicts[byte(a)] += n
	}
	if fmt.Sprint(verdicts) != fmt.Sprint(wantVerdicts) {
		t.Errorf("epb_verdict options per action %v, want %v", verdicts, wantVerdicts)
	}
}

// TestStdoutToTcpdump runs `xdpcap HOOK - udp | tcpdump -r -`.
func TestStdoutToTcpdump(t *testing.T) {
	l := newLab(t)
	x := exec.Command(xdpcapBin(t), l.hookPath, "-", "udp")
	td := exec.Command("tcpdump", "-nn", "-l", "-r", "-")
	pipe, err := x.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var xerr bytes.Buffer
	x.Stderr = &xerr
	td.Stdin = pipe
	tdOut, err := td.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Start(); err != nil {
		t.Fatal(err)
	}
	defer x.Process.Kill()
	if err := td.Start(); err != nil {
		t.Fatal(err)
	}
	defer td.Process.Kill()
	l.waitFilled(t, xdpcap.NumActions)
	fixture.SendUDP(t, l.Client, fixture.ServerIPv4, 9, 3)

	// -flush is implied: tcpdump prints the packets while xdpcap runs.
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(tdOut)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(5 * time.Second)
	for n := 0; n < 3; n++ {
		select {
		case line := <-lines:
			if !strings.Contains(line, ".9: UDP") {
				t.Errorf("tcpdump printed %q", line)
			}
		case <-timeout:
			t.Fatalf("tcpdump printed %d of 3 packets while xdpcap ran; xdpcap stderr:\n%s", n, &xerr)
		}
	}
	x.Process.Signal(os.Interrupt)
	if err := x.Wait(); err != nil {
		t.Errorf("xdpcap: %v\n%s", err, &xerr)
	}
	if err := td.Wait(); err != nil {
		t.Errorf("tcpdump: %v", err)
	}
	if statsRE.MatchString(strings.Split(xerr.String(), "\n")[0]) && strings.Count(xerr.String(), "XDPAborted") > 1 {
		t.Errorf("stdout output should be quiet, stderr:\n%s", &xerr)
	}
}

// TestKilled checks that filters a SIGKILLed capture leaves go with
// -clear, or with the next capture on the hook.
func TestKilled(t *testing.T) {
	l := newLab(t)
	bin := xdpcapBin(t)
	out := filepath.Join(t.TempDir(), "out.pcap")

	kill := func() {
		t.Helper()
		p := start(t, "-actions", "drop,pass", l.hookPath, out)
		l.waitFilled(t, 2)
		p.stop(t, syscall.SIGKILL)
		if n := l.filled(t); n != 2 {
			t.Fatalf("after SIGKILL: %d filters in the hook, want the 2 left behind", n)
		}
	}

	kill()
	b, err := exec.Command(bin, "-clear", l.hookPath).CombinedOutput()
	if err != nil {
		t.Fatalf("xdpcap -clear: %v\n%s", err, b)
	}
	if !strings.Contains(string(b), "removed 2 stale filters") {
		t.Errorf("xdpcap -clear said %q", b)
	}
	if n := l.filled(t); n != 0 {
		t.Errorf("after -clear: %d filters in the hook", n)
	}

	kill()
	p := start(t, "-actions", "tx", l.hookPath, out)
	l.waitFilled(t, 1)
	if err := p.stop(t, os.Interrupt); err != nil {
		t.Fatalf("xdpcap: %v\n%s", err, &p.stderr)
	}
	if n := l.filled(t); n != 0 {
		t.Errorf("after the next capture: %d filters in the hook", n)
	}
}

func TestBadInput(t *testing.T) {
	l := newLab(t)
	bin := xdpcapBin(t)
	dir := filepath.Dir(l.hookPath)
	pin := func(name string, spec *ebpf.MapSpec) string {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		path := filepath.Join(dir, name)
		if err := m.Pin(path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	array := pin("array", &ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 5})
	small := pin("small", &ebpf.MapSpec{Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 3})
	unused := pin("unused", xdpcap.HookMapSpec("unused"))
	out := filepath.Join(t.TempDir(), "out.pcap")

	for _, tc := range []struct {
		name    string
		args    []string
		nobody  bool
		wantErr string
	}{
		{"missing hook", []string{filepath.Join(dir, "nothing"), out}, false, "no such file"},
		{"not a prog array", []string{array, out}, false, "not an xdpcap hook: map type is Array"},
		{"few slots", []string{small, out}, false, "3 slots, want at least 5"},
		{"hook no program uses", []string{unused, out}, false, "no XDP program uses the hook yet"},
		{"bad expression", []string{l.hookPath, out, "tcp", "and"}, false, "syntax error"},
		{"bad bytecode", []string{l.hookPath, out, "2,6 0 0 1,6 0 0"}, false, "bytecode"},
		{"unwritable output", []string{l.hookPath, "/nonexistent/dir/out.pcap"}, false, "no such file or directory"},
		{"bad action", []string{"-actions", "pass,bounce", l.hookPath, out}, false, "unknown XDP action"},
		{"bad format", []string{"-format", "csv", l.hookPath, out}, false, "want pcap or pcapng"},
		{"no output", []string{l.hookPath}, false, "want HOOK and OUTPUT"},
		{"not root", []string{l.hookPath, out}, true, "needs root"},
		{"offline missing file", []string{"-r", "/nonexistent.pcap"}, false, "no such file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			if tc.nobody {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
			}
			b, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("exit %v, want status 1; output:\n%s", err, b)
			}
			if !strings.Contains(string(b), tc.wantErr) || !strings.HasPrefix(string(b), "xdpcap: ") {
				t.Errorf("output %q, want an xdpcap: error with %q", b, tc.wantErr)
			}
			if n := l.filled(t); n != 0 {
				t.Errorf("%d filters left in the hook", n)
			}
			if _, err := os.Stat(out); err == nil {
				t.Errorf("failed run left %s behind", out)
				os.Remove(out)
			}
		})
	}
}

// TestOfflineCommand compares `xdpcap -r IN -w OUT EXPR` with `tcpdump -r
// IN -w OUT EXPR` byte for byte on corpus captures, pcap and pcapng input.
func TestOfflineCommand(t *testing.T) {
	fixture.RequireRoot(t)
	bin := xdpcapBin(t)
	corpus := filepath.Join(fixture.CorpusDir(t), "pcap")
	tmp := t.TempDir()
	for _, tc := range []struct{ file, expr string }{
		{"dns_udp.pcap", "udp port 53"},
		{"ipv6-routing-header.pcap", "ip6 and not icmp6"},
		{"icmpv6.pcap", "icmp6 and ip6[40] == 134"},
		{"LINKTYPE_RAW_ipv6.pcap", "ip6"},
		{"edns-opts.pcap", ""},
		{"accecn_handshake.pcap", "tcp[tcpflags] & tcp-syn != 0"},
	} {
		in := filepath.Join(corpus, tc.file)
		if _, err := os.Stat(in); err != nil {
			t.Logf("corpus has no %s, skipped", tc.file)
			continue
		}
		t.Run(tc.file, func(t *testing.T) {
			want := filepath.Join(tmp, "tcpdump-"+tc.file)
			args := []string{"-r", in, "-w", want}
			if tc.expr != "" {
				args = append(args, tc.expr)
			}
			if b, err := exec.Command("tcpdump", args...).CombinedOutput(); err != nil {
				t.Fatalf("tcpdump: %v\n%s", err, b)
			}
			got := filepath.Join(tmp, "xdpcap-"+tc.file)
			args = []string{"-r", in, "-w", got}
			if tc.expr != "" {
				args = append(args, tc.expr)
			}
			b, err := exec.Command(bin, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("xdpcap: %v\n%s", err, b)
			}
			wantLines := tcpdumpHex(t, want)
			if gotLines := tcpdumpHex(t, got); gotLines != wantLines {
				t.Errorf("xdpcap -r -w differs from tcpdump -r -w:\n%s\nwant\n%s", gotLines, wantLines)
			}
			if !regexp.MustCompile(`^\d+ packets matched of \d+\n$`).Match(b) {
				t.Errorf("xdpcap printed %q", b)
			}

			// The same from pcapng input.
			ng := filepath.Join(tmp, tc.file+".pcapng")
			toPcapng(t, in, ng)
			args[1] = ng
			b2, err := exec.Command(bin, args...).CombinedOutput()
			if err != nil || string(b2) != string(b) {
				t.Errorf("pcapng input: %v %q, want %q", err, b2, b)
			}
		})
	}
}

func tcpdumpHex(t testing.TB, path string) string {
	t.Helper()
	out, err := exec.Command("tcpdump", "-nn", "-tt", "-xx", "-r", path).Output()
	if err != nil {
		t.Fatalf("tcpdump -r %s: %v", path, err)
	}
	return string(out)
}

func toPcapng(t testing.TB, in, out string) {
	t.Helper()
	c, err := fixture.ReadCapture(in)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, err := xdpcap.NewPcapngWriter(f, c.LinkType, 262144, []string{"in"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range c.Packets {
		if err := w.WritePacket(xdpcap.Packet{Action: xdpcap.Pass, Time: p.Time, Length: p.Length, Data: p.Data}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
}
