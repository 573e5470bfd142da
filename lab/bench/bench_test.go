package bench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// The fallback rules (tcpdump expressions on the query name) must match
// the flood exactly as the DNS rules would: the last rule every attack
// query, no other rule any.
func TestRuleSetExpressionsMatchTheFlood(t *testing.T) {
	tools := Tools{}
	rs, err := l4drop.ParseRuleSet("bench.yaml", []byte(tools.RuleSet(20)))
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
}

func TestMeasureDropAndReport(t *testing.T) {
	fixture.RequireRoot(t)
	cfg := DefaultConfig()
	cfg.Duration = 300 * time.Millisecond
	cfg.Rounds = 1
	cfg.CPU = 0
	filters := []Filter{DropAll(), NoFilter()}
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
	}
	rep := &Report{Date: time.Now(), Machine: Machine(), Command: "test", Config: cfg, Drops: drops, Load: LoadAverage()}
	md := rep.Markdown("benchmarks.png")
	for _, f := range filters {
		if !strings.Contains(md, "| "+f.Name+" |") {
			t.Errorf("markdown lacks row %q:\n%s", f.Name, md)
		}
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
