package build

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/l4drop/l4drop/l4drop"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpfc"
)

// Large rule sets are mostly the same rule with other constants: a port, an
// address, a length. Compiling each to its own C function makes clang's
// time grow with the number of rules, about 10 ms each. Matchers whose C
// differs only in the constants compared share one function instead,
// taking those constants as arguments.
//
// The grouping is checked on the C itself: each matcher is compiled on
// its own, and it joins a template only if its code is the template's,
// character for character, once the template's parameters are replaced by
// its own constants. So a template never changes what a rule matches,
// whatever the compiler does with particular values.

// minTemplate is the fewest matchers worth a shared function. A call per
// rule costs more per packet than inlined code (100 port rules: about
// 1.3 µs against 0.4 µs), so only classes large enough for clang's time to
// matter share one (1,000 port rules: 1 s to build against 15 s)...
const minTemplate = 128

// ...unless the rules can be tested at once (see collectVariant): then a
// few already gain (1,000 port rules: 0.15 µs a packet against 14 µs).
const minSet = 16

// minTableSet is the fewest rules worth a set when its table decides
// every packet (see tableDecides): no fallback then, and a set costs
// about what four rules one by one do.
const minTableSet = 4

// maxParams keeps calls within eBPF's five argument registers (data and
// data_end take two).
const maxParams = 3

var literal = regexp.MustCompile(`\b(0x[0-9a-f]+u?|[0-9]+u?)\b`)

// comparison is what must precede a literal for it to become a parameter:
// a constant compared with, never one used as an offset (the verifier must
// see offsets as constants).
var comparison = regexp.MustCompile(`(==|!=|>|>=|<|<=)\s*$`)

// cSkeleton is a function's C with its literals taken out.
type cSkeleton struct {
	text     string   // C with each literal replaced by \x00
	literals []string // the literals, in order
	before   []string // the text before each literal, for the comparison check
}

func skeleton(src string) cSkeleton {
	var s cSkeleton
	var b strings.Builder
	last := 0
	for _, m := range literal.FindAllStringIndex(src, -1) {
		b.WriteString(src[last:m[0]])
		b.WriteByte(0)
		s.literals = append(s.literals, src[m[0]:m[1]])
		s.before = append(s.before, src[max(0, m[0]-8):m[0]])
		last = m[1]
	}
	b.WriteString(src[last:])
	s.text = b.String()
	return s
}

// template is a shared matcher function.
type template struct {
	fn     string
	params []int // indexes of the literals that are parameters
	src    string
}

