package cbpfc

import "math"

// Liveness bits: A, X, then M[0] to M[15].
const (
	liveA = 1 << 0
	liveX = 1 << 1
)

func liveM(n uint32) uint32 { return 1 << (2 + n) }

// facts holds what the analyses found per instruction.
type facts struct {
	p *program
	// succs of each instruction, as the compiled code has them: an
	// instruction that always fails has none.
	succs [][]int
	// fails marks instructions that always end the filter with 0.
	fails []bool
	// leader marks instructions that start a basic block.
	leader []bool
	// reachable from the first instruction.
	reachable []bool
	// liveIn and liveOut: which of A, X, M[] are read before written
	// on some path from the instruction (liveIn includes its own use).
	liveIn, liveOut []uint32
	// needAbs: the largest packet extent (offset+size) that every path
	// from the instruction loads absolutely before it ends. A guard for
	// it returns 0 early exactly when every path would.
	needAbs []int
	// needInd: the same for ld [x+k] on the value X has at the
	// instruction (0 if the instruction sets X).
	needInd []int
	// maxIndExtent over the program, for bounding X.
	maxIndExtent int
}

func extent(in insn) int {
	switch in.kind {
	case kLdAbs, kLdInd, kLdMsh:
		return int(in.k) + in.size
	}
	return 0
}

func (in insn) alwaysFails() bool {
	switch in.kind {
	case kLdAbs, kLdInd, kLdMsh:
		return extent(in) > maxPacketOffset
	case kAlu:
		return !in.useX && (in.op == aluDIV || in.op == aluMOD) && in.k == 0
	}
	return false
}

func useDef(in insn) (use, def uint32) {
	bit := func(r reg) uint32 {
		if r == regA {
			return liveA
		}
		return liveX
	}
	switch in.kind {
	case kLdImm, kLdLen:
		def = bit(in.dst)
	case kLdMem:
		use, def = liveM(in.k), bit(in.dst)
	case kLdAbs, kLdExt:
		def = liveA
	case kLdInd:
		use, def = liveX, liveA
	case kLdMsh:
		def = liveX
	case kSt:
		use, def = bit(in.dst), liveM(in.k)
	case kAlu:
		use, def = liveA, liveA
		if in.useX {
			use |= liveX
		}
	case kNeg:
		use, def = liveA, liveA
	case kJcond:
		use = liveA
		if in.useX {
			use |= liveX
		}
	case kRetA:
		use = liveA
	case kTax:
		use, def = liveA, liveX
	case kTxa:
		use, def = liveX, liveA
	}
	return use, def
}

func analyze(p *program) *facts {
	n := len(p.insns)
	f := &facts{
		p:         p,
		succs:     make([][]int, n),
		fails:     make([]bool, n),
		leader:    make([]bool, n),
		reachable: make([]bool, n),
		liveIn:    make([]uint32, n),
		liveOut:   make([]uint32, n),
		needAbs:   make([]int, n),
		needInd:   make([]int, n),
	}
	f.leader[0] = true
	for i, in := range p.insns {
		if in.alwaysFails() {
			f.fails[i] = true
			if i+1 < n {
				f.leader[i+1] = true
			}
			continue
		}
		switch in.kind {
		case kRetA, kRetK:
			if i+1 < n {
				f.leader[i+1] = true
			}
		case kJa:
			f.succs[i] = []int{in.jt}
			f.leader[in.jt] = true
			if i+1 < n {
				f.leader[i+1] = true
			}
		case kJcond:
			if in.jt == in.jf {
				f.succs[i] = []int{in.jt}
			} else {
				f.succs[i] = []int{in.jt, in.jf}
			}
			f.leader[in.jt], f.leader[in.jf] = true, true
			if i+1 < n {
				f.leader[i+1] = true
			}
		default:
			f.succs[i] = []int{i + 1}
		}
		if in.kind == kLdInd && !f.fails[i] {
			f.maxIndExtent = max(f.maxIndExtent, extent(in))
		}
	}

	// Reachability.
	stack := []int{0}
	f.reachable[0] = true
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		for _, s := range f.succs[i] {
			if !f.reachable[s] {
				f.reachable[s] = true
				stack = append(stack, s)
			}
		}
	}

	// Liveness, to a fixed point (loops).
	for changed := true; changed; {
		changed = false
		for i := n - 1; i >= 0; i-- {
			var out uint32
			for _, s := range f.succs[i] {
				out |= f.liveIn[s]
			}
			use, def := useDef(p.insns[i])
			if f.fails[i] {
				use, def, out = 0, 0, 0
			}
			in := use | (out &^ def)
			if in != f.liveIn[i] || out != f.liveOut[i] {
				f.liveIn[i], f.liveOut[i] = in, out
				changed = true
			}
		}
	}

	// Guard requirements. Backward edges count as needing nothing.
	for i := n - 1; i >= 0; i-- {
		in := p.insns[i]
		if f.fails[i] {
			continue
		}
		minA, minI := math.MaxInt, math.MaxInt
		for _, s := range f.succs[i] {
			if s <= i {
				minA, minI = 0, 0
				continue
			}
			minA, minI = min(minA, f.needAbs[s]), min(minI, f.needInd[s])
		}
		if len(f.succs[i]) == 0 {
			minA, minI = 0, 0
		}
		switch in.kind {
		case kLdAbs, kLdMsh:
			f.needAbs[i] = max(minA, extent(in))
		default:
			f.needAbs[i] = minA
		}
		_, def := useDef(in)
		switch {
		case def&liveX != 0:
			f.needInd[i] = 0
		case in.kind == kLdInd:
			f.needInd[i] = max(minI, extent(in))
		default:
			f.needInd[i] = minI
		}
	}
	return f
}

// preds returns the predecessors of every instruction.
func (f *facts) preds() [][]int {
	p := make([][]int, len(f.succs))
	for i, ss := range f.succs {
		if !f.reachable[i] {
			continue
		}
		for _, s := range ss {
			p[s] = append(p[s], i)
		}
	}
	return p
}
