package build

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/l4drop/l4drop/l4drop"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpfc"
	"github.com/l4drop/l4drop/xdpcap"
)

// BuildOptions tune Generate and Build.
type BuildOptions struct {
	// Frontend compiles the matchers; nil uses the defaults.
	Frontend *Frontend
	// MaxProgramInsns is the budget of cBPF instructions per XDP program;
	// rule sets above it are split into programs chained by tail calls.
	// 0 means DefaultMaxProgramInsns.
	MaxProgramInsns int
	// NoDNSTable makes exact-name DNS rules run one by one through the DNS
	// generator, like the others, instead of sharing one table lookup.
	NoDNSTable bool
	// MaxInlineDNS is how many names a DNS name table may hold and still
	// be compared inline, one by one, rather than looked up in a map; 0
	// means DefaultMaxInlineDNS, a negative value always a map.
	MaxInlineDNS int
	// NoSets makes rules that differ only in a constant run one by one
	// instead of all at once.
	NoSets bool
	// spoil is 1 + the index of a rule whose condition gets a packet read
	// the verifier refuses, for the tests of the loader's messages.
	spoil int
}

// DefaultMaxProgramInsns keeps each generated program well within what the
// verifier accepts (a million instructions processed). What it processes
// was measured (verifierCosts in the tests): a cBPF instruction of a rule
// becomes three to four eBPF instructions, walked once per family and once
// per path through the rule's tests that ends elsewhere, 18 to 39
// instructions processed per cBPF instruction over the property test's
// shapes, on top of about 20,000 per program for the parts every program
// has. 12,000 keeps the worst seen under half the limit.
const DefaultMaxProgramInsns = 12000

// maxProgramJumps bounds the conditional cBPF jumps per program, below the
// verifier's limit of 8192 pending branches.
const maxProgramJumps = 6000

// blockInsns is the budget of cBPF instructions of one block function.
const blockInsns = 1500

// maxInlineItems is the most blocks, sets and groups a program inlines,
// if they are no bigger together than a block.
const maxInlineItems = 8

// MaxPrograms bounds the chain: the kernel allows 33 tail calls per packet,
// and the --next program and the xdpcap hook take one each.
const MaxPrograms = 30

// ErrTooManyRules is returned when a rule set needs more than MaxPrograms
// programs.
var ErrTooManyRules = errors.New("rule set too large")

// Generated is a rule set turned into C.
type Generated struct {
	// C is the program source, self-contained: clang alone builds it.
	C string
	// Meta travels in the ELF's .l4drop.rules section.
	Meta l4drop.Meta
}

// cWriter writes C while tracking line numbers, so that verifier messages,
// which name source lines, can be traced back to rules.
type cWriter struct {
	buf  bytes.Buffer
	line int // lines written so far
}

func (w *cWriter) printf(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	w.buf.WriteString(s)
	w.line += strings.Count(s, "\n")
}

// next is the number of the line the next write starts on.
func (w *cWriter) next() int { return w.line + 1 }

type compiledRule struct {
	rule     *Rule
	matchers []matcher
	insns    int
	jumps    int    // conditional jumps, the verifier's pending branches
	hashed   bool   // in the exact-name DNS table
	set      string // key of the set of rules tested at once, or ""
	// tableOnly: the set's table decides every packet, no rule of it
	// runs one by one.
	tableOnly bool
	// direct: a constant the set's table has is a match (equalMatches).
	direct bool
	// merged: the set's table decides every packet, and one table holds
	// all the set's rules in the program, consecutive or not (Merged sets,
	// in shapes.go); groupInsns and groupJumps are what the set costs the
	// program where its first rule is, the others cost nothing.
	merged                 bool
	groupInsns, groupJumps int
}

// maxSetMaps bounds the sets (each a map) of one program: a program uses
// at most 64 maps, and the others take up to 16.
const maxSetMaps = 40

// Generate turns the rule set into one C program, in phases: lower each
// rule to matchers (cBPF), group them into fast paths (DNS name tables,
// shared functions, sets), lay the rules out in programs, print the C.
func Generate(rs *RuleSet, opts BuildOptions) (*Generated, error) {
	budget := opts.MaxProgramInsns
	if budget <= 0 {
		budget = DefaultMaxProgramInsns
	}
	rules, dns, err := lower(rs, opts)
	if err != nil {
		return nil, err
	}
	tsrc, err := group(rules, opts.NoSets)
	if err != nil {
		return nil, err
	}
	progs, err := layout(rs, rules, budget)
	if err != nil {
		return nil, err
	}
	return print(rs, opts, rules, dns, tsrc, progs)
}

// lower compiles each rule's matchers to cBPF; rules the DNS name tables
// hold have none.
func lower(rs *RuleSet, opts BuildOptions) ([]compiledRule, []l4drop.DNSKey, error) {
	rules := make([]compiledRule, len(rs.Rules))
	var dns []l4drop.DNSKey
	for i := range rs.Rules {
		r := &rs.Rules[i]
		if !opts.NoDNSTable && r.Action.simple() && hashable(r) {
			rules[i] = compiledRule{rule: r, hashed: true}
			dns = append(dns, dnsKeys(i, r)...)
			continue
		}
		ms, err := opts.Frontend.matchers(rs, r)
		if err != nil {
			return nil, nil, err
		}
		n, jumps := 0, 2 // the rule's own test
		for _, m := range ms {
			mn, mj := countInsns(m.prog)
			n += mn
			jumps += mj
		}
		rules[i] = compiledRule{rule: r, matchers: ms, insns: n, jumps: jumps}
	}
	return rules, dns, nil
}

// callCost is what a call of a shared function costs the verifier, in
// the budget's cBPF instructions.
const callCost = 4

// countInsns returns the instructions and the conditional jumps of prog, as
// the budget counts them: a program with backward jumps (protochain) is a
// loop the verifier walks once per turn, up to cbpfc.MaxBackwardJumps
// turns, each with its own paths; it counts loopWeight times.
func countInsns(prog []bpf.Instruction) (n, jumps int) {
	loop := false
	for _, ins := range prog {
		switch ins := ins.(type) {
		case bpf.JumpIf, bpf.JumpIfX:
			jumps++
		case bpf.Jump:
			loop = loop || int32(ins.Skip) < 0
		}
	}
	if loop {
		return len(prog) * loopWeight, jumps * loopWeight
	}
	return len(prog), jumps
}

// loopWeight is twice the turns a cBPF loop may take.
const loopWeight = 2 * (cbpfc.MaxBackwardJumps + 1)

// group finds the matchers that share functions (shapes) and the runs of
// rules tested at once (sets), and returns the C of the shared functions.
// Matchers are folded into sets' forms first (fold.go), if that holds.
func group(rules []compiledRule, noSets bool) (string, error) {
	if noSets {
		return groupAs(rules, true)
	}
	saved := cloneRules(rules)
	// A family whose folding does not hold is left out, and the others
	// folded again: a few rounds at most, one per family kind that fails.
	skip := map[string]bool{}
	for range maxFoldRounds {
		folded := fold(rules, skip)
		if len(folded) == 0 {
			break
		}
		src, err := groupAs(rules, false)
		failed := foldsFailed(rules, folded)
		if err == nil && len(failed) == 0 {
			return src, nil
		}
		copy(rules, cloneRules(saved))
		if err != nil {
			break
		}
		for _, f := range failed {
			skip[f] = true
		}
	}
	return groupAs(rules, false)
}

