package build

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

// The property: a rule set of any shapes, families, locations and actions
// builds, loads, and gives every packet the verdict of its first matching
// rule as libpcap's interpreter judges each rule's cBPF over the packet
// from the IP header on; packets no rule matches pass (later fragments
// drop under fragments: drop). Malformed headers included.

// propSet is one random rule set.
type propSet struct {
	name  string
	rules []string // YAML of each rule, without locations
	pkts  [][]byte // packets aimed at its rules
}

// propShapes make a rule (YAML lines after "name") and packets it is about.
var propShapes = []func(r *rand.Rand) (string, [][]byte){
	func(r *rand.Rand) (string, [][]byte) {
		p := propPort(r)
		return fmt.Sprintf("expr: \"udp dst port %d\"", p), [][]byte{fixture.UDP4(propAddr4(r), fixture.ServerIPv4, 1, p, nil), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, p, nil)}
	},
	func(r *rand.Rand) (string, [][]byte) {
		p, a := propPort(r), propAddr4(r)
		return fmt.Sprintf("expr: \"tcp dst port %d and src host %s\"", p, a), [][]byte{fixture.TCP4SYN(a, fixture.ServerIPv4, 7, p), fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 7, p)}
	},
	func(r *rand.Rand) (string, [][]byte) {
		p, ttl := propPort(r), 60+r.IntN(8)
		pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, p, nil)
		pkt[14+8] = byte(ttl)
		return fmt.Sprintf("expr: \"ip[8] = %d and udp dst port %d\"", ttl, p), [][]byte{pkt}
	},
	func(r *rand.Rand) (string, [][]byte) {
		a, proto := propAddr4(r), []int{6, 17, 1}[r.IntN(3)]
		pfx := netip.MustParseAddr(a).As4()
		return fmt.Sprintf("expr: \"dst net %d.%d.%d.0/24 and ip proto %d\"", pfx[0], pfx[1], pfx[2], proto), [][]byte{fixture.UDP4(fixture.ClientIPv4, a, 1, 53, nil), fixture.TCP4SYN(fixture.ClientIPv4, a, 1, 80)}
	},
	func(r *rand.Rand) (string, [][]byte) {
		n := r.IntN(40)
		pkt := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 9, make([]byte, n))
		return fmt.Sprintf("expr: \"ip[2:2] = %d and ip proto 17\"", 28+n), [][]byte{pkt}
	},
	func(r *rand.Rand) (string, [][]byte) {
		p := propPort(r)
		return fmt.Sprintf("family: ipv6\n    expr: \"ip6 and tcp dst port %d\"", p), [][]byte{fixture.TCP6SYN(fixture.ClientIPv6, fixture.ServerIPv6, 1, p)}
	},
	func(r *rand.Rand) (string, [][]byte) { // raw bytecode
		p := propPort(r)
		prog, _ := cbpf.Compile(fmt.Sprintf("udp src port %d", p), cbpf.LinkTypeRaw, 0)
		text, _ := cbpf.Format(prog) // checked by the build
		return fmt.Sprintf("family: ipv4\n    bpf: \"%s\"", text), [][]byte{fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, p, 1, nil)}
	},
	func(r *rand.Rand) (string, [][]byte) { // about malformed headers
		e := []string{"ip[0] & 0xf != 5", "ip[0] = 0x46", "ip[0] >> 4 = 6", "len > 60", "len < 20", "ip[2:2] > 1400", "ip6[6] = 17", "ip[9] = 17 and ip[0] & 0xf0 != 0x40"}[r.IntN(8)]
		return fmt.Sprintf("expr: \"%s\"", e), nil
	},
	func(r *rand.Rand) (string, [][]byte) { // exact and wildcard names
		name := fmt.Sprintf("h%d.attack.example", r.IntN(50))
		pat := name
		switch r.IntN(4) {
		case 1:
			pat = "*.attack.example"
		case 2:
			pat = fmt.Sprintf("h%d.att?ck.example", r.IntN(50))
		}
		q := fixture.DNSQuery(name, 1)
		ci := ""
		if r.IntN(4) == 0 {
			ci, q = "\n    dns_case_insensitive: true", fixture.DNSQuery(strings.ToUpper(name), 1)
		}
		return fmt.Sprintf("dns: [\"%s\"]%s", pat, ci), [][]byte{fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 53, q), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, 53, q)}
	},
	func(r *rand.Rand) (string, [][]byte) { // port ranges, one direction or either
		lo := propPort(r)
		hi := lo + uint16(r.IntN(8))
		dir := []string{"dst ", "src ", ""}[r.IntN(3)]
		in, out := lo+uint16(r.IntN(int(hi-lo)+1)), hi+1
		return fmt.Sprintf("expr: \"udp %sportrange %d-%d\"", dir, lo, hi), [][]byte{
			fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, in, in, nil), fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, out, lo-1, nil),
			fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 9, in, nil)}
	},
	func(r *rand.Rand) (string, [][]byte) { // prefixes of many lengths, nested: folded (fold.go)
		a := netip.MustParseAddr(propAddr4(r)).As4()
		l := 10 + r.IntN(22)
		out := a
		out[(l-1)/8] ^= 0x80 >> ((l - 1) % 8) // the prefix's last bit flipped
		return fmt.Sprintf("expr: \"src net %s\"", netip.PrefixFrom(netip.AddrFrom4(a), l).Masked()),
			[][]byte{fixture.UDP4(netip.AddrFrom4(a).String(), fixture.ServerIPv4, 1, 53, nil), fixture.UDP4(netip.AddrFrom4(out).String(), fixture.ServerIPv4, 1, 53, nil)}
	},
	func(r *rand.Rand) (string, [][]byte) { // a few hosts: a chain folded into one set (fold.go)
		var hosts []string
		var pkts [][]byte
		for range 2 + r.IntN(2) {
			a := propAddr4(r)
			hosts = append(hosts, "src host "+a)
			pkts = append(pkts, fixture.UDP4(a, fixture.ServerIPv4, 1, 53, nil))
		}
		return fmt.Sprintf("expr: \"%s\"", strings.Join(hosts, " or ")), pkts
	},
	func(r *rand.Rand) (string, [][]byte) { // a few ports: chains on both paths folded into one set (fold.go)
		var ports []string
		var pkts [][]byte
		for range 2 + r.IntN(2) {
			p := propPort(r)
			ports = append(ports, fmt.Sprintf("udp dst port %d", p))
			pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, p, nil), fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, p, nil))
		}
		return fmt.Sprintf("expr: \"%s\"", strings.Join(ports, " or ")), pkts
	},
	func(r *rand.Rand) (string, [][]byte) { // a port and a bound on the length: bounded sets (bounds.go)
		p, n := propPort(r), 40+r.IntN(80)
		op := []string{">", ">=", "<", "<="}[r.IntN(4)]
		var pkts [][]byte
		for _, size := range []int{n - 29, n - 28, n - 27, n + 3} {
			pkts = append(pkts, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, p, make([]byte, max(0, size))))
		}
		return fmt.Sprintf("expr: \"udp dst port %d and len %s %d\"", p, op, n), append(pkts, fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1, p, make([]byte, n)))
	},
	func(r *rand.Rand) (string, [][]byte) { // a host and a bound on the TTL: bounded sets
		a, ttl := propAddr4(r), 60+r.IntN(6)
		var pkts [][]byte
		for _, t := range []int{ttl - 1, ttl, ttl + 1} {
			pkt := fixture.UDP4(a, fixture.ServerIPv4, 1, 53, nil)
			pkt[14+8] = byte(t)
			pkts = append(pkts, pkt)
		}
		return fmt.Sprintf("expr: \"src host %s and ip[8] %s %d\"", a, []string{">", "<="}[r.IntN(2)], ttl), pkts
	},
	func(r *rand.Rand) (string, [][]byte) { // combined
		name := fmt.Sprintf("c%d.example", r.IntN(20))
		q := fixture.DNSQuery(name, 1)
		return fmt.Sprintf("family: ipv4\n    expr: \"udp src port %d\"\n    dns: [\"%s\"]", 1000+r.IntN(3), name), [][]byte{fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, uint16(1000+r.IntN(3)), 53, q)}
	},
}

