package fingerprint

import (
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// table is the program's auto table as a Deployer, and judges samples as
// the program would: the first slot that matches decides.
type table struct {
	rules  [l4drop.AutoSlots]*l4drop.AutoRule
	events []event
	now    func() time.Time
	fail   bool
}

type event struct {
	t      time.Time
	slot   int
	rule   *l4drop.AutoRule // nil: removed
	remove bool
}

var errTableFull = errors.New("table refuses")

func (tb *table) Deploy(slot int, r l4drop.AutoRule) error {
	if tb.fail {
		return errTableFull
	}
	if err := r.Validate(); err != nil {
		return err
	}
	tb.rules[slot] = &r
	tb.events = append(tb.events, event{t: tb.now(), slot: slot, rule: &r})
	return nil
}

func (tb *table) Remove(slot int) error {
	tb.rules[slot] = nil
	tb.events = append(tb.events, event{t: tb.now(), slot: slot, remove: true})
	return nil
}

// judge returns the slot that matches p, or -1.
func (tb *table) judge(p Packet) int {
	for i, r := range tb.rules {
		if r != nil && r.State != l4drop.AutoOff && Match(r, p) {
			return i
		}
	}
	return -1
}

// source is traffic of templates at a rate from one time to another.
type source struct {
	name     string
	pkts     [][]byte
	next     int
	pps      float64
	from, to time.Duration
	legit    bool
	carry    float64
}

func newSource(tb testing.TB, name string, ts []lab.Template, seed uint64, pps float64, from, to time.Duration, legit bool) *source {
	tb.Helper()
	s := &source{name: name, pps: pps, from: from, to: to, legit: legit}
	for _, f := range lab.Frames(ts, seed, 6000) {
		s.pkts = append(s.pkts, lab.IPPacket(f))
	}
	return s
}

// sim runs an engine on simulated time, 100 ms ticks.
type sim struct {
	t       *testing.T
	start   time.Time
	now     time.Time
	e       *Engine
	tab     *table
	sources []*source
	// Samples of legitimate traffic any rule matched; attack samples sent
	// and matched, from mitigateFrom on.
	legitMatched, attackSent, attackMatched int
	mitigateFrom                            time.Duration
}

const simRate = 64

func newSim(t *testing.T, cfg Config) *sim {
	t.Helper()
	s := &sim{t: t, start: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	s.now = s.start
	s.tab = &table{now: func() time.Time { return s.now }}
	cfg.SampleRate = simRate
	cfg.Deployer = s.tab
	cfg.Now = func() time.Time { return s.now }
	cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	e, err := NewEngine(cfg)
	if err != nil {
		t.Fatal(err)
	}
	s.e = e
	return s
}

func (s *sim) run(until time.Duration) {
	const tick = 100 * time.Millisecond
	for s.now.Sub(s.start) < until {
		at := s.now.Sub(s.start)
		for _, src := range s.sources {
			if at < src.from || at >= src.to {
				continue
			}
			src.carry += src.pps * tick.Seconds() / simRate
			for ; src.carry >= 1; src.carry-- {
				p := src.pkts[src.next%len(src.pkts)]
				src.next++
				slot := s.tab.judge(Packet{Data: p})
				if slot >= 0 && src.legit {
					s.legitMatched++
					if s.legitMatched == 1 {
						s.t.Errorf("%v: legitimate %s packet matched by slot %d: %s", at, src.name, slot, s.tab.rules[slot].Expr())
					}
				}
				if !src.legit && at >= s.mitigateFrom {
					s.attackSent++
					if slot >= 0 {
						s.attackMatched++
					}
				}
				smp := Sample{Packet: p}
				if slot >= 0 {
					smp.Decision, smp.Slot = Auto, slot
				}
				if !s.e.Sample(smp) {
					s.t.Fatal("sample refused")
				}
			}
		}
		s.now = s.now.Add(tick)
		s.e.Tick()
	}
}

func scenario(t *testing.T, name string) (attack, legit []lab.Template) {
	t.Helper()
	sc, err := lab.LookupScenario(name)
	if err != nil {
		t.Fatal(err)
	}
	return scenarioTemplates(t, sc)
}

// TestEngineScenarios: 20 kpps of legitimate traffic throughout, an
// attack of 100 kpps from 10 s to 20 s. A rule within a second, no
// legitimate packet matched at any moment, 99% of the attack after, and
// the rule gone within the expiry (5 s here) and a second of the end.
func TestEngineScenarios(t *testing.T) {
	for _, sc := range lab.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			attackT, legitT := scenarioTemplates(t, sc)
			s := newSim(t, Config{Expire: 5 * time.Second})
			s.sources = []*source{
				newSource(t, "legit", legitT, 1, 20000, 0, time.Hour, true),
				newSource(t, "attack", attackT, 2, 100000, 10*time.Second, 20*time.Second, false),
			}
			s.mitigateFrom = 11 * time.Second
			s.run(30 * time.Second)
			if len(s.tab.events) == 0 {
				t.Fatal("no rule")
			}
			first := s.tab.events[0]
			ttm := first.t.Sub(s.start) - 10*time.Second
			t.Logf("deployed %v after the attack's start: %s", ttm, first.rule.Expr())
			if first.remove || ttm > time.Second || ttm < 0 {
				t.Errorf("first event %+v at %v, want a deploy within 1 s of 10 s", first, first.t.Sub(s.start))
			}
			if s.attackMatched*100 < s.attackSent*99 {
				t.Errorf("matched %d of %d attack samples after 1 s", s.attackMatched, s.attackSent)
			}
			last := s.tab.events[len(s.tab.events)-1]
			if !last.remove {
				t.Errorf("last event %+v, want the rule removed", last)
			} else if end := last.t.Sub(s.start); end < 25*time.Second-500*time.Millisecond || end > 26*time.Second {
				t.Errorf("removed at %v, want 20 s + 5 s expiry (+ up to a second)", end)
			}
			if m := s.e.Metrics(); m.Deployed == 0 || m.Removed != m.Deployed || m.Active != 0 {
				t.Errorf("metrics %+v", m)
			}
		})
	}
}

