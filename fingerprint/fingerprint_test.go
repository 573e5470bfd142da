package fingerprint

import (
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/lab"
)

// scenarioPackets returns n IP packets of templates ts with seed.
func scenarioPackets(tb testing.TB, ts []lab.Template, seed uint64, n int) []Packet {
	tb.Helper()
	var out []Packet
	for _, f := range lab.Frames(ts, seed, n) {
		p, ok := FromFrame(f)
		if !ok {
			tb.Fatalf("frame without an IP packet: % x", f)
		}
		out = append(out, p)
	}
	return out
}

func scenarioTemplates(tb testing.TB, s lab.Scenario) (attack, legit []lab.Template) {
	tb.Helper()
	attack, legit, err := s.Templates()
	if err != nil {
		tb.Fatal(err)
	}
	return attack, legit
}

// TestFingerprintScenarios fingerprints every scenario from samples (an
// attack capture with some legitimate traffic in it, and a baseline) and
// judges the rules on traffic of other seeds: at least 99% of the attack,
// none of the legitimate traffic, and the same verdicts from libpcap.
func TestFingerprintScenarios(t *testing.T) {
	for _, s := range lab.Scenarios() {
		t.Run(s.Name, func(t *testing.T) {
			attackT, legitT := scenarioTemplates(t, s)
			for _, seed := range []uint64{1, 2, 3} {
				attack := scenarioPackets(t, attackT, seed, 1500)
				// A capture of an attack holds some legitimate traffic.
				attack = append(attack, scenarioPackets(t, legitT, seed+100, 30)...)
				baseline := scenarioPackets(t, legitT, seed+200, 2000)
				rules, err := Fingerprint(attack, baseline, Options{})
				if err != nil {
					t.Fatalf("seed %d: %v", seed, err)
				}
				if len(rules) != 1 {
					for _, r := range rules {
						t.Logf("rule %s", r.Expr())
					}
					t.Fatalf("seed %d: %d rules, want 1", seed, len(rules))
				}
				r := rules[0]
				t.Logf("seed %d: %s (%d samples, coverage %.4f, fields %v)", seed, r.Expr(), r.Samples, r.Coverage, r.Fields)
				if err := r.Validate(); err != nil {
					t.Fatal(err)
				}
				for i, c := range r.Conds {
					if c.Base == l4drop.BaseL4 && c.Off == 2 && len(r.Conds) == 1 {
						t.Errorf("condition %d: the destination port alone", i)
					}
				}
				// Held out: traffic of seeds the rule never saw.
				heldAttack := scenarioPackets(t, attackT, seed+1000, 5000)
				heldLegit := scenarioPackets(t, legitT, seed+2000, 20000)
				lt := cbpf.LinkTypeIPv4
				if r.Family == 6 {
					lt = cbpf.LinkTypeIPv6
				}
				prog, err := cbpf.Compile(r.Expr(), lt, 0)
				if err != nil {
					t.Fatalf("compile %q: %v", r.Expr(), err)
				}
				filter, err := cbpf.NewFilter(prog)
				if err != nil {
					t.Fatal(err)
				}
				judge := func(ps []Packet) (matched int) {
					for _, p := range ps {
						m := Match(&r.AutoRule, p)
						if pm := filter.Run(p.Data, len(p.Data)) != 0; pm != m {
							t.Fatalf("evaluator says %v, libpcap %v, for %q on % x", m, pm, r.Expr(), p.Data)
						}
						if m {
							matched++
						}
					}
					return matched
				}
				if n := judge(heldAttack); n*100 < len(heldAttack)*99 {
					t.Errorf("seed %d: matches %d of %d attack packets, want >= 99%%", seed, n, len(heldAttack))
				}
				if n := judge(heldLegit); n != 0 {
					t.Errorf("seed %d: matches %d of %d legitimate packets, want 0", seed, n, len(heldLegit))
				}
				if n := judge(baseline); n != 0 {
					t.Errorf("seed %d: matches %d baseline packets", seed, n)
				}
			}
		})
	}
}

// TestFingerprintImpostor: a legitimate packet among the attack's samples
// that shares most of the attack's fixed bytes must not widen the rule to
// it: the rule keeps every fixed byte of the payload header.
func TestFingerprintImpostor(t *testing.T) {
	sc, err := lab.LookupScenario("udp-payload-v6")
	if err != nil {
		t.Fatal(err)
	}
	attackT, legitT := scenarioTemplates(t, sc)
	attack := scenarioPackets(t, attackT, 1, 500)
	// A legitimate datagram of the attack's length and hop limit whose
	// random payload starts de ad be, not de ad be ef.
	same, err := lab.ParseTemplate("udp,port=27015,size=32,randpayload,ttl=64,ipid=rand,randsrc,v6")
	if err != nil {
		t.Fatal(err)
	}
	imp := append([]byte(nil), scenarioPackets(t, []lab.Template{same}, 7, 1)[0].Data...)
	copy(imp[48:], []byte{0xde, 0xad, 0xbe, 0x00})
	attack = append(attack, Packet{Data: imp})
	rules, err := Fingerprint(attack, scenarioPackets(t, legitT, 2, 2000), Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		t.Logf("%s", r.Expr())
		if Match(&r.AutoRule, Packet{Data: imp}) {
			t.Errorf("%s matches the legitimate datagram", r.Expr())
		}
	}
}