// propPort is mostly one of 64 ports, and sometimes 53, DNS's: a rule of
// it may match the names' packets too.
func propPort(r *rand.Rand) uint16 {
	if r.IntN(16) == 0 {
		return 53
	}
	return uint16(1000 + r.IntN(64))
}

func propAddr4(r *rand.Rand) string {
	return fmt.Sprintf("198.18.%d.%d", r.IntN(3), 1+r.IntN(4))
}

// malformed returns broken copies of an Ethernet frame: the cases that were
// a bypass of every rule (#10).
func malformed(frame []byte) [][]byte {
	off, ok := fixture.IPOffset(frame)
	if !ok || len(frame) < off+20 {
		return nil
	}
	cp := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), frame...)) }
	if frame[off]>>4 == 6 {
		return [][]byte{
			cp(func(b []byte) []byte { return b[:off+30] }), // short header
			cp(func(b []byte) []byte { b[off] = 0x45; return b }),
		}
	}
	return [][]byte{
		cp(func(b []byte) []byte { b[off] = 0x46; return b }), // IHL 6
		cp(func(b []byte) []byte { b[off] = 0x43; return b }), // IHL 3
		cp(func(b []byte) []byte { b[off] = 0x65; return b }), // version 6 in IPv4
		cp(func(b []byte) []byte { binary.BigEndian.PutUint16(b[off+2:], 1500); return b }),
		cp(func(b []byte) []byte { return b[:off+12] }),                                       // truncated header
		cp(func(b []byte) []byte { binary.BigEndian.PutUint16(b[off+6:], 0x0010); return b }), // later fragment
	}
}

