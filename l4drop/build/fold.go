package build

import (
	"math"
	"math/bits"
	"slices"

	"golang.org/x/net/bpf"
)

// Folding: rules whose matchers are sets in all but their cBPF's form are
// rewritten into a set's form, their table entries listed (values).
//
// Prefix folding. `src net A/L` rules of one shape but for L are sets of
// their own, one a prefix length, since the length is the constant of an
// and, not of a jump; a block list of an attack's sources has a dozen
// lengths, so a dozen groups a packet (14 lengths: 33 ns above drop-all).
// A prefix of L bits is also every prefix of a longer length M it holds,
// 2^(M-L) of them: rules of neighbouring lengths are folded to one level,
// the and's mask made the level's, and the rule's table entries are every
// value of the level its prefix holds. The rule then matches where its
// masked address is one of them, which is where it matched before, and
// the set's table, which gives the first enabled rule holding a value,
// keeps the first match first across lengths. Levels are chosen for the
// fewest groups within a budget of table entries.
//
// A folded matcher is right only through its set's table (its program
// alone tests one of its values), so folding holds only if every folded
// rule ends in a merged set that its table decides (foldsFailed); if one
// does not, group starts again without folding its family.
//
// Union folding. `src host A or src host B` compares one value with two
// constants in a chain (the first's failing branch is the second, which
// nothing else leads to): two parameters, so no set, and 1,000 such rules
// called a function each (10 us a packet). Setting every constant of the
// chain to the first's makes them one parameter of one value; the rule's
// table entries are all the chain's constants, and a value the table has
// is a match, as one of the chain's tests is equal.

// Mask folding. `src host A` and `src net A/L` are two shapes, the net's
// test an and and a jeq where the host's is the jeq alone: two tables, two
// lookups a packet, and prefix folding cannot join them (a /24 is 256 /32
// entries). Where a family has both, the nets' and is dropped, so that
// every rule is the host's test of its own constant, and the set's table,
// whose bucket the value under the family's shortest mask picks, gives
// each constant its rule's mask: a slot matches where the value under its
// mask is its constant. A net's test alone would then compare the whole
// value, so it too is right only through its set's table (foldsFailed).

// maxMaskShare bounds the rules of a mask-folded family whose constants
// are one under the family's shortest mask (a net and the hosts in it):
// they take slots of one bucket, MaxBucketSlots at most.
const maxMaskShare = 8

// maxFoldValues bounds the table entries of one family's folded rules.
const maxFoldValues = 1 << 16

// prefixTest finds the test of an IPv4 prefix in prog: an and of a mask of
// 1 to 31 leading ones, then a jeq of the result against a constant with
// no bits outside the mask, whose branches land on a match and on a miss,
// so nothing after it reads the masked value. It returns the and's pc and
// the prefix length.
func prefixTest(prog []bpf.Instruction) (pc, length int, ok bool) {
	found := false
	for i := 0; i+1 < len(prog); i++ {
		and, err := prog[i].Assemble()
		if err != nil || and.Op != 0x54 { // alu and #k
			continue
		}
		l := prefixLen(and.K)
		if l < 1 || l > 31 {
			continue
		}
		jeq, err := prog[i+1].Assemble()
		if err != nil || jeq.Op != 0x15 || jeq.K&^and.K != 0 { // jeq #k
			continue
		}
		match, okT := retAt(prog, landing(prog, i+2+int(jeq.Jt)))
		miss, okF := retAt(prog, landing(prog, i+2+int(jeq.Jf)))
		if !okT || !okF || !match || miss {
			continue
		}
		if found {
			return 0, 0, false // two: which one varies is not known here
		}
		pc, length, found = i, l, true
	}
	return pc, length, found
}

// prefixLen is the length of the prefix mask m, or -1 if m is none.
func prefixLen(m uint32) int {
	if l := bits.OnesCount32(m); m == mask32(l) {
		return l
	}
	return -1
}

// mask32 is the mask of an IPv4 prefix of l bits (0 to 32; a shift of 32
// is 0 in Go).
func mask32(l int) uint32 { return ^uint32(0) << (32 - l) }

