package build

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"

	"github.com/l4drop/l4drop/l4drop"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpfc"
)

// Large rule sets are mostly the same rule with other constants: a port, an
// address, a length. Compiling each to its own C function makes clang's
// time grow with the number of rules, about 10 ms each. Matchers of one
// shape (cBPF programs equal but for the constants of their conditional
// jumps) share one function instead, taking those constants as
// parameters: cbpfc compiles the shape once with COpts.Params, and its
// code is right for any constant, so a shared function never changes what
// a rule matches. Offsets, loads and arithmetic are never parameters: the
// verifier must see offsets as constants.

// minTemplate is the fewest matchers worth a shared function. A call per
// rule costs more per packet than inlined code (100 port rules: about
// 1.3 µs against 0.4 µs), so only classes large enough for clang's time to
// matter share one (1,000 port rules: 1 s to build against 15 s)...
const minTemplate = 128

// ...unless the rules can be tested at once (see the set comment below):
// then a few already gain (1,000 port rules: 0.15 µs a packet against
// 14 µs).
const minSet = 16

// minTableSet is the fewest rules worth a set when its table decides
// every packet (see tableDecides): no fallback then, and a set costs
// about what four rules one by one do. It is also the shortest run of
// consecutive rules that becomes a set: each run has a map of its own.
const minTableSet = 4

// Merged sets. A set whose table decides every packet (tableDecides, or
// keyed) needs no run of consecutive rules to keep the first match first:
// its table gives the first enabled rule of the set that matches, wherever
// the set's rules are. So all the set's rules in a program, drop and pass
// (l4_code gives the action of the rule found), are one group, one table,
// tested where the first of them is; the program keeps the first rule the
// groups tested so far matched (best), and an item after that rule is not
// tested at all, while a match of an item earlier than best wins over it.
// An operator's rule set is runs of a few shapes in turn (MixedRuleSet):
// tested run by run, 10,000 rules were about 60 lookups a packet, merged 6
// (400 ns against 28). Rules whose test does something (monitor,
// ratelimit) in a block after a group are tested only before best.

// maxParams keeps calls within eBPF's five argument registers (data and
// data_end take two).
const maxParams = 3

// shape is a class of matchers alike but for jump constants.
type shape struct {
	fn string // the shared function; fn+"_c" collects candidates
	// params[k] are the instructions whose constant is parameter k.
	params [][]int
	// isParam marks those instructions.
	isParam []bool
	set     bool // one parameter, tested for equality only, or ranges
	// keyed: several parameters, and a run that takes every test of them
	// as equal finds the only constants that can match (keyedDecides).
	keyed bool
	// ranges: a set of two parameters, a range (rangeShape): the table
	// holds every value of each rule's range.
	ranges bool
	// bounded: a keyed set one of whose parameters, bound, is a lower or
	// an upper bound (boundParam): the table, keyed by the others, gives
	// each key's rules whose bound the value A had at the bound's test
	// passes.
	bounded bool
	bound   bound
	// run is the program the keyed run is compiled from when it is not
	// the matchers' (an upper bound's: boundParam).
	run []bpf.Instruction
	// noCall: the matchers read the packet's length, which a shared
	// function cannot (readsLen). Such a shape is only ever a keyed set,
	// and its rules that no table tests compile alone (groupAs).
	noCall bool
}

// maxRangeValues bounds the values all the ranges of a set hold: a set's
// table has one entry a value (port ranges of a few dozen ports each).
// A class of ranges holding more is split into runs that fit
// (rangeChunks); a range wider than this alone is no set.
const maxRangeValues = 1 << 16

// rangeShape reports whether prog tests a range of one value A with its
// two parameters, A >= params[0] and not A > params[1], as pcap's
// portrange does: every test of params[0] is a jge whose true branch is a
// test of params[1], a jgt whose false branch matches and whose true
// branch goes where the jge's false branch goes (the next direction of
// `portrange`, or no match); and a test of params[1] follows nothing
// else. A run that takes every jge as false then meets each value a range
// is tested on, and a value in a rule's range is a match of that rule.
func rangeShape(prog []bpf.Instruction, params [][]int) bool {
	if len(params) != 2 {
		return false
	}
	op := func(pc int) (bpf.RawInstruction, bool) {
		raw, err := prog[pc].Assemble()
		return raw, err == nil
	}
	upper := map[int]int{} // jgt -> where its true branch lands
	for _, pc := range params[1] {
		raw, ok := op(pc)
		if !ok || raw.Op != 0x25 { // jgt #k
			return false
		}
		if m, ok := retAt(prog, landing(prog, pc+1+int(raw.Jf))); !ok || !m {
			return false
		}
		upper[pc] = landing(prog, pc+1+int(raw.Jt))
	}
	lower := map[int]bool{}
	for _, pc := range params[0] {
		raw, ok := op(pc)
		if !ok || raw.Op != 0x35 { // jge #k
			return false
		}
		above, ok := upper[pc+1+int(raw.Jt)]
		below := pc + 1 + int(raw.Jf)
		if _, bad := upper[below]; !ok || bad || above != landing(prog, below) {
			return false
		}
		lower[pc] = true
	}
	// Nothing else leads to an upper bound's test.
	for pc := range prog {
		raw, ok := op(pc)
		if !ok {
			return false
		}
		var next []int
		switch {
		case raw.Op&0x07 == 0x06: // ret
		case raw.Op == 0x05:
			next = []int{pc + 1 + int(raw.K)}
		case raw.Op&0x07 == 0x05:
			next = []int{pc + 1 + int(raw.Jt), pc + 1 + int(raw.Jf)}
			if lower[pc] {
				next = next[1:] // its true branch is the one allowed
			}
		default:
			next = []int{pc + 1}
		}
		for _, n := range next {
			if _, ok := upper[n]; ok {
				return false
			}
		}
	}
	return true
}