// TestEngineFlashCrowd: the same mix, six times as much, is no attack.
func TestEngineFlashCrowd(t *testing.T) {
	for _, sc := range lab.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			_, legitT := scenarioTemplates(t, sc)
			s := newSim(t, Config{})
			s.sources = []*source{
				newSource(t, "legit", legitT, 1, 20000, 0, time.Hour, true),
				newSource(t, "crowd", legitT, 5, 100000, 10*time.Second, 25*time.Second, true),
			}
			s.run(30 * time.Second)
			if len(s.tab.events) != 0 {
				t.Errorf("flash crowd got rules: %+v", s.tab.events[0].rule.Expr())
			}
			if m := s.e.Metrics(); m.Deployed != 0 {
				t.Errorf("metrics %+v", m)
			}
		})
	}
}

// TestEngineExpiry: with the default expiry, the rule stays 60 s past the
// attack's end, then goes; a restarted attack gets a rule again.
func TestEngineExpiry(t *testing.T) {
	attackT, legitT := scenario(t, "syn-flood")
	s := newSim(t, Config{})
	s.sources = []*source{
		newSource(t, "legit", legitT, 1, 20000, 0, time.Hour, true),
		newSource(t, "attack", attackT, 2, 50000, 10*time.Second, 20*time.Second, false),
		newSource(t, "attack again", attackT, 3, 50000, 100*time.Second, 110*time.Second, false),
	}
	s.run(79 * time.Second)
	if len(s.e.Rules()) != 1 {
		t.Fatalf("%d rules at 79 s, want 1 until 80 s", len(s.e.Rules()))
	}
	s.run(81 * time.Second)
	if len(s.e.Rules()) != 0 {
		t.Fatalf("%d rules at 81 s, want 0 after 20 s + 60 s", len(s.e.Rules()))
	}
	s.run(102 * time.Second)
	if len(s.e.Rules()) != 1 {
		t.Fatalf("%d rules at 102 s, want 1 for the new attack", len(s.e.Rules()))
	}
}

// TestEngineSecondVector: a UDP flood joins a SYN flood: a second rule.
func TestEngineSecondVector(t *testing.T) {
	synA, synL := scenario(t, "syn-flood")
	udpA, udpL := scenario(t, "udp-payload-v6")
	s := newSim(t, Config{})
	s.sources = []*source{
		newSource(t, "legit tcp", synL, 1, 10000, 0, time.Hour, true),
		newSource(t, "legit udp", udpL, 2, 10000, 0, time.Hour, true),
		newSource(t, "syn flood", synA, 3, 100000, 10*time.Second, time.Hour, false),
		newSource(t, "udp flood", udpA, 4, 30000, 20*time.Second, time.Hour, false),
	}
	s.run(25 * time.Second)
	rs := s.e.Rules()
	if len(rs) != 2 {
		t.Fatalf("%d rules, want 2", len(rs))
	}
	second := s.tab.events[1]
	if d := second.t.Sub(s.start) - 20*time.Second; d < 0 || d > time.Second || second.slot == s.tab.events[0].slot {
		t.Errorf("second rule in slot %d after %v", second.slot, d)
	}
	if rs[1].Rule.Family != 6 || rs[1].Rule.Proto != 17 {
		t.Errorf("second rule %s, want IPv6 UDP", rs[1].Rule.Expr())
	}
}