// prefixLevels folds prefix lengths lens (ascending, counts[i] rules of
// lens[i]) to levels: it returns each length's level, the fewest levels
// (then the fewest table entries) with at most maxFoldValues entries and
// at least minTableSet rules a level, or nil if none is fewer levels than
// lengths.
func prefixLevels(lens, counts []int) []int {
	k := len(lens)
	// span is what folding lens[j..i] to lens[i] costs: entries, rules.
	span := func(j, i int) (values, rules int) {
		for m := j; m <= i; m++ {
			shift := lens[i] - lens[m]
			if shift > 16 {
				return maxFoldValues + 1, 0
			}
			values += counts[m] << shift
			rules += counts[m]
		}
		return values, rules
	}
	// best[n][i]: the fewest entries covering lens[0..i] with n levels,
	// the last at lens[i]; from[n][i] where the last level's span starts.
	const none = math.MaxInt
	best := make([][]int, k+1)
	from := make([][]int, k+1)
	for n := range best {
		best[n] = slices.Repeat([]int{none}, k)
		from[n] = make([]int, k)
	}
	for n := 1; n <= k; n++ {
		for i := range k {
			for j := 0; j <= i; j++ {
				prev := 0
				if j > 0 {
					if prev = best[n-1][j-1]; prev == none {
						continue
					}
				} else if n != 1 {
					continue
				}
				values, rules := span(j, i)
				if rules < minTableSet || prev+values > maxFoldValues {
					continue
				}
				if prev+values < best[n][i] {
					best[n][i], from[n][i] = prev+values, j
				}
			}
		}
		if n >= k {
			return nil // no fewer levels than lengths
		}
		if best[n][k-1] == none {
			continue
		}
		levels := make([]int, k)
		for i := k - 1; n > 0; n-- {
			j := from[n][i]
			for m := j; m <= i; m++ {
				levels[m] = lens[i]
			}
			i = j - 1
		}
		return levels
	}
	return nil
}

// foldedRule is a rule whose matcher was folded, its family, and the pcs
// of the jeqs whose constant is its set's parameter.
type foldedRule struct {
	rule   int
	family string
	jeqs   []int
}

// fold folds the matchers of rules that could be sets, but for the
// families in skip: prefix tests of many lengths (foldPrefixes) and chains
// of equal tests (foldUnions). It returns the rules it folded.
func fold(rules []compiledRule, skip map[string]bool) []foldedRule {
	folded := foldMasks(rules, skip)
	folded = append(folded, foldPrefixes(rules, skip)...)
	return append(folded, foldUnions(rules, skip)...)
}

// prefixRule is a rule's prefix test: the and's pc, the prefix length.
type prefixRule struct {
	rule, pc, length int
}

// foldMasks folds the prefix tests of rules that could be sets into the
// tests of the same shape without the and, family by family, where a
// family has such tests of the whole value too (mask folding), and
// returns the nets it folded.
func foldMasks(rules []compiledRule, skip map[string]bool) []foldedRule {
	type member = prefixRule // pc -1: no and, the whole value
	var fams families[member]
	without := map[int][]bpf.Instruction{} // a net's program without its and
	for i := range rules {
		cr := &rules[i]
		if !foldable(cr) {
			continue
		}
		prog := cr.matchers[0].prog
		m := member{i, -1, 32}
		if pc, l, ok := prefixTest(prog); ok {
			if prog = removeInsn(prog, pc); prog == nil {
				continue
			}
			m.pc, m.length = pc, l
			without[i] = prog
		}
		if key, ok := familyKey("mask", cr, prog); ok && !skip[key] {
			fams.add(key, m)
		}
	}
	var folded []foldedRule
	for _, key := range fams.order {
		ms := fams.of[key]
		jeq, shortest := -1, 32
		for _, m := range ms {
			if m.pc < 0 {
				continue
			}
			if jeq >= 0 && m.pc != jeq {
				jeq = -2
				break
			}
			jeq, shortest = m.pc, min(shortest, m.length)
		}
		hosts := slices.IndexFunc(ms, func(m member) bool { return m.pc < 0 }) >= 0
		if jeq < 0 || !hosts || len(ms) < minTableSet {
			continue
		}
		// After the and's removal, the nets' jeq is at its pc: the hosts',
		// of the same shape, must be there too.
		share := map[uint32]int{}
		ok := true
		for _, m := range ms {
			p := rules[m.rule].matchers[0].prog
			if m.pc < 0 && !isJEQ(p, jeq) {
				ok = false
				break
			}
			at := jeq
			if m.pc >= 0 {
				at = m.pc + 1
			}
			share[jumpK(p, at)&mask32(shortest)]++
		}
		if !ok || maxValue(share) > maxMaskShare {
			continue
		}
		for _, mb := range ms {
			m := &rules[mb.rule].matchers[0]
			if mb.pc < 0 {
				m.values, m.masks = []uint32{jumpK(m.prog, jeq)}, []uint32{mask32(32)}
				continue
			}
			m.values, m.masks = []uint32{jumpK(m.prog, mb.pc+1)}, []uint32{mask32(mb.length)}
			m.prog = without[mb.rule]
			folded = append(folded, foldedRule{mb.rule, key, []int{jeq}})
		}
	}
	return folded
}

