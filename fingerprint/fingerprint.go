package fingerprint

import (
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sort"

	"github.com/l4drop/l4drop/l4drop"
)

// Packet is one sampled IP packet.
type Packet struct {
	// Data holds the captured bytes from the IP header on.
	Data []byte
	// Len is the packet's length on the wire from the IP header on; 0
	// means len(Data).
	Len int
	// Family is the family the link layer gives the packet (4 for
	// ethertype 0x0800, 6 for 0x86dd), which is what the program's auto
	// table goes by; 0 means the IP header's version field.
	Family uint8
}

// Options tune fingerprinting. The zero value is usable.
type Options struct {
	// Coverage is the share of the attack's samples a rule must match
	// (default 0.99).
	Coverage float64
	// MinSamples is the fewest samples a rule is made from (default 20).
	MinSamples int
	// MaxRules bounds how many rules Fingerprint returns (default
	// l4drop.AutoSlots).
	MaxRules int
	// MaxConds bounds a rule's conditions (default l4drop.AutoConds).
	// Beyond the conditions that exclude the baseline, a rule gets the
	// attack's other fixed fields, which keep it off legitimate traffic
	// the baseline did not show.
	MaxConds int
}

func (o Options) withDefaults() Options {
	if o.Coverage <= 0 || o.Coverage > 1 {
		o.Coverage = 0.99
	}
	if o.MinSamples <= 0 {
		o.MinSamples = 20
	}
	if o.MaxRules <= 0 || o.MaxRules > l4drop.AutoSlots {
		o.MaxRules = l4drop.AutoSlots
	}
	if o.MaxConds <= 0 || o.MaxConds > l4drop.AutoConds {
		o.MaxConds = l4drop.AutoConds
	}
	return o
}

// Rule is a fingerprint: an auto rule and what it was made from.
type Rule struct {
	l4drop.AutoRule
	// Samples is how many attack samples the rule was made from (the
	// vector it describes), Matched how many of those it matches.
	Samples, Matched int
	// Coverage is Matched/Samples.
	Coverage float64
	// Fields names the packet fields the conditions test, one per
	// condition.
	Fields []string
}

// ErrNoFingerprint is returned when no rule the auto table can hold
// matches enough of the attack and none of the baseline.
var ErrNoFingerprint = errors.New("no fingerprint")

// Fingerprint finds rules that together match the attack's samples and
// none of the baseline's. A capture of an attack may hold several vectors
// and some legitimate traffic: each rule describes one vector, covering at
// least Options.Coverage of its samples; samples that fit no rule are left
// out. Every rule matches none of baseline. It returns ErrNoFingerprint if
// it finds no rule at all.
func Fingerprint(attack, baseline []Packet, opts Options) ([]Rule, error) {
	opts = opts.withDefaults()
	A := parseAll(attack, false)
	// The baseline keeps its malformed packets: a rule must miss them
	// too, as the program reads them.
	B := parseAll(baseline, true)
	var rules []Rule
	for len(rules) < opts.MaxRules && len(A) >= opts.MinSamples {
		r, rest, ok := fitNext(A, B, opts)
		if !ok {
			break
		}
		rules = append(rules, r)
		A = rest
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("%w: %d attack samples, %d baseline samples", ErrNoFingerprint, len(attack), len(baseline))
	}
	return rules, nil
}

// parseAll parses ps, leaving out packets that are not well-formed, or
// with malformed those of neither family.
func parseAll(ps []Packet, malformed bool) []pkt {
	out := make([]pkt, 0, len(ps))
	for _, p := range ps {
		if q, ok := newPkt(p.Data, p.Len, p.Family); ok || malformed && q.h.family != 0 {
			out = append(out, q)
		}
	}
	return out
}

type groupKey struct{ fam, proto byte }