// templates finds matchers that can share functions and sets their fn and
// args. It returns the C of the shared functions. Matchers it leaves alone
// keep fn empty.
func templates(rules []compiledRule) (string, error) {
	type member struct {
		m  *matcher
		sk cSkeleton
	}
	classes := map[string][]member{}
	var order []string
	for i := range rules {
		for j := range rules[i].matchers {
			m := &rules[i].matchers[j]
			if cbpfc.UsesContext(m.prog) || cbpfc.UsesHelpers(m.prog) {
				continue
			}
			src, err := cbpfc.ToC(m.prog, cbpfc.COpts{FunctionName: "l4_tmpl"})
			if err != nil {
				continue // reported where the matcher is compiled alone
			}
			sk := skeleton(src)
			key := sk.text
			if _, ok := classes[key]; !ok {
				order = append(order, key)
			}
			classes[key] = append(classes[key], member{m, sk})
		}
	}
	var out strings.Builder
	n := 0
	for _, key := range order {
		ms := classes[key]
		if len(ms) < minSet {
			var progs [][]bpf.Instruction
			for _, mb := range ms {
				progs = append(progs, mb.m.prog)
			}
			if len(ms) < minTableSet || !tableDecides(progs) {
				continue
			}
		}
		first := ms[0].sk
		var params []int
		ok := true
		for k := range first.literals {
			for _, mb := range ms[1:] {
				if mb.sk.literals[k] != first.literals[k] {
					params = append(params, k)
					break
				}
			}
		}
		for _, k := range params {
			if !comparison.MatchString(first.before[k]) {
				ok = false
			}
		}
		if !ok || len(params) == 0 || len(params) > maxParams {
			continue
		}
		t := template{fn: fmt.Sprintf("l4_t%d", n), params: params}
		n++
		// The function: the skeleton with parameters for the varying
		// literals and the first member's values elsewhere.
		var b strings.Builder
		lit := 0
		isParam := map[int]int{}
		for pi, k := range params {
			isParam[k] = pi
		}
		// Constants that are equal in every member (a port tested on the
		// IPv4 and the IPv6 path, say) are one parameter.
		same := true
		for _, mb := range ms {
			for _, k := range params[1:] {
				if mb.sk.literals[k] != mb.sk.literals[params[0]] {
					same = false
				}
			}
		}
		if same {
			for _, k := range params {
				isParam[k] = 0
			}
			params = params[:1]
		}
		for _, c := range []byte(first.text) {
			if c != 0 {
				b.WriteByte(c)
				continue
			}
			if pi, ok := isParam[lit]; ok {
				fmt.Fprintf(&b, "p%d", pi)
			} else {
				b.WriteString(first.literals[lit])
			}
			lit++
		}
		src := b.String()
		sig := "static __always_inline uint32_t l4_tmpl(const uint8_t *const data, const uint8_t *const data_end)\n"
		if !strings.HasPrefix(src, sig) {
			continue
		}
		var ps []string
		for pi := range params {
			ps = append(ps, fmt.Sprintf("const uint32_t p%d", pi))
		}
		src = fmt.Sprintf("static __attribute__((noinline)) uint32_t %s(const uint8_t *const data, const uint8_t *const data_end, %s)\n%s",
			t.fn, strings.Join(ps, ", "), src[len(sig):])
		collect := ""
		if csrc, ok := collectVariant(src, t.fn); ok {
			collect = t.fn + "_c"
			src += "\n" + csrc
		} else if len(ms) < minTemplate {
			n--
			continue
		}
		for _, mb := range ms {
			var args []string
			for _, k := range params {
				args = append(args, mb.sk.literals[k])
			}
			mb.m.fn, mb.m.args, mb.m.collect = t.fn, args, collect
		}
		out.WriteString(src)
		out.WriteString("\n")
	}
	return out.String(), nil
}

// A template with one parameter that it only ever tests for equality
// ("if (A == p0) goto L;") lets a rule set test a packet against all its
// rules at once. Run the template with every test false, recording the
// values A had at the tests: the candidates. For a parameter that is no
// candidate, every test is false, so the template does what that run did.
// If that run did not match, only rules whose constant is a candidate can
// match: look each candidate up in a table of constant to first rule (see
// hashtable.go), and run the template for those found. Otherwise (a match
// with every test false, or more candidates than recorded) the rules are
// tried one by one. Where the matchers' cBPF shows that the first case
// always holds (tableDecides), there is no one by one code at all; where an
// equal test leads straight to a match (equalMatches), a candidate found
// needs no second run.

const maxCandidates = 4

var equalityTest = regexp.MustCompile(`^\tif \((!\()?A == p0\)?\) goto L\d+;$`)

// collectVariant returns the candidate-collecting variant of a template
// function, if the template tests its parameter for equality only.
func collectVariant(src, fn string) (string, bool) {
	lines := strings.Split(src, "\n")
	tests := 0
	for _, l := range lines {
		if !strings.Contains(l, "p0") || strings.HasPrefix(l, "static ") {
			continue
		}
		if !equalityTest.MatchString(l) {
			return "", false
		}
		tests++
	}
	if tests == 0 || !strings.HasPrefix(lines[0], "static __attribute__((noinline)) uint32_t "+fn+"(") {
		return "", false
	}
	lines[0] = fmt.Sprintf("static __always_inline uint32_t %s_c(const uint8_t *const data, const uint8_t *const data_end, struct l4_cands *const cands)", fn)
	for i, l := range lines[1:] {
		lines[i+1] = strings.Replace(l, "A == p0", "l4_cand(cands, A)", 1)
	}
	return strings.Join(lines, "\n"), true
}

