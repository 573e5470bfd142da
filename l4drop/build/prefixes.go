package build

import (
	"encoding/binary"
	"math"
	"slices"

	"golang.org/x/net/bpf"
)

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
// rule ends in a merged set that its table decides (prefixesHeld); if one
// does not, group starts again without folding.

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
	for l := 0; l <= 32; l++ {
		if m == mask32(l) {
			return l
		}
	}
	return -1
}

// mask32 is the mask of an IPv4 prefix of l bits.
func mask32(l int) uint32 { return binary.BigEndian.Uint32(prefixMask(l, 32)) }

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

// foldedRule is a rule whose prefix test was folded, and the pc of its
// test's jeq.
type foldedRule struct{ rule, jeq int }

// foldPrefixes folds the prefix tests of rules that could be sets
// (prefixTest; one matcher, a simple action) family by family, and
// returns the rules it folded.
func foldPrefixes(rules []compiledRule) []foldedRule {
	type member struct {
		rule, pc, length int
	}
	families := map[string][]member{}
	var order []string
	for i := range rules {
		cr := &rules[i]
		if len(cr.matchers) != 1 || !cr.rule.Action.simple() || cr.hashed {
			continue
		}
		prog := cr.matchers[0].prog
		pc, l, ok := prefixTest(prog)
		if !ok {
			continue
		}
		p := slices.Clone(prog)
		p[pc] = bpf.ALUOpConstant{Op: bpf.ALUOpAnd}
		key, _, ok := shapeKey(p)
		if !ok {
			continue
		}
		key += "/" + string(cr.rule.Family)
		if _, ok := families[key]; !ok {
			order = append(order, key)
		}
		families[key] = append(families[key], member{i, pc, l})
	}
	var folded []foldedRule
	for _, key := range order {
		ms := families[key]
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
			folded = append(folded, foldedRule{mb.rule, mb.pc + 1})
		}
	}
	return folded
}

// prefixesHeld reports whether every folded rule is in a merged set its
// table decides, where its table entries are all that make it match, and
// the set's one parameter is the folded jeq's constant alone (a candidate
// recorded at another test would be looked up among the level's values).
func prefixesHeld(rules []compiledRule, folded []foldedRule) bool {
	for _, f := range folded {
		cr := &rules[f.rule]
		sh := cr.matchers[0].shape
		if sh == nil || !sh.set || sh.keyed || sh.ranges || cr.set == "" || !cr.merged || !cr.tableOnly || !cr.direct {
			return false
		}
		if len(sh.params) != 1 || len(sh.params[0]) != 1 || sh.params[0][0] != f.jeq {
			return false
		}
	}
	return true
}