// fitNext finds one rule for a vector of A, largest first, and returns A
// without the samples it matches. A group of one family and protocol that
// does not fit whole (two vectors, or legitimate samples among the
// attack's) is split on the value its samples most share that the
// baseline lacks.
func fitNext(A, B []pkt, opts Options) (Rule, []pkt, bool) {
	groups := map[groupKey][]pkt{}
	for _, p := range A {
		k := groupKey{p.h.family, p.h.proto}
		groups[k] = append(groups[k], p)
	}
	keys := make([]groupKey, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if len(groups[keys[i]]) != len(groups[keys[j]]) {
			return len(groups[keys[i]]) > len(groups[keys[j]])
		}
		return keys[i].fam < keys[j].fam || keys[i].fam == keys[j].fam && keys[i].proto < keys[j].proto
	})
	for _, k := range keys {
		g := groups[k]
		if len(g) < opts.MinSamples {
			continue
		}
		// First without the samples that look like the baseline's, then
		// whole, then split.
		subs := append([][]pkt{withoutBaseline(g, B, k)}, splits(g, B, k, opts)...)
		for _, sub := range subs {
			if r, ok := fit(sub, B, k, opts); ok {
				rest := A[:0:0]
				for _, p := range A {
					if !p.matches(&r.AutoRule) {
						rest = append(rest, p)
					}
				}
				return r, rest, true
			}
		}
	}
	return Rule{}, nil, false
}

// withoutBaseline returns the samples of g that look like none of the
// baseline's: a legitimate packet in an attack's capture is no part of the
// attack, and no rule may match it. Two packets look alike when they agree
// on every field whose values the baseline keeps to a few (so not on
// random ports, identifications or names).
func withoutBaseline(g, B []pkt, k groupKey) []pkt {
	var Bk []pkt
	for _, p := range B {
		if p.h.family == k.fam && p.h.proto == k.proto {
			Bk = append(Bk, p)
		}
	}
	if len(Bk) == 0 {
		return g
	}
	fs := fields(k.fam, k.proto)
	var stable []*field
	for i := range fs {
		vals := map[uint32]bool{}
		for j := range Bk {
			if v, ok := fs[i].value(&Bk[j]); ok {
				vals[v] = true
				if len(vals) > 32 {
					break
				}
			}
		}
		if len(vals) <= 32 && len(vals)*20 <= len(Bk) {
			stable = append(stable, &fs[i])
		}
	}
	sig := func(p *pkt) uint64 {
		h := uint64(14695981039346656037)
		for _, f := range stable {
			v, ok := f.value(p)
			if !ok {
				v = 1<<32 - 1
				h ^= 0xff
			}
			h = (h ^ uint64(v)) * 1099511628211
		}
		return h
	}
	seen := map[uint64]bool{}
	for j := range Bk {
		seen[sig(&Bk[j])] = true
	}
	out := g[:0:0]
	for j := range g {
		if !seen[sig(&g[j])] {
			out = append(out, g[j])
		}
	}
	return out
}

// splits returns the subsets of g worth fitting, in order: g itself, then
// g's samples that share a value the baseline rarely has, most common
// first.
func splits(g, B []pkt, k groupKey, opts Options) [][]pkt {
	out := [][]pkt{g}
	type seed struct {
		f     *field
		v     uint32
		count int
	}
	var seeds []seed
	fs := fields(k.fam, k.proto)
	for i := range fs {
		f := &fs[i]
		if f.dst {
			continue
		}
		counts := map[uint32]int{}
		for j := range g {
			if v, ok := f.value(&g[j]); ok {
				counts[v]++
			}
		}
		for v, n := range counts {
			if n >= opts.MinSamples && n < len(g) {
				seeds = append(seeds, seed{f, v, n})
			}
		}
	}
	// The baseline's share of a seed value: a seed the baseline has
	// plenty of would gather legitimate samples.
	bshare := func(s seed) int {
		n := 0
		for j := range B {
			if B[j].h.family != k.fam || B[j].h.proto != k.proto {
				continue
			}
			if v, ok := s.f.value(&B[j]); ok && v == s.v {
				n++
			}
		}
		return n
	}
	sort.SliceStable(seeds, func(i, j int) bool { return seeds[i].count > seeds[j].count })
	// Seeds the baseline rarely has first; then, if none fitted, those it
	// has plenty of: a tool's header that legitimate replies share too
	// can still gather the attack's samples apart from lookalikes of
	// another field (fit keeps every rule off the baseline).
	common := make([]bool, len(seeds))
	for i, s := range seeds {
		common[i] = bshare(s)*100 > len(B)
	}
	order := make([]int, 0, len(seeds))
	for _, pass := range []bool{false, true} {
		for i := range seeds {
			if common[i] == pass {
				order = append(order, i)
			}
		}
	}
	tried := 0
	for _, i := range order {
		s := seeds[i]
		if tried == 4 {
			break
		}
		tried++
		var sub []pkt
		for j := range g {
			if v, ok := s.f.value(&g[j]); ok && v == s.v {
				sub = append(sub, g[j])
			}
		}
		out = append(out, sub)
	}
	return out
}

