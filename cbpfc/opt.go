package cbpfc

// Rewrites that keep the filter's meaning and make it shorter, done on the
// cBPF before code generation (indices stay, so errors still name the
// instruction the caller wrote): constant propagation and folding of
// conditional jumps whose outcome is known, and removal of loads that
// reload a value A or X already holds.

type valKind uint8

const (
	vUnknown valKind = iota
	vConst
	vAbs // the packet bytes [k:size], as loaded by ld [k]
	vMsh // 4*([k]&0xf)
)

type val struct {
	kind valKind
	k    uint32
	size int
}

type constState struct {
	reached bool
	a, x    val
	mem     [16]val
	aEqX    bool // A == X, whatever they are
}

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

// constStep applies instruction in to s.
func constStep(in insn, s constState) constState {
	setA := func(v val) { s.a, s.aEqX = v, v.kind == vConst && v == s.x }
	setX := func(v val) { s.x, s.aEqX = v, v.kind == vConst && v == s.a }
	switch in.kind {
	case kLdImm:
		if in.dst == regA {
			setA(val{kind: vConst, k: in.k})
		} else {
			setX(val{kind: vConst, k: in.k})
		}
	case kLdMem:
		if in.dst == regA {
			setA(s.mem[in.k])
		} else {
			setX(s.mem[in.k])
		}
	case kLdLen:
		if in.dst == regA {
			setA(val{})
		} else {
			setX(val{})
		}
	case kLdAbs:
		setA(val{kind: vAbs, k: in.k, size: in.size})
	case kLdInd, kLdExt:
		setA(val{})
	case kLdMsh:
		setX(val{kind: vMsh, k: in.k})
	case kSt:
		if in.dst == regA {
			s.mem[in.k] = s.a
		} else {
			s.mem[in.k] = s.x
		}
	case kAlu:
		b := val{kind: vConst, k: in.k}
		if in.useX {
			b = s.x
		}
		if s.a.kind == vConst && b.kind == vConst {
			if c, ok := aluConst(in.op, s.a.k, b.k); ok {
				setA(val{kind: vConst, k: c})
				break
			}
		}
		setA(val{})
	case kNeg:
		if s.a.kind == vConst {
			setA(val{kind: vConst, k: -s.a.k})
		} else {
			setA(val{})
		}
	case kTax:
		s.x, s.aEqX = s.a, true
	case kTxa:
		s.a, s.aEqX = s.x, true
	}
	return s
}

// optimize rewrites p in place until nothing changes.
func optimize(p *program) {
	n := len(p.insns)
	for round := 0; round < 8; round++ {
		states := make([]constState, n)
		states[0] = constState{reached: true, aEqX: true, a: val{kind: vConst}, x: val{kind: vConst}}
		for i := range states[0].mem {
			states[0].mem[i] = val{kind: vConst}
		}
		for changed := true; changed; {
			changed = false
			for i, in := range p.insns {
				if !states[i].reached {
					continue
				}
				out := constStep(in, states[i])
				for _, s := range insnSuccs(in, i) {
					j := joinConst(states[s], out)
					if j != states[s] {
						states[s] = j
						changed = true
					}
				}
			}
		}
		rewrote := false
		for i, in := range p.insns {
			s := states[i]
			if !s.reached {
				continue
			}
			if _, ok := p.params[i]; ok && in.kind == kJcond && in.jt != in.jf {
				continue // its constant is not known here
			}
			if r, ok := rewrite(in, s); ok {
				p.insns[i] = r
				rewrote = true
			}
		}
		if !rewrote {
			return
		}
	}
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

func rewrite(in insn, s constState) (insn, bool) {
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
		}
		if known {
			t := in.jf
			if taken {
				t = in.jt
			}
			return insn{kind: kJa, jt: t}, true
		}
	case kLdAbs:
		if s.a == (val{kind: vAbs, k: in.k, size: in.size}) {
			return nop, true
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
