package build

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/l4drop"

	"github.com/l4drop/l4drop/internal/fixture"
)

var (
	label63       = strings.Repeat("a", 63)
	longName      = label63 + "." + label63 + "." + label63 + "." + strings.Repeat("b", 61) // 255 bytes on the wire
	dnsTableRules = `
rules:
  - name: allow-good
    dns: ["good.example.com"]
    action: pass
  - name: bad-v4
    family: ipv4
    dns: ["bad.example.com", "worse.example.com."]
  - name: bad-ci
    dns: ["MiXeD.Example.NET"]
    dns_case_insensitive: true
  - name: syn
    expr: "tcp dst port 80"
  - name: bad-any
    dns: ["bad.example.com", "x.example.org"]
  - name: ams-only
    dns: ["ams.example.com"]
    locations: [ams]
  - name: long
    dns: ["` + longName + `"]
  - name: wild-com
    dns: ["*.example.com"]
  - name: wild
    dns: ["*.zone1.example", "*.zone3.example."]
  - name: wild-ci-v6
    family: ipv6
    dns: ["*.Zone2.Example"]
    dns_case_insensitive: true
  - name: early-wild-v6
    family: ipv6
    dns: ["*.early.example"]
  - name: early-wild-ci
    dns: ["*.Caps.Example"]
    dns_case_insensitive: true
  - name: early-ci
    dns: ["Q.example.net"]
    dns_case_insensitive: true
  - name: late-exact
    dns: ["a.early.example", "x.caps.example", "q.example.net", "y.CAPS.example", "plain.example.net"]
`
)

func TestExactName(t *testing.T) {
	tests := []struct {
		pattern string
		wire    string
		ok      bool
	}{
		{"example.com", "\x07example\x03com\x00", true},
		{".example.com.", "\x07example\x03com\x00", true},
		{"*.example.com", "", false},
		{"ex?mple.com", "", false},
		{"example.**", "", false},
		{"ex%41mple.com", "", false},
		{"a..b", "", false},
		{longName, "", true},
		{longName + "b", "", false},
		{strings.Repeat("a", 64) + ".com", "", false},
	}
	for _, tt := range tests {
		wire, ok := exactName(tt.pattern)
		if ok != tt.ok || (tt.wire != "" && string(wire) != tt.wire) {
			t.Errorf("exactName(%q) = %q, %v", tt.pattern, wire, ok)
		}
	}
	if w, _ := exactName(longName); len(w) != 255 {
		t.Errorf("long name: %d bytes on the wire", len(w))
	}
}

func dnsPacket(v6 bool, dport uint16, payload []byte) []byte {
	if v6 {
		return fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 40000, dport, payload)
	}
	return fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, dport, payload)
}

// TestDNSTable checks the name tables, inline and in maps: order with
// other rules, families, case, switches, and names that must not match.
func TestDNSTable(t *testing.T) {
	fixture.RequireRoot(t)
	for _, tt := range []struct {
		name      string
		maxInline int
		maps      int
	}{
		{"maps", -1, 5}, // the 255-byte name in a map of its own
		{"inline", 100, 0},
		{"default", 0, 2}, // 10 exact names: more than DefaultMaxInlineDNS
		{"mixed", 2, 3},   // the tables of more than 2 names in maps, the long name apart
	} {
		t.Run(tt.name, func(t *testing.T) { testDNSTable(t, tt.maxInline, tt.maps) })
	}
}