// rangeWidth is how many values the range of a matcher of a range shape
// holds, or 0 for an empty one.
func rangeWidth(prog []bpf.Instruction, params [][]int) int {
	lo, hi := jumpK(prog, params[0][0]), jumpK(prog, params[1][0])
	if hi < lo {
		return 0
	}
	return int(hi-lo) + 1
}

// shapeKey is prog's instructions with the constants of conditional jumps
// (against K) zeroed, and the indexes of those jumps.
func shapeKey(prog []bpf.Instruction) (string, []int, bool) {
	var b []byte
	var jumps []int
	for i, ins := range prog {
		raw, err := ins.Assemble()
		if err != nil {
			return "", nil, false
		}
		// Class JMP, not ja, operand K.
		if raw.Op&0x07 == 0x05 && raw.Op&0xf0 != 0x00 && raw.Op&0x08 == 0 {
			jumps = append(jumps, i)
			raw.K = 0
		}
		b = binary.LittleEndian.AppendUint16(b, raw.Op)
		b = append(b, raw.Jt, raw.Jf)
		b = binary.LittleEndian.AppendUint32(b, raw.K)
	}
	return string(b), jumps, true
}

// jumpK is the constant of the conditional jump at i.
func jumpK(prog []bpf.Instruction, i int) uint32 {
	raw, _ := prog[i].Assemble()
	return raw.K
}

// isJEQ reports whether prog[i] is a jeq against a constant.
func isJEQ(prog []bpf.Instruction, i int) bool {
	raw, err := prog[i].Assemble()
	return err == nil && raw.Op == 0x15
}

// shapeParams returns the parameters of programs of one shape whose
// conditional jumps are at jumps: one per distinct vector of constants over
// the programs (a port tested on the IPv4 and on the IPv6 path is one),
// each the jumps that compare it. Constants equal in all stay constants.
func shapeParams(progs [][]bpf.Instruction, jumps []int) [][]int {
	var params [][]int
	vecs := map[string]int{}
	for _, pc := range jumps {
		var vec []byte
		for _, p := range progs {
			vec = binary.LittleEndian.AppendUint32(vec, jumpK(p, pc))
		}
		same := true
		for k := 4; k < len(vec); k += 4 {
			if string(vec[k:k+4]) != string(vec[:4]) {
				same = false
				break
			}
		}
		if same {
			continue
		}
		if k, ok := vecs[string(vec)]; ok {
			params[k] = append(params[k], pc)
			continue
		}
		vecs[string(vec)] = len(params)
		params = append(params, []int{pc})
	}
	return params
}

// member is a matcher of a shape class, and its conditional jumps.
type member struct {
	m     *matcher
	jumps []int
}

// rangeChunks splits a class of ranges (rangeShape, with params) into
// runs of consecutive members whose ranges hold maxRangeValues values or
// fewer together.
func rangeChunks(ms []member, params [][]int) [][]member {
	var chunks [][]member
	start, values := 0, 0
	for i, mb := range ms {
		w := rangeWidth(mb.m.prog, params)
		if i > start && values+w > maxRangeValues {
			chunks = append(chunks, ms[start:i])
			start, values = i, 0
		}
		values += w
	}
	return append(chunks, ms[start:])
}