// maxValue is the largest value of m, 0 if it has none.
func maxValue[K comparable](m map[K]int) int {
	most := 0
	for _, n := range m {
		most = max(most, n)
	}
	return most
}

// removeInsn returns prog without instruction pc, the jumps over it one
// shorter, or nil if prog does not assemble.
func removeInsn(prog []bpf.Instruction, pc int) []bpf.Instruction {
	out := make([]bpf.Instruction, 0, len(prog)-1)
	for i, ins := range prog {
		if i == pc {
			continue
		}
		raw, err := ins.Assemble()
		if err != nil {
			return nil
		}
		if i < pc && raw.Op&0x07 == 0x05 { // jmp: forward only
			if raw.Op == 0x05 { // ja
				if i+1+int(raw.K) > pc {
					raw.K--
				}
			} else {
				if i+1+int(raw.Jt) > pc {
					raw.Jt--
				}
				if i+1+int(raw.Jf) > pc {
					raw.Jf--
				}
			}
		}
		out = append(out, raw.Disassemble())
	}
	return out
}

// families collects values by family, in the order families first come.
type families[T any] struct {
	order []string
	of    map[string][]T
}

func (f *families[T]) add(key string, v T) {
	if f.of == nil {
		f.of = map[string][]T{}
	}
	if _, ok := f.of[key]; !ok {
		f.order = append(f.order, key)
	}
	f.of[key] = append(f.of[key], v)
}

// familyKey is the key of the family of kind that rule cr is in, p being
// its matcher with what varies in the family made the same.
func familyKey(kind string, cr *compiledRule, p []bpf.Instruction) (string, bool) {
	key, _, ok := shapeKey(p)
	return kind + "/" + string(cr.rule.Family) + "/" + key, ok
}

// foldable reports whether rule cr could be in a set: one matcher, a
// simple action, not in the DNS table, not folded already.
func foldable(cr *compiledRule) bool {
	return len(cr.matchers) == 1 && cr.rule.Action.simple() && !cr.hashed && cr.matchers[0].values == nil
}

// foldPrefixes folds the prefix tests of rules that could be sets
// (prefixTest; one matcher, a simple action) family by family, and
// returns the rules it folded.
func foldPrefixes(rules []compiledRule, skip map[string]bool) []foldedRule {
	type prefix = prefixRule
	var fams families[prefix]
	for i := range rules {
		cr := &rules[i]
		if !foldable(cr) {
			continue
		}
		prog := cr.matchers[0].prog
		pc, l, ok := prefixTest(prog)
		if !ok {
			continue
		}
		p := slices.Clone(prog)
		p[pc] = bpf.ALUOpConstant{Op: bpf.ALUOpAnd}
		if key, ok := familyKey("prefix", cr, p); ok && !skip[key] {
			fams.add(key, prefix{i, pc, l})
		}
	}
	var folded []foldedRule
	for _, key := range fams.order {
		ms := fams.of[key]
		count := map[int]int{}
		for _, m := range ms {
			count[m.length]++
		}
		var lens, counts []int
		for l := 1; l <= 31; l++ {
			if count[l] > 0 {
				lens, counts = append(lens, l), append(counts, count[l])
			}
		}
		levels := prefixLevels(lens, counts)
		if levels == nil {
			continue
		}
		level := map[int]int{}
		for i, l := range lens {
			level[l] = levels[i]
		}
		for _, mb := range ms {
			m := &rules[mb.rule].matchers[0]
			to := level[mb.length]
			v := jumpK(m.prog, mb.pc+1)
			p := slices.Clone(m.prog)
			p[mb.pc] = bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask32(to)}
			m.prog = p
			m.values = nil
			for x := range uint32(1) << (to - mb.length) {
				m.values = append(m.values, v|x<<(32-to))
			}
			folded = append(folded, foldedRule{mb.rule, key, []int{mb.pc + 1}})
		}
	}
	return folded
}

// foldsFailed returns the families of folded rules that are not each in
// a merged set its table decides, where its table entries are all that
// make it match, with the folded jeqs' constant as the set's one
// parameter alone (a candidate recorded at another test would be looked
// up among the folded values).
func foldsFailed(rules []compiledRule, folded []foldedRule) []string {
	var failed []string
	for _, f := range folded {
		cr := &rules[f.rule]
		sh := cr.matchers[0].shape
		held := sh != nil && sh.set && !sh.keyed && !sh.ranges && cr.set != "" && cr.merged && cr.tableOnly && cr.direct &&
			len(sh.params) == 1 && slices.Equal(sh.params[0], f.jeqs)
		if !held && !slices.Contains(failed, f.family) {
			failed = append(failed, f.family)
		}
	}
	return failed
}