// TestEngineMonitor: monitor mode deploys monitor rules.
func TestEngineMonitor(t *testing.T) {
	attackT, legitT := scenario(t, "dns-reflection")
	s := newSim(t, Config{Monitor: true})
	s.sources = []*source{
		newSource(t, "legit", legitT, 1, 20000, 0, time.Hour, true),
		newSource(t, "attack", attackT, 2, 100000, 10*time.Second, time.Hour, false),
	}
	s.run(12 * time.Second)
	if len(s.tab.events) != 1 || s.tab.events[0].rule.State != l4drop.AutoMonitor {
		t.Fatalf("events %+v, want one monitor rule", s.tab.events)
	}
}

// TestEngineRefine: a rule (adopted, as after a restart) that matches the
// baseline's traffic is narrowed to the attack.
func TestEngineRefine(t *testing.T) {
	attackT, legitT := scenario(t, "syn-flood")
	s := newSim(t, Config{})
	s.sources = []*source{
		newSource(t, "legit", legitT, 1, 20000, 0, time.Hour, true),
		newSource(t, "attack", attackT, 2, 100000, 10*time.Second, time.Hour, false),
	}
	// A restarted daemon finds a rule in the table as the attack goes on.
	s.run(10 * time.Second)
	broad := l4drop.AutoRule{State: l4drop.AutoDrop, Family: 4, Proto: 6, Conds: []l4drop.AutoCond{
		{Base: l4drop.BaseL4, Off: 2, Size: 2, Mask: 0xffff, Min: 443, Max: 443},
		{Base: l4drop.BaseL4, Off: 13, Size: 1, Mask: 0xff, Min: 2, Max: 2},
	}}
	if err := s.e.Adopt(0, broad, s.now); err != nil {
		t.Fatal(err)
	}
	s.tab.rules[0] = &broad
	s.legitMatched = -1 << 30 // the broad rule matches legitimate traffic until refined
	s.run(14 * time.Second)
	if len(s.tab.events) == 0 {
		t.Fatal("the broad rule was not refined")
	}
	ev := s.tab.events[len(s.tab.events)-1]
	if ev.remove || ev.slot != 0 {
		t.Fatalf("event %+v, want slot 0 redeployed", ev)
	}
	t.Logf("refined to %s", ev.rule.Expr())
	_, legitP := attackT, scenarioPackets(t, legitT, 99, 5000)
	for _, p := range legitP {
		if Match(ev.rule, p) {
			t.Fatalf("refined rule %s matches legitimate % x", ev.rule.Expr(), p.Data)
		}
	}
	if m := s.e.Metrics(); m.Refined != 1 {
		t.Errorf("metrics %+v", m)
	}
}

// TestEngineSampleNeverBlocks: past MaxPending, samples are refused and
// counted lost.
func TestEngineSampleNeverBlocks(t *testing.T) {
	e, err := NewEngine(Config{SampleRate: 64, Deployer: &table{now: time.Now}, MaxPending: 10})
	if err != nil {
		t.Fatal(err)
	}
	pkt := scenarioPackets(t, mustScenarioLegit(t, "syn-flood"), 1, 1)[0]
	for i := range 15 {
		if got := e.Sample(Sample{Packet: pkt.Data}); got != (i < 10) {
			t.Fatalf("sample %d: %v", i, got)
		}
	}
	if m := e.Metrics(); m.Samples != 10 || m.SamplesLost != 5 {
		t.Errorf("metrics %+v", m)
	}
	if _, err := NewEngine(Config{Deployer: &table{}}); !errors.Is(err, ErrConfig) {
		t.Errorf("no sample rate: %v", err)
	}
}

func mustScenarioLegit(t *testing.T, name string) []lab.Template {
	_, l := scenario(t, name)
	return l
}

