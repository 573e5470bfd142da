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
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
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

// name is the hook's name in xdpcap's output: its path under /sys/fs/bpf.
func (l *lab) name() string { return strings.TrimPrefix(l.hookPath, "/sys/fs/bpf/") }

// filled returns how many slots of the hook hold a filter (exits and
// entry; the body slot holds the program's body).
func (l *lab) filled(t testing.TB) int {
	t.Helper()
	n := 0
	for slot := uint32(0); slot < xdpcap.BodySlot; slot++ {
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
				checkPcapngActions(t, out, map[string]int{l.name() + ":XDPDrop": 3, l.name() + ":XDPPass": 2, l.name() + ":XDPTx": 2})
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
// TestTwoHooks captures two hooks of the same file name, in different
// directories, at once: each has an interface of its own in the output,
// named after its path.
func TestTwoHooks(t *testing.T) {
	l := newLab(t)
	otherDir := filepath.Join(filepath.Dir(l.hookPath), "b")
	if err := os.Mkdir(otherDir, 0o755); err != nil {
		t.Fatal(err)
	}
	otherPath := filepath.Join(otherDir, filepath.Base(l.hookPath))
	otherName := strings.TrimPrefix(otherPath, "/sys/fs/bpf/")
	other, err := xdpcap.CreateHook(otherPath)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	// A program that uses the second hook (attached nowhere, run by test
	// runs), dropping every packet.
	insns := append(asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}, xdpcap.Exit(asm.R6, "other", xdpcap.Drop)...)
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
	runner := fixture.NewXDPRunner(t)
	if ret, err := runner.Run(prog, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 2, nil)); err != nil || ret != uint32(xdpcap.Drop) {
		t.Fatalf("second hook's program: %d %v", ret, err)
	}
	time.Sleep(100 * time.Millisecond)
	if err := p.stop(t, os.Interrupt); err != nil {
		t.Fatalf("xdpcap: %v\n%s", err, &p.stderr)
	}
	if l.filled(t) != 0 || filled() != 0 {
		t.Errorf("filters left: %d and %d", l.filled(t), filled())
	}
	checkPcapngActions(t, out, map[string]int{l.name() + ":XDPDrop": 3, otherName + ":XDPDrop": 1})
	for _, want := range []string{"  " + l.name() + ": XDPAborted: 0/0   XDPDrop: 3/3", "  " + otherName + ": XDPAborted: 0/0   XDPDrop: 1/1"} {
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
		action := name[strings.LastIndex(name, ":")+1:]
		if action == xdpcap.Entry.String() {
			continue // no verdict
		}
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
	// A hook that a program uses, but whose body slot is empty.
	unusedBody := pin("nobody", xdpcap.HookMapSpec("nobody"))
	nobody, err := xdpcap.OpenHook(unusedBody)
	if err != nil {
		t.Fatal(err)
	}
	defer nobody.Close()
	insns := xdpcap.Exit(asm.R1, "nobody", xdpcap.Pass)
	if err := insns.AssociateMap("nobody", nobody); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, Instructions: insns, License: "GPL"})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
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
		{"zero interval", []string{"-interval", "0", l.hookPath, out}, false, "-interval 0s: want a positive duration"},
		{"negative interval", []string{"-interval", "-1s", l.hookPath, out}, false, "-interval -1s: want a positive duration"},
		{"negative buffer", []string{"-buffer", "-1", l.hookPath, out}, false, "-buffer -1: want 4 to"},
		{"huge buffer", []string{"-buffer", "9223372036854775807", l.hookPath, out}, false, "-buffer 9223372036854775807: want 4 to"},
		{"zero snap length", []string{"-s", "0", l.hookPath, out}, false, "-s 0: want 1 to"},
		{"negative count", []string{"-c", "-3", l.hookPath, out}, false, "-c -3: want 0 or more"},
		{"bad link type", []string{"-linktype", "FOO", l.hookPath, out}, false, "-linktype"},
		{"action twice", []string{"-actions", "drop,XDP_DROP", l.hookPath, out}, false, "-actions: XDP_DROP given twice"},
		{"nothing to capture", []string{"-actions", "none", l.hookPath, out}, false, "-actions none: nothing to capture without -entry"},
		{"entry offline", []string{"-entry", "-r", "/nonexistent.pcap"}, false, "-r takes no -clear or -entry"},
		{"entry without body", []string{"-entry", unusedBody, out}, false, "does not support capture at entry"},
		// 1 MB, in arguments of 100 kB: the kernel takes no longer one.
		{"huge expression", append([]string{l.hookPath, out, "host"}, huge("a", 10)...), false, "EXPR (1000014 bytes)"},
		{"huge bytecode", append([]string{l.hookPath, out, "1,6 0 0 1,"}, huge("6 0 0 1,", 10)...), false, "EXPR (bytecode"},
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
			if !strings.Contains(string(b), tc.wantErr) || !strings.HasPrefix(string(b), "xdpcap: ") || strings.Contains(string(b), "panic:") {
				t.Errorf("output %q, want an xdpcap: error with %q", shortOutput(b), tc.wantErr)
			}
			// Input is quoted only so far.
			if len(b) > 4096 {
				t.Errorf("output of %d bytes: %q", len(b), shortOutput(b))
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
		// Records longer than the file's snap length, which libpcap cuts.
		{"smb_print_trans-oobr2.pcap", "udp"},
		{"lmp-lmp_print_data_link_subobjs-oobr.pcap", "udp"},
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

// huge returns n arguments of 100 kB each, s over and over.
func huge(s string, n int) []string {
	args := make([]string, n)
	for i := range args {
		args[i] = strings.Repeat(s, 100000/len(s))
	}
	return args
}

// shortOutput is b, cut for a test's message.
func shortOutput(b []byte) string {
	if len(b) > 1000 {
		return string(b[:1000]) + "..."
	}
	return string(b)
}

// TestWireshark captures at entry and at exit into pcapng and reads the
// file with tshark: each packet's interface is named after the hook and
// the capture point, exit packets carry their action as the XDP verdict
// and as a comment, entry packets no verdict and the entry comment.
func TestWireshark(t *testing.T) {
	tshark, err := exec.LookPath("tshark")
	if err != nil {
		if fixture.InCI() {
			t.Fatalf("tshark (Debian package tshark) is missing: %v", err)
		}
		t.Skipf("tshark (Debian package tshark) is missing: %v", err)
	}
	l := newLab(t)
	out := filepath.Join(t.TempDir(), "out.pcapng")
	p := start(t, "-q", "-entry", l.hookPath, out, "udp", "or", "icmp")
	l.waitFilled(t, xdpcap.NumActions+1)
	l.traffic(t)
	time.Sleep(100 * time.Millisecond)
	if err := p.stop(t, os.Interrupt); err != nil {
		t.Fatalf("xdpcap: %v\n%s", err, &p.stderr)
	}
	if n := l.filled(t); n != 0 {
		t.Errorf("%d filters left in the hook", n)
	}
	b, err := exec.Command(tshark, "-r", out, "-T", "fields", "-E", "separator=|",
		"-e", "frame.interface_name", "-e", "frame.verdict.ebpf_xdp", "-e", "frame.comment").Output()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, b)
	}
	got := map[string]int{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Split(line, "|")
		if len(f) != 3 {
			t.Fatalf("tshark line %q: want 3 fields", line)
		}
		iface, verdict, comment := f[0], f[1], f[2]
		point, ok := strings.CutPrefix(iface, l.name()+":")
		if !ok {
			t.Errorf("interface %q: not named after hook %s", iface, l.name())
			continue
		}
		got[point]++
		if point == xdpcap.Entry.String() {
			if verdict != "" || comment != "entry, before the XDP program" {
				t.Errorf("entry packet: verdict %q, comment %q", verdict, comment)
			}
			continue
		}
		a, err := xdpcap.ParseAction(point)
		if err != nil {
			t.Errorf("interface %q: %v", iface, err)
			continue
		}
		if verdict != fmt.Sprint(uint32(a)) || comment != a.KernelName() {
			t.Errorf("%s packet: verdict %q, comment %q; want %d and %s", iface, verdict, comment, a, a.KernelName())
		}
	}
	want := map[string]int{"Entry": 7, "XDPDrop": 3, "XDPPass": 2, "XDPTx": 2}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("tshark sees packets per capture point %v, want %v:\n%s", got, want, b)
	}
}

