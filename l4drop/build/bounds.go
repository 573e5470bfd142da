package build

import (
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/l4drop"
)

// Bounded sets. Rules alike but for a key (a port, an address) and a bound
// on one value (`udp dst port P and len > N`, `src host H and ip[8] >= T`,
// `len < N`) were tested one by one, a call each or, reading the length, a
// function each: 1,000 of them 2.9-9.3 µs a packet. When keyedDecides holds
// for all their parameters, the bound's test included, and a path to a
// match meets the bound once, the keyed run takes the bound's test as
// passed too, recording the value A has there. A rule matches exactly when
// its key is the run's and A passes its bound: its path is the run's. So
// the table, keyed by the others, holds for each key the rules that could
// be first for some A: in rule order, each with a bound lower than all
// the key's rules before it (a rule whose bound an earlier rule's is not
// above is never first). The first of those whose bound A passes is the
// rule. The loader places them from the enabled rules; the build makes
// room for the most any choice of switches can place, the longest run of
// falling bounds, in buckets of 4 to 64 slots (boundsFit; a key with a
// longer run goes one by one). A bucket's lookup stops at its first free
// slot: the rules the loader places, not the room made for them, are what
// a packet walks (with every rule on, the records of a key's bounds in
// rule order: about ln n of n bounds in random order, where the room is
// for about 2 sqrt n).
//
// An upper bound (`len < N`, `less N`: a test whose true branch never
// matches) is a lower bound on the value's complement, ^A >= ^M for M the
// largest value passing: the run is compiled from the program with the
// bound's branches swapped, so that it goes on where the test passes, and
// the table compares ^A.

// bound says which parameter of a bounded shape is the bound, and how it
// is tested: every test a jge (ge) or every one a jgt, the value passing
// going on (a lower bound) or, upper, failing going on.
type bound struct {
	param     int
	ge, upper bool
}

// boundParam returns the bound of params, when one parameter is tested
// only with jgt or only with jge, every test going on the same way, and
// every other parameter is tested for equality only; and the program the
// keyed run is compiled from: prog, or for an upper bound prog with the
// bound's branches swapped.
func boundParam(prog []bpf.Instruction, params [][]int) (bound, []bpf.Instruction, bool) {
	b := bound{param: -1}
	if len(params) < 2 {
		return b, nil, false
	}
	for k, pcs := range params {
		op := uint16(0)
		for _, pc := range pcs {
			raw, err := prog[pc].Assemble()
			if err != nil || op != 0 && raw.Op != op {
				return b, nil, false
			}
			op = raw.Op
		}
		switch op {
		case 0x15: // jeq #k
		case 0x25, 0x35: // jgt #k, jge #k
			if b.param >= 0 {
				return b, nil, false
			}
			b.param, b.ge = k, op == 0x35
		default:
			return b, nil, false
		}
	}
	if b.param < 0 {
		return b, nil, false
	}
	m := matchable(prog)
	lower, upper := true, true
	for _, pc := range params[b.param] {
		raw, _ := prog[pc].Assemble()
		lower = lower && !m[pc+1+int(raw.Jf)]
		upper = upper && !m[pc+1+int(raw.Jt)]
	}
	switch {
	case lower:
		return b, prog, true
	case upper:
		b.upper = true
		run := slices.Clone(prog)
		for _, pc := range params[b.param] {
			raw, _ := prog[pc].Assemble()
			raw.Jt, raw.Jf = raw.Jf, raw.Jt
			run[pc] = raw.Disassemble()
		}
		return b, run, true
	}
	return b, nil, false
}

// matchable reports for each instruction of prog whether a path from it
// may match (past the end: as if it may).
func matchable(prog []bpf.Instruction) []bool {
	m := make([]bool, len(prog)+1)
	m[len(prog)] = true
	at := func(pc int) bool { return pc < 0 || pc >= len(prog) || m[pc] }
	for pc := len(prog) - 1; pc >= 0; pc-- {
		raw, err := prog[pc].Assemble()
		switch {
		case err != nil:
			m[pc] = true
		case raw.Op == 0x06: // ret #k
			m[pc] = raw.K != 0
		case raw.Op&0x07 == 0x06: // ret a
			m[pc] = true
		case raw.Op == 0x05: // ja
			m[pc] = at(pc + 1 + int(raw.K))
		case raw.Op&0x07 == 0x05:
			m[pc] = at(pc+1+int(raw.Jt)) || at(pc+1+int(raw.Jf))
		default:
			m[pc] = at(pc + 1)
		}
	}
	return m[:len(prog)]
}

