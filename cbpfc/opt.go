package cbpfc

import (
	"math"
	"slices"
)

// Rewrites that keep the filter's meaning and make it shorter, done on the
// cBPF before code generation (indices stay, so errors still name the
// instruction the caller wrote): constant propagation and folding of
// conditional jumps whose outcome is known, and removal of loads that
// reload a value A or X already holds.

type valKind uint8

const (
	vUnknown valKind = iota
	vConst
	vAbs    // the packet bytes [k:size], as loaded by ld [k]
	vMsh    // 4*([k]&0xf)
	vAbsAnd // the packet bytes [k:size] & mask
)

type val struct {
	kind valKind
	k    uint32
	size int
	mask uint32 // vAbsAnd
}

type constState struct {
	reached bool
	a, x    val
	mem     [16]val
	aEqX    bool // A == X, whatever they are
	// A lies in [alo, ahi] and X in [xlo, xhi], on every path.
	alo, ahi, xlo, xhi uint32
}

// fullRange is the range of a value nothing is known of.
const fullRange = math.MaxUint32

func joinConst(a, b constState) constState {
	if !a.reached {
		return b
	}
	if !b.reached {
		return a
	}
	out := constState{reached: true, aEqX: a.aEqX && b.aEqX}
	pick := func(u, v val) val {
		if u == v {
			return u
		}
		return val{}
	}
	out.a, out.x = pick(a.a, b.a), pick(a.x, b.x)
	out.alo, out.ahi = min(a.alo, b.alo), max(a.ahi, b.ahi)
	out.xlo, out.xhi = min(a.xlo, b.xlo), max(a.xhi, b.xhi)
	for i := range out.mem {
		out.mem[i] = pick(a.mem[i], b.mem[i])
	}
	return out
}

func aluConst(op uint16, a, b uint32) (uint32, bool) {
	switch op {
	case aluADD:
		return a + b, true
	case aluSUB:
		return a - b, true
	case aluMUL:
		return a * b, true
	case aluDIV:
		if b == 0 {
			return 0, false
		}
		return a / b, true
	case aluMOD:
		if b == 0 {
			return 0, false
		}
		return a % b, true
	case aluOR:
		return a | b, true
	case aluAND:
		return a & b, true
	case aluXOR:
		return a ^ b, true
	case aluLSH:
		return a << (b & 31), true
	case aluRSH:
		return a >> (b & 31), true
	}
	return 0, false
}

func condConst(op uint16, a, b uint32) bool {
	switch op {
	case jmpJEQ:
		return a == b
	case jmpJGT:
		return a > b
	case jmpJGE:
		return a >= b
	}
	return a&b != 0
}

// sizeMax is the largest value a load of size bytes gives.
func sizeMax(size int) uint32 {
	return uint32(1<<(8*size) - 1)
}

// smear sets every bit below the highest bit set: the largest value whose
// bits all lie within those of values up to v.
func smear(v uint32) uint32 {
	v |= v >> 1
	v |= v >> 2
	v |= v >> 4
	v |= v >> 8
	v |= v >> 16
	return v
}

// aluRange bounds A op B for A in [lo, hi] and B in [blo, bhi].
func aluRange(op uint16, lo, hi, blo, bhi uint32) (uint32, uint32) {
	switch op {
	case aluAND:
		return 0, min(hi, bhi)
	case aluOR:
		return max(lo, blo), smear(hi | bhi)
	case aluXOR:
		return 0, smear(hi | bhi)
	case aluADD:
		if uint64(hi)+uint64(bhi) <= math.MaxUint32 {
			return lo + blo, hi + bhi
		}
	case aluSUB:
		if lo >= bhi {
			return lo - bhi, hi - blo
		}
	case aluMUL:
		if uint64(hi)*uint64(bhi) <= math.MaxUint32 {
			return lo * blo, hi * bhi
		}
	case aluDIV:
		// Division by 0 ends the filter: the divisor is at least 1.
		return lo / max(bhi, 1), hi / max(blo, 1)
	case aluMOD:
		if bhi > 0 {
			return 0, min(hi, bhi-1)
		}
	case aluRSH:
		if blo == bhi {
			return lo >> (blo & 31), hi >> (blo & 31)
		}
		return 0, hi
	case aluLSH:
		if sh := blo & 31; blo == bhi && uint64(hi)<<sh <= math.MaxUint32 {
			return lo << sh, hi << sh
		}
	}
	return 0, fullRange
}