func testDNSTable(t *testing.T, maxInline, maps int) {
	rs, err := ParseRuleSet("dns.yaml", []byte(dnsTableRules))
	if err != nil {
		t.Fatal(err)
	}
	obj, gen, err := Build(rs, BuildOptions{MaxInlineDNS: maxInline})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range gen.Meta.Rules {
		if hashed := r.Matchers[0] == "dns-table"; hashed != (r.Name != "syn") {
			t.Errorf("rule %s: in the table: %v", r.Name, hashed)
		}
	}
	if n := len(gen.Meta.DNSHash); n != maps {
		t.Errorf("%d name maps, want %d", n, maps)
	}
	q := func(name string) []byte { return fixture.DNSQuery(name, 1) }
	compressed := append(append([]byte(nil), q("")[:12]...), 0xc0, 0x0c, 0, 1, 0, 1)
	truncated := q("bad.example.com")
	truncated = truncated[:len(truncated)-8]
	tests := []struct {
		name string
		pkt  []byte
		loc  string
		want string // rule, "" = passes with no rule
	}{
		{"v4 bad", dnsPacket(false, 53, q("bad.example.com")), "", "bad-v4"},
		{"v4 worse", dnsPacket(false, 53, q("worse.example.com")), "", "bad-v4"},
		{"v6 bad", dnsPacket(true, 53, q("bad.example.com")), "", "bad-any"},
		{"v6 x", dnsPacket(true, 53, q("x.example.org")), "", "bad-any"},
		{"case differs", dnsPacket(false, 53, q("BAD.example.com")), "", "wild-com"},
		{"ci lower", dnsPacket(false, 53, q("mixed.example.net")), "", "bad-ci"},
		{"ci upper v6", dnsPacket(true, 53, q("MIXED.EXAMPLE.NET")), "", "bad-ci"},
		{"ci near", dnsPacket(false, 53, q("mixed.example.ne")), "", ""},
		{"allowed", dnsPacket(false, 53, q("good.example.com")), "", "allow-good"},
		{"longer", dnsPacket(false, 53, q("bad.example.com.evil")), "", ""},
		{"shorter", dnsPacket(false, 53, q("bad.example.co")), "", ""},
		{"subdomain", dnsPacket(false, 53, q("sub.bad.example.com")), "", ""},
		{"other port", dnsPacket(false, 5353, q("bad.example.com")), "", ""},
		{"truncated", dnsPacket(false, 53, truncated), "", ""},
		{"compressed", dnsPacket(false, 53, compressed), "", ""},
		{"empty payload", dnsPacket(false, 53, nil), "", ""},
		{"vlan bad", fixture.VLAN(dnsPacket(false, 53, q("bad.example.com")), 7), "", "bad-v4"},
		{"ams elsewhere", dnsPacket(false, 53, q("ams.example.com")), "", "wild-com"},
		{"ams at ams", dnsPacket(false, 53, q("ams.example.com")), "ams", "ams-only"},
		{"long", dnsPacket(false, 53, q(longName)), "", "long"},
		{"long v6", dnsPacket(true, 53, q(longName)), "", "long"},
		{"syn", fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 1, 80), "", "syn"},
		{"wild", dnsPacket(false, 53, q("a.zone1.example")), "", "wild"},
		{"wild second pattern", dnsPacket(true, 53, q("abc.zone3.example")), "", "wild"},
		{"wild long label", dnsPacket(false, 53, q(label63+".zone1.example")), "", "wild"},
		{"wild star label", dnsPacket(false, 53, q("*.zone1.example")), "", "wild"},
		{"wild no label", dnsPacket(false, 53, q("zone1.example")), "", ""},
		{"wild two labels", dnsPacket(false, 53, q("a.b.zone1.example")), "", ""},
		{"wild case", dnsPacket(false, 53, q("a.ZONE1.example")), "", ""},
		{"wild ci v6", dnsPacket(true, 53, q("X.zOnE2.EXAMPLE")), "", "wild-ci-v6"},
		{"wild ci v4", dnsPacket(false, 53, q("x.zone2.example")), "", ""},
		{"exact before wild", dnsPacket(true, 53, q("bad.example.com")), "", "bad-any"},
		{"wild after exact", dnsPacket(false, 53, q("other.example.com")), "", "wild-com"},
		{"wild truncated", dnsPacket(false, 53, q("a.zone1.example")[:12+10]), "", ""},
		// Names of an exact rule that an earlier wildcard or
		// case-insensitive rule matches too: the earlier rule wins,
		// though the exact name is found first.
		{"wild before exact v6", dnsPacket(true, 53, q("a.early.example")), "", "early-wild-v6"},
		{"exact after wild v4", dnsPacket(false, 53, q("a.early.example")), "", "late-exact"},
		{"ci wild before exact", dnsPacket(false, 53, q("x.caps.example")), "", "early-wild-ci"},
		{"ci wild before exact, upper", dnsPacket(false, 53, q("y.CAPS.example")), "", "early-wild-ci"},
		{"ci wild, no exact", dnsPacket(true, 53, q("Z.cApS.example")), "", "early-wild-ci"},
		{"ci before exact", dnsPacket(false, 53, q("q.example.net")), "", "early-ci"},
		{"ci, not the exact", dnsPacket(false, 53, q("Q.EXAMPLE.net")), "", "early-ci"},
		{"exact alone", dnsPacket(true, 53, q("plain.example.net")), "", "late-exact"},
	}
	frag := dnsPacket(false, 53, q("bad.example.com"))
	frag[14+6] |= 0x01 // fragment offset 256 bytes
	tests = append(tests,
		struct {
			name string
			pkt  []byte
			loc  string
			want string
		}{"later fragment", frag, "", ""},
		struct {
			name string
			pkt  []byte
			loc  string
			want string
		}{"ipv4 options", withIPv4Options(dnsPacket(false, 53, q("bad.example.com"))), "", "bad-v4"},
	)
	runs := map[string]*l4drop.DryRun{}
	for _, loc := range []string{"", "ams"} {
		d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: loc})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		runs[loc] = d
	}
	// The same rules through bpfgen, one by one: the reference.
	ref, _, err := Build(rs, BuildOptions{NoDNSTable: true})
	if err != nil {
		t.Fatal(err)
	}
	refRuns := map[string]*l4drop.DryRun{}
	for _, loc := range []string{"", "ams"} {
		d, err := l4drop.NewDryRun(ref, l4drop.LoadOptions{Location: loc})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		refRuns[loc] = d
	}
	for _, tt := range tests {
		v, err := runs[tt.loc].Run(tt.pkt)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		rv, err := refRuns[tt.loc].Run(tt.pkt)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if rv != v {
			t.Errorf("%s: table says %+v, bpfgen one by one %+v", tt.name, v, rv)
		}
		want := "drop"
		if tt.want == "" || tt.want == "allow-good" {
			want = "pass"
		}
		if v.Name != tt.want || v.Action != want {
			t.Errorf("%s: %s by %q, want %s by %q", tt.name, v.Action, v.Name, want, tt.want)
		}
	}
	// Disabling the first rule with a name hands it to the next one.
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Disable: []string{"bad-v4"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if v, err := d.Run(dnsPacket(false, 53, q("bad.example.com"))); err != nil || v.Name != "bad-any" {
		t.Errorf("bad-v4 disabled: %+v, %v; want bad-any", v, err)
	}
	if v, err := d.Run(dnsPacket(false, 53, q("worse.example.com"))); err != nil || v.Name != "wild-com" {
		t.Errorf("bad-v4 disabled: %+v, %v; want wild-com", v, err)
	}
	// With the earlier rules off, the exact names are the late rule's.
	d, err = l4drop.NewDryRun(obj, l4drop.LoadOptions{Disable: []string{"early-wild-v6", "early-wild-ci", "early-ci"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, name := range []string{"a.early.example", "x.caps.example", "q.example.net", "y.CAPS.example"} {
		if v, err := d.Run(dnsPacket(true, 53, q(name))); err != nil || v.Name != "late-exact" {
			t.Errorf("earlier rules disabled: %s: %+v, %v; want late-exact", name, v, err)
		}
	}
}

// withIPv4Options inserts 4 bytes of IPv4 options (NOPs) into an Ethernet
// frame carrying IPv4.
func withIPv4Options(frame []byte) []byte {
	out := append([]byte(nil), frame[:14+20]...)
	out = append(out, 1, 1, 1, 1)
	out = append(out, frame[14+20:]...)
	out[14] = 0x46
	total := int(out[16])<<8 | int(out[17]) + 4
	out[16], out[17] = byte(total>>8), byte(total)
	return out
}

// TestDNSTableRandom compares the name tables, inline and in maps, with
// bpfgen's matchers one by one over random names made of the rules'
// labels, in mixed case.
func TestDNSTableRandom(t *testing.T) {
	fixture.RequireRoot(t)
	rs, err := ParseRuleSet("dns.yaml", []byte(dnsTableRules))
	if err != nil {
		t.Fatal(err)
	}
	ref, _, err := Build(rs, BuildOptions{NoDNSTable: true})
	if err != nil {
		t.Fatal(err)
	}
	refRun, err := l4drop.NewDryRun(ref, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer refRun.Close()
	// Names of the rules, with a label more or less, some letters upper
	// case, some cut short, some with a byte changed.
	bases := []string{"bad.example.com", "worse.example.com", "good.example.com", "x.example.org", "mixed.example.net",
		"ams.example.com", "zone1.example", "zone2.example", "zone3.example", "example.com", longName,
		"a.early.example", "x.caps.example", "q.example.net", "y.caps.example", "plain.example.net"}
	extra := []string{"a", "www", label63, "zone1", "example", "b-c"}
	rng := rand.New(rand.NewPCG(1, 2))
	var pkts [][]byte
	for range 400 {
		name := bases[rng.IntN(len(bases))]
		switch rng.IntN(4) {
		case 0:
			name = extra[rng.IntN(len(extra))] + "." + name
		case 1:
			if _, rest, ok := strings.Cut(name, "."); ok {
				name = rest
			}
		}
		b := []byte(name)
		for i := range b {
			if rng.IntN(40) == 0 && b[i] >= 'a' && b[i] <= 'z' {
				b[i] -= 'a' - 'A'
			}
		}
		q := fixture.DNSQuery(string(b), 1)
		if rng.IntN(8) == 0 {
			q = q[:12+rng.IntN(len(q)-12)] // cut anywhere in the question
		}
		// A byte of the name changed: a length byte, a compression
		// pointer, a label too long, an end too early, anything.
		for range rng.IntN(2) {
			if len(q) > 13 {
				q[12+rng.IntN(len(q)-12)] = []byte{0, 1, 0x3f, 0x40, 0x7f, 0xc0, 0xff, byte(rng.Uint32())}[rng.IntN(8)]
			}
		}
		pkts = append(pkts, dnsPacket(rng.IntN(2) == 0, 53, q))
	}
	for _, maxInline := range []int{-1, 100, 2} {
		obj, _, err := Build(rs, BuildOptions{MaxInlineDNS: maxInline})
		if err != nil {
			t.Fatal(err)
		}
		d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		matched := sameVerdicts(t, fmt.Sprintf("MaxInlineDNS %d", maxInline), d, refRun, pkts)
		d.Close()
		if matched < len(pkts)/8 {
			t.Errorf("MaxInlineDNS %d: %d of %d packets matched a rule; want a test that matches", maxInline, matched, len(pkts))
		}
	}
}

// TestTableLayouts: a table of up to l4drop.MaxGlobalTable bytes is a
// global array in a section of its own, a larger one (6,000 names) an
// array map, and both find their names and constants, first and last.
func TestTableLayouts(t *testing.T) {
	fixture.RequireRoot(t)
	for _, tt := range []struct {
		n      int
		global bool
	}{{1000, true}, {6000, false}} {
		t.Run(fmt.Sprint(tt.n), func(t *testing.T) {
			var b strings.Builder
			b.WriteString("rules:\n")
			for i := range tt.n {
				fmt.Fprintf(&b, "  - name: n%d\n    dns: [\"host%d.layout.example\"]\n  - name: p%d\n    expr: \"udp dst port %d\"\n", i, i, i, 10000+i)
			}
			obj := buildYAML(t, b.String())
			spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
			if err != nil {
				t.Fatal(err)
			}
			// The names' buckets are 160 bytes, the ports' 32: the
			// ports' table stays global.
			for name, global := range map[string]bool{"l4drop_dns": tt.global, "l4s_0_1": true} {
				_, isMap := spec.Maps[name]
				_, isGlobal := spec.Maps[l4drop.TableSection(name)]
				if isMap == global || isGlobal != global {
					t.Errorf("table %s: map %v, global %v; want global %v", name, isMap, isGlobal, global)
				}
			}
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for _, i := range []int{0, tt.n - 1} {
				for _, c := range []struct {
					frame []byte
					rule  int
				}{
					{fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 53, fixture.DNSQuery(fmt.Sprintf("host%d.layout.example", i), 1)), 2 * i},
					{fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, uint16(10000+i), nil), 2*i + 1},
				} {
					v, err := d.Run(c.frame)
					if err != nil {
						t.Fatal(err)
					}
					if v.Action != "drop" || v.Rule != uint32(c.rule) {
						t.Errorf("packet for rule %d: %s by rule %d", c.rule, v.Action, int32(v.Rule))
					}
				}
			}
		})
	}
}