// templates groups the matchers of rules by shape and sets the fn, args
// and shape of those that share a function. It returns the C of the shared
// functions. Matchers it leaves alone keep fn empty.
func templates(rules []compiledRule) (string, error) {
	classes := map[string][]member{}
	// Whether a class may share a function: what rules this out is in
	// the instructions a shape key keeps (extensions, loads), so the
	// first member of a class answers for all; cbpfc parses a program to
	// tell, which thousands of rules would pay each.
	shareable := map[string]bool{}
	var order []string
	for i := range rules {
		for j := range rules[i].matchers {
			m := &rules[i].matchers[j]
			key, jumps, ok := shapeKey(m.prog)
			if !ok || len(jumps) == 0 {
				continue
			}
			can, seen := shareable[key]
			if !seen {
				can = !cbpfc.UsesContext(m.prog) && !cbpfc.UsesHelpers(m.prog)
				shareable[key] = can
			}
			if !can {
				continue
			}
			if _, ok := classes[key]; !ok {
				order = append(order, key)
			}
			classes[key] = append(classes[key], member{m, jumps})
		}
	}
	var out strings.Builder
	n := 0
	// A class of ranges holding more values than a table takes is tested
	// in runs that fit one each (chunks), each a shape of its own: a call
	// a rule cost 200 ranges of 500 ports 1.2-2.2 µs a packet.
	work := make([][]member, 0, len(order))
	for _, key := range order {
		work = append(work, classes[key])
	}
	for len(work) > 0 {
		ms := work[0]
		work = work[1:]
		if len(ms) < minTableSet {
			continue
		}
		first := ms[0].m.prog
		var progs [][]bpf.Instruction
		for _, mb := range ms {
			progs = append(progs, mb.m.prog)
		}
		params := shapeParams(progs, ms[0].jumps)
		if len(params) == 0 || len(params) > maxParams {
			continue
		}
		sh := &shape{fn: fmt.Sprintf("l4_t%d", n), params: params, isParam: make([]bool, len(first))}
		for _, pcs := range params {
			for _, pc := range pcs {
				sh.isParam[pc] = true
			}
		}
		allJEQ := true
		for _, pcs := range params {
			for _, pc := range pcs {
				allJEQ = allJEQ && isJEQ(first, pc)
			}
		}
		sh.set = len(params) == 1 && allJEQ
		if !allJEQ && rangeShape(first, params) {
			values := 0
			for _, mb := range ms {
				values += rangeWidth(mb.m.prog, params)
			}
			sh.set, sh.ranges = values <= maxRangeValues, values <= maxRangeValues
			// A run of two or more fits by construction: only a class
			// is split, once.
			if !sh.set && len(ms) > 1 {
				work = append(work, rangeChunks(ms, params)...)
				continue
			}
		}
		// One parameter whose equal test does not lead straight to a
		// match (tests follow it) would need a candidate run and then a
		// second run of the matcher per candidate; keyed, one run
		// decides.
		sh.keyed = allJEQ && (len(params) > 1 || !equalMatches(first, sh.isParam)) && keyedDecides(first, params)
		if !sh.set && !sh.keyed {
			if b, run, ok := boundParam(first, params); ok && keyedDecides(run, params) && boundOnce(run, params[b.param]) {
				// The rules of keys with more falling bounds than a
				// bucket holds go one by one; the others are a shape
				// again, whose parameters may be fewer.
				if fit := boundsFit(ms, params, b); len(fit) < len(ms) {
					work = append(work, fit)
					continue
				}
				sh.keyed, sh.bounded, sh.bound = true, true, b
				if b.upper {
					sh.run = run
				}
			}
		}
		if sh.noCall = readsLen(first); sh.noCall && !sh.keyed {
			continue
		}
		if len(ms) < minSet && !(sh.set && tableDecides(first, sh.isParam)) && !sh.keyed {
			continue
		}
		if !sh.set && !sh.keyed && len(ms) < minTemplate {
			continue
		}
		n++
		src, err := shapeC(sh, first)
		if err != nil {
			continue // reported where the matcher is compiled alone
		}
		for _, mb := range ms {
			mb.m.fn, mb.m.shape = sh.fn, sh
			mb.m.args = mb.m.args[:0]
			for _, pcs := range params {
				mb.m.args = append(mb.m.args, jumpK(mb.m.prog, pcs[0]))
			}
		}
		out.WriteString(src)
	}
	return out.String(), nil
}

// readsLen reports whether prog reads the packet's length. Such a matcher
// calls no shared function: clang computes the length in the shared
// function, from the packet pointer plus an offset, in 32 bits, which the
// verifier refuses on pointers (5,000 "len > N" rules). Its shape is a
// keyed set, whose run is inlined, or none (shape.noCall).
func readsLen(prog []bpf.Instruction) bool {
	for _, ins := range prog {
		if ext, ok := ins.(bpf.LoadExtension); ok && ext.Num == bpf.ExtLen {
			return true
		}
	}
	return false
}

// shapeC is the C of a shape's shared functions: the matcher, inlined
// into a global function (a call per rule is cheaper than clang inlining
// thousands of copies, and the verifier checks it once), and for sets the
// variant that collects candidates.
func shapeC(sh *shape, prog []bpf.Instruction) (string, error) {
	names := map[int]string{}
	var decl, call []string
	for k, pcs := range sh.params {
		p := fmt.Sprintf("p%d", k)
		for _, pc := range pcs {
			names[pc] = p
		}
		decl = append(decl, "const uint32_t "+p)
		call = append(call, p)
	}
	var b strings.Builder
	if !sh.noCall {
		inner, err := cbpfc.ToC(prog, cbpfc.COpts{FunctionName: sh.fn + "_i", Params: names})
		if err != nil {
			return "", err
		}
		b.WriteString(inner)
		// A global function: the verifier checks it once, not at every
		// call as it does static ones, so a rule of a shape costs it a
		// call. It cannot take packet pointers: it finds the packet in
		// ctx.
		fmt.Fprintf(&b, "\n__attribute__((noinline)) uint32_t %s(struct xdp_md *ctx, __u32 ipoff, %s)\n{\n", sh.fn, strings.Join(decl, ", "))
		b.WriteString("\tconst uint8_t *data = (const uint8_t *)(long)ctx->data;\n\tconst uint8_t *data_end = (const uint8_t *)(long)ctx->data_end;\n")
		b.WriteString("\tif (ipoff > L4_MAX_IPOFF)\n\t\treturn 0;\n")
		fmt.Fprintf(&b, "\treturn %s_i(data + ipoff, data_end, %s);\n}\n", sh.fn, strings.Join(call, ", "))
	}
	if sh.set {
		cands := map[int]string{}
		for _, pc := range sh.params[0] {
			cands[pc] = "cands"
		}
		c, err := cbpfc.ToC(prog, cbpfc.COpts{FunctionName: sh.fn + "_c", Params: cands,
			ParamType: "struct l4_cands *", ParamTest: "l4_cand"})
		if err != nil {
			return "", err
		}
		b.WriteString("\n" + c)
	}
	if sh.keyed {
		keys := map[int]string{}
		for k, pcs := range sh.params {
			for _, pc := range pcs {
				keys[pc] = fmt.Sprintf("k%d", k)
			}
		}
		run := prog
		if sh.run != nil {
			run = sh.run
		}
		c, err := cbpfc.ToC(run, cbpfc.COpts{FunctionName: sh.fn + "_k", Params: keys,
			ParamType: "struct l4_kv *", ParamTest: "l4_key"})
		if err != nil {
			return "", err
		}
		b.WriteString("\n" + c)
	}
	return b.String(), nil
}