// constStep applies instruction in to s.
func constStep(in insn, s constState) constState {
	setA := func(v val, lo, hi uint32) {
		s.a, s.aEqX = v, v.kind == vConst && v == s.x
		if v.kind == vConst {
			lo, hi = v.k, v.k
		}
		s.alo, s.ahi = lo, hi
	}
	setX := func(v val, lo, hi uint32) {
		s.x, s.aEqX = v, v.kind == vConst && v == s.a
		if v.kind == vConst {
			lo, hi = v.k, v.k
		}
		s.xlo, s.xhi = lo, hi
	}
	set := func(r reg, v val, lo, hi uint32) {
		if r == regA {
			setA(v, lo, hi)
		} else {
			setX(v, lo, hi)
		}
	}
	switch in.kind {
	case kLdImm:
		set(in.dst, val{kind: vConst, k: in.k}, 0, 0)
	case kLdMem:
		set(in.dst, s.mem[in.k], 0, fullRange)
	case kLdLen:
		set(in.dst, val{}, 0, fullRange)
	case kLdAbs:
		setA(val{kind: vAbs, k: in.k, size: in.size}, 0, sizeMax(in.size))
	case kLdInd:
		setA(val{}, 0, sizeMax(in.size))
	case kLdExt:
		if in.k == extPktType {
			setA(val{}, 0, 2)
		} else {
			setA(val{}, 0, fullRange)
		}
	case kLdMsh:
		setX(val{kind: vMsh, k: in.k}, 0, 60)
	case kSt:
		if in.dst == regA {
			s.mem[in.k] = s.a
		} else {
			s.mem[in.k] = s.x
		}
	case kAlu:
		b := val{kind: vConst, k: in.k}
		blo, bhi := in.k, in.k
		if in.useX {
			b, blo, bhi = s.x, s.xlo, s.xhi
		}
		if s.a.kind == vConst && b.kind == vConst {
			if c, ok := aluConst(in.op, s.a.k, b.k); ok {
				setA(val{kind: vConst, k: c}, 0, 0)
				break
			}
		}
		lo, hi := aluRange(in.op, s.alo, s.ahi, blo, bhi)
		switch {
		case in.op == aluAND && b.kind == vConst && s.a.kind == vAbs:
			setA(val{kind: vAbsAnd, k: s.a.k, size: s.a.size, mask: b.k}, lo, hi)
		case in.op == aluAND && b.kind == vConst && s.a.kind == vAbsAnd:
			setA(val{kind: vAbsAnd, k: s.a.k, size: s.a.size, mask: s.a.mask & b.k}, lo, hi)
		default:
			setA(val{}, lo, hi)
		}
	case kNeg:
		if s.a.kind == vConst {
			setA(val{kind: vConst, k: -s.a.k}, 0, 0)
		} else {
			setA(val{}, 0, fullRange)
		}
	case kTax:
		s.x, s.aEqX, s.xlo, s.xhi = s.a, true, s.alo, s.ahi
	case kTxa:
		s.a, s.aEqX, s.alo, s.ahi = s.x, true, s.xlo, s.xhi
	}
	return s
}