// maxFoldRounds bounds the builds group tries folding in.
const maxFoldRounds = 3

// cloneRules copies rules deep enough that grouping the copy leaves rules
// as they are.
func cloneRules(rules []compiledRule) []compiledRule {
	c := slices.Clone(rules)
	for i := range c {
		c[i].matchers = slices.Clone(c[i].matchers)
		for j := range c[i].matchers {
			c[i].matchers[j].args = slices.Clone(c[i].matchers[j].args)
		}
	}
	return c
}

// mergedKey names the merged set of a rule's shape and family.
func mergedKey(cr *compiledRule) string {
	return fmt.Sprintf("%s/%s/merged", cr.matchers[0].shape.fn, cr.rule.Family)
}

// groupAs is group without folding.
func groupAs(rules []compiledRule, noSets bool) (string, error) {
	tsrc, err := templates(rules)
	if err != nil {
		return "", err
	}
	// A shared function is a global one: the verifier checks it once, and
	// a rule calling it costs a call.
	for i := range rules {
		cr := &rules[i]
		for _, m := range cr.matchers {
			if m.shape != nil {
				n, jumps := countInsns(m.prog)
				cr.insns -= n - callCost
				cr.jumps -= jumps - 1
			}
		}
	}
	for i := range rules {
		cr := &rules[i]
		if noSets || len(cr.matchers) != 1 || !cr.rule.Action.simple() {
			continue
		}
		if sh := cr.matchers[0].shape; sh != nil && (sh.set || sh.keyed) {
			cr.set = fmt.Sprintf("%s/%s/%s", sh.fn, cr.rule.Family, cr.rule.Action)
		}
	}
	// A set whose table decides every packet is merged: one table per
	// program for all its rules there (Merged sets, in shapes.go). Other
	// sets are runs of consecutive rules, so that the first match still
	// wins: a run has a table of its own. Short runs go one by one.
	// A merged set takes drop and pass rules alike: its key leaves the
	// action out, and the table's rule gives the action (l4_code).
	members := map[string]int{}
	for i := range rules {
		if cr := &rules[i]; cr.set != "" {
			members[mergedKey(cr)]++
		}
	}
	decidesKey := map[string]bool{}
	for i := range rules {
		cr := &rules[i]
		if cr.set == "" || members[mergedKey(cr)] < minTableSet {
			continue
		}
		m := cr.matchers[0]
		key := mergedKey(cr)
		decides, seen := decidesKey[key]
		if !seen {
			decides = m.shape.keyed || tableDecides(m.prog, m.shape.isParam)
			decidesKey[key] = decides
		}
		if !decides {
			continue
		}
		cr.set, cr.merged, cr.tableOnly = key, true, true
		cr.direct = directMatch(m)
		n, jumps := countInsns(m.prog)
		if m.shape.keyed {
			cr.groupInsns, cr.groupJumps = n+callCost, jumps+1
		} else {
			cr.groupInsns, cr.groupJumps = cr.insns*(maxCandidates+1), cr.jumps*(maxCandidates+1)
		}
		cr.insns, cr.jumps = 0, 0
	}
	for i := 0; i < len(rules); {
		j := i + 1
		for j < len(rules) && rules[i].set != "" && rules[j].set == rules[i].set {
			j++
		}
		if rules[i].set == "" || rules[i].merged {
			i = j
			continue
		}
		if j-i < minTableSet {
			for k := i; k < j; k++ {
				rules[k].set = ""
			}
			i = j
			continue
		}
		m := rules[i].matchers[0]
		direct := directMatch(m)
		for k := i; k < j; k++ {
			rules[k].direct = direct
		}
		i = j
	}
	// A shape without a shared function (shape.noCall) is tested by its
	// merged table alone: the matchers of it no table tests compile on
	// their own, at their whole cost.
	for i := range rules {
		cr := &rules[i]
		if cr.merged {
			continue
		}
		for j := range cr.matchers {
			if m := &cr.matchers[j]; m.shape != nil && m.shape.noCall {
				n, jumps := countInsns(m.prog)
				cr.insns += n - callCost
				cr.jumps += jumps - 1
				m.fn, m.shape, m.args = "", nil, nil
			}
		}
	}
	return tsrc, nil
}

// layout splits the rules, in order, into programs by instruction budget,
// by branches (the verifier walks one path to its end and keeps the
// branches it passed for later, at most 8192 of them) and by maps.
func layout(rs *RuleSet, rules []compiledRule, budget int) ([][]int, error) {
	var progs [][]int
	var cur []int
	used, jumps, sets, blocks, blockUsed := 0, 0, 0, 0, 0
	actMaps, actFns := 0, 0 // maps and functions of the rules' actions
	fns := map[*shape]bool{}
	merged := map[string]bool{} // merged sets with a table in the program
	// What the last item of the program was (print's items): a merged
	// set's later rules are in the group its first one made, and do not
	// end a run of a set or a block.
	lastSet, lastPlain := "", false
	for i, cr := range rules {
		if !cr.hashed && !cr.rule.Action.final() {
			cr.jumps += monitorJumps
			cr.insns += monitorInsns
		}
		newSet := cr.set != "" && lastSet != cr.set
		newBlock := !cr.hashed && cr.set == "" && (!lastPlain || blockUsed+cr.insns > blockInsns)
		if cr.merged {
			newSet = !merged[cr.set]
			if newSet {
				cr.insns, cr.jumps = cr.groupInsns, cr.groupJumps
			}
		}
		newFns := 0
		for _, m := range cr.matchers {
			if m.shape != nil && !fns[m.shape] {
				newFns++
			}
		}
		newMaps, newActFns := actionCost(cr.rule)
		subprogs := fixedSubprogs + sets + blocks + len(fns) + newFns + actFns + newActFns
		if newSet || newBlock {
			subprogs++
		}
		if len(cur) > 0 && (used+cr.insns > budget || jumps+cr.jumps > maxProgramJumps ||
			newSet && sets+actMaps >= maxSetMaps || sets+actMaps+newMaps > maxSetMaps || subprogs > maxSubprogs) {
			progs = append(progs, cur)
			cur, used, jumps, sets, blocks, blockUsed = nil, 0, 0, 0, 0, 0
			actMaps, actFns = 0, 0
			fns = map[*shape]bool{}
			merged = map[string]bool{}
			lastSet, lastPlain = "", false
			newSet, newBlock = cr.set != "", !cr.hashed && cr.set == ""
			if cr.merged {
				cr.insns, cr.jumps = cr.groupInsns, cr.groupJumps
			}
		}
		switch {
		case newSet:
			sets++
		case newBlock:
			blocks++
			blockUsed = 0
		}
		if cr.merged {
			// Its first rule in the program is where the group is
			// tested: an item of its own.
			if newSet {
				lastSet, lastPlain = "", false
			}
			merged[cr.set] = true
		} else {
			blockUsed += cr.insns
			lastSet, lastPlain = cr.set, !cr.hashed && cr.set == ""
		}
		actMaps += newMaps
		actFns += newActFns
		for _, m := range cr.matchers {
			if m.shape != nil {
				fns[m.shape] = true
			}
		}
		cur = append(cur, i)
		used += cr.insns
		jumps += cr.jumps
	}
	progs = append(progs, cur)
	if len(progs) > MaxPrograms {
		return nil, fmt.Errorf("%s: %w: %d rules need %d programs (of %d cBPF instructions and %d branches at most), at most %d can be chained",
			rs.File, ErrTooManyRules, len(rules), len(progs), budget, maxProgramJumps, MaxPrograms)
	}
	return progs, nil
}

