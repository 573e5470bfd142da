package build

import (
	"fmt"
	"slices"

	"golang.org/x/net/bpf"
)

// Disjoint groups. A program whose items are all merged groups tests them
// in rule order and keeps the first rule any of them found (best): a
// packet for the last group's rules pays for every group's lookup. Where
// no packet can match rules of two of the groups, because their matchers
// require different constants at one place of the packet (bytecode for
// DNS names of different lengths: "\x05hos" and "\x07hos" at the same
// offset), the first group that finds a rule has found the only one. Such
// groups are tested largest first, and the first found ends the test: one
// lookup for a packet of the largest group's rules, whatever the order of
// the rules.

// maxMatchPaths bounds the paths to a match a matcher may have for the
// analysis; a matcher with more is taken to overlap every other.
const maxMatchPaths = 256

// loadLoc is where a cBPF load reads, as far as the analysis follows it:
// at a constant offset of the packet, or at one from X where X was loaded
// as 4 * (the low nibble of a byte) (ldx msh), as for an IPv4 header.
type loadLoc struct {
	ind  bool   // from X
	msh  uint32 // X's byte, when ind
	off  uint32
	size int
}

// eqTest is a test a path to a match passes: the bytes at loc, masked,
// equal val.
type eqTest struct {
	loc  loadLoc
	mask uint32
	val  uint32
}

// matchTests returns the equality tests on each path of prog to a match,
// jumps of isParam (a shape's parameters, different from rule to rule)
// taken both ways without a test; ok is false where prog has more than
// maxMatchPaths such paths or an instruction the analysis cannot follow.
// A path's tests are ones a packet taking it passes; others may be left
// out (a test after arithmetic it does not follow), which only ever makes
// matchers seem to overlap.
func matchTests(prog []bpf.Instruction, isParam []bool) (paths [][]eqTest, ok bool) {
	type aState struct {
		known bool
		loc   loadLoc
		mask  uint32
	}
	type xState struct {
		known bool
		abs   bool   // a constant, k
		msh   uint32 // else 4 * (byte msh & 0xf)
		k     uint32
	}
	var walk func(pc int, a aState, x xState, tests []eqTest) bool
	steps := 0
	walk = func(pc int, a aState, x xState, tests []eqTest) bool {
		for ; pc < len(prog); pc++ {
			if steps++; steps > 1<<16 {
				return false
			}
			switch in := prog[pc].(type) {
			case bpf.LoadAbsolute:
				a = aState{known: true, loc: loadLoc{off: in.Off, size: in.Size}, mask: sizeMask(in.Size)}
			case bpf.LoadIndirect:
				switch {
				case !x.known:
					a = aState{}
				case x.abs:
					a = aState{known: true, loc: loadLoc{off: x.k + in.Off, size: in.Size}, mask: sizeMask(in.Size)}
				default:
					a = aState{known: true, loc: loadLoc{ind: true, msh: x.msh, off: in.Off, size: in.Size}, mask: sizeMask(in.Size)}
				}
			case bpf.LoadMemShift:
				x = xState{known: true, msh: in.Off}
			case bpf.LoadConstant:
				if in.Dst == bpf.RegX {
					x = xState{known: true, abs: true, k: in.Val}
				} else {
					a = aState{}
				}
			case bpf.ALUOpConstant:
				if in.Op == bpf.ALUOpAnd && a.known {
					a.mask &= in.Val
				} else {
					a = aState{}
				}
			case bpf.Jump:
				pc += int(in.Skip)
			case bpf.JumpIf:
				t, f := pc+1+int(in.SkipTrue), pc+1+int(in.SkipFalse)
				eq := in.Cond == bpf.JumpEqual
				if in.Cond == bpf.JumpNotEqual {
					eq, t, f = true, f, t
				}
				if pc < len(isParam) && isParam[pc] || !eq || !a.known {
					return walk(t, a, x, tests) && walk(f, a, x, tests)
				}
				if in.Val&^a.mask == 0 { // else the equal branch is never taken
					test := eqTest{loc: a.loc, mask: a.mask, val: in.Val}
					if !walk(t, a, x, append(slices.Clip(tests), test)) {
						return false
					}
				}
				return walk(f, a, x, tests)
			case bpf.RetConstant, bpf.RetA: // A may be a match
				if r, ok := in.(bpf.RetConstant); ok && r.Val == 0 {
					return true
				}
				paths = append(paths, tests)
				return len(paths) <= maxMatchPaths
			case bpf.TAX:
				x = xState{}
			case bpf.LoadScratch:
				if in.Dst == bpf.RegX {
					x = xState{}
				} else {
					a = aState{}
				}
			case bpf.StoreScratch: // neither register changes
			case bpf.NegateA, bpf.TXA, bpf.LoadExtension, bpf.ALUOpX:
				a = aState{}
			default:
				return false // a jump on X, or an instruction not decoded
			}
		}
		return false // ran off the end: not a program the kernel takes
	}
	if !walk(0, aState{}, xState{}, nil) {
		return nil, false
	}
	return paths, true
}

func sizeMask(size int) uint32 {
	if size >= 4 {
		return ^uint32(0)
	}
	return 1<<(8*size) - 1
}

// disjoint reports whether no packet takes a path of p and one of q: each
// pair of paths tests one place for different constants.
func disjoint(p, q [][]eqTest) bool {
	for _, a := range p {
		for _, b := range q {
			if !conflict(a, b) {
				return false
			}
		}
	}
	return true
}