// A shape with one parameter that it only ever tests for equality lets a
// rule set test a packet against a run of its rules at once. Run the
// matcher with every test of the parameter false, recording the values A
// had at the tests: the candidates. For a constant that is no candidate,
// every test is false, so the matcher does what that run did. If that run
// did not match, only rules whose constant is a candidate can match: look
// each candidate up in a table of constant to first rule (see
// hashtable.go), and run the matcher for those found. Otherwise (a match
// with every test false, or more candidates than recorded) the rules are
// tried one by one. Where the matchers' cBPF shows that the first case
// always holds (tableDecides), there is no one by one code at all; where an
// equal test leads straight to a match (equalMatches), a candidate found
// needs no second run.

const maxCandidates = 4

// candsPrelude is what collecting variants and sets need.
var candsPrelude = `
/* A bucket of a set's table: constants and their rules + 1 (0: empty). */
struct l4s_bucket {
	struct {
		__u32 key;
		__u32 rule1;
	} s[L4_HASH_SLOTS];
};

/* l4s_find returns the rule bucket bk, v's, gives for v, or L4_NRULES.
 * The loader fills a bucket's slots in order: the first empty one ends it. */
` + slotFindC("l4s_find", "l4s_bucket", "__u32 v", "L4_HASH_SLOTS", "bk->s[s].key == v") + `
struct l4_cands {
	__u32 v[4];
	__u32 n;
};

/* l4_cand records a value a parameter was compared with, and answers
 * "not equal". */
static __always_inline int l4_cand(struct l4_cands *c, __u32 a)
{
	if (c->n == 0)
		c->v[0] = a;
	else if (c->n == 1)
		c->v[1] = a;
	else if (c->n == 2)
		c->v[2] = a;
	else if (c->n == 3)
		c->v[3] = a;
	c->n++;
	return 0;
}
`

