package l4drop

import (
	"fmt"
	"regexp"
	"strings"

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
// matter share one (1,000 port rules: 1 s to build against 15 s).
const minTemplate = 128

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
		if len(ms) < minTemplate {
			continue
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
		for _, mb := range ms {
			var args []string
			for _, k := range params {
				args = append(args, mb.sk.literals[k])
			}
			mb.m.fn, mb.m.args = t.fn, args
		}
		out.WriteString(src)
		out.WriteString("\n")
	}
	return out.String(), nil
}