// refine narrows what s knows of A on the edge of conditional jump in
// taken when its test is true (taken) or false. ok is false when no value
// A may have takes that edge.
func refine(in insn, s constState, taken bool) (constState, bool) {
	if in.kind != kJcond || in.useX || in.jt == in.jf {
		return s, true
	}
	lo, hi, k := s.alo, s.ahi, in.k
	switch in.op {
	case jmpJEQ:
		switch {
		case taken && (k < lo || k > hi):
			return s, false
		case taken:
			lo, hi = k, k
		case lo == hi && lo == k:
			return s, false
		case k == lo:
			lo++
		case k == hi:
			hi--
		}
	case jmpJGT:
		switch {
		case taken && k >= hi:
			return s, false
		case taken:
			lo = max(lo, k+1)
		case k < lo:
			return s, false
		default:
			hi = min(hi, k)
		}
	case jmpJGE:
		switch {
		case taken && k > hi:
			return s, false
		case taken:
			lo = max(lo, k)
		case k <= lo:
			return s, false
		default:
			hi = min(hi, k-1)
		}
	case jmpJSET:
		switch {
		case taken && k&smear(hi) == 0:
			return s, false
		case taken && lo == hi && lo&k == 0:
			return s, false
		case !taken && lo == hi && lo&k != 0:
			return s, false
		case !taken && lo > 0 && k&smear(hi) == smear(hi):
			// A is not 0, so some bit the mask covers is set.
			return s, false
		}
	}
	s.alo, s.ahi = lo, hi
	if lo == hi && s.a.kind == vUnknown {
		s.a = val{kind: vConst, k: lo}
		s.aEqX = s.aEqX || s.x == s.a
	}
	return s, true
}

// optimize rewrites p in place until nothing changes.
func optimize(p *program) {
	n := len(p.insns)
	for round := 0; round < 16; round++ {
		states := make([]constState, n)
		states[0] = constState{reached: true, aEqX: true, a: val{kind: vConst}, x: val{kind: vConst}}
		for i := range states[0].mem {
			states[0].mem[i] = val{kind: vConst}
		}
		// Ranges can grow a little at a time round a loop: after a
		// few changes, an instruction's ranges give up.
		changes := make([]int, n)
		for changed := true; changed; {
			changed = false
			for i, in := range p.insns {
				if !states[i].reached {
					continue
				}
				out := constStep(in, states[i])
				_, param := p.params[i]
				for e, s := range insnSuccs(in, i) {
					o := out
					if !param {
						var ok bool
						if o, ok = refine(in, out, e == 0); !ok {
							continue // no value of A goes that way
						}
					}
					j := joinConst(states[s], o)
					if j != states[s] {
						if changes[s]++; changes[s] > 8 {
							j.alo, j.ahi, j.xlo, j.xhi = 0, fullRange, 0, fullRange
						}
						states[s] = j
						changed = true
					}
				}
			}
		}
		// A test whose two ways do the same is for nothing. That
		// changes what the states say further on (the code it skips set
		// values nothing reads, but set them), so it is a round of its
		// own.
		// So is "and #m; jeq #0" with A read on neither way: jset #m
		// with the ways swapped tests the same bits.
		f := analyze(p)
		preds := f.preds()
		skipped := false
		for i, in := range p.insns {
			if _, param := p.params[i]; !param && states[i].reached && in.kind == kJcond && in.jt != in.jf {
				if t := skipDead(p, f, in.jt); t == skipDead(p, f, in.jf) {
					p.insns[i], skipped = insn{kind: kJa, jt: t}, true
					continue
				}
			}
			if i+1 < len(p.insns) && states[i].reached && in.kind == kAlu && !in.useX && in.op == aluAND {
				next := p.insns[i+1]
				_, param := p.params[i+1]
				if !param && next.kind == kJcond && !next.useX && next.op == jmpJEQ && next.k == 0 && next.jt != next.jf &&
					len(preds[i+1]) == 1 && (f.liveIn[next.jt]|f.liveIn[next.jf])&liveA == 0 {
					p.insns[i] = insn{kind: kNop}
					p.insns[i+1] = insn{kind: kJcond, op: jmpJSET, k: in.k, jt: next.jf, jf: next.jt}
					skipped = true
				}
			}
		}
		if skipped {
			continue
		}
		zero := endsZero(p, states)
		rewrote := false
		for i, in := range p.insns {
			s := states[i]
			if !s.reached {
				continue
			}
			if zero[i] && (in.kind != kRetK || in.k != 0) {
				// Whatever it does, the filter ends with 0.
				p.insns[i], rewrote = insn{kind: kRetK}, true
				continue
			}
			if _, ok := p.params[i]; ok && in.kind == kJcond && in.jt != in.jf {
				continue // its constant is not known here
			}
			if r, ok := rewrite(p, i, s, states); ok {
				p.insns[i] = r
				rewrote = true
			}
		}
		if !rewrote && !mergeTails(p) {
			return
		}
	}
}