// bitset is a set of sample indices.
type bitset []uint64

func newBitset(n int) bitset { return make(bitset, (n+63)/64) }
func (b bitset) set(i int)   { b[i/64] |= 1 << (i % 64) }
func (b bitset) count() int {
	n := 0
	for _, w := range b {
		n += bits.OnesCount64(w)
	}
	return n
}
func andCount(a, b bitset) int {
	n := 0
	for i := range a {
		n += bits.OnesCount64(a[i] & b[i])
	}
	return n
}
func (b bitset) and(o bitset) {
	for i := range b {
		b[i] &= o[i]
	}
}
func full(n int) bitset {
	b := newBitset(n)
	for i := 0; i < n; i++ {
		b.set(i)
	}
	return b
}

// cand is a candidate condition with the samples it matches: in A (cover)
// and in the baseline of the same family and protocol (bmatch).
type cand struct {
	f       *field
	cond    l4drop.AutoCond
	cover   bitset
	bmatch  bitset
	nB      int // baseline samples matched
	kind    int // 0 exact, 1 class, 2 range: the order of preference
	byteCnd bool
}

// fit finds a rule for A, all of family and protocol k, that matches at
// least opts.Coverage of A and nothing of B.
func fit(A, B []pkt, k groupKey, opts Options) (Rule, bool) {
	if len(A) < opts.MinSamples {
		return Rule{}, false
	}
	// The baseline packets a rule for k could match: a rule of protocol
	// 0 matches every protocol (fields(k.fam, 0) holds the protocol
	// field for that).
	var Bk []pkt
	for _, p := range B {
		if p.h.family == k.fam && (k.proto == 0 || p.h.hasProto && p.h.proto == k.proto) {
			Bk = append(Bk, p)
		}
	}
	need := int(opts.Coverage*float64(len(A)) + 0.999999)
	// A condition may cost a little of A: together they stay above need.
	per := 1 - (1-opts.Coverage)/2
	fs := fields(k.fam, k.proto)
	var cands []*cand
	for i := range fs {
		cands = append(cands, candidates(&fs[i], A, Bk, per)...)
	}
	cover := full(len(A))
	left := full(len(Bk))
	var chosen []*cand
	if k.proto == 0 {
		// The table reads protocol 0 as any: the rule says 0 itself.
		i := slices.IndexFunc(cands, func(c *cand) bool { return c.f.name == "protocol" && c.kind == 0 && c.cond.Max == 0 })
		if i < 0 {
			return Rule{}, false
		}
		chosen = append(chosen, cands[i])
		cover.and(cands[i].cover)
		left.and(cands[i].bmatch)
	}
	for left.count() > 0 {
		var best *cand
		bestKill, bestCov := 0, 0
		for _, c := range cands {
			if slices.Contains(chosen, c) {
				continue
			}
			cov := andCount(cover, c.cover)
			if cov < need {
				continue
			}
			kill := left.count() - andCount(left, c.bmatch)
			if kill > bestKill || kill == bestKill && kill > 0 && cov > bestCov {
				best, bestKill, bestCov = c, kill, cov
			}
		}
		if best == nil {
			return Rule{}, false
		}
		chosen = append(chosen, best)
		cover.and(best.cover)
		left.and(best.bmatch)
	}
	// More of the attack's fixed fields, the rarest in the baseline first:
	// they keep the rule off legitimate traffic the baseline lacked.
	extras := make([]*cand, 0, len(cands))
	for _, c := range cands {
		if !slices.Contains(chosen, c) && (c.kind == 0 && c.nB*2 <= len(Bk) || c.kind != 0 && c.nB*10 <= len(Bk)) {
			extras = append(extras, c)
		}
	}
	sort.SliceStable(extras, func(i, j int) bool {
		if extras[i].nB != extras[j].nB {
			return extras[i].nB < extras[j].nB
		}
		return extras[i].kind < extras[j].kind
	})
	onlyDst := func(cs []*cand) bool {
		for _, c := range cs {
			if !c.f.dst {
				return false
			}
		}
		return true
	}
	cut := false // an exact extra took the rule below need
	exactFloor := int((1-2*(1-opts.Coverage))*float64(len(A)) + 0.999999)
	for _, c := range extras {
		// An extra may cost samples, as long as the rule still covers
		// need: those it leaves out differ from the rest in a field the
		// attack fixes (an exact candidate holds for 99.5% of the
		// samples), as legitimate packets that happen to share the
		// conditions chosen so far do. Seen live: a rule on one byte of
		// a tool's 4-byte payload header, the other three refused for
		// excluding a few legitimate samples, matched 1/256 of the
		// legitimate datagrams of the same length.
		// An exact extra (a field the attack fixes) may take the rule
		// below need, to twice the share Coverage leaves out: when the
		// conditions so far cover need with nothing to spare, the
		// samples the extra excludes are the legitimate lookalikes it
		// is there to exclude (CI: a rule on one header byte at exactly
		// 99.0% matched 22 users).
		floor := need
		if c.kind == 0 {
			floor = exactFloor
		}
		cov := andCount(cover, c.cover)
		if cov < floor {
			continue
		}
		if cov < need {
			cut = true
		}
		try := append(slices.Clone(chosen), c)
		if len(compact(try)) > opts.MaxConds {
			continue
		}
		chosen = try
		cover.and(c.cover)
	}
	if len(chosen) == 0 || onlyDst(chosen) {
		return Rule{}, false
	}
	conds := compact(chosen)
	if len(conds) > opts.MaxConds {
		return Rule{}, false
	}
	r := Rule{AutoRule: l4drop.AutoRule{State: l4drop.AutoDrop, Family: k.fam, Proto: k.proto}}
	for _, c := range conds {
		r.Conds = append(r.Conds, c.cond)
		r.Fields = append(r.Fields, c.name)
	}
	// Verify with the evaluator, as the table will run it, on the whole
	// baseline.
	for _, p := range B {
		if p.matches(&r.AutoRule) {
			return Rule{}, false
		}
	}
	for _, p := range A {
		if p.matches(&r.AutoRule) {
			r.Matched++
		}
	}
	r.Samples = len(A)
	r.Coverage = float64(r.Matched) / float64(len(A))
	if r.Matched < need && !(cut && r.Matched >= exactFloor) {
		return Rule{}, false
	}
	return r, true
}