func conflict(a, b []eqTest) bool {
	for _, s := range a {
		for _, t := range b {
			if s.loc == t.loc && (s.val^t.val)&s.mask&t.mask != 0 {
				return true
			}
		}
	}
	return false
}

// disjointGroups returns the order to test a program's groups in (the
// rules of each, merged sets: tables that decide every packet) when no
// packet can match rules of two of them: largest first, of as large, in
// rule order. It returns nil when two may overlap, or a group's rules are
// folded (a member's value under a mask, or a union of values: their
// programs are not the rule's whole test).
func disjointGroups(rules []compiledRule, groups [][]int) []int {
	tests := make([][][]eqTest, len(groups))
	for g, idx := range groups {
		var ok bool
		if tests[g], ok = rulePaths(rules, idx, true); !ok {
			return nil
		}
	}
	for g := range tests {
		for h := range g {
			if !disjoint(tests[g], tests[h]) {
				return nil
			}
		}
	}
	order := make([]int, len(groups))
	for g := range order {
		order[g] = g
	}
	slices.SortStableFunc(order, func(a, b int) int { return len(groups[b]) - len(groups[a]) })
	return order
}

// DNS-first. The DNS name tables find a rule only for a packet that passes
// l4_dns_name's checks, the ones bpfgen's cBPF for the rules makes too:
// IPv4 or IPv6, UDP, destination port 53. Where the tables found a rule,
// an item whose every rule requires something else at one of those places
// (a TCP group, a group of ports without 53) cannot find one too, and is
// not tested.

// dnsPaths are those checks as the paths to a match of the tables' rules
// of idx, one a family of theirs (familyDNSPath).
func dnsPaths(rules []compiledRule, idx []int) [][]eqTest {
	var v4, v6 bool
	for _, i := range idx {
		if rules[i].hashed {
			n := famNumber(rules[i].rule.Family)
			v4 = v4 || n != 6
			v6 = v6 || n != 4
		}
	}
	var paths [][]eqTest
	if v4 {
		paths = append(paths, familyDNSPath(4))
	}
	if v6 {
		paths = append(paths, familyDNSPath(6))
	}
	return paths
}

// familyDNSPath is the tables' checks for family fam (4, 6) in the places
// a shape's cBPF names them: version in the high nibble of byte 0,
// protocol at 9 (IPv4) or next header at 6 (IPv6), the port 2 bytes into
// the UDP header, after the IPv4 header's length (ldx msh) or at 40 + 2.
func familyDNSPath(fam int) []eqTest {
	if fam == 4 {
		return []eqTest{
			{loc: loadLoc{off: 0, size: 1}, mask: 0xf0, val: 0x40},
			{loc: loadLoc{off: 9, size: 1}, mask: 0xff, val: 17},
			{loc: loadLoc{ind: true, msh: 0, off: 2, size: 2}, mask: 0xffff, val: 53},
		}
	}
	return []eqTest{
		{loc: loadLoc{off: 0, size: 1}, mask: 0xf0, val: 0x60},
		{loc: loadLoc{off: 6, size: 1}, mask: 0xff, val: 17},
		{loc: loadLoc{off: 42, size: 2}, mask: 0xffff, val: 53},
	}
}

// dnsDisjoint reports whether no packet the DNS tables find a rule for
// (dns, dnsPaths) matches a rule of idx: each rule's paths, its own
// constants tests too, conflict with the tables'.
func dnsDisjoint(rules []compiledRule, idx []int, dns [][]eqTest) bool {
	paths, ok := rulePaths(rules, idx, false)
	if !ok {
		return false
	}
	return disjoint(project(dns, paths), project(paths, dns))
}

// rulePaths returns the paths to a match of the rules of idx, without
// repeats: with each rule's own constants tests of them, or, shapes, with
// the jumps of a shape's parameters taken both ways (a merged group's
// rules then share their paths). ok is false where a rule is not one the
// analysis follows: a DNS table's, one of more than one matcher or of a
// folded one (a set of values, not the program's constant), with shapes
// one not of a merged group, one matchTests cannot follow.
func rulePaths(rules []compiledRule, idx []int, shapes bool) (paths [][]eqTest, ok bool) {
	for _, i := range idx {
		cr := &rules[i]
		if cr.hashed || len(cr.matchers) != 1 || shapes && !cr.merged {
			return nil, false
		}
		m := cr.matchers[0]
		if m.values != nil || m.masks != nil || shapes && m.shape == nil {
			return nil, false
		}
		var isParam []bool
		if shapes {
			isParam = m.shape.isParam
		}
		ps, ok := matchTests(m.prog, isParam)
		if !ok {
			return nil, false
		}
		paths = append(paths, ps...)
	}
	return unique(paths), true
}

// project returns the paths of p with only the tests of places some path
// of q tests, without repeats: only there can a test of p conflict with
// one of q, and many paths of p (a group's, one a rule) are alike there.
func project(p, q [][]eqTest) [][]eqTest {
	locs := map[loadLoc]bool{}
	for _, path := range q {
		for _, t := range path {
			locs[t.loc] = true
		}
	}
	out := make([][]eqTest, len(p))
	for i, path := range p {
		for _, t := range path {
			if locs[t.loc] {
				out[i] = append(out[i], t)
			}
		}
	}
	return unique(out)
}

// unique returns paths without repeats, in order.
func unique(paths [][]eqTest) [][]eqTest {
	var out [][]eqTest
	seen := map[string]bool{}
	for _, p := range paths {
		if key := fmt.Sprint(p); !seen[key] {
			seen[key] = true
			out = append(out, p)
		}
	}
	return out
}