// boundOnce reports whether no path of prog to a match meets more than one
// of the tests at sites: one value is recorded for them.
func boundOnce(prog []bpf.Instruction, sites []int) bool {
	site := make([]bool, len(prog))
	for _, pc := range sites {
		site[pc] = true
	}
	const none = -1 // no match down this way
	memo := make([]int, len(prog))
	done := make([]bool, len(prog))
	// The most sites a path from pc to a match meets; cBPF jumps go
	// forward, so the walk ends.
	var walk func(pc int) int
	walk = func(pc int) int {
		if pc < 0 || pc >= len(prog) {
			return math.MaxInt32 // malformed: refuse
		}
		if done[pc] {
			return memo[pc]
		}
		res := none
		raw, err := prog[pc].Assemble()
		switch {
		case err != nil:
			res = math.MaxInt32
		case raw.Op == 0x06: // ret #k
			if raw.K != 0 {
				res = 0
			}
		case raw.Op&0x07 == 0x06: // ret a
			res = 0
		case raw.Op == 0x05: // ja
			res = walk(pc + 1 + int(raw.K))
		case raw.Op&0x07 == 0x05:
			res = max(walk(pc+1+int(raw.Jt)), walk(pc+1+int(raw.Jf)))
		default:
			res = walk(pc + 1)
		}
		if site[pc] && res != none && res != math.MaxInt32 {
			res++
		}
		memo[pc], done[pc] = res, true
		return res
	}
	n := walk(0)
	return n != math.MaxInt32 && n <= 1
}

// boundLow is the least value the table compares that passes a bound
// of constant k: for a lower bound A itself, k for a jge, k+1 for a jgt;
// for an upper bound ^A, ^(k-1) for a jge (A < k), ^k for a jgt (A <= k).
// False for a bound no value passes.
func boundLow(k uint32, b bound) (uint32, bool) {
	switch {
	case b.upper && b.ge:
		return ^(k - 1), k != 0
	case b.upper:
		return ^k, true
	case b.ge:
		return k, true
	}
	return k + 1, k != math.MaxUint32
}

// boundKey is a bounded set member's key: its constants but the bound.
type boundKey [maxParams]uint32

// memberBound returns the key and least passing value (boundLow) of a
// bounded set's member whose constants are args; false if no value
// passes.
func memberBound(args []uint32, b bound) (boundKey, uint32, bool) {
	var key boundKey
	j := 0
	for k, a := range args {
		if k != b.param {
			key[j] = a
			j++
		}
	}
	low, ok := boundLow(args[b.param], b)
	return key, low, ok
}

// fallingRun returns the length of the longest run, in order, of strictly
// falling values of lows: the most rules of one key a table may hold.
func fallingRun(lows []uint32) int {
	// tails[i]: the largest last value of a falling run of i+1 values.
	var tails []uint32
	for _, x := range lows {
		i := sort.Search(len(tails), func(i int) bool { return tails[i] <= x })
		if i == len(tails) {
			tails = append(tails, x)
		} else {
			tails[i] = x
		}
	}
	return len(tails)
}

// boundsFit returns the members of a class of bounded rules whose keys
// fit tables whose buckets hold l4drop.MaxBucketSlots entries: no longer
// falling run of bounds. A run of the class has no longer one.
func boundsFit(ms []member, params [][]int, b bound) []member {
	keys := make([]boundKey, len(ms))
	lows := map[boundKey][]uint32{}
	for i, mb := range ms {
		args := make([]uint32, len(params))
		for k, pcs := range params {
			args[k] = jumpK(mb.m.prog, pcs[0])
		}
		key, low, ok := memberBound(args, b)
		keys[i] = key
		if ok {
			lows[key] = append(lows[key], low)
		}
	}
	fit := make([]member, 0, len(ms))
	for i, mb := range ms {
		if fallingRun(lows[keys[i]]) <= l4drop.MaxBucketSlots {
			fit = append(fit, mb)
		}
	}
	return fit
}

// boundedSlots are the sizes of a bounded set's buckets: the first that
// holds the longest falling run of the set's keys.
var boundedSlots = []int{l4drop.HashSlots, 8, 16, 32, l4drop.MaxBucketSlots}

