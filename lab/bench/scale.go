package bench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
)

// mixedShapes are the rules of MixedRuleSet: an operator's shapes during
// an attack (issue #11), DNS names exact and "*.zone", an IPv6 rule.
var mixedShapes = []func(r *rand.Rand, i int) string{
	func(r *rand.Rand, _ int) string { return fmt.Sprintf("expr: \"udp dst port %d\"", 1+r.IntN(65535)) },
	func(r *rand.Rand, _ int) string {
		return fmt.Sprintf("expr: \"tcp dst port %d and src host %s\"", 1+r.IntN(65535), mixedAddr(r))
	},
	func(r *rand.Rand, _ int) string {
		return fmt.Sprintf("expr: \"ip[8] = %d and udp dst port %d\"", 1+r.IntN(255), 1+r.IntN(65535))
	},
	func(r *rand.Rand, _ int) string {
		return fmt.Sprintf("expr: \"dst net %d.%d.%d.0/24 and ip proto %d\"", 1+r.IntN(223), r.IntN(256), r.IntN(256), []int{1, 6, 17}[r.IntN(3)])
	},
	func(r *rand.Rand, _ int) string {
		return fmt.Sprintf("expr: \"ip[2:2] = %d and ip proto %d\"", 28+r.IntN(1400), []int{6, 17}[r.IntN(2)])
	},
	func(_ *rand.Rand, i int) string { return fmt.Sprintf("dns: [\"host%d.attack.example\"]", i) },
	func(_ *rand.Rand, i int) string { return fmt.Sprintf("dns: [\"*.zone%d.example\"]", i) },
	func(r *rand.Rand, _ int) string {
		return fmt.Sprintf("family: ipv6\n    expr: \"ip6 and tcp dst port %d\"", 1+r.IntN(65535))
	},
}

func mixedAddr(r *rand.Rand) string {
	return fmt.Sprintf("%d.%d.%d.%d", 1+r.IntN(223), r.IntN(256), r.IntN(256), 1+r.IntN(254))
}

// MixedRuleSet returns n rules of mixed shapes, families and actions, as
// an operator adds them during attacks: runs of 1 to 200 rules of one
// shape, in random order, one in ten passing. The same seed gives the same
// rules.
func MixedRuleSet(n int, seed uint64) string {
	r := rand.New(rand.NewPCG(seed, 0x5ca1e))
	var b strings.Builder
	b.WriteString("sample_rate: 0\nrules:\n")
	for i := 0; i < n; {
		shape := mixedShapes[r.IntN(len(mixedShapes))]
		action := "drop"
		if r.IntN(10) == 0 {
			action = "pass"
		}
		for run := 1 + r.IntN(200); run > 0 && i < n; run-- {
			fmt.Fprintf(&b, "  - name: m%d\n    action: %s\n    %s\n", i, action, shape(r, i))
			i++
		}
	}
	return b.String()
}

// MixedRules is the number of rules of the mixed-shapes row.
const MixedRules = 10000

// MixedBuildLoad builds and loads MixedRules rules of MixedRuleSet into
// dir and a fresh lab: a row of the build and load table.
func (t Tools) MixedBuildLoad(ctx context.Context, dir string) BuildLoad {
	bl := BuildLoad{Rules: MixedRules, Shapes: "mixed shapes"}
	obj, d, err := t.BuildRules(ctx, dir, "mixed", MixedRuleSet(MixedRules, 1))
	if err != nil {
		bl.Err = err
		return bl
	}
	bl.Build = d
	bl.Load, bl.Err = MeasureLoad(t, obj)
	return bl
}