// monitorJumps is what a rule that lets the next rules judge (monitor)
// adds to the verifier's pending branches: its matching paths go on
// through every later rule, each leaving branches to walk (1,700 monitor
// rules in one program were over the 8,192 it allows).
const monitorJumps = 8

// monitorInsns is what a monitor rule adds to the verifier's walk, in the
// budget's cBPF instructions: its call, and the paths of its test going on
// past it, each walking the rules after it. 66 monitor rules of a port and
// a length in one block were 174,000 instructions processed, 2,600 each,
// where the budget (12,000 instructions for the verifier's 1,000,000) had
// counted 20.
const monitorInsns = 32

// maxSubprogs bounds the functions of one program (blocks, sets, shared
// functions) below the kernel's 256; fixedSubprogs are those every program
// has (l4_monitor, l4_sample, the auto rules').
const (
	maxSubprogs   = 200
	fixedSubprogs = 9
)

// print writes the C of the laid out rule set and its Meta.
func print(rs *RuleSet, opts BuildOptions, rules []compiledRule, dns []l4drop.DNSKey, tsrc string, progs [][]int) (*Generated, error) {
	meta := l4drop.Meta{
		Version:    l4drop.MetaVersion,
		Source:     rs.File,
		SampleRate: rs.SampleRate,
		Snaplen:    rs.Snaplen,
		Rules:      make([]l4drop.MetaRule, len(rules)),
		DNS:        dns,
		Fragments:  string(rs.Fragments),
		AutoSlots:  l4drop.AutoSlots,
	}
	if meta.Snaplen == 0 {
		meta.Snaplen = DefaultSnaplen
	}

	w := &cWriter{}
	w.printf("%s", prelude)
	w.printf("\n/* xdpcap.h, embedded */\n")
	w.printf("%s\n", embeddedXdpcapHeader())
	// Counters: the rules, no rule, then the auto rules.
	chunk, elems := counterLayout(len(rules) + 1 + l4drop.AutoSlots)
	w.printf(mapsTemplate, chunk, elems, len(progs)+1)
	w.printf("#define L4_NRULES %du\n#define L4_NEXT_SLOT %du\n#define L4_NONE 0xffffffffu\n", len(rules), len(progs))
	w.printf("%s", actionCountC)
	w.printf("%s", finishTemplate)
	w.printf("%s", freshC)
	w.printf("%s", l4drop.AutoC)
	w.printf("%s", autoEvalC)
	w.printf("%s", hashC)
	usedActions := map[Action]bool{}
	for _, cr := range rules {
		usedActions[cr.rule.Action] = true
	}
	var custom []Action
	for a := range usedActions {
		if k := a.kind(); k != nil && k.prelude != "" {
			custom = append(custom, a)
		}
	}
	slices.Sort(custom)
	for _, a := range custom {
		w.printf("\n/* Action %s. */\n%s", a, a.kind().prelude)
	}
	w.printf("%s", fragmentsMapC(rs, usedActions[ActionRatelimit]))
	var dnsSwitches map[int]bool
	if len(dns) > 0 {
		maxInline := opts.MaxInlineDNS
		switch {
		case maxInline == 0:
			maxInline = DefaultMaxInlineDNS
		case maxInline < 0:
			maxInline = 0
		}
		src, sw, hashes, err := dnsC(dns, maxInline)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rs.File, err)
		}
		dnsSwitches = sw
		if len(hashes) > 0 {
			meta.DNSHash = hashes
		}
		w.printf("%s", src)
		w.printf("%s", opaqueC)
	}

	if tsrc != "" {
		w.printf("%s", candsPrelude)
		w.printf("%s", keysPrelude)
		w.printf("%s", boundsPrelude)
		w.printf("%s", codesC(rules))
		w.printf("\n/* Matchers shared by rules that differ only in constants. */\n%s", tsrc)
	}
	funcs := make(map[string]string) // matcher program -> C function
	for i, cr := range rules {
		r := cr.rule
		mr := l4drop.MetaRule{
			Index: i, Name: r.Name, Family: string(r.Family), Action: string(r.Action),
			Locations: r.Locations, Line: r.Line, Symbol: enableSymbol(i), Expires: r.expires,
		}
		if !r.until.IsZero() {
			t := r.until
			mr.Until = &t
		}
		if cr.hashed {
			mr.Symbol, mr.Matchers = "", []string{"dns-table"}
			if dnsSwitches[i] {
				mr.Symbol = enableSymbol(i)
			}
			meta.Rules[i] = mr
			continue
		}
		for _, m := range cr.matchers {
			mr.Matchers = append(mr.Matchers, m.kind)
		}
		start := w.next()
		w.printf("%s", actionRuleC(i, r))
		for j := range cr.matchers {
			m := &cr.matchers[j]
			if m.fn != "" {
				continue // a shared function
			}
			key := fmt.Sprint(m.prog)
			if fn, ok := funcs[key]; ok {
				// Rules with the same matcher share its function.
				m.fn = fn
				continue
			}
			m.fn = fmt.Sprintf("r%d_%d", i, j)
			src, err := cbpfc.ToC(m.prog, cbpfc.COpts{FunctionName: m.fn})
			if err != nil {
				return nil, rs.errorf(r, "%s matcher: %w", m.kind, err)
			}
			funcs[key] = m.fn
			w.printf("%s\n", src)
		}
		if opts.spoil == i+1 {
			w.printf("%s", spoilC)
		}
		mr.CLines = append(mr.CLines, [2]int{start, w.line})
		meta.Rules[i] = mr
	}

	for p, idx := range progs {
		name := fmt.Sprintf("%s%d", l4drop.ProgPrefix, p)
		meta.Programs = append(meta.Programs, name)
		// Items in order: blocks of ordinary rules, each a function of
		// its own (clang's time grows faster than linearly with function
		// size, and eBPF jumps reach only 32767 instructions), runs of a
		// set, runs of DNS table rules, each one range check, and merged
		// sets: a group, one table for all the set's rules in the
		// program, where its first rule is (Merged sets, in shapes.go).
		type item struct {
			rules  []int
			hashed bool
			set    string
			group  bool
		}
		var items []item
		groupOf := map[string]int{}
		used := 0
		for _, i := range idx {
			cr := rules[i]
			meta.Rules[i].Program = p
			if cr.merged {
				if g, ok := groupOf[cr.set]; ok {
					items[g].rules = append(items[g].rules, i)
					continue
				}
				groupOf[cr.set] = len(items)
				items = append(items, item{rules: []int{i}, set: cr.set, group: true})
				continue
			}
			last := len(items) - 1
			switch {
			case cr.hashed && last >= 0 && items[last].hashed:
				// The tables give each rule with its action's code.
				items[last].rules = append(items[last].rules, i)
			case cr.set != "" && last >= 0 && !items[last].group && items[last].set == cr.set:
				items[last].rules = append(items[last].rules, i)
			case !cr.hashed && cr.set == "" && last >= 0 && !items[last].hashed && items[last].set == "" && used+cr.insns <= blockInsns:
				items[last].rules = append(items[last].rules, i)
				used += cr.insns
			default:
				items = append(items, item{rules: []int{i}, hashed: cr.hashed, set: cr.set})
				used = cr.insns
			}
		}
		// A few small items are inlined, saving their calls (1,000 rules
		// of three shapes, three groups: 2 ns a packet); past that each is
		// a function, within what one block may be.
		blocks, size := 0, 0
		for _, it := range items {
			switch {
			case it.group:
				size += rules[it.rules[0]].groupInsns
			case !it.hashed:
				for _, i := range it.rules {
					size += rules[i].insns
				}
			}
			if !it.hashed {
				blocks++
			}
		}
		inline := "__always_inline"
		if blocks > 1 && (blocks > maxInlineItems || size > blockInsns) {
			inline = "__attribute__((noinline))"
		}
		// A group is small whatever its rule count (a run of its matcher
		// collecting candidates, then its table): groups are inlined
		// while they fit in a block together, however many items there
		// are. A call costs more than a group's own code where returns
		// go through a mitigation's thunk (AMD's SRSO here: 2,000 nets
		// of 14 prefix lengths, 14 groups, 127 -> 33 ns a packet).
		itemInline := make([]string, len(items))
		groupsSize := 0
		for b, it := range items {
			itemInline[b] = inline
			if it.group && inline != "__always_inline" {
				if n := rules[it.rules[0]].groupInsns; groupsSize+n <= blockInsns {
					itemInline[b] = "__always_inline"
					groupsSize += n
				}
			}
		}
		// best is the first rule the groups tested so far matched (rule
		// << 4 | code), or L4_NONE. A group alone needs none.
		useBest := len(groupOf) > 1 || len(groupOf) == 1 && len(items) > 1
		// Groups no packet can match two of are tested largest first,
		// and the first found ends the test (disjoint.go).
		var disjointOrder []int
		if len(groupOf) == len(items) && len(items) > 1 {
			groups := make([][]int, len(items))
			for b, it := range items {
				groups[b] = it.rules
			}
			if disjointOrder = disjointGroups(rules, groups); disjointOrder != nil {
				useBest = false
			}
		}
		// A block's rules whose test does something (a monitor rule's
		// count, a ratelimit rule's tokens) must not run past a rule a
		// group before the block matched: they get best as a limit.
		limited := make([]bool, len(items))
		sawGroup := false
		for b, it := range items {
			if it.hashed {
				continue
			}
			if it.set != "" {
				sawGroup = sawGroup || it.group
				set, err := writeSet(w, &meta, rules, it.rules, p, b, itemInline[b])
				if err != nil {
					return nil, fmt.Errorf("%s: %w", rs.File, err)
				}
				meta.Sets = append(meta.Sets, set)
				continue
			}
			for _, i := range it.rules {
				limited[b] = limited[b] || sawGroup && sideEffects(i, rules[i].rule)
			}
			limit := ""
			if limited[b] {
				limit = ", __u32 limit"
			}
			w.printf("\n/* Returns rule << 4 | action code for the first matching rule, or L4_NONE. */\n")
			w.printf("static %s __u32 l4_p%d_b%d(struct xdp_md *ctx, const uint8_t *ip, const uint8_t *end, int fam%s)\n{\n", inline, p, b, limit)
			for _, i := range it.rules {
				cr := rules[i]
				start := w.next()
				cond := ruleCondition(i, cr)
				if opts.spoil == i+1 {
					cond += " && l4_spoil(ip, end)"
				}
				if limited[b] && sideEffects(i, cr.rule) {
					// Opaque: a test of limit itself would leave each
					// rule after it knowing another range of it, and the
					// verifier walking them once per range.
					cond = fmt.Sprintf("%du < L4_OPAQUE(limit) && %s", i, cond)
				}
				if cr.rule.Action.final() {
					w.printf("\tif (L4_ENABLED(%s) && %s%s)\n\t\treturn %d;\n", enableSymbol(i), cond, actionCond(i, cr.rule), testResult(i, cr.rule.Action.code()))
				} else {
					w.printf("\tif (L4_ENABLED(%s) && %s)\n\t\tl4_monitor(ctx, %d);\n", enableSymbol(i), cond, i)
				}
				meta.Rules[i].CLines = append(meta.Rules[i].CLines, [2]int{start, w.line})
			}
			w.printf("\treturn L4_NONE;\n}\n")
		}

		openProgram(w, p, name)
		w.printf("\tconst uint8_t *data = (const uint8_t *)(long)ctx->data;\n")
		w.printf("\tconst uint8_t *end = (const uint8_t *)(long)ctx->data_end;\n")
		w.printf("\tstruct l4_counters *cnt = l4_counters();\n")
		w.printf("\tconst uint8_t *ip = data;\n")
		w.printf("\t__u32 rule, action = XDP_PASS, r;\n")
		w.printf("\tint fam = l4_parse(data, end, &ip);\n")
		w.printf("\tif (!fam)\n\t\t%s\n", finishC("L4_NRULES", "XDP_PASS"))
		// A match of an item is the first unless a group matched an
		// earlier rule: min(r, best).
		found := "\t\tgoto matched;\n"
		if useBest {
			// best is hidden from the verifier with the config's pad
			// (always 0) loaded once: a volatile load at each group
			// cost a match 0.8 ns over 6 groups.
			w.printf("\t__u32 best = L4_NONE, pad = L4_OPAQUE(0);\n")
			found = "\t\tif (best < r)\n\t\t\tr = best;\n\t\tgoto matched;\n"
		}
		dnsDone := false
		dnsInline := false
		for b, it := range items {
			if it.hashed {
				dnsInline = true
				for _, later := range items[b:] {
					dnsInline = dnsInline && (later.hashed || later.set != "")
				}
				break
			}
		}
		dnsLookup := "l4_dns_at(ctx, L4_IPOFF(ctx, ip), fam)"
		if dnsInline {
			dnsLookup = "l4_dns_in(L4_FRESH(ip, end), end, fam)"
		}
		for _, b := range disjointOrder {
			w.printf("\tr = l4_p%d_b%d(ctx, ip, end, fam);\n\tif (r != L4_NONE)\n\t\tgoto matched;\n", p, b)
		}
		if disjointOrder != nil {
			items = nil // all tested above, in their order
		}
		// The tables hold the names of every program's rules; this
		// program takes its own only, up to dnsHi (its last rule's
		// result, with any code): a later program's rule is not the
		// first, its rules before it judge first. An earlier program's
		// is never found here: that program took it.
		var hashed []int // the program's DNS rules, in order
		for _, it := range items {
			if it.hashed {
				hashed = append(hashed, it.rules...)
			}
		}
		dnsHi := -1
		if len(hashed) > 0 {
			dnsHi = testResult(hashed[len(hashed)-1], codeMask)
		}
		// With groups and no blocks, the DNS tables are looked up first.
		// A packet they find a rule for goes on through the groups that
		// may match it too and no others (dnsDisjoint: a group of ports
		// without 53, or of TCP): a name of the last of 10,000 mixed
		// rules, 18.2 -> 10.5 ns a packet. Other packets go through the
		// groups in rule order. Blocks are left in rule order: the
		// verifier would walk them on both ways.
		dnsFirst := useBest && dnsHi >= 0 && !slices.ContainsFunc(items, func(it item) bool { return !it.hashed && it.set == "" })
		var rest, may []int
		for b, it := range items {
			if !dnsFirst || !it.hashed {
				rest = append(rest, b)
			}
		}
		if dnsFirst {
			dns := dnsPaths(rules, idx)
			for _, b := range rest {
				if !dnsDisjoint(rules, items[b].rules, dns) {
					may = append(may, b)
				}
			}
			w.printf("\t__u32 dns_rule = %s;\n\tif (dns_rule <= %#xu)\n\t\tgoto dns_found;\n", dnsLookup, dnsHi)
			if len(may) < len(rest) {
				// A DNS query no name of this program's matched is one
				// too: only the items that may match one can.
				w.printf("\tif (dns_rule != L4_NONE)\n\t\tgoto dns_other;\n")
			}
			dnsDone = true
		}
		// testsAfter reports whether an item of order after its k-th
		// tests best: all but the DNS items after the tables' lookup.
		testsAfter := func(order []int, k int) bool {
			return slices.ContainsFunc(order[k+1:], func(l int) bool { return !items[l].hashed || !dnsDone })
		}
		// writeItems writes the tests of the items of order, in that
		// order; sawGroup when best may hold a match before the first.
		writeItems := func(order []int, sawGroup bool) {
			for k, b := range order {
				it := items[b]
				if sawGroup && (!it.hashed || !dnsDone) {
					// A group's match before this item's first rule is the
					// first: nothing here or later comes before it.
					w.printf("\tif (best < %#xu) {\n\t\tr = best;\n\t\tgoto matched;\n\t}\n", testResult(it.rules[0], 0))
				}
				switch {
				case it.group && useBest:
					w.printf("\tr = l4_p%d_b%d(ctx, ip, end, fam);\n\tif (r < best)\n\t\tbest = r;\n", p, b)
					if testsAfter(order, k) {
						// Hidden from the verifier, so that the paths
						// through the group go on equal.
						w.printf("\tbest ^= pad;\n")
					}
					sawGroup = true
				case !it.hashed:
					limit := ""
					if limited[b] {
						limit = fmt.Sprintf(", best >> %d", resultShift)
					}
					w.printf("\tr = l4_p%d_b%d(ctx, ip, end, fam%s);\n\tif (r != L4_NONE) {\n%s\t}\n", p, b, limit, found)
				case useBest:
					if dnsDone {
						continue
					}
					// The tables' rule joins best as a group's would,
					// once: the tests of best before the items after
					// it keep the first match first. A test of
					// dns_rule at each item of DNS rules instead cost
					// a packet 0.5 ns an item.
					w.printf("\t__u32 dns_rule = %s;\n", dnsLookup)
					dnsDone = true
					w.printf("\tif (dns_rule <= %#xu && dns_rule < best)\n\t\tbest = dns_rule;\n", dnsHi)
					if testsAfter(order, k) {
						w.printf("\tbest ^= pad;\n")
					}
					sawGroup = true
				default:
					if !dnsDone {
						w.printf("\t__u32 dns_rule = %s;\n", dnsLookup)
						dnsDone = true
					}
					lo, hi := it.rules[0], it.rules[len(it.rules)-1]
					// Hidden from the verifier for the rules after it
					// (opaqueC); with none, clang sees the tables'
					// constant for no match and skips the test on those
					// paths: 0.4-0.8 ns a packet at 1,000 names.
					dnsRule := "dns_rule"
					if slices.ContainsFunc(order[k+1:], func(later int) bool { return !items[later].hashed }) {
						dnsRule = "L4_OPAQUE(dns_rule)"
					}
					first, last := testResult(lo, 0), testResult(hi, codeMask)
					w.printf("\tif (%s - %#xu <= %#xu) {\n", dnsRule, first, last-first)
					w.printf("\t\tr = %s;\n%s\t}\n", dnsResult(rules, it.rules), found)
				}
			}
		}
		writeItems(rest, false)
		if useBest {
			w.printf("rules_done:\n\tif (best != L4_NONE) {\n\t\tr = best;\n\t\tgoto matched;\n\t}\n")
		}
		if p+1 < len(progs) {
			w.printf("\tbpf_tail_call(ctx, &%s, %d);\n", l4drop.MapChain, p+1)
			w.printf("\t%s\n", finishC("L4_NRULES", "XDP_PASS"))
		} else {
			// The end of the rules: later fragments no rule matched,
			// then the auto rules.
			w.printf("%s", fragmentsC(rs))
			w.printf("\tr = l4_auto(ctx, data, ip, fam);\n\tif (r != L4_AUTO_NONE)\n\t\t%s\n\t%s\n",
				finishC("L4_NRULES + 1 + r", "XDP_DROP"), finishC("L4_NRULES", "XDP_PASS"))
		}
		if dnsFirst {
			// The tables found a rule: best, and the items that may
			// find an earlier one.
			w.printf("dns_found:\n\tbest = %s;\n", dnsResult(rules, hashed))
			if len(may) > 0 {
				w.printf("\tbest ^= pad;\n")
			}
			writeItems(may, true)
			w.printf("\tr = best;\n\tgoto matched;\n")
			if len(may) < len(rest) {
				// A DNS query the tables found no rule of this
				// program's for (l4_dns: L4_DNS_MISS, or a later
				// program's rule): the items that may match it, then
				// the rules' end as for any other packet. Legitimate
				// queries to 10,000 mixed rules: +12.3 to +6.7 ns a packet.
				w.printf("dns_other:\n")
				writeItems(may, false)
				w.printf("\tgoto rules_done;\n")
			}
		}
		w.printf("matched:\n\trule = r >> %d;\n\tswitch (r & %d) {\n", resultShift, codeMask)
		var finals []Action
		for a := range actionKinds {
			if a.final() {
				finals = append(finals, a)
			}
		}
		slices.Sort(finals)
		for _, a := range finals {
			if a.simple() || usedActions[a] {
				w.printf("\tcase %d:\n", a.code())
				a.kind().verdict(w)
				w.printf("\t\tbreak;\n")
			}
		}
		w.printf("\t}\n")
		w.printf("\t%s\n}\n", finishC("rule", "action"))
		closeProgram(w, p, name)
	}

	js, err := meta.Marshal()
	if err != nil {
		return nil, err
	}
	js = packMeta(js)
	w.printf("\n/* Rule names, order, families and locations, for the loader. */\n")
	w.printf("static const char l4drop_rules[] SEC(\"%s\") = %s;\n", l4drop.MetaSection, cString(js))
	return &Generated{C: w.buf.String(), Meta: meta}, nil
}