// candsPrelude is what collecting variants and sets need.
const candsPrelude = `
/* A bucket of a set's table: constants and their rules + 1 (0: empty). */
struct l4s_bucket {
	struct {
		__u32 key;
		__u32 rule1;
	} s[L4_HASH_SLOTS];
};

/* l4s_find returns the rule the table gives for v, or L4_NRULES. */
static __always_inline __u32 l4s_find(void *map, __u32 v, __u64 seed, int shift)
{
	__u32 idx = L4_HASH(seed, (__u64)v) >> shift;
	struct l4s_bucket *bk = bpf_map_lookup_elem(map, &idx);
	if (!bk)
		return L4_NRULES;
#pragma unroll
	for (int s = 0; s < L4_HASH_SLOTS; s++)
		if (bk->s[s].rule1 && bk->s[s].key == v)
			return bk->s[s].rule1 - 1;
	return L4_NRULES;
}

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

// writeSet writes the function testing rules idx (one set, in order) at
// once, as item b of program p, with its map; inline is the function's
// inlining attribute.
func writeSet(w *cWriter, meta *l4drop.Meta, rules []compiledRule, idx []int, p, b int, inline string) (l4drop.SetGroup, error) {
	first := rules[idx[0]]
	m := first.matchers[0]
	g := l4drop.SetGroup{Map: fmt.Sprintf("l4s_%d_%d", p, b)}
	for _, i := range idx {
		lit := strings.TrimSuffix(rules[i].matchers[0].args[0], "u")
		v, err := strconv.ParseUint(lit, 0, 32)
		if err != nil {
			return g, fmt.Errorf("rule %q: constant %q: %w", rules[i].rule.Name, lit, err)
		}
		g.Members = append(g.Members, l4drop.SetMember{Rule: i, Value: uint32(v)})
	}
	var keys [][]uint64
	seen := map[uint32]bool{}
	for _, mb := range g.Members {
		if !seen[mb.Value] {
			seen[mb.Value] = true
			keys = append(keys, []uint64{uint64(mb.Value)})
		}
	}
	h, err := l4drop.PlanHash(keys)
	if err != nil {
		return g, fmt.Errorf("rules %q to %q: %w", first.rule.Name, rules[idx[len(idx)-1]].rule.Name, err)
	}
	g.Hash = h
	pass := 0
	if first.rule.Action == ActionPass {
		pass = 1
	}
	w.printf("\nstruct {\n\t__uint(type, BPF_MAP_TYPE_ARRAY);\n\t__uint(max_entries, %d);\n\t__type(key, __u32);\n\t__type(value, struct l4s_bucket);\n} %s SEC(\".maps\");\n", 1<<h.Bits, g.Map)
	w.printf("\n/* Rules %d to %d, tested at once; returns rule << 1 | pass, or L4_NONE. */\n", idx[0], idx[len(idx)-1])
	w.printf("static %s __u32 l4_p%d_b%d(struct xdp_md *ctx, const uint8_t *ip, const uint8_t *end, int fam)\n{\n", inline, p, b)
	if n := famNumber(first.rule.Family); n != 0 {
		w.printf("\tif (fam != %d)\n\t\treturn L4_NONE;\n", n)
	}
	w.printf("\tstruct l4_cands c = {};\n\tif (%s(ip, end, &c) || c.n > %d)\n\t\tgoto one_by_one;\n", m.collect, maxCandidates)
	// The table first: a candidate no enabled rule has costs no second
	// run of the matcher.
	w.printf("\t__u32 best = L4_NRULES;\n#pragma unroll\n\tfor (int i = 0; i < %d; i++) {\n", maxCandidates)
	w.printf("\t\tif (i >= c.n)\n\t\t\tbreak;\n\t\t__u32 v = c.v[i];\n")
	w.printf("\t\t__u32 r = l4s_find(&%s, v, 0x%xULL, %d);\n", g.Map, h.Seed, 64-h.Bits)
	if first.direct {
		// equalMatches: a candidate found is a match.
		w.printf("\t\tif (r < best)\n\t\t\tbest = r;\n\t}\n")
	} else {
		w.printf("\t\tif (r < best && %s(ip, end, v))\n\t\t\tbest = r;\n\t}\n", m.fn)
	}
	w.printf("\tif (best == L4_NRULES)\n\t\treturn L4_NONE;\n\treturn best << 1 | %d;\none_by_one:\n", pass)
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
		w.printf("\tif (L4_ENABLED(%s) && %s(ip, end, %s))\n\t\treturn %d;\n", enableSymbol(i), m.fn, rules[i].matchers[0].args[0], i<<1|pass)
		meta.Rules[i].CLines = append(meta.Rules[i].CLines, [2]int{start, w.line})
	}
	w.printf("\treturn L4_NONE;\n}\n")
	return g, nil
}

// tableDecides reports whether a set's table decides every packet for the
// set's matchers, programs alike but for the constants they compare for
// equality: when every such test fails, as in the collecting run, no path
// matches, and no path meets more than maxCandidates of them. Then the set
// needs no one by one fallback. Other tests may go either way.
func tableDecides(progs [][]bpf.Instruction) bool {
	param, ok := setParams(progs)
	if !ok {
		return false
	}
	first := progs[0]
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
		switch ins := first[pc].(type) {
		case bpf.RetConstant:
			match = ins.Val != 0
		case bpf.RetA:
			match = true
		case bpf.Jump:
			next(pc + 1 + int(ins.Skip))
		case bpf.JumpIf:
			t, f := pc+1+int(ins.SkipTrue), pc+1+int(ins.SkipFalse)
			switch {
			case param[pc] && ins.Cond == bpf.JumpEqual:
				next(f)
				tests++
			case param[pc]:
				next(t)
				tests++
			default:
				next(t, f)
			}
		case bpf.JumpIfX:
			next(pc+1+int(ins.SkipTrue), pc+1+int(ins.SkipFalse))
		default:
			next(pc + 1)
		}
		memo[pc] = result{true, match, tests}
		return match, tests
	}
	match, tests := walk(0)
	return !match && tests <= maxCandidates
}

// setParams returns which instructions of a set's matchers are the tests
// of their constants: those that differ between them, which must be
// equality tests.
func setParams(progs [][]bpf.Instruction) ([]bool, bool) {
	if len(progs) < 2 {
		return nil, false
	}
	first := progs[0]
	param := make([]bool, len(first))
	for _, p := range progs[1:] {
		if len(p) != len(first) {
			return nil, false
		}
		for i := range p {
			if p[i] == first[i] {
				continue
			}
			a, ok1 := first[i].(bpf.JumpIf)
			b, ok2 := p[i].(bpf.JumpIf)
			if !ok1 || !ok2 || a.Cond != b.Cond || a.SkipTrue != b.SkipTrue || a.SkipFalse != b.SkipFalse ||
				(a.Cond != bpf.JumpEqual && a.Cond != bpf.JumpNotEqual) {
				return nil, false
			}
			param[i] = true
		}
	}
	return param, true
}

// equalMatches reports whether every test of a set's constant, when equal,
// leads straight to a match. Then a candidate the table has is a match:
// with the constant set to it, the run meets the test that recorded it
// (or an earlier one that is equal too) and matches, so the set needs no
// second run of the matcher.
func equalMatches(progs [][]bpf.Instruction) bool {
	param, ok := setParams(progs)
	if !ok {
		return false
	}
	prog := progs[0]
	for pc, isParam := range param {
		if !isParam {
			continue
		}
		ins := prog[pc].(bpf.JumpIf)
		to := pc + 1 + int(ins.SkipTrue)
		if ins.Cond == bpf.JumpNotEqual {
			to = pc + 1 + int(ins.SkipFalse)
		}
		for to < len(prog) {
			j, ok := prog[to].(bpf.Jump)
			if !ok {
				break
			}
			to += 1 + int(j.Skip)
		}
		if to >= len(prog) {
			return false
		}
		if r, ok := prog[to].(bpf.RetConstant); !ok || r.Val == 0 {
			return false
		}
	}
	return true
}
