package fingerprint

import (
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// FuzzFingerprint fingerprints an attack made of one packet's variants
// against a baseline made of another's, from arbitrary bytes: samples are
// what attackers send, so none may make Fingerprint panic or return a rule
// that matches a baseline packet. Every rule must be one the program can
// hold, and its pcap-filter rendering must match, by libpcap, exactly the
// packets Match matches.
func FuzzFingerprint(f *testing.F) {
	addScenarios(f, lab.Scenarios()...)
	// Malformed: a short IPv4 header, a version field at odds with the
	// link layer's family.
	f.Add([]byte{0x45, 0, 0, 12, 0, 0, 0, 0, 64, 17, 0, 0}, []byte{0x60, 0, 0, 0, 0, 8, 17, 64}, uint64(2), uint8(4), uint8(6))
	f.Add([]byte{0x65, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 53, 0, 8, 0, 0}, []byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}, uint64(3), uint8(4), uint8(0))
	f.Fuzz(func(t *testing.T, a, b []byte, seed uint64, famA, famB uint8) {
		attack, baseline, ok := fuzzPackets(a, b, seed, famA, famB, 60)
		if !ok {
			return
		}
		rules, err := Fingerprint(attack, baseline, Options{MinSamples: 10})
		if err != nil {
			return
		}
		for _, rule := range rules {
			if err := rule.Validate(); err != nil {
				t.Fatalf("rule %q: %v", rule.Expr(), err)
			}
			ref := libpcapFilter(t, &rule.AutoRule)
			for _, p := range append(attack, baseline...) {
				m := Match(&rule.AutoRule, p)
				if pm := familyOf(p) == rule.Family && ref.Run(p.Data, max(p.Len, len(p.Data))) != 0; pm != m {
					t.Fatalf("rule %q on % x (family %d): Match says %v, libpcap %v", rule.Expr(), p.Data, p.Family, m, pm)
				}
			}
			for _, p := range baseline {
				if Match(&rule.AutoRule, p) {
					t.Fatalf("rule %q matches baseline packet % x (family %d)", rule.Expr(), p.Data, p.Family)
				}
			}
		}
	})
}

// addScenarios seeds a fuzz target of two packets, a seed and two
// families with a packet of each scenario's attack and one of its
// legitimate traffic.
func addScenarios(f *testing.F, scs ...lab.Scenario) {
	f.Helper()
	for _, s := range scs {
		attack, legit, err := s.Templates()
		if err != nil {
			f.Fatal(err)
		}
		a, okA := FromFrame(lab.Frames(attack, 1, 1)[0])
		b, okB := FromFrame(lab.Frames(legit, 2, 1)[0])
		if !okA || !okB {
			f.Fatalf("%s: a frame without an IP packet", s.Name)
		}
		f.Add(a.Data, b.Data, uint64(1), a.Family, b.Family)
	}
}

// fuzzPackets makes n variants each of the fuzzer's packets a and b of
// families famA and famB, from seed; false for packets over 512 bytes.
func fuzzPackets(a, b []byte, seed uint64, famA, famB uint8, n int) (as, bs []Packet, ok bool) {
	if len(a) > 512 || len(b) > 512 {
		return nil, nil, false
	}
	r := rand.New(rand.NewPCG(seed, seed>>32|1))
	return variants(r, a, famA, n), variants(r, b, famB, n), true
}

// variants returns n copies of pkt, most with a few bytes changed at
// random, some cut short, of family fam (taken modulo 7: 0, 4 and 6 are
// meant, the others are no family at all).
func variants(r *rand.Rand, pkt []byte, fam uint8, n int) []Packet {
	out := make([]Packet, n)
	for i := range out {
		p := append([]byte(nil), pkt...)
		for range r.IntN(4) {
			if len(p) > 0 {
				p[r.IntN(len(p))] = byte(r.Uint32())
			}
		}
		if len(p) > 0 && r.IntN(8) == 0 {
			p = p[:r.IntN(len(p))]
		}
		out[i] = Packet{Data: p, Family: fam % 7}
	}
	return out
}

// familyOf is the family the program would give p.
func familyOf(p Packet) uint8 {
	if p.Family != 0 || len(p.Data) == 0 {
		return p.Family
	}
	return p.Data[0] >> 4
}

// libpcapFilter compiles r's rendering for r's family with libpcap; a
// rendering libpcap finds can match nothing is a filter that matches
// nothing.
func libpcapFilter(tb testing.TB, r *l4drop.AutoRule) *cbpf.Filter {
	tb.Helper()
	lt := cbpf.LinkTypeIPv4
	if r.Family == 6 {
		lt = cbpf.LinkTypeIPv6
	}
	prog, err := cbpf.Compile(r.Expr(), lt, 0)
	if err != nil && strings.Contains(err.Error(), "rejects all packets") {
		prog, err = []bpf.Instruction{bpf.RetConstant{Val: 0}}, nil
	}
	if err != nil {
		tb.Fatalf("rule %q: %v", r.Expr(), err)
	}
	ref, err := cbpf.NewFilter(prog)
	if err != nil {
		tb.Fatal(err)
	}
	return ref
}

// FuzzEngine runs the engine on simulated time over a baseline of one
// packet's variants and then a flood of another's, from arbitrary bytes:
// whatever the samples hold, the engine must not panic (a daemon under
// attack would lose its defence with it), and what it deploys must be a
// rule the program can hold.
func FuzzEngine(f *testing.F) {
	for _, name := range []string{"dns-random-subdomain", "ntp-reflection-v6", "syn-flood"} {
		s, err := lab.LookupScenario(name)
		if err != nil {
			f.Fatal(err)
		}
		addScenarios(f, s)
	}
	f.Add([]byte{0x60, 0, 0, 0, 0, 8, 0, 64}, []byte{0x45, 0, 0, 12, 0, 0, 0, 0, 64, 0}, uint64(2), uint8(6), uint8(0))
	f.Fuzz(func(t *testing.T, a, b []byte, seed uint64, famA, famB uint8) {
		attack, legit, ok := fuzzPackets(a, b, seed, famA, famB, 256)
		if !ok {
			return
		}
		start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		now := start
		tab := &table{now: func() time.Time { return now }}
		e, err := NewEngine(Config{
			SampleRate: 64, Threshold: 1000, Deployer: tab,
			Learn: time.Second, Quarantine: time.Second, Expire: time.Second,
			Now:    func() time.Time { return now },
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		// 100 ms ticks: 5 legitimate samples a tick throughout (32 kpps),
		// 100 of the flood's (640 kpps) from 3 s to 6 s, then 2 s of
		// quiet for the rules to expire.
		for tick := range 80 {
			for i := range 5 {
				p := legit[(tick*5+i)%len(legit)]
				e.Sample(Sample{Packet: p.Data, Len: p.Len, Family: p.Family})
			}
			if tick >= 30 && tick < 60 {
				for i := range 100 {
					p := attack[(tick*100+i)%len(attack)]
					smp := Sample{Packet: p.Data, Len: p.Len, Family: p.Family}
					if slot := tab.judge(p); slot >= 0 {
						smp.Decision, smp.Slot = Auto, slot
					}
					e.Sample(smp)
				}
			}
			now = now.Add(100 * time.Millisecond)
			e.Tick()
		}
		if m := e.Metrics(); m.Active > l4drop.AutoSlots || m.Deployed < m.Removed {
			t.Fatalf("metrics %+v", m)
		}
	})
}