// writeSet writes the function testing rules idx (one run of a set, in
// order) at once, as item b of program p, with its map; inline is the
// function's inlining attribute.
func writeSet(w *cWriter, meta *l4drop.Meta, rules []compiledRule, idx []int, p, b int, inline string) (l4drop.SetGroup, error) {
	first := rules[idx[0]]
	m := first.matchers[0]
	if m.shape.keyed {
		return writeKeyedSet(w, meta, rules, idx, p, b, inline)
	}
	g := l4drop.SetGroup{Map: fmt.Sprintf("l4s_%d_%d", p, b)}
	for _, i := range idx {
		args := rules[i].matchers[0].args
		if vs := rules[i].matchers[0].values; vs != nil {
			masks := rules[i].matchers[0].masks
			for k, v := range vs {
				mb := l4drop.SetMember{Rule: i, Value: v}
				if masks != nil && masks[k] != mask32(32) {
					mb.Mask = masks[k] // 0: the whole value
				}
				g.Members = append(g.Members, mb)
			}
			continue
		}
		if !m.shape.ranges {
			g.Members = append(g.Members, l4drop.SetMember{Rule: i, Value: args[0]})
			continue
		}
		// Every value of the range: the table finds the first rule
		// whose range holds the value tested.
		for v := uint64(args[0]); v <= uint64(args[1]); v++ {
			g.Members = append(g.Members, l4drop.SetMember{Rule: i, Value: uint32(v)})
		}
	}
	find, index := "l4s_find", "v"
	var (
		h    l4drop.HashTable
		decl string
		at   func(string) string
		err  error
	)
	if slices.ContainsFunc(g.Members, func(mb l4drop.SetMember) bool { return mb.Mask != 0 }) {
		h, decl, at, err = maskedTable(&g)
		find, index = g.Map+"_find", fmt.Sprintf("(v & %#xu)", g.IndexMask)
	} else {
		var keys [][]uint64
		seen := map[uint32]bool{}
		for _, mb := range g.Members {
			if !seen[mb.Value] {
				seen[mb.Value] = true
				keys = append(keys, []uint64{uint64(mb.Value)})
			}
		}
		if h, err = l4drop.PlanHash(keys); err == nil {
			decl, at = tableC(g.Map, "l4s_bucket", h.Bits, 8*4)
		}
	}
	if err != nil {
		return g, fmt.Errorf("rules %q to %q: %w", first.rule.Name, rules[idx[len(idx)-1]].rule.Name, err)
	}
	g.Hash = h
	w.printf("\n%s", decl)
	w.printf("\n/* Rules %d to %d (%d of them), tested at once; returns rule << 4 | action code, or L4_NONE. */\n", idx[0], idx[len(idx)-1], len(idx))
	w.printf("static %s __u32 l4_p%d_b%d(struct xdp_md *ctx, const uint8_t *ip, const uint8_t *end, int fam)\n{\n", inline, p, b)
	if n := famNumber(first.rule.Family); n != 0 {
		w.printf("\tif (fam != %d)\n\t\treturn L4_NONE;\n", n)
	}
	w.printf("\tstruct l4_cands c = {};\n\tif (%s_c(L4_FRESH(ip, end), end, &c) || c.n > %d)\n\t\tgoto one_by_one;\n", m.fn, maxCandidates)
	// The table first: a candidate no enabled rule has costs no second
	// run of the matcher.
	w.printf("\t__u32 best = L4_NRULES;\n#pragma unroll\n\tfor (int i = 0; i < %d; i++) {\n", maxCandidates)
	w.printf("\t\tif (i >= c.n)\n\t\t\tbreak;\n\t\t__u32 v = c.v[i];\n")
	w.printf("\t\t__u32 r = %s(%s, v);\n", find, at(bucketIndexC(h, index)))
	if first.direct {
		// equalMatches: a candidate found is a match.
		w.printf("\t\tif (r < best)\n\t\t\tbest = r;\n\t}\n")
	} else {
		w.printf("\t\tif (r < best && %s(ctx, L4_IPOFF(ctx, ip), v))\n\t\t\tbest = r;\n\t}\n", m.fn)
	}
	w.printf("\tif (best == L4_NRULES)\n\t\treturn L4_NONE;\n\treturn best << %d | %s;\none_by_one:\n", resultShift, setCode(rules, idx, "best"))
	if first.tableOnly {
		// Never reached: the collecting run matches nothing and meets
		// at most maxCandidates tests (tableDecides).
		w.printf("\treturn L4_NONE;\n}\n")
		for _, i := range idx {
			meta.Rules[i].Symbol = ""
		}
		return g, nil
	}
	for _, i := range idx {
		start := w.next()
		var args []string
		for _, a := range rules[i].matchers[0].args {
			args = append(args, fmt.Sprintf("%#xu", a))
		}
		w.printf("\tif (L4_ENABLED(%s) && %s(ctx, L4_IPOFF(ctx, ip), %s))\n\t\treturn %d;\n", enableSymbol(i), m.fn, strings.Join(args, ", "), testResult(i, first.rule.Action.code()))
		meta.Rules[i].CLines = append(meta.Rules[i].CLines, [2]int{start, w.line})
	}
	w.printf("\treturn L4_NONE;\n}\n")
	return g, nil
}

// maskedTable plans the table of masked set g (fold.go's mask folding),
// sets its index mask, the one every member's mask holds, and slots, and
// returns its hash, the C of its bucket type, lookup (g.Map + "_find",
// the first rule whose value v is under its mask) and table, and the
// table's bucket of an index.
func maskedTable(g *l4drop.SetGroup) (l4drop.HashTable, string, func(string) string, error) {
	g.IndexMask = mask32(32)
	for i := range g.Members {
		if g.Members[i].Mask == 0 { // a member not folded: the whole value
			g.Members[i].Mask = mask32(32)
		}
		g.IndexMask &= g.Members[i].Mask
	}
	// A member takes a slot of its value's bucket under the index mask:
	// a net and the hosts in it take one bucket.
	var keys [][]uint64
	share := map[uint32]int{}
	seen := map[[2]uint32]bool{}
	for _, mb := range g.Members {
		if k := [2]uint32{mb.Value, mb.Mask}; !seen[k] {
			seen[k] = true
			share[mb.Value&g.IndexMask]++
			keys = append(keys, []uint64{uint64(mb.Value & g.IndexMask)})
		}
	}
	var err error
	most := maxValue(share)
	for _, slots := range boundedSlots {
		if slots < most {
			continue
		}
		var h l4drop.HashTable
		if h, err = l4drop.PlanHashSlots(keys, slots); err != nil {
			continue
		}
		if slots != l4drop.HashSlots {
			g.Slots = slots
		}
		bucket := g.Map + "_bucket"
		decl, at := tableC(g.Map, bucket, h.Bits, 12*slots)
		return h, fmt.Sprintf(`struct %[1]s {
	struct {
		__u32 key;
		__u32 mask;
		__u32 rule1;
	} s[%[2]d];
};
%[3]s
%[4]s`, bucket, slots, decl, slotFindC(g.Map+"_find", bucket, "__u32 v", strconv.Itoa(slots), "(v & bk->s[s].mask) == bk->s[s].key")), at, nil
	}
	if err == nil {
		err = fmt.Errorf("%d values under one mask, more than a bucket's %d slots", most, l4drop.MaxBucketSlots)
	}
	return l4drop.HashTable{}, "", nil, err
}

// setCode is the C of the action's code of rule v of the set of rules idx:
// a constant, or l4_code(v) for a merged set that drops and passes.
func setCode(rules []compiledRule, idx []int, v string) string {
	a := rules[idx[0]].rule.Action
	for _, i := range idx {
		if rules[i].rule.Action != a {
			return "l4_code(" + v + ")"
		}
	}
	return fmt.Sprint(a.code())
}

