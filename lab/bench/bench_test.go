package bench

import (
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/xdprun"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/lab"
	"github.com/l4drop/l4drop/xdpcap"
)

// The fallback rules (tcpdump expressions on the query name) must match
// the flood exactly as the DNS rules would: the last rule every attack
// query, no other rule any.
func TestRuleSetExpressionsMatchTheFlood(t *testing.T) {
	tools := Tools{}
	rs, err := build.ParseRuleSet("bench.yaml", []byte(tools.RuleSet(20)))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Rules) != 20 || rs.Rules[19].Name != "attack" {
		t.Fatalf("got %d rules, last %q; want 20, last attack", len(rs.Rules), rs.Rules[len(rs.Rules)-1].Name)
	}
	attack, err := lab.ParseTemplate("dns,name=*.attack.example")
	if err != nil {
		t.Fatal(err)
	}
	zone7, err := lab.ParseTemplate("dns,name=*.zone0007.example")
	if err != nil {
		t.Fatal(err)
	}
	legit, err := lab.ParseTemplate("dns,name=www.example.org")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		frame []byte
		match int // index of the matching rule, -1 for none
	}{{"attack", attack.Frame, 19}, {"zone0007", zone7.Frame, 6}, {"legit", legit.Frame, -1}} {
		ip := tt.frame[14:]
		for i, r := range rs.Rules {
			prog, err := cbpf.Compile(r.Expr, cbpf.LinkTypeRaw, 0)
			if err != nil {
				t.Fatalf("rule %s: %v", r.Name, err)
			}
			got := cbpf.Interpret(prog, ip, len(ip)) != 0
			if got != (i == tt.match) {
				t.Errorf("%s: rule %d (%s) match = %v", tt.name, i, r.Name, got)
			}
		}
	}
	bc, err := tools.AttackBytecode()
	if err != nil {
		t.Fatal(err)
	}
	prog, err := cbpf.Parse(bc)
	if err != nil {
		t.Fatalf("AttackBytecode %q: %v", bc, err)
	}
	if cbpf.Interpret(prog, attack.Frame[14:], len(attack.Frame)-14) == 0 || cbpf.Interpret(prog, legit.Frame[14:], len(legit.Frame)-14) != 0 {
		t.Errorf("AttackBytecode does not tell attack from legitimate queries")
	}
	// The attack-only pass compares like with like only if every packet of
	// its flood matches the rule under test; the mixed pass's legitimate
	// traffic must match none.
	last, err := cbpf.Compile(rs.Rules[19].Expr, cbpf.LinkTypeRaw, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	for _, tt := range []struct {
		specs []string
		match bool
	}{{cfg.Traffic, true}, {cfg.Legit, false}} {
		for _, spec := range tt.specs {
			tpl, err := lab.ParseTemplate(spec)
			if err != nil {
				t.Fatal(err)
			}
			ip := tpl.Frame[14:]
			if got := cbpf.Interpret(last, ip, len(ip)) != 0; got != tt.match {
				t.Errorf("%s: the flood's rule matches %v, want %v", spec, got, tt.match)
			}
			if got := cbpf.Interpret(prog, ip, len(ip)) != 0; got != tt.match {
				t.Errorf("%s: AttackBytecode matches %v, want %v", spec, got, tt.match)
			}
		}
	}
	if len(cfg.Traffic) == 0 || len(cfg.Legit) == 0 {
		t.Errorf("DefaultConfig: traffic %q, legitimate %q; want both", cfg.Traffic, cfg.Legit)
	}
}