// endsZero marks the instructions from which every path ends the filter
// with 0 (a failed load, a division by 0, a return of 0), given the states
// before each instruction.
func endsZero(p *program, states []constState) []bool {
	zero := make([]bool, len(p.insns))
	for i := len(p.insns) - 1; i >= 0; i-- {
		in := p.insns[i]
		switch {
		case !states[i].reached:
		case in.alwaysFails():
			zero[i] = true
		case in.kind == kRetK:
			zero[i] = in.k == 0
		case in.kind == kRetA:
			zero[i] = states[i].ahi == 0
		case in.kind == kJa:
			zero[i] = !in.jback && zero[in.jt]
		case in.kind == kJcond:
			zero[i] = zero[in.jt] && zero[in.jf]
		default:
			zero[i] = i+1 < len(p.insns) && zero[i+1]
		}
	}
	return zero
}

// insnSuccs are the successors in the cBPF program as written.
func insnSuccs(in insn, i int) []int {
	switch in.kind {
	case kRetA, kRetK:
		return nil
	case kJa:
		return []int{in.jt}
	case kJcond:
		return []int{in.jt, in.jf}
	}
	if in.alwaysFails() {
		return nil
	}
	return []int{i + 1}
}

// rewrite returns what instruction i of p becomes, given the state s
// before it (states: before each instruction), and whether it changed.
func rewrite(p *program, i int, s constState, states []constState) (insn, bool) {
	in := p.insns[i]
	nop := insn{kind: kNop}
	switch in.kind {
	case kJcond:
		b := val{kind: vConst, k: in.k}
		if in.useX {
			b = s.x
		}
		taken, known := false, false
		switch {
		case in.jt == in.jf:
			taken, known = true, true
		case s.a.kind == vConst && b.kind == vConst:
			taken, known = condConst(in.op, s.a.k, b.k), true
		case in.useX && s.aEqX && in.op != jmpJSET:
			taken, known = in.op != jmpJGT, true
		case !in.useX:
			if _, ok := refine(in, s, true); !ok {
				taken, known = false, true
			} else if _, ok := refine(in, s, false); !ok {
				taken, known = true, true
			}
		}
		if known {
			t := in.jf
			if taken {
				t = in.jt
			}
			return insn{kind: kJa, jt: t}, true
		}
		if m, ok := mergeTests(p, i, s); ok {
			return m, true
		}
	case kLdAbs:
		if s.a == (val{kind: vAbs, k: in.k, size: in.size}) {
			return nop, true
		}
		// A holds [k] & mask and the next instruction masks with no
		// more bits: reloading changes nothing.
		if s.a.kind == vAbsAnd && s.a.k == in.k && s.a.size == in.size && i+1 < len(p.insns) {
			next := p.insns[i+1]
			if next.kind == kAlu && !next.useX && next.op == aluAND && next.k&^s.a.mask == 0 {
				return nop, true
			}
		}
	case kLdMsh:
		if s.x == (val{kind: vMsh, k: in.k}) {
			return nop, true
		}
	case kLdImm:
		cur := s.a
		if in.dst == regX {
			cur = s.x
		}
		if cur == (val{kind: vConst, k: in.k}) {
			return nop, true
		}
	case kTax:
		if s.aEqX {
			return nop, true
		}
		if s.a.kind == vConst {
			return insn{kind: kLdImm, dst: regX, k: s.a.k}, true
		}
	case kTxa:
		if s.aEqX {
			return nop, true
		}
		if s.x.kind == vConst {
			return insn{kind: kLdImm, dst: regA, k: s.x.k}, true
		}
	case kAlu, kNeg:
		if in.kind == kAlu && in.useX && s.x.kind == vConst && !(in.op == aluDIV || in.op == aluMOD) {
			return insn{kind: kAlu, op: in.op, k: s.x.k}, true
		}
		if in.kind == kAlu && !in.useX && in.op == aluAND && (smear(s.ahi)&^in.k == 0 || s.a.kind == vAbsAnd && s.a.mask&^in.k == 0) {
			return nop, true // no bit of A that may be set is cleared
		}
		if in.kind == kAlu && !in.useX && in.k == 0 && (in.op == aluADD || in.op == aluSUB || in.op == aluOR || in.op == aluXOR || in.op == aluLSH || in.op == aluRSH) {
			return nop, true
		}
		if s.a.kind == vConst {
			next := constStep(in, s)
			if next.a.kind == vConst {
				return insn{kind: kLdImm, dst: regA, k: next.a.k}, true
			}
		}
	case kLdMem:
		v := s.mem[in.k]
		if v.kind == vConst {
			return insn{kind: kLdImm, dst: in.dst, k: v.k}, true
		}
	}
	return in, false
}