// tableDecides reports whether a set's table decides every packet for a
// shape whose parameter is tested at the instructions isParam marks, for
// equality only: when every such test fails, as in the collecting run, no
// path matches, and no path meets more than maxCandidates of them. Then
// the set needs no one by one fallback. Other tests may go either way.
func tableDecides(first []bpf.Instruction, isParam []bool) bool {
	type result struct {
		done, match bool
		tests       int
	}
	memo := make([]result, len(first))
	// cBPF jumps go forward only: the walk ends.
	var walk func(pc int) (bool, int)
	walk = func(pc int) (bool, int) {
		if pc < 0 || pc >= len(first) {
			return true, 0 // malformed: assume the worst
		}
		if memo[pc].done {
			return memo[pc].match, memo[pc].tests
		}
		var match bool
		var tests int
		next := func(pcs ...int) {
			for _, n := range pcs {
				m, t := walk(n)
				match = match || m
				tests = max(tests, t)
			}
		}
		raw, err := first[pc].Assemble()
		switch {
		case err != nil:
			match = true
		case raw.Op == 0x06: // ret #k
			match = raw.K != 0
		case raw.Op&0x07 == 0x06: // ret a
			match = true
		case raw.Op == 0x05: // ja
			next(pc + 1 + int(raw.K))
		case raw.Op&0x07 == 0x05:
			t, f := pc+1+int(raw.Jt), pc+1+int(raw.Jf)
			if isParam[pc] {
				next(f) // jeq, failing
				tests++
			} else {
				next(t, f)
			}
		default:
			next(pc + 1)
		}
		memo[pc] = result{true, match, tests}
		return match, tests
	}
	match, tests := walk(0)
	return !match && tests <= maxCandidates
}

// directMatch reports whether a value m's set table holds is a match of
// the rule the table gives, with no second run of the matcher: keyed sets
// (keyedDecides), ranges (rangeShape) and equalMatches.
func directMatch(m matcher) bool {
	return m.shape.keyed || m.shape.ranges || equalMatches(m.prog, m.shape.isParam)
}

// equalMatches reports whether every test of a set's parameter, when
// equal, leads straight to a match. Then a candidate the table has is a
// match: with the constant set to it, the run meets the test that recorded
// it (or an earlier one that is equal too) and matches, so the set needs no
// second run of the matcher.
func equalMatches(prog []bpf.Instruction, isParam []bool) bool {
	if !slices.Contains(isParam, true) {
		return false
	}
	for pc, p := range isParam {
		if !p {
			continue
		}
		raw, _ := prog[pc].Assemble()
		if match, ok := retAt(prog, landing(prog, pc+1+int(raw.Jt))); !ok || !match {
			return false
		}
	}
	return true
}

// landing is where a jump to pc lands: pc, past any unconditional jumps.
func landing(prog []bpf.Instruction, pc int) int {
	for pc < len(prog) {
		raw, err := prog[pc].Assemble()
		if err != nil || raw.Op != 0x05 { // ja
			break
		}
		pc += 1 + int(raw.K)
	}
	return pc
}

// retAt reports whether the instruction at pc returns a constant (ok), and
// whether that is a match (non-zero).
func retAt(prog []bpf.Instruction, pc int) (match, ok bool) {
	if pc >= len(prog) {
		return false, false
	}
	raw, err := prog[pc].Assemble()
	if err != nil || raw.Op != 0x06 { // ret #k
		return false, false
	}
	return raw.K != 0, true
}

// A shape with several parameters, all tested for equality only, lets a
// run of its rules be one table too, keyed by all of them, when
// keyedDecides holds: on every path to a match, every parameter is tested
// and every test of one is equal (a failed test leads to no match). Run
// the matcher taking each test of a parameter as equal, the first time
// recording the value A has, later times comparing A with it (l4_key).
// A rule whose constants match the packet takes the same path (its tests
// are all equal), so the run matches too, having recorded those
// constants; and if the run matches, the rule with the recorded constants
// matches, down the same path. So the recorded constants are the only
// ones that can match, and the table says which rule has them first.

// keyedDecides reports whether every path of prog that may match meets
// a test of each of params, and whether the failing branch of every such
// test never matches (see above). Other tests may go either way.
func keyedDecides(prog []bpf.Instruction, params [][]int) bool {
	paramOf := make([]int, len(prog))
	for i := range paramOf {
		paramOf[i] = -1
	}
	for k, pcs := range params {
		for _, pc := range pcs {
			paramOf[pc] = k
		}
	}
	all := uint32(1)<<len(params) - 1
	type result struct {
		done, match, bad bool
		tested           uint32 // parameters tested on every path that may match
	}
	memo := make([]result, len(prog))
	// Jumps go forward (anything else is refused as bad): the walk ends.
	var walk func(pc int) result
	walk = func(pc int) result {
		if pc < 0 || pc >= len(prog) {
			return result{bad: true}
		}
		if memo[pc].done {
			return memo[pc]
		}
		res := result{done: true, tested: all}
		raw, err := prog[pc].Assemble()
		merge := func(r result) {
			res.bad = res.bad || r.bad
			if r.match {
				res.match = true
				res.tested &= r.tested
			}
		}
		switch {
		case err != nil:
			res.bad = true
		case raw.Op == 0x06: // ret #k
			res.match, res.tested = raw.K != 0, 0
		case raw.Op&0x07 == 0x06: // ret a
			res.match, res.tested = true, 0
		case raw.Op == 0x05: // ja
			if int32(raw.K) < 0 {
				res.bad = true
				break
			}
			merge(walk(pc + 1 + int(raw.K)))
		case raw.Op&0x07 == 0x05:
			t, f := walk(pc+1+int(raw.Jt)), walk(pc+1+int(raw.Jf))
			if k := paramOf[pc]; k >= 0 {
				if f.match {
					res.bad = true
				}
				merge(t)
				res.tested |= 1 << k
				break
			}
			merge(t)
			merge(f)
		default:
			merge(walk(pc + 1))
		}
		if !res.match {
			res.tested = all
		}
		memo[pc] = res
		return res
	}
	r := walk(0)
	return !r.bad && r.match && r.tested == all
}