// The ceiling of the mixed pass is the inverse of the mix's mean cost a
// packet: with drop-all at 215 ns and the stack at 2028 ns a packet, 5%
// legitimate traffic allows 0.70 of drop-all, whatever the round's drift.
func TestCeiling(t *testing.T) {
	cfg := DefaultConfig()
	share, err := cfg.LegitShare()
	if err != nil || share != 0.05 {
		t.Fatalf("LegitShare = %v, %v; want 0.05", share, err)
	}
	rates := func(ns float64, drift ...float64) []float64 {
		var v []float64
		for _, d := range drift {
			v = append(v, d*1000/ns)
		}
		return v
	}
	drift := []float64{1, 0.8, 1.1}
	base := DropRate{Name: "XDP drop-all (baseline)", Kind: KindBaseline, Rates: rates(215, drift...)}
	stack := DropRate{Name: "no filter (the stack drops it)", Kind: KindNoFilter, Rates: rates(2028, drift...)}
	c := Ceiling(base, stack, share)
	want := 1 / (0.95*215 + 0.05*2028) * 1000
	if got := c.CeilingRate(); math.Abs(got-want) > 1e-9 {
		t.Errorf("CeilingRate = %v, want %v", got, want)
	}
	if got := c.RatioTo(base); math.Abs(got-0.70) > 0.005 {
		t.Errorf("ceiling vs drop-all = %v, want 0.70", got)
	}
	// A filter at 97% of the ceiling, and iptables at a third of it.
	l4 := DropRate{Name: "L4Drop, 1 DNS rule", Kind: KindL4Drop, Rules: 1, Rates: rates(1/(0.97*want/1000), drift...)}
	ipt := DropRate{Name: "iptables", Kind: KindIPTables, Rates: rates(3/(want/1000), drift...)}
	if got := l4.RatioTo(c); math.Abs(got-0.97) > 1e-9 {
		t.Errorf("L4Drop vs ceiling = %v, want 0.97", got)
	}
	// The port rule and the floor, by hand: the targets name the floor.
	port := DropRate{Name: "L4Drop, 1 port rule: " + PortRule, Kind: KindL4DropPort, Rates: rates(215/0.96, drift...)}
	floor := DropRate{Name: "floor", Kind: KindFloor, Rates: rates(215/0.97, drift...)}
	// The DNS rules' series ends at 1000 rules, which the targets hold
	// against both floors.
	floorDNS := DropRate{Name: "floor, DNS", Kind: KindFloorDNS, Rates: rates(215/0.93, drift...)}
	l4k := DropRate{Name: "L4Drop, 1000 DNS rules", Kind: KindL4Drop, Rules: 1000, Rates: rates(215/0.88, drift...)}
	// Rows with no CPU time measured show their rate from Received.
	for _, d := range []*DropRate{&base, &l4, &ipt, &stack, &port, &floor, &floorDNS, &l4k} {
		d.Received, d.Elapsed, d.Sent = uint64(d.Rates[0]*1e6), time.Second, uint64(d.Rates[0]*1e6)
	}
	cfg.MixedRounds = 3
	rep := &Report{Config: cfg, Drops: []DropRate{base, port, floor, floorDNS, l4, l4k, ipt, stack}, Mixed: []DropRate{base, l4, ipt, stack}}
	md := rep.Markdown("")
	for _, want := range []string{
		"## Drop rate with 5% legitimate queries",
		"| ceiling of any filter that lets the 5% legitimate queries through (computed) | 3.272 | 0.70 (0.70–0.70) | 3.0× (3.0–3.0) | 1.00 |",
		"| L4Drop, 1 DNS rule | 3.174 | 0.68 (0.68–0.68) | 2.9× (2.9–2.9) | 0.97 (0.97–0.97) |",
		"L4Drop reaches 0.97 (0.97–0.97) of it with 1 DNS rule.",
		"1/(0.95 × 215 ns + 0.05 × 2028 ns)",
		"with the attack alone, `dns,name=*.attack.example`:",
		"TestLive",
		"attack flood alone",
		"| L4Drop, 1 port rule, vs XDP drop-all | 0.96 (0.96–0.96) | ≥ 0.95 (the port rule by hand, this run: 0.97 (0.97–0.97)) |",
		"| L4Drop, 1000 DNS rules, vs XDP drop-all | 0.88 (0.88–0.88) | ≥ 0.95 (the port rule by hand, this run: 0.97 (0.97–0.97); the flood's wildcard rule by hand: 0.93 (0.93–0.93)) |",
		"≥ 4× (XDP drop-all itself, this run: ",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestMeasureDropAndReport(t *testing.T) {
	fixture.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.Duration = 300 * time.Millisecond
	cfg.Rounds = 1
	cfg.CPU = 0
	filters := []Filter{DropAll(), NoFilter(), Floor(PortRulePort), FloorDNS()}
	if Have("xdp-filter") {
		filters = append(filters, XDPFilter(53, "udp"))
	}
	bc, err := RawBytecode("udp dst port 53")
	if err != nil {
		t.Fatal(err)
	}
	filters = append(filters, IPTables(bc))
	drops, err := MeasureDrops(context.Background(), cfg, filters, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range drops {
		if d.Sent == 0 || d.Received == 0 || d.Received > d.Sent+100 {
			t.Errorf("%s: sent %d, received %d", d.Name, d.Sent, d.Received)
		}
		// The flood's CPU time is the sender's and ksoftirqd's on one CPU:
		// never more than the time that passed.
		if d.OnCPU <= 0 || d.OnCPU > d.Elapsed+50*time.Millisecond {
			t.Errorf("%s: %v on CPU in %v", d.Name, d.OnCPU, d.Elapsed)
		}
	}
	// The mixed pass's ceiling needs its baseline and no-filter rows.
	cfg.MixedRounds = 1
	mixed, err := MeasureDrops(context.Background(), cfg.Mixed(), []Filter{DropAll(), NoFilter()}, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	rep := &Report{Date: time.Now(), Machine: Machine(), Command: "test", Config: cfg, Drops: drops, Mixed: mixed, Load: LoadAverage()}
	md := rep.Markdown("benchmarks.png")
	for _, f := range filters {
		if !strings.Contains(md, "| "+f.Name+" |") {
			t.Errorf("markdown lacks row %q:\n%s", f.Name, md)
		}
	}
	if !strings.Contains(md, "## Drop rate with 5% legitimate queries") || !strings.Contains(md, "legitimate queries through (computed) |") {
		t.Errorf("markdown lacks the mixed pass or its ceiling:\n%s", md)
	}
	if Have("gnuplot") {
		png := filepath.Join(t.TempDir(), "plot.png")
		if err := rep.Plot(png); err != nil {
			t.Fatal(err)
		}
		buf, err := os.ReadFile(png)
		if err != nil || len(buf) < 8 || string(buf[1:4]) != "PNG" {
			t.Errorf("plot: not a PNG (%v)", err)
		}
	}
}

func TestRunTB(t *testing.T) {
	var cleaned bool
	err := runTB("x", t.Logf, func(tb testing.TB) error {
		tb.Cleanup(func() { cleaned = true })
		tb.Fatalf("stop %d", 1)
		return nil
	})
	if err == nil || err.Error() != "stop 1" || !cleaned {
		t.Errorf("runTB = %v, cleaned %v; want stop 1, true", err, cleaned)
	}
	err = runTB("x", t.Logf, func(tb testing.TB) error { return fmt.Errorf("plain") })
	if err == nil || err.Error() != "plain" {
		t.Errorf("runTB = %v, want plain", err)
	}
}

// HookedDrop must drop every packet with and without its hook, and its
// exit must really tail call the hook: a capture of everything in the
// XDP_DROP slot sees the packet, with the action, as it was run.
func TestHookedDrop(t *testing.T) {
	fixture.RequireRoot(t)
	runner, err := xdprun.New()
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close()
	tpl, err := lab.ParseTemplate("udp,port=5000")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		hooked  bool
		capture bool
	}{{"no hook", false, false}, {"empty hook", true, false}, {"capture all", true, true}} {
		t.Run(tt.name, func(t *testing.T) {
			var hook *ebpf.Map
			if tt.hooked {
				if hook, err = xdpcap.NewHook(); err != nil {
					t.Fatal(err)
				}
				defer hook.Close()
			}
			prog, err := HookedDrop(hook)
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			var c *xdpcap.Capture
			if tt.capture {
				if c, err = xdpcap.Start([]*ebpf.Map{hook}, xdpcap.Options{Actions: []xdpcap.Action{xdpcap.Drop}}); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			ret, err := runner.Run(prog, &ebpf.RunOptions{Data: tpl.Frame})
			if err != nil {
				t.Fatal(err)
			}
			if ret != uint32(xdpcap.Drop) {
				t.Errorf("returned %d, want XDP_DROP", ret)
			}
			if c == nil {
				return
			}
			if err := c.Detach(); err != nil {
				t.Fatal(err)
			}
			p, err := c.Read()
			if err != nil {
				t.Fatalf("nothing captured: %v", err)
			}
			if p.Action != xdpcap.Drop || !bytes.Equal(p.Data, tpl.Frame) {
				t.Errorf("captured %v % x, want XDPDrop % x", p.Action, p.Data, tpl.Frame)
			}
		})
	}
}

func TestMeasureHookCost(t *testing.T) {
	fixture.RequireRoot(t)
	h, err := MeasureHookCost(5, 20000)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", h)
	for name, v := range map[string]float64{"no hook": h.NoHook, "empty hook": h.EmptyHook, "no match": h.NoMatch} {
		if !(v > 0 && v < 10000) {
			t.Errorf("%s: %v ns/packet", name, v)
		}
	}
	// The differences are of per-round figures, so they must agree with
	// the figures' own difference within the trimming's reach.
	if math.Abs(h.EmptyExtra-(h.EmptyHook-h.NoHook)) > h.NoHook {
		t.Errorf("empty hook extra %v, figures %v and %v", h.EmptyExtra, h.EmptyHook, h.NoHook)
	}
}

// buildCommands builds the project's commands the capture rows run.
func buildCommands(t *testing.T) Tools {
	t.Helper()
	bin := fixture.BuildCommands(t, "./cmd/xdpcap", "./cmd/l4drop")
	return Tools{XDPcap: filepath.Join(bin, "xdpcap"), L4Drop: filepath.Join(bin, "l4drop")}
}

// The capture rows capture every packet the flood brings to a file (the
// rows check the file's size against the count) and count what they lost.
func TestCaptureRows(t *testing.T) {
	fixture.RequireRoot(t)
	tools := buildCommands(t)
	cfg := DefaultConfig()
	cfg.CaptureDuration = 500 * time.Millisecond
	cfg.CaptureRounds = 1
	dir := t.TempDir()
	cs := []Capture{tools.XDPcapMinimal(dir)}
	if Have("tcpdump") {
		cs = append(cs, Tcpdump(dir))
	}
	rates, err := MeasureCaptures(context.Background(), cfg, cs, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rates {
		if r.Err != nil {
			t.Errorf("%s: %v", r.Name, r.Err)
			continue
		}
		if r.Captured == 0 || r.Captured+r.Lost > r.Seen || r.Seen > r.Sent+100 {
			t.Errorf("%s: sent %d, seen %d, captured %d, lost %d", r.Name, r.Sent, r.Seen, r.Captured, r.Lost)
		}
	}
	if strings.HasPrefix(rates[0].Name, "xdpcap") && rates[0].Captured+rates[0].Lost != rates[0].Seen {
		t.Errorf("xdpcap: seen %d, but captured %d and lost %d", rates[0].Seen, rates[0].Captured, rates[0].Lost)
	}
	rep := &Report{Config: cfg, Captures: rates}
	md := rep.Markdown("")
	for _, c := range cs {
		if !strings.Contains(md, "| "+c.Name+" |") {
			t.Errorf("markdown lacks row %q:\n%s", c.Name, md)
		}
	}
	if len(cs) > 1 && !strings.Contains(md, "vs tcpdump | ") {
		t.Errorf("markdown lacks the capture target:\n%s", md)
	}
}

// The port rule set must drop what xdp-filter's port rule drops: UDP to
// port 53, the flood and the legitimate queries alike, and nothing else.
func TestPortRuleSet(t *testing.T) {
	rs, err := build.ParseRuleSet("port.yaml", []byte(PortRuleSet()))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs.Rules) != 1 {
		t.Fatalf("%d rules, want 1", len(rs.Rules))
	}
	prog, err := cbpf.Compile(rs.Rules[0].Expr, cbpf.LinkTypeRaw, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		spec  string
		match bool
	}{
		{"dns,name=*.attack.example", true},
		{"dns,name=www.example.org", true},
		{"udp,port=54", false},
		{"syn,port=53", false},
	} {
		tpl, err := lab.ParseTemplate(tt.spec)
		if err != nil {
			t.Fatal(err)
		}
		ip := tpl.Frame[14:]
		if got := cbpf.Interpret(prog, ip, len(ip)) != 0; got != tt.match {
			t.Errorf("%s: match %v, want %v", tt.spec, got, tt.match)
		}
	}
}

// The daemon rows: with --sflow every sample the program wrote reaches
// the collector; with --auto the engine takes every sample and finds the
// flood; the report shows the rows and their targets.
func TestMeasureDaemon(t *testing.T) {
	fixture.RequireRoot(t)
	tools := buildCommands(t)
	var rows []DaemonCost
	for _, comp := range []string{DaemonSFlow, DaemonAuto} {
		load := DaemonLoad{PPS: 200000, SampleRate: 64, Duration: 2 * time.Second}
		c, err := MeasureDaemon(context.Background(), tools, t.TempDir(), comp, load, t.Logf)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%+v, %.1f%% of one core", c, c.CoreShare()*100)
		if c.Packets < 200000 || c.Samples == 0 {
			t.Fatalf("%s: %d packets, %d samples: the program did not run or sample", comp, c.Packets, c.Samples)
		}
		// One in 64 on average: far outside 1/128..1/32 is a broken sampler.
		if per := c.Packets / c.Samples; per < 32 || per > 128 {
			t.Errorf("%s: one sample per %d packets, want about 64", comp, per)
		}
		switch comp {
		case DaemonSFlow:
			if c.Exported+c.Lost() < c.Samples || c.Exported > c.Samples {
				t.Errorf("sflow: samples %d, lost %d, but the collector received %d", c.Samples, c.Lost(), c.Exported)
			}
		case DaemonAuto:
			// 200 kpps of one template, 10x its baseline, above 20 kpps.
			if c.SinkDropped != 0 || c.AutoRules == 0 {
				t.Errorf("auto: the engine dropped %d of %d samples and deployed %d rules at 200 kpps", c.SinkDropped, c.Samples, c.AutoRules)
			}
		}
		rows = append(rows, c)
	}
	md := (&Report{Daemon: rows}).Markdown("")
	for _, want := range []string{"## The daemon under a flood", "`--sflow COLLECTOR`", "`--auto --auto-threshold 20000`"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}