// counterLayout is the counters map's for n counters: counters to an
// element, a power of two so that a rule's element and place in it are a
// shift and a mask, and elements.
// More than one element's worth are one to an element, as before chunks:
// the rule that decides is mostly past the first element, and so are the
// no-rule counter and the auto rules', and the shift and mask of a rule's
// place cost 10,000 rules 0.4 ns a packet.
func counterLayout(n int) (chunk, elems int) {
	if n > l4drop.CounterChunk {
		return 1, n
	}
	chunk = 1
	for chunk < n {
		chunk *= 2
	}
	return chunk, 1
}

// finishC is the C of a program's end: each path that knows its rule and
// action calls l4_finish with them, rather than all paths meeting at one
// call. Met at one call, rule and action are set before the rules run
// and held across them, in callee-saved registers the rules then lack:
// the rules' values went to the stack, and one port rule cost a packet
// 0.5 ns more.
func finishC(rule, action string) string {
	return fmt.Sprintf("return l4_finish(ctx, cnt, data, end, %s, %s, l4_exits);", rule, action)
}

// packMeta gzips metadata past 64 KiB, in base64 (printable: no escapes
// in C): clang takes seconds to print a long string (10,000 rules: 1.9 MB
// of JSON, 10 s; gzipped, 0.2 s), and ReadMeta reads either form.
func packMeta(js []byte) []byte {
	if len(js) <= 64<<10 {
		return js
	}
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.BestCompression) // a valid level: no error
	zw.Write(js)
	zw.Close()
	return base64.StdEncoding.AppendEncode(nil, b.Bytes())
}