// boundsPrelude is what bounded sets need: buckets of one or two key
// words, each slot with the least value passing its rule's bound, and
// their lookups.
var boundsPrelude = func() string {
	var b strings.Builder
	for _, n := range []int{1, 2} {
		for _, slots := range boundedSlots {
			b.WriteString(boundedBucketC(n, slots))
		}
	}
	return b.String()
}()

// boundedBucket names the bucket type and lookup of a bounded set of n
// key words and buckets of slots slots.
func boundedBucket(n, slots int) string {
	if slots == l4drop.HashSlots {
		return fmt.Sprintf("l4sb%d", n)
	}
	return fmt.Sprintf("l4sb%d_%d", n, slots)
}

// boundedBucketC is the C of the buckets of a bounded set of n key words
// (struct l4sbN_bucket, or l4sbN_S_bucket for buckets of S slots) and
// their lookup, l4sbN_find(bk, k0..., a): the first rule bucket bk, the
// key's, holds for the key whose bound a passes, or L4_NRULES. A key's
// rules are in rule order, their bounds falling: the first a passes is
// the first that matches.
func boundedBucketC(n, slots int) string {
	var params, eq []string
	for k := range n {
		params = append(params, fmt.Sprintf("__u32 k%d", k))
		eq = append(eq, fmt.Sprintf("bk->s[s].key[%d] == k%d", k, k))
	}
	name := boundedBucket(n, slots)
	return fmt.Sprintf(`
struct %[2]s_bucket {
	struct {
		__u32 key[%[1]d];
		__u32 low;
		__u32 rule1;
	} s[%[3]d];
};

`, n, name, slots) + slotFindC(name+"_find", name+"_bucket", strings.Join(append(params, "__u32 a"), ", "),
		strconv.Itoa(slots), strings.Join(eq, " && ")+" && a >= bk->s[s].low")
}

// writeBoundedSet is writeKeyedSet for a bounded set.
func writeBoundedSet(w *cWriter, meta *l4drop.Meta, rules []compiledRule, idx []int, p, b int, inline string) (l4drop.SetGroup, error) {
	sh := rules[idx[0]].matchers[0].shape
	n := len(sh.params) - 1 // key words
	g := l4drop.SetGroup{Map: fmt.Sprintf("l4s_%d_%d", p, b), Keys: n, Bounded: true}
	lows := map[boundKey][]uint32{}
	var order []boundKey
	for _, i := range idx {
		key, low, ok := memberBound(rules[i].matchers[0].args, sh.bound)
		if !ok {
			continue // a bound no value passes: the rule never matches
		}
		g.Members = append(g.Members, l4drop.SetMember{Rule: i, Value: key[0], Rest: slices.Clone(key[1:n]), Bound: low})
		if _, seen := lows[key]; !seen {
			order = append(order, key)
		}
		lows[key] = append(lows[key], low)
	}
	// A key takes as many slots of its bucket as rules of it a choice of
	// switches can place; buckets have as many as the most a key takes.
	var keys [][]uint64
	most := 0
	for _, key := range order {
		words := make([]uint64, n)
		for k := range words {
			words[k] = uint64(key[k])
		}
		run := fallingRun(lows[key])
		most = max(most, run)
		for range run {
			keys = append(keys, words)
		}
	}
	slots := 0
	for _, s := range boundedSlots {
		if s >= most {
			slots = s
			break
		}
	}
	if slots == 0 {
		return g, fmt.Errorf("rules %q to %q: a key with %d falling bounds, more than a bucket's %d slots", rules[idx[0]].rule.Name, rules[idx[len(idx)-1]].rule.Name, most, l4drop.MaxBucketSlots)
	}
	if slots != l4drop.HashSlots {
		g.Slots = slots
	}
	if len(keys) == 0 {
		keys = append(keys, make([]uint64, n)) // no rule can match: an empty table
	}
	value := fmt.Sprintf("k[%d].v", sh.bound.param)
	if sh.bound.upper {
		value = "~" + value
	}
	name := boundedBucket(n, slots)
	err := writeKeyedGroup(w, meta, rules, idx, p, b, inline, &g, keys, name+"_bucket", n+2, func(bk string, words []string) string {
		return fmt.Sprintf("%s_find(%s, %s, %s)", name, bk, strings.Join(words, ", "), value)
	})
	return g, err
}
