package daemon_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/l4drop/daemon"
)

const rules = `
sample_rate: 1
rules:
  - name: udp-5353
    expr: "udp dst port 5353"
  - name: udp-7
    expr: "udp dst port 7"
`

func buildYAML(t *testing.T, text string) []byte {
	t.Helper()
	rs, err := build.ParseRuleSet("test.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// startDaemon starts a daemon that loads obj on lab's server interface
// under root, with cfg's other settings, and returns it and the rule set's
// directory; when the test ends the set is unloaded and the daemon stops.
func startDaemon(t *testing.T, lab *fixture.LabPair, root string, obj []byte, cfg daemon.Config) (*daemon.Daemon, string) {
	t.Helper()
	cfg.Object = func(context.Context) ([]byte, error) { return obj, nil }
	cfg.Load = l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root}
	d, err := daemon.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Stop() })
	dir := l4drop.Dir(root, lab.ServerIf, lab.Server.Name)
	t.Cleanup(func() { l4drop.Unload(dir) })
	return d, dir
}

func send(t *testing.T, lab *fixture.LabPair, n int, port uint16) {
	t.Helper()
	frame := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, port, nil)
	err := lab.Client.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: lab.ClientIndex, Halen: 6}
		for i := 0; i < n; i++ {
			if err := unix.Sendto(fd, frame, 0, sa); err != nil {
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

func packets(t *testing.T, dir, rule string) uint64 {
	t.Helper()
	h, err := l4drop.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	st, err := h.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Rules {
		if r.Name == rule {
			return r.Packets
		}
	}
	t.Fatalf("no rule %q", rule)
	return 0
}

// sink records samples without blocking.
type sink struct {
	mu sync.Mutex
	n  int
}

func (s *sink) Name() string                                { return "test" }
func (s *sink) Start(context.Context, *daemon.Daemon) error { return nil }
func (s *sink) Stop() error                                 { return nil }
func (s *sink) Sample(l4drop.Sample)                        { s.mu.Lock(); s.n++; s.mu.Unlock() }

// TestDaemon runs the daemon in-process on a veth: it loads, counts,
// samples to its sinks, serves Prometheus metrics, keeps counters across a
// reload of the same rules, switches a rule off, and a start that fails
// (metrics address taken) leaves the live set attached and counting.
func TestDaemon(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	obj := buildYAML(t, rules)
	opts := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root}
	sk := &sink{}
	d, err := daemon.New(daemon.Config{
		Object: func(context.Context) ([]byte, error) { return obj, nil },
		Load:   opts, Metrics: "127.0.0.1:0", Components: []daemon.Component{sk},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	dir := l4drop.Dir(root, lab.ServerIf, lab.Server.Name)
	defer l4drop.Unload(dir)
	send(t, lab, 5, 5353)
	if n := packets(t, dir, "udp-5353"); n != 5 {
		t.Errorf("udp-5353: %d packets, want 5", n)
	}
	resp, err := http.Get("http://" + d.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	want := `l4drop_rule_packets_total{action="drop",iface="` + lab.ServerIf + `",rule="udp-5353"} 5`
	if !strings.Contains(string(body), want) {
		t.Errorf("metrics lack %s:\n%s", want, body)
	}
	for _, want := range []string{
		`l4drop_action_packets_total{counter="ratelimited",iface="` + lab.ServerIf + `"} 0`,
		`l4drop_action_packets_total{counter="syncookie_ok",iface="` + lab.ServerIf + `"} 0`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	// The same rules again: the counters go on from where they were.
	if err := d.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	send(t, lab, 3, 5353)
	if n := packets(t, dir, "udp-5353"); n != 8 {
		t.Errorf("udp-5353 after a reload: %d packets, want 8", n)
	}
	if err := d.SwitchOff("udp-5353"); err != nil {
		t.Fatal(err)
	}
	send(t, lab, 2, 5353)
	if n := packets(t, dir, "udp-5353"); n != 8 {
		t.Errorf("udp-5353 switched off: %d packets, want still 8", n)
	}
	time.Sleep(time.Second) // the pump flushes twice a second
	sk.mu.Lock()
	got := sk.n
	sk.mu.Unlock()
	if got < 10 {
		t.Errorf("%d samples reached the sink, want at least 10", got)
	}
	if err := d.Stop(); err != nil {
		t.Fatal(err)
	}

	// A second daemon whose metrics address is taken: its start fails and
	// the rule set loaded stays (udp-5353 off) and counts.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	other := buildYAML(t, strings.ReplaceAll(rules, "udp-7", "udp-9"))
	d2, err := daemon.New(daemon.Config{
		Object: func(context.Context) ([]byte, error) { return other, nil },
		Load:   opts, Metrics: ln.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Start(ctx); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Fatalf("start with the metrics address taken: %v", err)
	}
	h, err := l4drop.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if names := h.State.Meta.Rules; names[1].Name != "udp-7" || h.State.Enabled[0] {
		t.Errorf("after a failed start the set is %v %v", names, h.State.Enabled)
	}
	h.Close()
	send(t, lab, 4, 7)
	if n := packets(t, dir, "udp-7"); n != 4 {
		t.Errorf("udp-7 after a failed start: %d packets, want 4", n)
	}
}

func TestConfig(t *testing.T) {
	obj := func(context.Context) ([]byte, error) { return nil, nil }
	for _, tt := range []struct {
		name string
		cfg  daemon.Config
	}{
		{"no object", daemon.Config{Load: l4drop.LoadOptions{Iface: "lo"}}},
		{"no iface", daemon.Config{Object: obj}},
		{"negative poll", daemon.Config{Object: obj, Load: l4drop.LoadOptions{Iface: "lo"}, Poll: -time.Second}},
		{"negative tick", daemon.Config{Object: obj, Load: l4drop.LoadOptions{Iface: "lo"}, Tick: -time.Second}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := daemon.New(tt.cfg); !errors.Is(err, daemon.ErrConfig) {
				t.Errorf("New: %v, want ErrConfig", err)
			}
		})
	}
	for _, tt := range []struct {
		rotate time.Duration
		keep   int
	}{{0, 1}, {time.Second, 0}, {time.Second, -2}} {
		if _, err := daemon.NewPcapDir(t.TempDir(), tt.rotate, tt.keep); !errors.Is(err, daemon.ErrConfig) {
			t.Errorf("NewPcapDir(rotate %v, keep %d): %v, want ErrConfig", tt.rotate, tt.keep, err)
		}
	}
}

// TestSFlowMetrics: the sFlow component's counts are served with the
// daemon's metrics and agree with what the collector received.
func TestSFlowMetrics(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	obj := buildYAML(t, rules)
	col, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer col.Close()
	sf, err := daemon.NewSFlow([]string{col.LocalAddr().String()}, "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	d, _ := startDaemon(t, lab, root, obj, daemon.Config{Metrics: "127.0.0.1:0", Components: []daemon.Component{sf}})
	send(t, lab, 20, 5353)
	// Datagrams go out at the latest a second after their first sample.
	datagrams := 0
	buf := make([]byte, 65536)
	col.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		if _, err := col.Read(buf); err != nil {
			break
		}
		datagrams++
	}
	resp, err := http.Get("http://" + d.MetricsAddr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if datagrams == 0 {
		t.Fatal("the collector received no sFlow datagram")
	}
	iface := `{iface="` + lab.ServerIf + `"}`
	for _, want := range []string{
		fmt.Sprintf("l4drop_sflow_datagrams_total%s %d\n", iface, datagrams),
		"l4drop_sflow_datagrams_lost_total" + iface + " 0\n",
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
	var samples int
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, "l4drop_sflow_samples_total"+iface+" ") {
			fmt.Sscan(strings.TrimPrefix(line, "l4drop_sflow_samples_total"+iface+" "), &samples)
		}
	}
	if samples < 20 {
		t.Errorf("l4drop_sflow_samples_total %d, want >= 20 (sample_rate 1, 20 packets)", samples)
	}
}