// dnsResult is the C of dns_rule, one of the rules idx of the DNS tables,
// as a test's result: with the code written out when they all act alike,
// so that clang knows the action (1,000 names: 0.5 ns a packet less).
func dnsResult(rules []compiledRule, idx []int) string {
	code := rules[idx[0]].rule.Action.code()
	for _, i := range idx {
		if rules[i].rule.Action.code() != code {
			return "dns_rule"
		}
	}
	return fmt.Sprintf("(dns_rule & ~%#xu) | %d", codeMask, code)
}

// codesC defines l4_code, the action's code of a rule of a merged set
// whose rules drop and pass both (a bit a rule, set for pass), if there is
// such a set. The DNS tables hold their rules' codes themselves.
func codesC(rules []compiledRule) string {
	actions := map[string]Action{}
	mixed := false
	for _, cr := range rules {
		if !cr.merged {
			continue
		}
		if a, ok := actions[cr.set]; ok && a != cr.rule.Action {
			mixed = true
		}
		actions[cr.set] = cr.rule.Action
	}
	if !mixed {
		return ""
	}
	bits := make([]uint64, (len(rules)+63)/64)
	for i, cr := range rules {
		if cr.merged && cr.rule.Action == ActionPass {
			bits[i/64] |= 1 << (i % 64)
		}
	}
	var b strings.Builder
	b.WriteString("\n/* The rules of merged sets that pass (code 1; drop is 0). */\nstatic const __u64 l4_pass_bits[] = {")
	for i, w := range bits {
		if i%4 == 0 {
			b.WriteString("\n\t")
		} else {
			b.WriteString(" ")
		}
		fmt.Fprintf(&b, "%#x,", w)
	}
	fmt.Fprintf(&b, "\n};\n\nstatic __always_inline __u32 l4_code(__u32 rule)\n{\n\tif (rule >= %d)\n\t\treturn 0;\n"+
		"\treturn l4_pass_bits[rule >> 6] >> (rule & 63) & 1;\n}\n", len(bits)*64)
	return b.String()
}

