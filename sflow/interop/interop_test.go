package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/sflow"
)

// Ports of the test traffic: a rule drops the first, nothing matches the
// second.
const (
	droppedPort = 5353
	passedPort  = 7000
	perPort     = 50_000
	sampleRate  = 100
)

// requireTool returns the path of a collector's command, or skips the test
// (fails it under CI=true) when it is not installed.
func requireTool(tb testing.TB, name, pkg string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if fixture.InCI() {
			tb.Fatalf("%s not installed (Debian package %s; make deps installs it)", name, pkg)
		}
		tb.Skipf("%s not installed (Debian package %s; make deps installs it)", name, pkg)
	}
	return path
}

// startGroup starts cmd in a process group of its own, in a temporary
// directory (where a core dump would land), and stops the whole group at
// cleanup with stop, then SIGKILL after 5 s. sfacctd 1.7.7 wants SIGINT to
// stop at once and reap its plugin processes (SIGTERM takes the 5 s);
// FastNetMon 1.2.4 dumps core on SIGINT and has no children: SIGKILL.
func startGroup(tb testing.TB, cmd *exec.Cmd, stop syscall.Signal) error {
	tb.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Dir = tb.TempDir()
	if err := cmd.Start(); err != nil {
		return err
	}
	pgid := cmd.Process.Pid
	tb.Cleanup(func() {
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		syscall.Kill(-pgid, stop)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
		// Whatever the leader left behind in its group.
		syscall.Kill(-pgid, syscall.SIGKILL)
	})
	return nil
}