// keysPrelude is what keyed sets need: the key a run records, and per
// number of parameters the buckets of a table and their lookup.
var keysPrelude = `
struct l4_kv {
	__u32 v;
	__u32 set;
};

/* l4_key takes a test of a parameter as equal the first time, recording
 * A, and compares A with what it recorded afterwards. */
static __always_inline int l4_key(struct l4_kv *k, __u32 a)
{
	if (!k->set) {
		k->v = a;
		k->set = 1;
		return 1;
	}
	return k->v == a;
}

struct l4s2_bucket {
	struct {
		__u32 key[2];
		__u32 rule1;
	} s[L4_HASH_SLOTS];
};

/* l4s2_find returns the rule bucket bk, the key's, gives for k[0], k[1],
 * or L4_NRULES. */
` + slotFindC("l4s2_find", "l4s2_bucket", "const struct l4_kv *k", "L4_HASH_SLOTS", "bk->s[s].key[0] == k[0].v && bk->s[s].key[1] == k[1].v") + `
struct l4s3_bucket {
	struct {
		__u32 key[3];
		__u32 rule1;
	} s[L4_HASH_SLOTS];
};

/* l4s3_find returns the rule bucket bk, the key's, gives for k[0] to k[2],
 * or L4_NRULES. */
` + slotFindC("l4s3_find", "l4s3_bucket", "const struct l4_kv *k", "L4_HASH_SLOTS", "bk->s[s].key[0] == k[0].v && bk->s[s].key[1] == k[1].v && bk->s[s].key[2] == k[2].v")

// slotFindC is the C of fn(bk, params): the rule of the first slot of
// struct bucket *bk (of slots slots) whose test cond, on bk->s[s], holds,
// or L4_NRULES. A slot holds its rule + 1 in rule1, and the loader fills
// a bucket's slots in order: the first empty one (rule1 0) ends it.
func slotFindC(fn, bucket, params, slots, cond string) string {
	return fmt.Sprintf(`static __always_inline __u32 %s(const struct %s *bk, %s)
{
	if (!bk)
		return L4_NRULES;
#pragma unroll
	for (int s = 0; s < %s; s++) {
		if (!bk->s[s].rule1)
			break;
		if (%s)
			return bk->s[s].rule1 - 1;
	}
	return L4_NRULES;
}
`, fn, bucket, params, slots, cond)
}

// tableC returns the declaration of a bucket table of 1<<bits buckets of
// type struct bucketType, bucketSize bytes each: a global array in a
// section of its own (l4drop.TableSection) if it is at most
// l4drop.MaxGlobalTable bytes, else an array map. The function it returns
// gives the C of a pointer to the bucket an index expression names
// (possibly NULL: test it).
func tableC(name, bucketType string, bits, bucketSize int) (string, func(idx string) string) {
	n := 1 << bits
	if n*bucketSize <= l4drop.MaxGlobalTable {
		decl := fmt.Sprintf("struct %s %s[%d] SEC(\"%s\") = {};\n", bucketType, name, n, l4drop.TableSection(name))
		if hi, lo, ok := twoBits(bucketSize); ok {
			// The bucket's offset in two shifts and an add, in asm: clang
			// would multiply, a cycle longer (3 against 2 on x86) on the
			// chain from the packet's key to its rule (a DNS name's
			// lookup: 0.4 ns a packet).
			return decl, func(idx string) string {
				return fmt.Sprintf("({ __u64 o_ = (%s) & %#x, t_; asm volatile(\"%%1 = %%0\\n\\t%%0 <<= %d\\n\\t%%1 <<= %d\\n\\t%%0 += %%1\\n\" : \"+r\"(o_), \"=&r\"(t_)); "+
					"(struct %s *)((char *)%s + o_); })", idx, n-1, hi, lo, bucketType, name)
			}
		}
		return decl, func(idx string) string { return fmt.Sprintf("&%s[(%s) & %#x]", name, idx, n-1) }
	}
	decl := fmt.Sprintf("struct {\n\t__uint(type, BPF_MAP_TYPE_ARRAY);\n\t__uint(max_entries, %d);\n\t__type(key, __u32);\n\t__type(value, struct %s);\n} %s SEC(\".maps\");\n", n, bucketType, name)
	return decl, func(idx string) string {
		return fmt.Sprintf("({ __u32 i_ = (%s); (struct %s *)bpf_map_lookup_elem(&%s, &i_); })", idx, bucketType, name)
	}
}