// tight reports whether c is narrow enough to say something of the attack
// as an extra condition: a class, or a range over at most an eighth of the
// field's values (64 bytes of length), not a span of random bytes.
func (c *cand) tight() bool {
	if c.kind != 2 {
		return true
	}
	span := uint64(c.cond.Max - c.cond.Min)
	if c.cond.Base == l4drop.BaseLen {
		return span < 64
	}
	return span < (uint64(c.cond.Mask)+1)/8
}

// candidates returns the conditions on f that match at least per of A: the
// one value most of A has, else (payload bytes) the 0xe0 class most of A
// has, else the narrowest range.
func candidates(f *field, A, B []pkt, per float64) []*cand {
	vals := make([]uint32, 0, len(A))
	okA := newBitset(len(A))
	counts := map[uint32]int{}
	for i := range A {
		if v, ok := f.value(&A[i]); ok {
			vals = append(vals, v)
			okA.set(i)
			counts[v]++
		}
	}
	need := int(per*float64(len(A)) + 0.999999)
	if len(vals) < need {
		return nil
	}
	mk := func(kind int, mask, lo, hi uint32) *cand {
		c := &cand{f: f, kind: kind, cover: newBitset(len(A)), bmatch: newBitset(len(B)), byteCnd: f.base == l4drop.BasePayload || f.name == "tcp option byte"}
		c.cond = l4drop.AutoCond{Base: f.base, Size: f.size, Off: f.off, Mask: mask, Min: lo, Max: hi}
		if f.base == l4drop.BaseLen {
			c.cond.Size, c.cond.Mask = 4, 0xffffffff
		}
		for i := range A {
			if v, ok := f.value(&A[i]); ok && v&mask >= lo && v&mask <= hi {
				c.cover.set(i)
			}
		}
		for i := range B {
			if v, ok := f.value(&B[i]); ok && v&mask >= lo && v&mask <= hi {
				c.bmatch.set(i)
				c.nB++
			}
		}
		return c
	}
	var top uint32
	topN := 0
	for v, n := range counts {
		if n > topN || n == topN && v < top {
			top, topN = v, n
		}
	}
	// A value most of A shares is a field the attack fixes; the samples
	// without it are other traffic, not a spread to cover. A class or a
	// range around such a value widens the rule to the random values of
	// the few legitimate samples among the attack's: seen live, a rule of
	// payload ranges around a tool's fixed header that matched one
	// legitimate datagram in a thousand. The exact value it is, and the
	// rule's coverage decides.
	if topN >= need || topN*2 >= len(vals) {
		return []*cand{mk(0, f.mask, top, top)}
	}
	var out []*cand
	if f.class {
		cc := map[uint32]int{}
		for _, v := range vals {
			cc[v&0xe0]++
		}
		for v, n := range cc {
			if n >= need {
				out = append(out, mk(1, 0xe0, v, v))
			}
		}
	}
	if f.rng {
		slices.Sort(vals)
		// The narrowest window of need values.
		bi := -1
		var span uint32
		for i := 0; i+need-1 < len(vals); i++ {
			if s := vals[i+need-1] - vals[i]; bi < 0 || s < span {
				bi, span = i, s
			}
		}
		if bi >= 0 {
			// A wide range is what random values look like: no evidence,
			// and a condition that excludes the baseline by chance.
			if c := mk(2, f.mask, vals[bi], vals[bi+need-1]); c.tight() {
				out = append(out, c)
			}
		}
	}
	return out
}

