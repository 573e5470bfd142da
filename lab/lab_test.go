package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/l4pins"
	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
)

func newLab(tb testing.TB) *Lab {
	tb.Helper()
	fixture.RequireRoot(tb)
	l, err := New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Error(err)
		}
	})
	return l
}

// capture reads frames arriving at ifname in ns with a packet socket,
// putting VLAN tags the stack took off back in.
type capture struct {
	fd     int
	frames [][]byte
}

func startCapture(tb testing.TB, ns *netns.NS, ifname string) *capture {
	tb.Helper()
	c := &capture{fd: -1}
	err := ns.Do(func() error {
		ifi, err := ifindexByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return err
		}
		c.fd = fd
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_AUXDATA, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 64<<20); err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		tb.Fatalf("capture on %s: %v", ifname, err)
	}
	tb.Cleanup(func() { unix.Close(c.fd) })
	return c
}

func ifindexByName(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read collects incoming frames addressed to the server until want arrived
// or nothing came for a while.
func (c *capture) read(tb testing.TB, want int) [][]byte {
	tb.Helper()
	buf := make([]byte, 4096)
	oob := make([]byte, 256)
	tv := unix.NsecToTimeval(int64(500 * time.Millisecond))
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		tb.Fatal(err)
	}
	// Bounded: each empty read waits at most 500 ms and ends the loop.
	for len(c.frames) < want+10 {
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if len(c.frames) >= want {
				break
			}
			if errors.Is(err, unix.EAGAIN) {
				break
			}
			continue
		}
		if err != nil {
			tb.Fatal(err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); !ok || ll.Pkttype != unix.PACKET_HOST {
			continue
		}
		frame := append([]byte(nil), buf[:n]...)
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			tb.Fatal(err)
		}
		for _, m := range msgs {
			if m.Header.Level != unix.SOL_PACKET || m.Header.Type != unix.PACKET_AUXDATA || len(m.Data) < int(unsafe.Sizeof(unix.TpacketAuxdata{})) {
				continue
			}
			aux := (*unix.TpacketAuxdata)(unsafe.Pointer(&m.Data[0]))
			if aux.Status&unix.TP_STATUS_VLAN_VALID != 0 {
				tpid := uint16(0x8100)
				if aux.Status&unix.TP_STATUS_VLAN_TPID_VALID != 0 {
					tpid = aux.Vlan_tpid
				}
				tag := binary.BigEndian.AppendUint16(nil, tpid)
				tag = binary.BigEndian.AppendUint16(tag, aux.Vlan_tci)
				frame = slices.Insert(frame, 12, tag...)
			}
		}
		if len(frame) < 14 || !bytes.Equal(frame[:6], ServerMAC) {
			continue
		}
		c.frames = append(c.frames, frame)
	}
	return c.frames
}

func mustTemplates(tb testing.TB, specs ...string) []Template {
	tb.Helper()
	var ts []Template
	for _, s := range specs {
		t, err := ParseTemplate(s)
		if err != nil {
			tb.Fatal(err)
		}
		ts = append(ts, t)
	}
	return ts
}

// matchTemplate reports whether frame is an instance of t: same bytes
// outside the random fields and checksums, letters where letters belong, and
// checksums right.
func matchTemplate(t Template, frame []byte) error {
	if len(frame) != len(t.Frame) {
		return fmt.Errorf("length %d, want %d", len(frame), len(t.Frame))
	}
	skip := make([]bool, len(frame))
	for _, f := range t.Fields {
		for b := f.Off; b < f.Off+f.Len; b++ {
			skip[b] = true
			if f.Kind == Letters && (frame[b] < 'a' || frame[b] > 'z') {
				return fmt.Errorf("byte %d = %#x, want a letter", b, frame[b])
			}
		}
	}
	lo, _ := parseLayout(t.Frame)
	for _, c := range []int{lo.ipCsum, lo.l4Csum} {
		if c >= 0 {
			skip[c], skip[c+1] = true, true
		}
	}
	for i := range frame {
		if !skip[i] && frame[i] != t.Frame[i] {
			return fmt.Errorf("byte %d = %#x, want %#x", i, frame[i], t.Frame[i])
		}
	}
	fixed := append([]byte(nil), frame...)
	setChecksums(fixed)
	if !bytes.Equal(fixed, frame) {
		return fmt.Errorf("bad checksum")
	}
	return nil
}