// corpusIP returns the corpus's Ethernet frames, deduplicated.
func corpusIP(t testing.TB) [][]byte {
	t.Helper()
	seen := map[string]bool{}
	var out [][]byte
	for _, c := range fixture.CorpusCaptures(t) {
		if c.LinkType != 1 { // Ethernet
			continue
		}
		for _, p := range c.Packets {
			// XDP test runs take a page at most.
			if _, ok := fixture.IPOffset(p.Data); !ok || len(p.Data) > 3000 || seen[string(p.Data)] {
				continue
			}
			seen[string(p.Data)] = true
			out = append(out, p.Data)
		}
	}
	return out
}

// refRule is a rule as the reference judges it.
type refRule struct {
	name   string
	family Family
	action Action
	progs  []*cbpf.Filter
	fams   []Family
}

// refVerdict is the first final matching rule's verdict by libpcap, with
// the monitor rules matched before it; match runs a filter over the packet
// (the caller memoizes: rules of a large set share programs).
func refVerdict(rules []refRule, fragDrop bool, frame []byte, match func(*cbpf.Filter, []byte) bool) (l4drop.Verdict, []uint32) {
	off, ok := fixture.IPOffset(frame)
	if !ok {
		return l4drop.Verdict{Action: "pass", Rule: l4drop.NoRule}, nil
	}
	fam := FamilyIPv4
	if binary.BigEndian.Uint16(frame[off-2:]) == 0x86dd {
		fam = FamilyIPv6
	}
	ip := frame[off:]
	var monitors []uint32
	for i, r := range rules {
		if r.family != FamilyAny && r.family != fam {
			continue
		}
		ok := true
		for k, f := range r.progs {
			if r.fams[k] != FamilyAny && r.fams[k] != fam {
				continue
			}
			if !match(f, ip) {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		if !r.action.final() {
			monitors = append(monitors, uint32(i))
			continue
		}
		return l4drop.Verdict{Action: string(r.action), Rule: uint32(i), Name: r.name}, monitors
	}
	if fragDrop {
		later := fam == FamilyIPv4 && len(ip) >= 8 && binary.BigEndian.Uint16(ip[6:])&0x1fff != 0 ||
			fam == FamilyIPv6 && len(ip) >= 44 && ip[6] == 44 && binary.BigEndian.Uint16(ip[42:])&0xfff8 != 0
		if later {
			return l4drop.Verdict{Action: "drop", Rule: l4drop.NoRule}, monitors
		}
	}
	return l4drop.Verdict{Action: "pass", Rule: l4drop.NoRule}, monitors
}

// genSet makes a random set of size rules of 1 to 3 of propShapes,
// shuffled, each rule drop, pass or monitor.
func genSet(r *rand.Rand, name string, size int) propSet {
	shapes := make([]int, 1+r.IntN(3))
	for k := range shapes {
		shapes[k] = r.IntN(len(propShapes))
	}
	ps := propSet{name: name}
	for i := 0; i < size; i++ {
		body, pkts := propShapes[shapes[r.IntN(len(shapes))]](r)
		// Mostly final: monitor rules let the next rules judge.
		action := []string{"", "drop", "pass", "", "drop", "monitor"}[r.IntN(6)]
		if action != "" {
			body += "\n    action: " + action
		}
		ps.rules = append(ps.rules, body)
		if len(ps.pkts) < 200 {
			ps.pkts = append(ps.pkts, pkts...)
		}
	}
	return ps
}

// The property test's 500 sets: propSmall of 1 to 12 rules (an
// operator's set during an attack), propMedium of 13 to 200, propLarge of
// 201 to 2,000 (the last one 2,000). Small sets share an ELF by 40, medium
// ones by 10, each set a location of its own; a large one has its own ELF.
// Most of the time goes to clang and the loads, so the large sets are few.
const (
	propSmall  = 450
	propMedium = 44
	propLarge  = 6
)

// genSets makes the property test's sets, divided by short.
func genSets(r *rand.Rand, short bool) [][]propSet {
	small, medium, large := propSmall, propMedium, propLarge
	if short {
		small, medium, large = small/8, medium/8, 2
	}
	var batches [][]propSet
	n := 0
	add := func(count, per int, size func(k int) int) {
		for k := 0; k < count; k += per {
			var b []propSet
			for j := k; j < min(k+per, count); j++ {
				b = append(b, genSet(r, fmt.Sprintf("s%d", n), size(j)))
				n++
			}
			batches = append(batches, b)
		}
	}
	add(small, 40, func(int) int { return 1 + r.IntN(12) })
	add(medium, 10, func(int) int { return 13 + r.IntN(188) })
	add(large, 1, func(k int) int {
		if k == large-1 {
			return 2000
		}
		return 201 + r.IntN(1800)
	})
	return batches
}

// TestRuleSetProperty builds random rule sets and compares every verdict
// with libpcap's: each set's own packets, broken copies of them, and every
// packet of the corpus captures.
func TestRuleSetProperty(t *testing.T) {
	fixture.RequireRoot(t)
	seed := uint64(0x5eed_0011)
	if s := os.Getenv("L4DROP_PROPERTY_SEED"); s != "" {
		if _, err := fmt.Sscan(s, &seed); err != nil {
			t.Fatalf("L4DROP_PROPERTY_SEED: %v", err)
		}
	}
	t.Logf("seed %d (L4DROP_PROPERTY_SEED=%d reruns it, another explores)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 0x4c34))
	corpus := corpusIP(t)
	start := time.Now()
	propTimes.build, propTimes.load, propTimes.run, propTimes.ref = 0, 0, 0, 0
	sets, builds, runs := 0, 0, 0
	for _, batch := range genSets(r, testing.Short()) {
		runs += checkBatch(t, batch, r.IntN(3) == 0, corpus)
		builds++
		sets += len(batch)
		if t.Failed() {
			break
		}
	}
	t.Logf("%d sets in %d builds, %d packets judged, 0 mismatches: %v (build %v, load %v, runs %v, libpcap %v)", sets, builds, runs,
		time.Since(start).Round(time.Millisecond), propTimes.build.Round(time.Millisecond), propTimes.load.Round(time.Millisecond),
		propTimes.run.Round(time.Millisecond), propTimes.ref.Round(time.Millisecond))
}

// checkBatch builds the sets of batch into one ELF, each set a location of
// its own, and compares the verdicts of each, loaded alone, with libpcap's.
// It returns how many packets it judged.
func checkBatch(t testing.TB, batch []propSet, fragDrop bool, corpus [][]byte) int {
	t.Helper()
	var b strings.Builder
	if fragDrop {
		b.WriteString("fragments: drop\n")
	}
	b.WriteString("rules:\n")
	for _, s := range batch {
		for i, body := range s.rules {
			fmt.Fprintf(&b, "  - name: %s-%d\n    locations: [%s]\n    %s\n", s.name, i, s.name, body)
		}
	}
	text := b.String()
	rs, err := ParseRuleSet("property.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	obj, _, err := Build(rs, BuildOptions{})
	if err != nil {
		keepFailing(t, text)
		t.Fatal(err)
	}
	propTimes.build += time.Since(t0)
	// The reference, per rule; rules with the same cBPF share a filter.
	filters := map[string]*cbpf.Filter{}
	all := make([]refRule, len(rs.Rules))
	for i := range rs.Rules {
		ms, err := (*Frontend)(nil).matchers(rs, &rs.Rules[i])
		if err != nil {
			t.Fatal(err)
		}
		all[i] = refRule{name: rs.Rules[i].Name, family: rs.Rules[i].Family, action: rs.Rules[i].Action}
		for _, m := range ms {
			key := fmt.Sprint(m.prog)
			f := filters[key]
			if f == nil {
				if f, err = cbpf.NewFilter(m.prog); err != nil {
					t.Fatal(err)
				}
				filters[key] = f
			}
			all[i].progs, all[i].fams = append(all[i].progs, f), append(all[i].fams, m.family)
		}
	}
	runs := 0
	first := 0
	for _, s := range batch {
		t0 := time.Now()
		d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: s.name})
		if err != nil {
			keepFailing(t, text)
			t.Fatalf("%s: %v", s.name, err)
		}
		t1 := time.Now()
		propTimes.load += t1.Sub(t0)
		// The set's rules are on, the others off.
		pkts := append([][]byte(nil), s.pkts...)
		for _, p := range s.pkts {
			pkts = append(pkts, malformed(p)...)
		}
		pkts = append(pkts, corpus...)
		got, gotMons, err := d.RunBatch(pkts)
		d.Close()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		t2 := time.Now()
		propTimes.run += t2.Sub(t1)
		setRules := all[first : first+len(s.rules)]
		for k, pkt := range pkts {
			memo := map[*cbpf.Filter]bool{}
			match := func(f *cbpf.Filter, ip []byte) bool {
				m, ok := memo[f]
				if !ok {
					m = f.Run(ip, len(ip)) != 0
					memo[f] = m
				}
				return m
			}
			want, wantMons := refVerdict(setRules, fragDrop, pkt, match)
			if want.Rule != l4drop.NoRule {
				want.Rule += uint32(first)
			}
			for j := range wantMons {
				wantMons[j] += uint32(first)
			}
			runs++
			g := got[k]
			if g.Action != want.Action || g.Rule != want.Rule || !slices.Equal(gotMons[k], wantMons) {
				keepFailing(t, text)
				t.Fatalf("%s: packet %d (%x): got %s by rule %d (monitors %v), libpcap says %s by rule %d (monitors %v)",
					s.name, k, pkt, g.Action, int32(g.Rule), gotMons[k], want.Action, int32(want.Rule), wantMons)
			}
		}
		first += len(s.rules)
		propTimes.ref += time.Since(t2)
	}
	return runs
}

// propTimes is where the property test's time goes.
var propTimes struct{ build, load, run, ref time.Duration }

// keepFailing saves a failing rule set for the regression test.
func keepFailing(t testing.TB, text string) {
	t.Helper()
	name := filepath.Join("testdata", "regress", fmt.Sprintf("property-%d.yaml", time.Now().UnixNano()))
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err == nil {
		if err := os.WriteFile(name, []byte(text), 0o644); err == nil {
			t.Logf("rule set kept in %s", name)
		}
	}
}