// unionChain finds the tests of one value against a few constants in
// prog: jeq #k whose true branch lands on a match and whose false branch
// is another of them or lands on a miss, each reached, but for the first
// of a chain, only from the false branches of others (so they compare one
// value, which nothing changes between them). A chain may start on
// several paths (the IPv4 and the IPv6 port of `udp dst port 53 or udp
// dst port 853` meet at the second test); each path's chain must hold the
// same constants, two or more. It returns the tests' pcs, ascending; ok
// is false if prog has none, or any that breaks these rules.
func unionChain(prog []bpf.Instruction) (pcs []int, ok bool) {
	ways := make([]int, len(prog)+1)
	in := func(pc int) {
		if pc >= 0 && pc < len(ways) {
			ways[pc]++
		}
	}
	for i, ins := range prog {
		raw, err := ins.Assemble()
		switch {
		case err != nil:
			return nil, false
		case raw.Op&0x07 == 0x06: // ret
		case raw.Op == 0x05: // ja
			in(i + 1 + int(raw.K))
		case raw.Op&0x07 == 0x05:
			in(i + 1 + int(raw.Jt))
			if raw.Jf != raw.Jt {
				in(i + 1 + int(raw.Jf))
			}
		default:
			in(i + 1)
		}
	}
	// Jumps go forward: a test's false branch is decided before it.
	inSet := make([]bool, len(prog))
	next := make([]int, len(prog)) // the false branch's test, or -1
	fromSet := make([]int, len(prog)+1)
	for pc := len(prog) - 1; pc >= 0; pc-- {
		if !isJEQ(prog, pc) {
			continue
		}
		raw, _ := prog[pc].Assemble()
		if match, ok := retAt(prog, landing(prog, pc+1+int(raw.Jt))); !ok || !match {
			continue
		}
		f := pc + 1 + int(raw.Jf)
		switch {
		case f < len(prog) && inSet[f]:
			next[pc] = f
		default:
			if match, ok := retAt(prog, landing(prog, f)); !ok || match {
				continue
			}
			next[pc] = -1
		}
		inSet[pc] = true
	}
	for pc := range prog {
		if inSet[pc] && next[pc] >= 0 {
			fromSet[next[pc]]++
		}
	}
	var want []uint32
	for pc := range prog {
		if !inSet[pc] {
			continue
		}
		pcs = append(pcs, pc)
		if fromSet[pc] > 0 {
			if fromSet[pc] != ways[pc] {
				return nil, false // reached from elsewhere too
			}
			continue
		}
		// A chain's first test: the constants down its chain.
		var ks []uint32
		for t := pc; t >= 0; t = next[t] {
			ks = append(ks, jumpK(prog, t))
		}
		slices.Sort(ks)
		ks = slices.Compact(ks)
		if want == nil {
			want = ks
		} else if !slices.Equal(ks, want) {
			return nil, false
		}
	}
	if len(want) < 2 {
		return nil, false
	}
	return pcs, true
}

// foldUnions folds the chains of rules that could be sets (unionChain)
// family by family, families of minTableSet rules or more, and returns
// the rules it folded.
func foldUnions(rules []compiledRule, skip map[string]bool) []foldedRule {
	var fams families[foldedRule]
	for i := range rules {
		cr := &rules[i]
		if !foldable(cr) {
			continue
		}
		pcs, ok := unionChain(cr.matchers[0].prog)
		if !ok {
			continue
		}
		if key, ok := familyKey("union", cr, cr.matchers[0].prog); ok && !skip[key] {
			fams.add(key, foldedRule{i, key, pcs})
		}
	}
	var folded []foldedRule
	for _, key := range fams.order {
		fs := fams.of[key]
		if len(fs) < minTableSet {
			continue
		}
		for _, f := range fs {
			m := &rules[f.rule].matchers[0]
			p := slices.Clone(m.prog)
			first := jumpK(p, f.jeqs[0])
			m.values = nil
			for _, pc := range f.jeqs {
				if v := jumpK(p, pc); !slices.Contains(m.values, v) {
					m.values = append(m.values, v)
				}
				raw, _ := p[pc].Assemble()
				raw.K = first
				p[pc] = raw.Disassemble()
			}
			m.prog = p
		}
		folded = append(folded, fs...)
	}
	return folded
}