func TestGeneratorSendsCountAndContent(t *testing.T) {
	l := newLab(t)
	tests := []struct {
		name  string
		specs []string
		count uint64
	}{
		{"dns4", []string{"dns,name=*.attack.example"}, 2000},
		{"dns6-vlan", []string{"dns,name=www.*.example.org,v6,vlan=100"}, 1000},
		{"syn4-randsrc", []string{"syn,port=80,randsrc"}, 1000},
		{"syn6-qinq", []string{"syn,port=443,v6,vlan=10.20,sport=1234"}, 500},
		{"udp4-odd-payload", []string{"udp,port=9,size=33,randsrc"}, 500},
		{"mix-95-5", []string{"dns,name=*.attack.example,weight=95", "udp,port=53,sport=5353,weight=5"}, 3001},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := mustTemplates(t, tt.specs...)
			g, err := NewGenerator(l.Inet, l.InetIf, ts, 42)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			c := startCapture(t, l.Server, l.ServerIf)
			// A set rate keeps the receiving packet socket from overflowing.
			res, err := g.Run(context.Background(), RunOptions{Count: tt.count, Rate: 50000})
			if err != nil {
				t.Fatal(err)
			}
			if res.Sent != tt.count {
				t.Fatalf("sent %d, want %d", res.Sent, tt.count)
			}
			// At a set rate the sender sleeps between bursts: it ran,
			// but for less than the time that passed.
			if res.OnCPU <= 0 || res.OnCPU+res.Waited > res.Elapsed+10*time.Millisecond {
				t.Errorf("on CPU %v, waited %v, in %v", res.OnCPU, res.Waited, res.Elapsed)
			}
			want := shares(tt.count, ts)
			if !slices.Equal(res.PerTemplate, want) {
				t.Errorf("per template %v, want %v", res.PerTemplate, want)
			}
			frames := c.read(t, int(tt.count))
			if len(frames) != int(tt.count) {
				t.Fatalf("server received %d frames, want %d", len(frames), tt.count)
			}
			got := make([]uint64, len(ts))
			distinct := map[string]bool{}
		frames:
			for i, f := range frames {
				var errs []error
				for j, tmpl := range ts {
					err := matchTemplate(tmpl, f)
					if err == nil {
						got[j]++
						distinct[string(f)] = true
						continue frames
					}
					errs = append(errs, err)
				}
				t.Fatalf("frame %d matches no template: %v\n% x", i, errs, f)
			}
			if !slices.Equal(got, want) {
				t.Errorf("received per template %v, want %v", got, want)
			}
			// Random fields (a 16-bit port at least) make nearly every frame
			// distinct; a generator that did not rewrite them makes one.
			if len(distinct) < len(frames)*9/10 {
				t.Errorf("only %d distinct frames of %d", len(distinct), len(frames))
			}
		})
	}
}

func TestGeneratorDeterministic(t *testing.T) {
	l := newLab(t)
	run := func(seed uint64) [][]byte {
		g, err := NewGenerator(l.Inet, l.InetIf, mustTemplates(t, "dns,name=*.x.example"), seed)
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		c := startCapture(t, l.Server, l.ServerIf)
		if _, err := g.Run(context.Background(), RunOptions{Count: 300, Rate: 50000}); err != nil {
			t.Fatal(err)
		}
		return c.read(t, 300)
	}
	a, b, other := run(7), run(7), run(8)
	if len(a) != 300 || len(b) != 300 || len(other) != 300 {
		t.Fatalf("received %d, %d, %d frames, want 300 each", len(a), len(b), len(other))
	}
	for i := range a {
		if !bytes.Equal(a[i], b[i]) {
			t.Fatalf("same seed, frame %d differs:\n% x\n% x", i, a[i], b[i])
		}
	}
	if bytes.Equal(a[0], other[0]) {
		t.Errorf("seeds 7 and 8 sent the same first frame")
	}
}

func TestParseTemplateErrors(t *testing.T) {
	for _, spec := range []string{"", "icmp", "dns", "syn,port=70000", "udp,vlan=1.2.3", "dns,name=a..b", "udp,weight=0", "udp,color=red"} {
		if _, err := ParseTemplate(spec); !errors.Is(err, ErrSpec) {
			t.Errorf("ParseTemplate(%q) = %v, want ErrSpec", spec, err)
		}
	}
}

func TestShares(t *testing.T) {
	for _, tt := range []struct {
		count   uint64
		weights []int
	}{{100, []int{95, 5}}, {3001, []int{95, 5}}, {7, []int{1, 1, 1}}, {1, []int{3, 1}}, {1000, []int{1}}} {
		var ts []Template
		for _, w := range tt.weights {
			ts = append(ts, Template{Weight: w})
		}
		s := shares(tt.count, ts)
		var sum uint64
		for i, v := range s {
			sum += v
			ideal := float64(tt.count) * float64(tt.weights[i]) / float64(len(tt.weights)*0+sumInts(tt.weights))
			if d := float64(v) - ideal; d > float64(len(ts)) || d < -float64(len(ts)) {
				t.Errorf("shares(%d, %v)[%d] = %d, want about %.1f", tt.count, tt.weights, i, v, ideal)
			}
		}
		if sum != tt.count {
			t.Errorf("shares(%d, %v) = %v, sum %d", tt.count, tt.weights, s, sum)
		}
	}
}

