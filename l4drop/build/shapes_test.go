package build

import (
	"fmt"
	"strings"
	"testing"

	"github.com/l4drop/l4drop/l4drop"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestSets: rules that differ only in a constant, tested at once, decide
// every packet as the same rules tried one by one: order, duplicates,
// switches, families, actions, and rules that fall back to one by one.
func TestSets(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := 0; i < 40; i++ {
		port := 3000 + i
		if i == 5 {
			port = 3003 // a duplicate of rule udp-3
		}
		fmt.Fprintf(&b, "  - name: udp-%d\n    expr: \"udp dst port %d\"\n", i, port)
	}
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "  - name: tcp6-%d\n    family: ipv6\n    expr: \"ip6 and tcp dst port %d\"\n    action: pass\n", i, 5000+i)
	}
	for i := 0; i < 20; i++ {
		fmt.Fprintf(&b, "  - name: not-%d\n    family: ipv6\n    expr: \"not udp dst port %d\"\n", i, 6000+i)
	}
	// A table that decides, but a candidate found must still run: the
	// source port's low byte is tested after the constant.
	for i := 0; i < 6; i++ {
		fmt.Fprintf(&b, "  - name: sport1-%d\n    expr: \"udp dst port %d and udp[1] = 1\"\n", i, 7000+i)
	}
	rs, err := ParseRuleSet("sets.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	obj, gen, err := Build(rs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(gen.Meta.Sets) < 3 {
		t.Fatalf("%d sets; want the udp, the tcp6 and the sport1 rules tested at once", len(gen.Meta.Sets))
	}
	ref, _, err := Build(rs, BuildOptions{NoSets: true})
	if err != nil {
		t.Fatal(err)
	}
	var pkts [][]byte
	c4, s4, c6, s6 := fixture.ClientIPv4, fixture.ServerIPv4, fixture.ClientIPv6, fixture.ServerIPv6
	for port := uint16(2998); port < 3042; port++ {
		pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, nil), fixture.UDP6(c6, s6, 1, port, nil))
	}
	for port := uint16(4999); port < 5022; port++ {
		pkts = append(pkts, fixture.TCP6SYN(c6, s6, 1, port), fixture.TCP4SYN(c4, s4, 1, port))
	}
	for _, port := range []uint16{6000, 6005, 6019, 6020, 53} {
		pkts = append(pkts, fixture.UDP6(c6, s6, 1, port, nil))
	}
	for port := uint16(6999); port < 7007; port++ {
		pkts = append(pkts, fixture.UDP4(c4, s4, 1, port, nil), fixture.UDP4(c4, s4, 2, port, nil))
	}
	for _, opts := range []l4drop.LoadOptions{{}, {Disable: []string{"udp-3", "udp-10", "tcp6-0"}}, {Disable: []string{"udp-5"}}} {
		d, err := l4drop.NewDryRun(obj, opts)
		if err != nil {
			t.Fatal(err)
		}
		r, err := l4drop.NewDryRun(ref, opts)
		if err != nil {
			t.Fatal(err)
		}
		matched := sameVerdicts(t, fmt.Sprint(opts.Disable), d, r, pkts)
		if matched < len(pkts)/2 {
			t.Errorf("%v: only %d of %d packets matched a rule", opts.Disable, matched, len(pkts))
		}
		d.Close()
		r.Close()
	}
}

func TestTableDecides(t *testing.T) {
	tests := []struct {
		expr         string // with %d for the constant
		want, direct bool
	}{
		{"udp dst port %d", true, true},
		{"ip6 and tcp dst port %d", true, true},
		{"udp port %d", true, true},                     // src or dst: two tests a path
		{"not udp dst port %d", false, false},           // matches when the test fails
		{"udp dst port %d or tcp", false, true},         // matches without the test
		{"udp dst port %d and udp[8] = 1", true, false}, // more to test after it
	}
	for _, tt := range tests {
		var progs [][]bpf.Instruction
		for _, port := range []int{1000, 2000, 3000} {
			text := fmt.Sprintf("rules:\n  - name: r\n    expr: %q\n", fmt.Sprintf(tt.expr, port))
			rs, err := ParseRuleSet("t.yaml", []byte(text))
			if err != nil {
				t.Fatal(err)
			}
			ms, err := (*Frontend)(nil).matchers(rs, &rs.Rules[0])
			if err != nil {
				t.Fatal(err)
			}
			progs = append(progs, ms[0].prog)
		}
		_, jumps, ok := shapeKey(progs[0])
		if !ok {
			t.Fatalf("%q: no shape", tt.expr)
		}
		params := shapeParams(progs, jumps)
		if len(params) != 1 {
			t.Fatalf("%q: %d parameters, want 1", tt.expr, len(params))
		}
		isParam := make([]bool, len(progs[0]))
		for _, pc := range params[0] {
			isParam[pc] = true
		}
		if got := tableDecides(progs[0], isParam); got != tt.want {
			t.Errorf("%q: tableDecides = %v, want %v", tt.expr, got, tt.want)
		}
		if got := equalMatches(progs[0], isParam); got != tt.direct {
			t.Errorf("%q: equalMatches = %v, want %v", tt.expr, got, tt.direct)
		}
	}
}

// sameVerdicts runs pkts through d and ref, reports where they differ, and
// returns how many packets a rule matched.
func sameVerdicts(t *testing.T, what string, d, ref *l4drop.DryRun, pkts [][]byte) int {
	t.Helper()
	matched := 0
	for i, pkt := range pkts {
		got, err := d.Run(pkt)
		if err != nil {
			t.Fatal(err)
		}
		want, err := ref.Run(pkt)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%s: packet %d: %+v, one by one %+v", what, i, got, want)
		}
		if got.Rule != l4drop.NoRule {
			matched++
		}
	}
	return matched
}