// sideEffects reports whether testing rule i does something besides
// matching: a monitor rule counts and samples, an action's condition may
// take tokens (ratelimit).
func sideEffects(i int, r *Rule) bool {
	return !r.Action.final() || actionCond(i, r) != ""
}

func enableSymbol(i int) string { return fmt.Sprintf("RULE_%d_ENABLED", i) }

// ruleCondition is the C condition under which rule i matches: its family,
// then every matcher; per-family matchers are chosen by the packet's family.
func ruleCondition(i int, cr compiledRule) string {
	var parts []string
	if n := famNumber(cr.rule.Family); n != 0 {
		parts = append(parts, fmt.Sprintf("fam == %d", n))
	}
	call := func(j int, m matcher) string {
		switch {
		case len(m.args) > 0:
			var args []string
			for _, a := range m.args {
				args = append(args, fmt.Sprintf("%#xu", a))
			}
			return m.fn + "(ctx, L4_IPOFF(ctx, ip), " + strings.Join(args, ", ") + ")"
		case cbpfc.UsesContext(m.prog):
			return m.fn + "(L4_FRESH(ip, end), end, ctx)"
		}
		return m.fn + "(L4_FRESH(ip, end), end)"
	}
	var v4, v6 []string
	for j, m := range cr.matchers {
		switch m.family {
		case FamilyAny:
			parts = append(parts, call(j, m))
		case FamilyIPv4:
			v4 = append(v4, call(j, m))
		case FamilyIPv6:
			v6 = append(v6, call(j, m))
		}
	}
	switch {
	case len(v4) > 0 && len(v6) > 0:
		parts = append(parts, fmt.Sprintf("(fam == 4 ? (%s) : (%s))", strings.Join(v4, " && "), strings.Join(v6, " && ")))
	case len(v4) > 0:
		parts = append(parts, "fam == 4", strings.Join(v4, " && "))
	case len(v6) > 0:
		parts = append(parts, "fam == 6", strings.Join(v6, " && "))
	}
	return strings.Join(parts, " && ")
}

// cString quotes s as a C string literal, escaping everything that is not
// printable ASCII.
func cString(s []byte) string {
	var b strings.Builder
	b.WriteByte('"')
	for i, c := range s {
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c >= 0x20 && c < 0x7f && c != '?':
			b.WriteByte(c)
		default:
			// Octal escapes take at most three digits, so they never
			// swallow a following digit.
			fmt.Fprintf(&b, "\\%03o", c)
		}
		// Split long literals; clang concatenates them.
		if i%4096 == 4095 {
			b.WriteString("\"\n\t\"")
		}
	}
	b.WriteByte('"')
	return b.String()
}