func sumInts(v []int) int {
	s := 0
	for _, x := range v {
		s += x
	}
	return s
}

// labLeft reports what of lab id is still there: namespaces, marker.
func labLeft(id string) []string {
	var left []string
	for _, n := range []string{Prefix + id + "-inet", Prefix + id + "-srv"} {
		if netns.Exists(n) {
			left = append(left, "namespace "+n)
		}
	}
	if _, err := os.Stat(filepath.Join(MarkerDir, id+".json")); err == nil {
		left = append(left, "marker")
	}
	if dirExists(pinDir(id)) {
		left = append(left, "pin directory")
	}
	out, _ := exec.Command("ip", "-o", "link").Output()
	if strings.Contains(string(out), "l4i"+id) || strings.Contains(string(out), "l4s"+id) {
		left = append(left, "link in the host namespace")
	}
	return left
}

func TestLabCleanupAfterSuccess(t *testing.T) {
	fixture.RequireRoot(t)
	var id string
	err := Run(context.Background(), func(ctx context.Context, l *Lab) error {
		id = l.ID
		dir, err := l.PinDir()
		if err != nil {
			return err
		}
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
		if err != nil {
			return err
		}
		defer m.Close()
		if err := m.Pin(filepath.Join(dir, "map")); err != nil {
			return err
		}
		if left := labLeft(id); len(left) != 4 {
			return fmt.Errorf("lab incomplete while running: %v", left)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if left := labLeft(id); len(left) > 0 {
		t.Errorf("left after success: %v", left)
	}
}

func TestLabCleanupAfterFailure(t *testing.T) {
	fixture.RequireRoot(t)
	var id string
	boom := errors.New("boom")
	err := Run(context.Background(), func(ctx context.Context, l *Lab) error {
		id = l.ID
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want boom", err)
	}
	if left := labLeft(id); len(left) > 0 {
		t.Errorf("left after failure: %v", left)
	}
}

// TestLabRefusesForeignNamespace makes New fail half-way, on a namespace
// that someone else owns: New must remove what it made and leave the other.
func TestLabRefusesForeignNamespace(t *testing.T) {
	fixture.RequireRoot(t)
	next := fmt.Sprintf("%d%c", os.Getpid(), 'a'+rune(labCounter.Load())%26)
	foreign, err := netns.New(Prefix + next + "-srv")
	if err != nil {
		t.Fatal(err)
	}
	defer foreign.Close()
	l, err := New()
	if err == nil {
		l.Close()
		t.Fatal("New succeeded over a foreign namespace")
	}
	if !errors.Is(err, netns.ErrExists) {
		t.Errorf("New = %v, want ErrExists", err)
	}
	if !netns.Exists(foreign.Name) {
		t.Fatal("New removed a namespace it did not create")
	}
	left := labLeft(next)
	if !slices.Equal(left, []string{"namespace " + foreign.Name}) {
		t.Errorf("left after failed New: %v, want only the foreign namespace", left)
	}
}

// TestCleanRemovesDeadLabsOnly leaves a lab behind as a killed process
// would, with the marker naming a process that has exited.
func TestCleanRemovesDeadLabsOnly(t *testing.T) {
	fixture.RequireRoot(t)
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("%ddead", dead.Process.Pid)
	names := []string{Prefix + id + "-inet", Prefix + id + "-srv"}
	for _, n := range names {
		ns, err := netns.New(n)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			if netns.Exists(ns.Name) {
				ns.Close()
			}
		}()
	}
	m := fmt.Sprintf(`{"pid":%d,"namespaces":["%s","%s"]}`, dead.Process.Pid, names[0], names[1])
	if err := os.WriteFile(filepath.Join(MarkerDir, id+".json"), []byte(m), 0o644); err != nil {
		t.Fatal(err)
	}
	deadPins := pinDir(id)
	if err := os.Mkdir(deadPins, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(deadPins)
	live := newLab(t)
	livePins, err := live.PinDir()
	if err != nil {
		t.Fatal(err)
	}
	// l4drop's pins of a rule set left loaded on each lab's server side:
	// the dead lab's go with its namespace, the live lab's stay.
	deadL4Drop, liveL4Drop := l4pins.Dir("", "l4s"+id, names[1]), l4pins.Dir("", live.ServerIf, live.Server.Name)
	for _, dir := range []string{deadL4Drop, liveL4Drop} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
	}
	removed, err := Clean()
	if err != nil {
		t.Fatal(err)
	}
	// Other dead labs may go too; ours must.
	removed = slices.DeleteFunc(removed, func(n string) bool { return !strings.Contains(n, id) })
	slices.Sort(removed)
	want := append([]string{deadPins, deadL4Drop}, names...)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("Clean removed %v, want %v", removed, want)
	}
	if left := labLeft(id); len(left) > 0 {
		t.Errorf("left after Clean: %v", left)
	}
	if dirExists(deadPins) || dirExists(deadL4Drop) {
		t.Errorf("Clean left %s or %s", deadPins, deadL4Drop)
	}
	if !netns.Exists(live.Inet.Name) || !netns.Exists(live.Server.Name) || !dirExists(livePins) || !dirExists(liveL4Drop) {
		t.Error("Clean removed a live lab")
	}
}

// TestCloseUnloadsL4Drop: a rule set loaded on the lab's interface, left
// loaded as l4drop load and l4drop run leave it, is unloaded with the lab,
// pins and all.
func TestCloseUnloadsL4Drop(t *testing.T) {
	fixture.RequireRoot(t)
	rs, err := build.ParseRuleSet("lab.yaml", []byte("rules:\n  - name: udp-53\n    expr: \"udp dst port 53\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	l := newLab(t)
	loaded, err := l4drop.Load(obj, l4drop.LoadOptions{Iface: l.ServerIf, Netns: l.Server.Name})
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]ebpf.ProgramID, 0, len(loaded.Programs))
	for _, p := range loaded.Programs {
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		id, _ := info.ID()
		ids = append(ids, id)
		p.Close()
	}
	if !dirExists(loaded.Dir) {
		t.Fatalf("no pins at %s after Load", loaded.Dir)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if dirExists(loaded.Dir) {
		t.Errorf("the lab's Close left %s", loaded.Dir)
	}
	for _, id := range ids {
		if p, err := ebpf.NewProgramFromID(id); err == nil {
			p.Close()
			t.Errorf("program %d still loaded after the lab's Close", id)
		}
	}
}

// TestLabCleanupAfterSIGINT runs a lab in a child process (this test binary)
// and interrupts it.
func TestLabCleanupAfterSIGINT(t *testing.T) {
	fixture.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "L4LAB_HOLD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line := make(chan string, 1)
	go func() {
		buf := make([]byte, 4096)
		var acc []byte
		for {
			n, err := out.Read(buf)
			acc = append(acc, buf[:n]...)
			if i := bytes.Index(acc, []byte("LAB ")); i >= 0 {
				if j := bytes.IndexByte(acc[i:], '\n'); j >= 0 {
					line <- string(acc[i+4 : i+j])
					// Drain, so the child never blocks on a full pipe.
					for err == nil {
						_, err = out.Read(buf)
					}
					return
				}
			}
			if err != nil {
				close(line)
				return
			}
		}
	}()
	var id string
	select {
	case id = <-line:
	case <-time.After(20 * time.Second):
		t.Fatal("child did not report its lab")
	}
	if id == "" {
		t.Fatal("child ended without a lab")
	}
	if left := labLeft(id); len(left) != 3 {
		t.Fatalf("child's lab incomplete: %v", left)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("child did not exit after SIGINT")
	}
	if left := labLeft(id); len(left) > 0 {
		t.Errorf("left after SIGINT: %v", left)
	}
}

// TestMain doubles as the child of TestLabCleanupAfterSIGINT: with
// L4LAB_HOLD=1 it holds a lab until a signal ends it.
func TestMain(m *testing.M) {
	if os.Getenv("L4LAB_HOLD") == "1" {
		err := Run(context.Background(), func(ctx context.Context, l *Lab) error {
			fmt.Printf("LAB %s\n", l.ID)
			<-ctx.Done()
			return nil
		})
		if !errors.Is(err, ErrInterrupted) {
			fmt.Fprintln(os.Stderr, "hold:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestReplayFromCapture(t *testing.T) {
	l := newLab(t)
	var frames [][]byte
	for _, tmpl := range mustTemplates(t, "dns,name=www.example.org", "syn,port=80,v6", "udp,port=9,vlan=7") {
		frames = append(frames, tmpl.Frame)
	}
	path := filepath.Join(t.TempDir(), "in.pcap")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for _, fr := range frames {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Now(), CaptureLength: len(fr), Length: len(fr)}, fr); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	read, err := ReadFrames(path)
	if err != nil {
		t.Fatal(err)
	}
	c := startCapture(t, l.Server, l.ServerIf)
	const count = 300
	res, err := Replay(context.Background(), l.Inet, l.InetIf, read, RunOptions{Count: count, Rate: 50000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != count {
		t.Fatalf("sent %d, want %d", res.Sent, count)
	}
	got := c.read(t, count)
	if len(got) != count {
		t.Fatalf("server received %d frames, want %d", len(got), count)
	}
	for i, g := range got {
		if !bytes.Equal(g, frames[i%len(frames)]) {
			t.Fatalf("frame %d:\n% x\nwant\n% x", i, g, frames[i%len(frames)])
		}
	}
}