// TestSecondInterrupt stops a capture whose output does not drain (stdout
// a pipe nobody reads) with two Ctrl-C: xdpcap exits, and its summary
// counts what it wrote, not 0.
func TestSecondInterrupt(t *testing.T) {
	l := newLab(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	p := &proc{cmd: exec.Command(xdpcapBin(t), "-actions", "drop", l.hookPath, "-")}
	p.cmd.Stdout, p.cmd.Stderr = w, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	l.waitFilled(t, 1)
	// More than a pipe holds: the writer blocks.
	fixture.SendUDP(t, l.Client, fixture.ServerIPv4, 9, 2000)
	time.Sleep(200 * time.Millisecond)
	p.cmd.Process.Signal(os.Interrupt)
	time.Sleep(100 * time.Millisecond)
	p.cmd.Process.Signal(os.Interrupt)
	waited := make(chan error, 1)
	go func() { waited <- p.cmd.Wait() }()
	select {
	case err := <-waited:
		if err != nil {
			t.Errorf("xdpcap: %v\n%s", err, &p.stderr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("xdpcap still runs 10 s after the second Ctrl-C:\n%s", &p.stderr)
	}
	m := regexp.MustCompile(`(\d+) packets captured, (\d+) received by filter, (\d+) matched, (\d+) lost`).FindStringSubmatch(p.stderr.String())
	if m == nil || strings.Contains(p.stderr.String(), "panic:") {
		t.Fatalf("no summary:\n%s", &p.stderr)
	}
	var captured, matched int
	fmt.Sscan(m[1], &captured)
	fmt.Sscan(m[3], &matched)
	if captured == 0 || matched < 2000 || captured >= matched {
		t.Errorf("summary %q: want some but not all of the %d matched packets captured", m[0], matched)
	}
	if l.filled(t) != 0 {
		t.Errorf("filters left in the hook")
	}
}