// resolve follows t through removed instructions and forward jumps to the
// instruction that does something.
func (p *program) resolve(t int) int { return skipDead(p, nil, t) }

// skipDead is resolve that also steps over what sets only values nothing
// reads (f.dead; none when f is nil): where a jump's two ways differ only
// by such code, they lead to the same place.
func skipDead(p *program, f *facts, t int) int {
	for n := 0; n < 64 && t < len(p.insns); n++ {
		switch in := p.insns[t]; {
		case in.kind == kNop || f != nil && f.dead[t] && pure(in):
			t++
		case in.kind == kJa && !in.jback:
			t = in.jt
		default:
			return t
		}
	}
	return t
}

// mergeable says whether in compares A with a constant as an ordering
// test can be merged.
func mergeable(p *program, i int) bool {
	in := p.insns[i]
	_, param := p.params[i]
	return in.kind == kJcond && !in.useX && !param && in.jt != in.jf && in.op != jmpJSET
}

// mergeTests merges conditional jump i with the comparisons of A it leads
// to straight away (libpcap's "A >= lo" then "A > hi" for a port range
// of one port, say) when, together, they send one interval of the values
// A may have one way and the rest the other: one comparison then does.
func mergeTests(p *program, i int, s constState) (insn, bool) {
	if !mergeable(p, i) {
		return insn{}, false
	}
	in := p.insns[i]
	jt, jf := p.resolve(in.jt), p.resolve(in.jf)
	expand := func(t int) bool { return t != i && t < len(p.insns) && mergeable(p, t) }
	if !expand(jt) && !expand(jf) {
		return insn{}, false
	}
	// Where a value of A ends up.
	dest := func(a uint32) int {
		t := jf
		if condConst(in.op, a, in.k) {
			t = jt
		}
		if expand(t) {
			j := p.insns[t]
			if condConst(j.op, a, j.k) {
				return p.resolve(j.jt)
			}
			return p.resolve(j.jf)
		}
		return t
	}
	// The outcome is the same between breakpoints.
	lo, hi := uint64(s.alo), uint64(s.ahi)
	points := []uint64{lo, hi + 1}
	for _, t := range []int{i, jt, jf} {
		if t == i || expand(t) {
			k := uint64(p.insns[t].k)
			points = append(points, k, k+1)
		}
	}
	slices.Sort(points)
	type seg struct {
		from, to uint64 // [from, to)
		dest     int
	}
	var segs []seg
	for n, b := range points {
		if b < lo || b > hi || n+1 < len(points) && points[n+1] == b {
			continue
		}
		e := hi + 1
		for _, c := range points[n+1:] {
			if c > b {
				e = min(c, hi+1)
				break
			}
		}
		d := dest(uint32(b))
		if len(segs) > 0 && segs[len(segs)-1].dest == d {
			segs[len(segs)-1].to = e
			continue
		}
		segs = append(segs, seg{b, e, d})
	}
	switch {
	case len(segs) == 1:
		return insn{kind: kJa, jt: segs[0].dest}, true
	case len(segs) == 2:
		// A < segs[1].from goes to segs[0].
		return insn{kind: kJcond, op: jmpJGE, k: uint32(segs[1].from), jt: segs[1].dest, jf: segs[0].dest}, true
	case len(segs) == 3 && segs[0].dest == segs[2].dest && segs[1].to-segs[1].from == 1:
		return insn{kind: kJcond, op: jmpJEQ, k: uint32(segs[1].from), jt: segs[1].dest, jf: segs[0].dest}, true
	}
	return insn{}, false
}