// named is a condition and the field it tests.
type named struct {
	cond l4drop.AutoCond
	name string
}

// compact merges conditions on neighbouring bytes of one base into 2- and
// 4-byte conditions, so more of a payload fits the 8 conditions: bytes
// that must hold one value each, then the last in a range, are one field
// in a range.
func compact(cs []*cand) []named {
	var out []named
	var bytesBy = map[l4drop.AutoBase][]l4drop.AutoCond{}
	for _, c := range cs {
		if c.byteCnd && c.cond.Size == 1 {
			bytesBy[c.cond.Base] = append(bytesBy[c.cond.Base], c.cond)
			continue
		}
		out = append(out, named{c.cond, c.f.name})
	}
	for _, base := range []l4drop.AutoBase{l4drop.BaseL4, l4drop.BasePayload} {
		bs := bytesBy[base]
		sort.Slice(bs, func(i, j int) bool { return bs[i].Off < bs[j].Off })
		name := "payload"
		if base == l4drop.BaseL4 {
			name = "tcp options"
		}
		for i := 0; i < len(bs); {
			// Take bytes at off, off+1... while the previous ones are
			// single values; a gap is a byte with mask 0.
			j := i + 1
			for j < len(bs) && bs[j].Off < bs[i].Off+4 && bs[j-1].Min == bs[j-1].Max {
				j++
			}
			span := int(bs[j-1].Off-bs[i].Off) + 1
			size := 1
			switch {
			case span == 4:
				size = 4
			case span >= 2:
				size = 2
			}
			for j > i && int(bs[j-1].Off-bs[i].Off) >= size {
				j--
			}
			m := l4drop.AutoCond{Base: base, Size: uint8(size), Off: bs[i].Off}
			for _, b := range bs[i:j] {
				shift := 8 * uint32(size-1-int(b.Off-bs[i].Off))
				m.Mask |= b.Mask << shift
				m.Min |= b.Min << shift
				m.Max |= b.Max << shift
			}
			out = append(out, named{m, name})
			i = j
		}
	}
	return out
}