// freeUDPPort returns a loopback UDP port nobody uses at the moment.
func freeUDPPort(tb testing.TB) int {
	tb.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// sfacctd is pmacct's sFlow collector on the loopback, accounting packets
// per destination port and output interface in its memory table.
type sfacctd struct {
	port int
	pipe string
	log  string
}

func startSfacctd(tb testing.TB) *sfacctd {
	tb.Helper()
	bin := requireTool(tb, "sfacctd", "pmacct")
	requireTool(tb, "pmacct", "pmacct")
	dir := tb.TempDir()
	s := &sfacctd{port: freeUDPPort(tb), pipe: filepath.Join(dir, "pmacct.pipe"), log: filepath.Join(dir, "sfacctd.log")}
	conf := filepath.Join(dir, "sfacctd.conf")
	err := os.WriteFile(conf, fmt.Appendf(nil, `daemonize: false
sfacctd_ip: 127.0.0.1
sfacctd_port: %d
sfacctd_renormalize: true
plugins: memory[m]
aggregate[m]: dst_port, proto, out_iface
imt_path[m]: %s
logfile: %s
`, s.port, s.pipe, s.log), 0o644)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", conf)
	if err := startGroup(tb, cmd, syscall.SIGINT); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			log, _ := os.ReadFile(s.log)
			tb.Logf("sfacctd log:\n%s", log)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for exec.Command("pmacct", "-p", s.pipe, "-t").Run() != nil {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(s.log)
			tb.Fatalf("sfacctd does not answer on %s after 20 s; log:\n%s", s.pipe, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return s
}

func (s *sfacctd) collector() string { return fmt.Sprintf("127.0.0.1:%d", s.port) }

// pmacctEntry is a line of `pmacct -s -O json`.
type pmacctEntry struct {
	DstPort int    `json:"port_dst"`
	Proto   string `json:"ip_proto"`
	OutIf   uint64 `json:"iface_out"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// table returns sfacctd's memory table.
func (s *sfacctd) table(tb testing.TB) []pmacctEntry {
	tb.Helper()
	out, err := exec.Command("pmacct", "-p", s.pipe, "-s", "-O", "json").Output()
	if err != nil {
		tb.Fatalf("pmacct -s: %v", err)
	}
	var t []pmacctEntry
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		var e pmacctEntry
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			tb.Fatalf("pmacct line %q: %v", line, err)
		}
		t = append(t, e)
	}
	return t
}

// settled polls the table until it stops changing, and returns it.
func (s *sfacctd) settled(tb testing.TB) []pmacctEntry {
	tb.Helper()
	var last string
	for range 60 {
		time.Sleep(500 * time.Millisecond)
		t := s.table(tb)
		cur := fmt.Sprint(t)
		if cur == last && len(t) > 0 {
			return t
		}
		last = cur
	}
	tb.Fatal("sfacctd's table keeps changing after 30 s")
	return nil
}

// checkRenormalized checks sfacctd's renormalized packet counts per port
// against what was sent, within ±25 %, and that only dropped packets carry
// the discard code as output interface.
func checkRenormalized(tb testing.TB, table []pmacctEntry, sent map[int]uint64, dropped map[int]bool) {
	tb.Helper()
	got := map[int]uint64{}
	for _, e := range table {
		got[e.DstPort] += e.Packets
		tb.Logf("sfacctd: dst port %5d %s out_iface %#x: %d packets, %d bytes", e.DstPort, e.Proto, e.OutIf, e.Packets, e.Bytes)
		if _, ok := sent[e.DstPort]; !ok {
			continue
		}
		wantOut := uint64(0)
		if dropped[e.DstPort] {
			wantOut = 0x40000000 | sflow.DiscardACL
		}
		if e.OutIf != wantOut {
			tb.Errorf("dst port %d: out_iface %#x, want %#x", e.DstPort, e.OutIf, wantOut)
		}
	}
	for port, n := range sent {
		lo, hi := n*3/4, n*5/4
		if got[port] < lo || got[port] > hi {
			tb.Errorf("dst port %d: sfacctd counts %d packets, sent %d (want %d-%d)", port, got[port], n, lo, hi)
		}
	}
}

// udpFrame is an Ethernet frame of a UDP datagram from the lab's client to
// its server.
func udpFrame(dport uint16, i int) []byte {
	return fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, uint16(10000+i%1000), dport,
		fmt.Appendf(nil, "interop %d", i))
}

// feedSynthetic samples perPort packets to each port one in rate, as
// L4Drop's program does, and hands the samples to e, paced like traffic.
// settle, if not nil, is called after every batch with the number of
// samples handed over so far, to hold the feed until the collector has
// caught up.
func feedSynthetic(tb testing.TB, e *sflow.Exporter, dropped map[int]bool, settle func(samples int)) map[int]uint64 {
	tb.Helper()
	r := rand.New(rand.NewPCG(1, 2))
	sent := map[int]uint64{}
	samples := 0
	perPortSamples := map[int]int{}
	defer func() { tb.Logf("samples per port %v", perPortSamples) }()
	for port, drop := range dropped {
		for i := range perPort {
			sent[port]++
			if r.IntN(sampleRate) != 0 {
				continue
			}
			perPortSamples[port]++
			f := udpFrame(uint16(port), i)
			if !e.Sample(sflow.Packet{Frame: f, Length: len(f), Dropped: drop}) {
				tb.Fatal("exporter queue full")
			}
			if samples++; samples%50 != 0 {
				continue
			}
			if settle != nil {
				settle(samples)
			} else {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
	tb.Logf("%d samples of %v packets", samples, sent)
	return sent
}

// runExporter runs e until the test ends or stop is called; stop waits
// for Run to send what it holds.
func runExporter(tb testing.TB, e *sflow.Exporter) (stop func()) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- e.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				tb.Errorf("exporter: %v", err)
			}
		})
	}
	tb.Cleanup(stop)
	return stop
}

func newExporter(tb testing.TB, cfg sflow.Config) *sflow.Exporter {
	tb.Helper()
	if !cfg.Agent.IsValid() {
		cfg.Agent = netip.MustParseAddr("127.0.0.1")
	}
	if cfg.IfIndex == 0 {
		cfg.IfIndex = 2
	}
	cfg.SamplingRate = sampleRate
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 100 * time.Millisecond
	}
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e, err := sflow.NewExporter(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return e
}

// recorder is a collector that keeps every datagram it receives, to hand
// them to tshark as a capture.
type recorder struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  [][]byte
	done chan struct{}
}

func newRecorder(tb testing.TB) *recorder {
	tb.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		tb.Fatal(err)
	}
	conn.SetReadBuffer(4 << 20)
	r := &recorder{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 1<<16)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			r.mu.Lock()
			r.got = append(r.got, append([]byte(nil), buf[:n]...))
			r.mu.Unlock()
		}
	}()
	tb.Cleanup(r.close)
	return r
}

// waitFor waits up to 10 s for n datagrams.
func (r *recorder) waitFor(tb testing.TB, n uint64) {
	tb.Helper()
	for range 1000 {
		r.mu.Lock()
		got := len(r.got)
		r.mu.Unlock()
		if uint64(got) >= n {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	tb.Fatalf("recorder: fewer than %d datagrams after 10 s", n)
}

func (r *recorder) addr() string { return r.conn.LocalAddr().String() }

func (r *recorder) port() int { return r.conn.LocalAddr().(*net.UDPAddr).Port }

func (r *recorder) close() {
	r.conn.Close()
	<-r.done
}

// writePcap writes the datagrams as a capture of UDP packets from the
// agent to the recorder's port, as a capture on the collector would hold.
func (r *recorder) writePcap(tb testing.TB, path string) int {
	tb.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		tb.Fatal(err)
	}
	for i, d := range r.got {
		eth := &layers.Ethernet{SrcMAC: fixture.ClientMAC, DstMAC: fixture.ServerMAC, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
			SrcIP: net.IPv4(127, 0, 0, 1), DstIP: net.IPv4(127, 0, 0, 1)}
		udp := &layers.UDP{SrcPort: 40000, DstPort: layers.UDPPort(r.port())}
		udp.SetNetworkLayerForChecksum(ip)
		buf := gopacket.NewSerializeBuffer()
		err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
			eth, ip, udp, gopacket.Payload(d))
		if err != nil {
			tb.Fatal(err)
		}
		ts := time.Unix(1_700_000_000, int64(i)*int64(time.Millisecond))
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: ts, CaptureLength: len(buf.Bytes()), Length: len(buf.Bytes())}, buf.Bytes()); err != nil {
			tb.Fatal(err)
		}
	}
	return len(r.got)
}