// TestFingerprintFewLegit: a few legitimate datagrams of the attack's
// length and TTL among its samples (the ones that score like the attack)
// must not turn the tool's fixed payload header into ranges around it.
// Before the fix, 8 such datagrams in 1,508 samples made a rule of four
// byte ranges that matched about one random datagram in 1,500.
func TestFingerprintFewLegit(t *testing.T) {
	for _, name := range []string{"udp-payload", "udp-payload-v6"} {
		sc, err := lab.LookupScenario(name)
		if err != nil {
			t.Fatal(err)
		}
		attackT, legitT := scenarioTemplates(t, sc)
		spec := "udp,port=27015,size=32,randpayload,ttl=64,ipid=rand,randsrc"
		if sc.Name != "udp-payload" {
			spec += ",v6"
		}
		same, err := lab.ParseTemplate(spec)
		if err != nil {
			t.Fatal(err)
		}
		held := scenarioPackets(t, []lab.Template{same}, 99, 50000)
		for _, mix := range []int{5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 45} {
			for seed := uint64(1); seed <= 3; seed++ {
				attack := scenarioPackets(t, attackT, seed, 1500)
				attack = append(attack, scenarioPackets(t, []lab.Template{same}, seed+100, mix)...)
				rules, err := Fingerprint(attack, scenarioPackets(t, legitT, seed+200, 4000), Options{})
				if err != nil {
					t.Fatalf("%s, %d legitimate samples, seed %d: %v", name, mix, seed, err)
				}
				for _, r := range rules {
					n := 0
					for _, p := range held {
						if Match(&r.AutoRule, p) {
							n++
						}
					}
					if n > 0 {
						t.Errorf("%s, %d legitimate samples, seed %d: %s matches %d of %d legitimate datagrams of the attack's length", name, mix, seed, r.Expr(), n, len(held))
					}
				}
			}
		}
	}
}