// twoBits returns the two bits set in n, high then low, if n has two set.
func twoBits(n int) (hi, lo int, ok bool) {
	if n <= 0 || bits.OnesCount(uint(n)) != 2 {
		return 0, 0, false
	}
	return bits.Len(uint(n)) - 1, bits.TrailingZeros(uint(n)), true
}

// bucketIndexC is the C of the bucket index of key words under h.
func bucketIndexC(h l4drop.HashTable, words ...string) string {
	var terms []string
	for i, w := range words {
		terms = append(terms, fmt.Sprintf("(__u64)%s * %s", w, mulC(h, i)))
	}
	return fmt.Sprintf("(__u32)((%s) >> %d)", strings.Join(terms, " + "), 64-h.Bits)
}

// mulC is the C constant of the multiplier of key word i of table h.
func mulC(h l4drop.HashTable, i int) string {
	return fmt.Sprintf("0x%xULL", h.Multiplier(i))
}

// writeKeyedSet writes the function testing rules idx (one run of a keyed
// set, in order) at once, as item b of program p, with its map.
func writeKeyedSet(w *cWriter, meta *l4drop.Meta, rules []compiledRule, idx []int, p, b int, inline string) (l4drop.SetGroup, error) {
	first := rules[idx[0]]
	m := first.matchers[0]
	if m.shape.bounded {
		return writeBoundedSet(w, meta, rules, idx, p, b, inline)
	}
	n := len(m.shape.params)
	g := l4drop.SetGroup{Map: fmt.Sprintf("l4s_%d_%d", p, b), Keys: n}
	var keys [][]uint64
	seen := map[[maxParams]uint32]bool{}
	for _, i := range idx {
		args := rules[i].matchers[0].args
		g.Members = append(g.Members, l4drop.SetMember{Rule: i, Value: args[0], Rest: args[1:]})
		var key [maxParams]uint32
		copy(key[:], args)
		if seen[key] {
			continue
		}
		seen[key] = true
		words := make([]uint64, len(args))
		for k, a := range args {
			words[k] = uint64(a)
		}
		keys = append(keys, words)
	}
	bucket := fmt.Sprintf("l4s%d_bucket", n)
	if n == 1 {
		bucket = "l4s_bucket"
	}
	err := writeKeyedGroup(w, meta, rules, idx, p, b, inline, &g, keys, bucket, n+1, func(bk string, words []string) string {
		if n == 1 {
			return fmt.Sprintf("l4s_find(%s, %s)", bk, words[0])
		}
		return fmt.Sprintf("l4s%d_find(%s, k)", n, bk)
	})
	return g, err
}

// writeKeyedGroup writes the table of keyed set g, planned for keys (a
// key's words once for each slot it may take), of buckets of type
// bucket whose slots are slotWords words, and the function testing rules
// idx (item b of program p) through it: the keyed run, then the lookup
// lookup returns the C of, given the C of the key's bucket pointer and of
// its words. It sets g.Hash.
func writeKeyedGroup(w *cWriter, meta *l4drop.Meta, rules []compiledRule, idx []int, p, b int, inline string,
	g *l4drop.SetGroup, keys [][]uint64, bucket string, slotWords int, lookup func(bucket string, words []string) string) error {
	first := rules[idx[0]]
	m := first.matchers[0]
	slots := l4drop.HashSlots
	if g.Slots != 0 {
		slots = g.Slots
	}
	h, err := l4drop.PlanHashSlots(keys, slots)
	if err != nil {
		return fmt.Errorf("rules %q to %q: %w", first.rule.Name, rules[idx[len(idx)-1]].rule.Name, err)
	}
	g.Hash = h
	decl, bucketAt := tableC(g.Map, bucket, h.Bits, 4*slotWords*slots)
	w.printf("\n%s", decl)
	w.printf("\n/* Rules %d to %d (%d of them), tested at once; returns rule << 4 | action code, or L4_NONE. */\n", idx[0], idx[len(idx)-1], len(idx))
	w.printf("static %s __u32 l4_p%d_b%d(struct xdp_md *ctx, const uint8_t *ip, const uint8_t *end, int fam)\n{\n", inline, p, b)
	if f := famNumber(first.rule.Family); f != 0 {
		w.printf("\tif (fam != %d)\n\t\treturn L4_NONE;\n", f)
	}
	// The run records every parameter; the table is keyed by all of
	// them but a bounded set's bound.
	var args, words []string
	for k := range m.shape.params {
		args = append(args, fmt.Sprintf("&k[%d]", k))
		if !m.shape.bounded || k != m.shape.bound.param {
			words = append(words, fmt.Sprintf("k[%d].v", k))
		}
	}
	w.printf("\tstruct l4_kv k[%d] = {};\n\tif (!%s_k(L4_FRESH(ip, end), end, %s))\n\t\treturn L4_NONE;\n", len(args), m.fn, strings.Join(args, ", "))
	w.printf("\t__u32 r = %s;\n", lookup(bucketAt(bucketIndexC(h, words...)), words))
	w.printf("\tif (r == L4_NRULES)\n\t\treturn L4_NONE;\n\treturn r << %d | %s;\n}\n", resultShift, setCode(rules, idx, "r"))
	// No rule runs one by one: their switches are the table's entries.
	for _, i := range idx {
		meta.Rules[i].Symbol = ""
	}
	return nil
}