// BenchmarkEngine is the engine's cost per sample, Tick included, at
// 15,625 samples a second (1 Mpps sampled 1 in 64), in simulated time.
func BenchmarkEngine(b *testing.B) {
	for _, mode := range []string{"attack-dropped", "attack-undetected", "legit"} {
		b.Run(mode, func(b *testing.B) {
			attackT, legitT := scenarioTemplatesB(b, "dns-random-subdomain")
			var pkts [][]byte
			ts := legitT
			if mode != "legit" {
				ts = attackT
			}
			for _, f := range lab.Frames(ts, 1, 8192) {
				pkts = append(pkts, lab.IPPacket(f))
			}
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			tab := &table{now: func() time.Time { return now }, fail: mode == "attack-undetected"}
			e, err := NewEngine(Config{SampleRate: 64, Deployer: tab, Now: func() time.Time { return now },
				Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			// Learn on legitimate traffic first.
			var legit [][]byte
			for _, f := range lab.Frames(legitT, 2, 4096) {
				legit = append(legit, lab.IPPacket(f))
			}
			for i := range 5 * 15625 {
				e.Sample(Sample{Packet: legit[i%len(legit)]})
				if i%1562 == 0 {
					now = now.Add(100 * time.Millisecond)
					e.Tick()
				}
			}
			b.ResetTimer()
			for i := range b.N {
				p := pkts[i%len(pkts)]
				s := Sample{Packet: p}
				if slot := tab.judge(Packet{Data: p}); slot >= 0 {
					s.Decision, s.Slot = Auto, slot
				}
				e.Sample(s)
				if i%1562 == 1561 {
					now = now.Add(100 * time.Millisecond)
					e.Tick()
				}
			}
			b.StopTimer()
			perSec := 15625 * float64(b.Elapsed().Nanoseconds()) / float64(b.N) / 1e9
			b.ReportMetric(perSec*100, "%core@1Mpps")
			if mode == "attack-dropped" && e.Metrics().Deployed == 0 && b.N > 20000 {
				b.Errorf("no rule: %+v", e.Metrics())
			}
		})
	}
}

func scenarioTemplatesB(b *testing.B, name string) (attack, legit []lab.Template) {
	sc, err := lab.LookupScenario(name)
	if err != nil {
		b.Fatal(err)
	}
	return scenarioTemplates(b, sc)
}

// TestEngineStandingFlood: a flood of 150 kpps already running when the
// engine starts (the default ceiling is 100 kpps) is in its baseline from
// the first sample; it still gets a rule once the first samples leave the
// quarantine (2 s), and no legitimate packet is matched. The random-subdomain flood
// has no vector that more than one field tells from the users' queries
// (its names vary in length, their TTLs are the attack's): no rule, no
// collateral.
func TestEngineStandingFlood(t *testing.T) {
	for _, sc := range lab.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			attackT, legitT := scenarioTemplates(t, sc)
			s := newSim(t, Config{Expire: 2 * time.Second})
			s.sources = []*source{
				newSource(t, "legit", legitT, 1, 20000, 0, time.Hour, true),
				newSource(t, "attack", attackT, 2, 150000, 0, 6*time.Second, false),
			}
			s.mitigateFrom = 3 * time.Second
			s.run(9 * time.Second)
			if strings.HasPrefix(sc.Name, "dns-random-subdomain") {
				if len(s.tab.events) != 0 {
					t.Errorf("random subdomains from the start got %s", s.tab.events[0].rule.Expr())
				}
				return
			}
			if len(s.tab.events) == 0 {
				t.Fatal("no rule")
			}
			first := s.tab.events[0]
			t.Logf("deployed %v after the start: %s", first.t.Sub(s.start), first.rule.Expr())
			if first.remove || first.t.Sub(s.start) > 2500*time.Millisecond {
				t.Errorf("first event %+v at %v, want a deploy within 2.5 s", first, first.t.Sub(s.start))
			}
			if s.attackMatched*100 < s.attackSent*99 {
				t.Errorf("matched %d of %d attack samples from 3 s on", s.attackMatched, s.attackSent)
			}
			if last := s.tab.events[len(s.tab.events)-1]; !last.remove {
				t.Errorf("last event %+v, want the rule expired after the flood", last)
			}
		})
	}
}

// TestEngineStandingLegit: legitimate traffic above the ceiling from the
// start, then six times as much, gets no rule: its vectors are one
// template each, each told from the others by one field at most.
func TestEngineStandingLegit(t *testing.T) {
	for _, sc := range lab.Scenarios() {
		t.Run(sc.Name, func(t *testing.T) {
			_, legitT := scenarioTemplates(t, sc)
			s := newSim(t, Config{Threshold: 5000})
			s.sources = []*source{
				newSource(t, "legit", legitT, 1, 60000, 0, time.Hour, true),
				newSource(t, "crowd", legitT, 5, 300000, 5*time.Second, 9*time.Second, true),
			}
			s.run(10 * time.Second)
			if len(s.tab.events) != 0 {
				t.Errorf("legitimate traffic got %s", s.tab.events[0].rule.Expr())
			}
		})
	}
}