// TestFingerprintSharedHeader: a tool's header that legitimate replies
// share too, and legitimate datagrams of the attack's length and TTL
// among its samples (2%): no single value of the attack is rare in the
// baseline, yet its conjunction is; a rule covers it and no legitimate
// packet.
func TestFingerprintSharedHeader(t *testing.T) {
	parse := func(specs ...string) []lab.Template {
		var ts []lab.Template
		for _, s := range specs {
			tp, err := lab.ParseTemplate(s)
			if err != nil {
				t.Fatal(err)
			}
			ts = append(ts, tp)
		}
		return ts
	}
	attack := parse("udp,port=5683,sport=5683,payload=4001abcd77,size=200,randpayload,ttl=99,ipid=rand,randsrc")
	lookalike := parse("udp,port=5683,size=200,randpayload,ttl=99,ipid=rand,randsrc")
	legit := parse("udp,port=5683,size=32,randpayload,ttl=99,ipid=rand,randsrc,weight=40",
		"udp,port=5683,sport=5683,payload=4001abcd77,size=60,randpayload,ttl=70,ipid=rand,randsrc,weight=10",
		"udp,port=5683,size=200,randpayload,ttl=99,ipid=rand,randsrc,weight=30",
		"udp,port=5683,size=90,randpayload,ttl=64,ipid=rand,randsrc,weight=20")
	A := append(scenarioPackets(t, attack, 1, 1000), scenarioPackets(t, lookalike, 2, 20)...)
	rs, err := Fingerprint(A, scenarioPackets(t, legit, 3, 4096), Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := rs[0]
	t.Logf("%s", r.Expr())
	for _, p := range scenarioPackets(t, legit, 4, 20000) {
		if Match(&r.AutoRule, p) {
			t.Fatalf("rule %s matches legitimate % x", r.Expr(), p.Data)
		}
	}
	n := 0
	for _, p := range scenarioPackets(t, attack, 5, 5000) {
		if Match(&r.AutoRule, p) {
			n++
		}
	}
	if n*100 < 5000*99 {
		t.Errorf("rule %s matches %d of 5000 attack packets", r.Expr(), n)
	}
}

// TestFingerprintExactAtTheEdge is the edge CI met once (a rule
// `len = 60 and udp[10:1] = 190` that matched 22 users): legitimate
// lookalikes among the attack's samples (same length and TTL, random
// payload) put one byte of the tool's 4-byte header a little above the
// other three, which sit just below Coverage. In CI about 1% of the
// samples were lookalikes and one shared the byte by chance; here all of
// them share it, so the edge holds for any share up to 2%. The byte alone
// excludes the baseline, which has few datagrams of the attack's length,
// and matches one legitimate datagram of that length in 256: the other
// three bytes must join it, though they leave the lookalikes out. Fails
// without the exact extras' floor in fit.
func TestFingerprintExactAtTheEdge(t *testing.T) {
	parse := func(spec string) []lab.Template {
		tp, err := lab.ParseTemplate(spec)
		if err != nil {
			t.Fatal(err)
		}
		return []lab.Template{tp}
	}
	const header = "deadbeef"
	attack := parse("udp,port=27015,payload=" + header + ",size=32,randpayload,ttl=64,ipid=rand,randsrc")
	same := parse("udp,port=27015,size=32,randpayload,ttl=64,ipid=rand,randsrc")
	const payload = 20 + 8 // IPv4 and UDP headers
	// 1.1%, 1.5% and 1.9% lookalikes.
	for _, n := range []int{989, 985, 981} {
		A := scenarioPackets(t, attack, 1, n)
		for _, p := range scenarioPackets(t, same, 2, 1000-n) {
			p.Data[payload+2] = 0xbe // the header's third byte
			if p.Data[payload] == 0xde {
				p.Data[payload]++ // not the header itself
			}
			A = append(A, p)
		}
		// Users of other lengths, and a few of the attack's length, none
		// with the shared byte.
		B := scenarioPackets(t, parse("udp,port=27015,size=120,randpayload,ttl=64,ipid=rand,randsrc"), 3, 2000)
		for _, p := range scenarioPackets(t, same, 4, 40) {
			if p.Data[payload+2] == 0xbe {
				p.Data[payload+2]++
			}
			B = append(B, p)
		}
		rules, err := Fingerprint(A, B, Options{})
		if err != nil {
			t.Fatalf("%d attack samples: %v", n, err)
		}
		r := rules[0]
		held := 0
		for _, p := range scenarioPackets(t, same, 5, 50000) {
			if Match(&r.AutoRule, p) {
				held++
			}
		}
		if held > 0 {
			t.Errorf("%d attack samples: %s (coverage %.3f) matches %d of 50000 legitimate datagrams of the attack's length", n, r.Expr(), r.Coverage, held)
		}
		if r.Matched < n {
			t.Errorf("%d attack samples: %s matches %d of them", n, r.Expr(), r.Matched)
		}
	}
}

// TestFingerprintProtocolZero: an IPv6 flood whose next header is 0
// (hop-by-hop options) makes a rule of protocol 0, which the table reads
// as any protocol: the rule must say protocol 0 itself, or it matches the
// users' UDP datagrams of the same length and hop limit. Before the
// protocol field, the rule was checked only against baseline packets of
// protocol 0, and there were none.
func TestFingerprintProtocolZero(t *testing.T) {
	udp, err := lab.ParseTemplate("udp,port=53,size=64,ttl=64,randsrc,v6")
	if err != nil {
		t.Fatal(err)
	}
	var A []Packet
	for _, p := range scenarioPackets(t, []lab.Template{udp}, 1, 1000) {
		// A hop-by-hop header (next: UDP, PadN) before the datagram.
		d := append(append(append([]byte(nil), p.Data[:40]...), 17, 0, 1, 4, 0, 0, 0, 0), p.Data[40:]...)
		d[6] = 0
		binary.BigEndian.PutUint16(d[4:], binary.BigEndian.Uint16(d[4:])+8)
		A = append(A, Packet{Data: d, Family: 6})
	}
	var B []Packet
	for size := 64; size < 90 && len(B) == 0; size++ {
		legit, err := lab.ParseTemplate(fmt.Sprintf("udp,port=53,size=%d,ttl=64,randsrc,v6", size))
		if err != nil {
			t.Fatal(err)
		}
		if ps := scenarioPackets(t, []lab.Template{legit}, 2, 2000); len(ps[0].Data) == len(A[0].Data) {
			B = ps
		}
	}
	if len(B) == 0 {
		t.Fatal("no legitimate datagram of the attack's length")
	}
	rules, err := Fingerprint(A, B, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		t.Logf("%s", r.Expr())
		if r.Proto == 0 && !strings.Contains(r.Expr(), "ip6[6:1] = 0") {
			t.Errorf("%s: a rule of protocol 0 without a condition on it", r.Expr())
		}
		for _, p := range B {
			if Match(&r.AutoRule, p) {
				t.Fatalf("%s matches the legitimate datagram % x", r.Expr(), p.Data)
			}
		}
		if r.Coverage < 0.99 {
			t.Errorf("%s: coverage %.3f", r.Expr(), r.Coverage)
		}
	}
}