// embeddedXdpcapHeader is xdpcap.h without its system includes: the prelude
// defines what they would provide, so the program needs no headers.
func embeddedXdpcapHeader() string {
	var out []string
	for _, l := range strings.Split(string(xdpcap.Header), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#include") {
			continue
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// prelude defines the types, helpers and macros the program needs, so that
// it builds with clang alone, without kernel or libbpf headers.
const prelude = `/* Generated by l4drop build. Do not edit. */
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef uint32_t __u32;
typedef uint64_t __u64;

#define __always_inline inline __attribute__((always_inline))
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define LIBBPF_PIN_BY_NAME 1

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PROG_ARRAY = 3,
	BPF_MAP_TYPE_PERF_EVENT_ARRAY = 4,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
};

enum xdp_action {
	XDP_ABORTED = 0,
	XDP_DROP = 1,
	XDP_PASS = 2,
	XDP_TX = 3,
	XDP_REDIRECT = 4,
};

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

/* BPF helpers, by number (include/uapi/linux/bpf.h). */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static __u64 (*bpf_ktime_get_ns)(void) = (void *)5;
static __u32 (*bpf_get_prandom_u32)(void) = (void *)7;
static __u32 (*bpf_get_smp_processor_id)(void) = (void *)8;
static long (*bpf_tail_call)(void *ctx, void *map, __u32 index) = (void *)12;
static long (*bpf_perf_event_output)(void *ctx, void *map, __u64 flags, void *data, __u64 size) = (void *)25;

#define BPF_F_CURRENT_CPU 0xffffffffULL

/*
 * L4_ENABLED loads the rule's switch: a 64-bit immediate whose value the
 * loader writes through the symbol's relocation (0 off, 1 on), so one ELF
 * serves every location.
 */
#define L4_ENABLED(sym) ({ uint64_t e_; asm volatile("%0 = " #sym " ll" : "=r"(e_)); e_; })

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* L4_IPOFF is where the IP header is in the packet, for global functions,
 * which take no packet pointers; it is at most L4_MAX_IPOFF (Ethernet and
 * two VLAN tags). */
#define L4_IPOFF(ctx, ip) ((__u32)((ip) - (const uint8_t *)(long)(ctx)->data))
#define L4_MAX_IPOFF 22

/* L4_BE16 is a 16-bit constant as a load from the packet gives it. */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define L4_BE16(x) ((uint16_t)(x))
#else
#define L4_BE16(x) ((uint16_t)(((x) >> 8 & 0xff) | ((x) << 8 & 0xff00)))
#endif

/*
 * l4_parse finds the IP header after Ethernet and up to two VLAN tags
 * (802.1Q, 802.1ad). It returns 4 or 6 by the ethertype, or 0 for anything
 * else. It looks at nothing in the IP header: a malformed one (bad version
 * or header length, truncated, total length beyond the frame) is for the
 * rules to judge, as libpcap judges it; refusing it here would wave it
 * past every rule.
 */
static __always_inline int l4_parse(const uint8_t *data, const uint8_t *end, const uint8_t **ip)
{
	const uint8_t *p = data + 14;
	if (p > end)
		return 0;
	/* The ethertype as the packet has it: one load, compared with the
	 * constants in network order (L4_BE16), untagged IPv4 first. */
	uint16_t proto = *(const uint16_t *)(data + 12);
	*ip = p;
	if (proto == L4_BE16(0x0800))
		return 4;
#pragma unroll
	for (int i = 0; i < 2; i++) {
		if (proto != L4_BE16(0x8100) && proto != L4_BE16(0x88a8))
			break;
		if (p + 4 > end)
			return 0;
		proto = *(const uint16_t *)(p + 2);
		p += 4;
	}
	*ip = p;
	if (proto == L4_BE16(0x0800))
		return 4;
	if (proto == L4_BE16(0x86dd))
		return 6;
	return 0;
}

/* l4_later_fragment reports whether the packet is an IPv4 or IPv6 fragment
 * other than the first, which has no transport header. */
static __always_inline int l4_later_fragment(const uint8_t *ip, const uint8_t *end, int fam)
{
	if (fam == 4)
		return ip + 8 <= end && ((ip[6] << 8 | ip[7]) & 0x1fff);
	return ip + 44 <= end && ip[6] == 44 && ((ip[42] << 8 | ip[43]) & 0xfff8);
}

/* l4_mix64 is splitmix64's output function, a bijection of 64 bits whose
 * every output bit depends on every input bit: the programs' keyed hashes
 * (the sampling draw, the per-source rate limits' table) end with it.
 * It is internal/splitmix's Mix without its step. */
static __always_inline __u64 l4_mix64(__u64 x)
{
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}
`

// mapsTemplate takes the counters to an element, the elements, and the
// chain slots (programs + 1: the last one is for --next).
const mapsTemplate = `
XDPCAP_HOOK(xdpcap_hook);

struct l4_counter {
	__u64 packets;
	__u64 bytes;
};

struct l4_stats {
	__u64 samples;
	__u64 lost;
};

struct l4_config {
	/* A packet is sampled when l4_sampled's 32 random bits are below
	 * sample_threshold: 0 never, 1<<32 always. */
	__u64 sample_threshold;
	__u32 snaplen;
	__u32 pad;
	/* seed keys l4_sampled's hash and the per-source ratelimit tables'
	 * (l4_rl_source): the loader draws it at random. */
	__u64 seed;
};

/* What precedes the packet bytes in a sample. */
struct l4_sample {
	__u64 time;
	__u32 rule;
	__u32 action;
	__u32 len;
	__u32 cap;
};

/* Per rule, one more for packets no rule matched, then the auto rules':
 * all in one element when they fit (l4drop.CounterChunk), so that a
 * program looks them up once, as it starts (l4_counters), and counts a
 * packet with an add where it ends; one to an element when they do not. */
#define L4_CHUNK %du
#define L4_CHUNKS %du
struct l4_counters {
	struct l4_counter c[L4_CHUNK];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, L4_CHUNKS);
	__type(key, __u32);
	__type(value, struct l4_counters);
} l4drop_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l4_stats);
} l4drop_stats SEC(".maps");

/* The sample configuration: a global, read with a load rather than a map
 * lookup; it is the only thing in its section, which is an array map of one
 * element the loader pins and ` + "`l4drop samples --rate`" + ` updates. */
struct l4_config l4drop_cfg SEC(".data.l4cfg") = { 0, 0, 0, 0 };

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} l4drop_samples SEC(".maps");

/* The programs of a split rule set, in order, then --next's program. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, %d);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} l4drop_chain SEC(".maps");

`

const finishTemplate = `
/*
 * L4_TAIL_CALL is bpf_tail_call with a constant index that clang cannot
 * merge with another's into one call with a variable index: the JIT makes
 * a constant-index tail call a patched direct jump, next to free when the
 * slot is empty, where a variable index costs a few ns per packet.
 */
#define L4_TAIL_CALL(ctx, map, idx)                                                        \
	asm volatile("r1 = %[c]\n\tr2 = " #map " ll\n\tr3 = " #idx "\n\tcall 12" ::[c] "r"(ctx) \
		     : "r0", "r1", "r2", "r3", "r4", "r5", "memory")

/* l4_write_sample writes a sample of the packet to the perf array. */
static __always_inline void l4_write_sample(struct xdp_md *ctx, __u64 len, __u32 rule, __u32 action)
{
	__u32 zero = 0;
	volatile struct l4_config *cfg = &l4drop_cfg;
	__u64 cap = len;
	if (cap > cfg->snaplen)
		cap = cfg->snaplen;
	cap &= 0xffff;
	struct l4_sample s = {
		.time = bpf_ktime_get_ns(),
		.rule = rule == L4_NRULES ? 0xffffffffu : rule,
		.action = action,
		.len = len,
		.cap = cap,
	};
	long err = bpf_perf_event_output(ctx, &l4drop_samples, BPF_F_CURRENT_CPU | cap << 32, &s, sizeof(s));
	struct l4_stats *st = bpf_map_lookup_elem(&l4drop_stats, &zero);
	if (st) {
		if (err)
			st->lost++;
		else
			st->samples++;
	}
}

/* l4_sample writes l4_finish's samples: off the packets' path, which keeps
 * only the test of the rate (a load and a branch while sampling is off),
 * and fewer values in registers (0.3 to 1 ns a packet). A monitor match
 * writes its own inline: as a call from the rules' paths, the verifier
 * walked a third more of a set of 1,700 monitor rules. */
static __attribute__((noinline)) int l4_sample(struct xdp_md *ctx, __u64 len, __u32 rule, __u32 action)
{
	l4_write_sample(ctx, len, rule, action);
	return 0;
}

/* l4_counters returns this CPU's counters, all in one element: a program
 * looks them up as it starts, where the lookup's chain of loads overlaps
 * the parsing, not at its end. Counters one to an element (more than
 * l4drop.CounterChunk) are looked up at the end alone, by l4_count: an
 * early lookup would not find the rule's (10,000 rules: 2 ns a packet). */
static __always_inline struct l4_counters *l4_counters(void)
{
	__u32 zero = 0;
	if (L4_CHUNKS > 1)
		return 0;
	return bpf_map_lookup_elem(&l4drop_counters, &zero);
}

/* l4_count counts the packet for its rule and returns the rule's counter
 * on this CPU (0 for a rule beyond the map, which there is not). */
static __always_inline struct l4_counter *l4_count(__u64 len, __u32 rule)
{
	__u32 key = rule / L4_CHUNK;
	struct l4_counters *cs = bpf_map_lookup_elem(&l4drop_counters, &key);
	if (!cs)
		return 0;
	struct l4_counter *c = &cs->c[rule % L4_CHUNK];
	c->packets++;
	c->bytes += len;
	return c;
}

/*
 * l4_sampled reports whether to sample the packet c counted for rule:
 * splitmix64's output function over the rule's counts on this CPU, keyed
 * by the loader's seed, whose top 32 bits are as good as random. Each
 * packet steps a rule's input by an odd constant, so each rule on each
 * CPU draws a splitmix64 stream of its own. bpf_get_prandom_u32, a helper
 * call, cost 14 ns a packet where returns go through a return thunk
 * (SRSO's Safe RET); this costs the test of the rate alone while sampling
 * is off, and a few multiplications while it is on.
 */
static __always_inline int l4_sampled(const struct l4_counter *c, __u32 rule)
{
	volatile struct l4_config *cfg = &l4drop_cfg;
	__u64 threshold = cfg->sample_threshold;
	if (!threshold)
		return 0;
	__u64 z = cfg->seed + rule;
	if (c)
		z += c->packets * 0x9e3779b97f4a7c15ULL + c->bytes * 0xd1b54a32d192ed03ULL;
	return (l4_mix64(z) >> 32) < threshold;
}

static __always_inline void l4_count_sample(struct xdp_md *ctx, __u64 len, __u32 rule, __u32 action)
{
	if (l4_sampled(l4_count(len, rule), rule))
		l4_write_sample(ctx, len, rule, action);
}

/* l4_monitor counts and samples a match of a monitor rule (or auto rule),
 * which lets the next rules judge the packet. Global, so that the verifier
 * walks it once, not at each call: 300 monitor rules, 392,000 instructions
 * processed as a static function, 211,000 as a global one. */
__attribute__((noinline)) int l4_monitor(struct xdp_md *ctx, __u32 rule)
{
	l4_action_count(L4_COUNT_MONITORED);
	l4_count_sample(ctx, ctx->data_end - ctx->data, rule, XDP_PASS);
	return 0;
}

/* A program's ways out besides returning (l4_finish's exits, a constant
 * of each program): L4_EXIT_HOOK through the xdpcap hook, as xdpcap_exit
 * does; L4_EXIT_NEXT to the --next program, where the loader switches it
 * on (L4_NEXT_ENABLED). The quiet twin has neither: a tail call anywhere
 * in a program, even one switched off, makes the JIT set up the tail-call
 * counter as the program starts: 0.4-1 ns a packet here. */
#define L4_EXIT_HOOK 1
#define L4_EXIT_NEXT 2

/*
 * l4_finish ends every path: it counts the packet for its rule, samples it,
 * and leaves by the exits the program has: passed packets to the --next
 * program, and every packet through the xdpcap hook.
 */
static __always_inline int l4_finish(struct xdp_md *ctx, struct l4_counters *cnt, const uint8_t *data,
				     const uint8_t *end, __u32 rule, __u32 action, const int exits)
{
	struct l4_counter *c;
	/* So that clang tests rule itself: it would test the value rule was
	 * shifted from, which the verifier does not tie to rule. */
	if (L4_CHUNKS == 1 && !__builtin_constant_p(rule))
		asm volatile("" : "+r"(rule));
	if (cnt && rule < L4_CHUNK) {
		c = &cnt->c[rule];
		c->packets++;
		c->bytes += end - data;
	} else {
		c = l4_count(end - data, rule);
	}
	if (l4_sampled(c, rule))
		l4_sample(ctx, end - data, rule, action);
	if (action == XDP_DROP) {
		if (exits & L4_EXIT_HOOK)
			L4_TAIL_CALL(ctx, xdpcap_hook, 1); /* XDP_DROP */
		return XDP_DROP;
	}
	if (action == XDP_TX) { /* a SYN-ACK of the syncookie action */
		if (exits & L4_EXIT_HOOK)
			L4_TAIL_CALL(ctx, xdpcap_hook, 3); /* XDP_TX */
		return XDP_TX;
	}
	if ((exits & L4_EXIT_NEXT) && L4_ENABLED(L4_NEXT_ENABLED))
		bpf_tail_call(ctx, &l4drop_chain, L4_NEXT_SLOT);
	if (exits & L4_EXIT_HOOK)
		L4_TAIL_CALL(ctx, xdpcap_hook, 2); /* XDP_PASS */
	return XDP_PASS;
}
`

// spoilC reads a byte the verifier cannot prove is in the packet (see
// BuildOptions.spoil).
const spoilC = `
static __always_inline int l4_spoil(const uint8_t *ip, const uint8_t *end)
{
	return end > ip && ip[100];
}
`

// freshC isolates a rule from the rules before it, for the verifier. A
// matcher checks the packet's bounds on the pointer it is given, and the
// verifier extends what it knows to every copy of that pointer, the
// callers' included: each rule would leave the paths after it with
// another known length, and the verifier, which merges paths only where
// one knows no more than another it walked, would walk later rules once
// per length (100 rules of a few lengths: 170 instructions processed per
// cBPF instruction). L4_FRESH gives each rule a pointer of its own, equal
// at run time but unknown to the verifier, whose checks reach no further
// than the rule: ip plus the sign bit of end - ip, which is 0 (l4_parse
// never leaves ip past end), where the verifier, which knows nothing of a
// difference of two pointers, sees 0 or 1. It takes registers alone: the
// load of a zero the verifier cannot see (the config's pad, as L4_OPAQUE
// has) cost a packet a few tenths of a ns a rule group.
const freshC = `
#define L4_OPAQUE(x) ((__u32)(x) ^ ((volatile struct l4_config *)&l4drop_cfg)->pad)
/* In asm: clang would fold the difference's sign away, or add in 32 bits,
 * which the verifier refuses on pointers. */
static __always_inline const uint8_t *l4_fresh(const uint8_t *p, const uint8_t *end)
{
	__u64 z;
	asm volatile("%0 = %2\n\t%0 -= %1\n\t%0 >>= 63\n\t%1 += %0" : "=&r"(z), "+r"(p) : "r"(end));
	return p;
}
#define L4_FRESH(p, end) l4_fresh(p, end)
`

// opaqueC calls the DNS tables and hides their result from the verifier.
// Inlined, the tables would leave each name's rule as a constant, and the
// packet checked to its own length, on a path of their own: every later
// rule of the program would be walked once per such path (seen: 3,852
// cBPF instructions after 300 DNS rules took the verifier over its
// million). l4_dns_at is a global function, checked once, whose result
// the verifier does not know. L4_OPAQUE keeps the rules' tests of it
// from narrowing it, so that the paths after them stay equal; the
// config's pad is always 0 (the loader never writes it). A program whose
// items from the first DNS one on are all tables (DNS names, sets, merged
// sets) has no later rule to walk: a set's matcher runs on a fresh pointer
// of its own and its result is hidden as the names' is (10,000 rules of
// mixed shapes, four seeds: 30,000 to 36,000 instructions processed,
// against 24,000 to 28,000 with the call). It inlines the tables
// (l4_dns_in, on a fresh pointer), without the call: a call's return is
// dear where the kernel sends returns through a return thunk (SRSO's Safe
// RET: 4 ns a packet of the matching one, 9 of a miss, on 10,000 mixed
// rules).
const opaqueC = `
static __always_inline __u32 l4_dns_in(const uint8_t *ip, const uint8_t *end, int fam)
{
	const uint8_t *name = l4_dns_name(ip, end, fam);
	return name ? l4_dns(name, end, fam) : L4_NONE;
}

__attribute__((noinline)) __u32 l4_dns_at(struct xdp_md *ctx, __u32 ipoff, int fam)
{
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	if (ipoff > L4_MAX_IPOFF)
		return L4_NONE;
	const uint8_t *name = l4_dns_name(data + ipoff, end, fam);
	return name ? l4_dns(name, end, fam) : L4_NONE;
}
`

// hashC is the C the tables' functions share.
const hashC = `
#define L4_HASH_SLOTS 4
`
