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
	// needLoads is needAbs without the ld [x+k] that follow ldx #c,
	// which needAbs counts as absolute loads of c+k: the bytes absolute
	// loads themselves need. The eBPF code checks bounds early only when
	// these are not checked yet (the ld [x+k] check their own), but then
	// checks needAbs.
	needLoads []int
	// dead marks instructions whose only effect is on values nothing
	// reads: they emit no code.
	dead []bool
	// maxIndExtent over the program, for bounding X.
	maxIndExtent int
	// xptr: X's register holds the pointer for ld [x+k] (see useXPtr).
	xptr bool
	// ebpf: the analyses serve the eBPF backend, whose code differs a
	// little (widenX, earlyGuard).
	ebpf bool
	// xAdd holds, at a tax that ends "txa; add #k; tax" emitted as
	// X += k (ebpfGen.findXArith), that k: the flow keeps the ld [x+k]
	// pointer across it.
	xAdd map[int]uint32
	// ptrSlots holds k+1 for the M[k] whose ld [x+k] pointer for X =
	// M[k] the eBPF code keeps in each of two stack slots (0: none): X
	// is loaded from M[k] more than once (libpcap's geneve), each time
	// to be bound-checked and added to PacketStart again otherwise. Not
	// with loops or with X's register as the pointer (xptr).
	ptrSlots [2]uint32
	// joins marks instructions that several others lead to.
	joins []bool
	// rawA: for a 2- or 4-byte load of A, that every use of the value
	// can take it in network byte order, so no byte swap is needed;
	// for a use of A, the size of the unswapped loads that reach it
	// (0: A is in host order there).
	rawA []int
}

// zeroAnyway stands for "every path from here ends with 0": a guard that
// returns 0 early changes nothing there, whatever it checks.
const zeroAnyway = math.MaxInt

// guards computes needAbs and needInd. A guard for N bytes at an
// instruction is correct when every path from it either loads at least N
// bytes (and would fail on a shorter packet) or ends with 0 anyway.
func (f *facts) guards() {
	p := f.p
	n := len(p.insns)
	reachA, reachI, reachL := make([]int, n), make([]int, n), make([]int, n)
	for i := n - 1; i >= 0; i-- {
		in := p.insns[i]
		if f.fails[i] || in.kind == kRetK && in.k == 0 {
			f.needAbs[i], f.needInd[i], f.needLoads[i] = zeroAnyway, zeroAnyway, zeroAnyway
			continue
		}
		needA, needI, needL := zeroAnyway, zeroAnyway, zeroAnyway
		var rA, rI, rL int
		for _, s := range f.succs[i] {
			if s <= i {
				// Backward: the loop may go on; count on nothing.
				needA, needI, needL = 0, 0, 0
				continue
			}
			needA, needI, needL = min(needA, f.needAbs[s]), min(needI, f.needInd[s]), min(needL, f.needLoads[s])
			rA, rI, rL = max(rA, reachA[s]), max(rI, reachI[s]), max(rL, reachL[s])
		}
		if len(f.succs[i]) == 0 {
			needA, needI, needL = 0, 0, 0 // a return of a value that may be non-zero
		}
		switch in.kind {
		case kLdAbs, kLdMsh:
			needA, needL = max(needA, extent(in)), max(needL, extent(in))
			rA, rL = max(rA, extent(in)), max(rL, extent(in))
		}
		_, def := useDef(in)
		switch {
		case in.kind == kLdImm && in.dst == regX:
			// ld [x+k] after ldx #c loads up to c+k+size from
			// PacketStart, as an absolute load would (libpcap's IPv6
			// port test sharing the IPv4 one's code). Not past the
			// offsets the verifier tracks: such loads always fail.
			if c := int(in.k); needI > 0 && needI != zeroAnyway && needI+c <= maxPacketOffset {
				needA = max(needA, needI+c)
			}
			if c := int(in.k); rI > 0 && rI+c <= maxPacketOffset {
				rA = max(rA, rI+c)
			}
			needI, rI = 0, 0
		case def&liveX != 0:
			needI, rI = 0, 0
		case in.kind == kLdInd:
			needI = max(needI, extent(in))
			rI = max(rI, extent(in))
		}
		// Never check more than some path loads: past that, a check
		// only costs.
		f.needAbs[i], f.needInd[i], f.needLoads[i] = min(needA, rA), min(needI, rI), min(needL, rL)
		reachA[i], reachI[i], reachL[i] = rA, rI, rL
	}
}

// rawLoads decides which big-endian loads can stay unswapped: those all of
// whose uses compare A for equality or test bits against a constant, which
// can be swapped at compile time instead.
func (f *facts) rawLoads() {
	p := f.p
	n := len(p.insns)
	f.rawA = make([]int, n)
	// Reaching definitions of A: candidate loads, plus one bit for any
	// other definition (including the initial A = 0).
	cand := map[int]int{}
	var cands []int
	for i, in := range p.insns {
		if f.reachable[i] && !f.fails[i] && !f.dead[i] && ((in.kind == kLdAbs || in.kind == kLdInd) && in.size > 1 || transparent(in)) {
			cand[i] = len(cands)
			cands = append(cands, i)
		}
	}
	// The size of each candidate's unswapped value: loads have theirs,
	// bitwise operations take their input's.
	sz := make([]int, len(cands))
	for c, i := range cands {
		sz[c] = p.insns[i].size
	}
	other := len(cands)
	words := (other + 64) / 64
	in := make([][]uint64, n)
	for i := range in {
		in[i] = make([]uint64, words)
	}
	in[0][other/64] |= 1 << (other % 64)
	out := make([]uint64, words)
	for changed := true; changed; {
		changed = false
		for i := range n {
			if !f.reachable[i] {
				continue
			}
			_, def := useDef(p.insns[i])
			if def&liveA != 0 {
				clear(out)
				b := other
				if c, ok := cand[i]; ok {
					b = c
				}
				out[b/64] |= 1 << (b % 64)
			} else {
				copy(out, in[i])
			}
			for _, s := range f.succs[i] {
				for w := range out {
					if in[s][w]|out[w] != in[s][w] {
						in[s][w] |= out[w]
						changed = true
					}
				}
			}
		}
	}
	raw := make([]bool, len(cands))
	for c := range raw {
		raw[c] = true
	}
	defs := func(i int) []int {
		var d []int
		for b := 0; b <= other; b++ {
			if in[i][b/64]&(1<<(b%64)) != 0 {
				d = append(d, b)
			}
		}
		return d
	}
	unraw := func(ds []int) bool {
		changed := false
		for _, d := range ds {
			if d != other && raw[d] {
				raw[d], changed = false, true
			}
		}
		return changed
	}
	for changed := true; changed; {
		changed = false
		for i, ins := range p.insns {
			use, _ := useDef(ins)
			if !f.reachable[i] || f.fails[i] || f.dead[i] || use&liveA == 0 {
				continue
			}
			// The unswapped size common to all definitions reaching here,
			// or 0 if any of them is in host order.
			size := -1
			ds := defs(i)
			for _, d := range ds {
				if d == other || !raw[d] || sz[d] == 0 || size >= 0 && sz[d] != size {
					size = 0
					break
				}
				size = sz[d]
			}
			if size < 0 {
				size = 0
			}
			var ok bool
			switch {
			case transparent(ins):
				c := cand[i]
				ok = raw[c] && size != 0 && (ins.op == aluAND || size == 4 || ins.k <= 0xffff)
				if ok {
					sz[c] = size
				} else if raw[c] {
					raw[c], changed = false, true
				}
			case ins.kind == kJcond && f.p.params[i] != "":
				// A parameter is compared in host order.
			case ins.kind == kJcond && !ins.useX && ins.op == jmpJEQ:
				ok = size == 4 || size == 2 && ins.k <= 0xffff
			case ins.kind == kJcond && !ins.useX && ins.op == jmpJSET:
				ok = size != 0
			}
			if !ok && unraw(ds) {
				changed = true
			}
		}
	}
	for c, i := range cands {
		if raw[c] {
			f.rawA[i] = sz[c]
		}
	}
	for i, ins := range p.insns {
		use, _ := useDef(ins)
		if !f.reachable[i] || use&liveA == 0 {
			continue
		}
		ds := defs(i)
		if len(ds) > 0 && ds[0] != other && raw[ds[0]] {
			f.rawA[i] = sz[ds[0]]
		}
	}
}

// transparent says whether an instruction works on bytes independently, so
// that it can work on an unswapped value with a swapped constant.
func transparent(in insn) bool {
	return in.kind == kAlu && !in.useX && (in.op == aluAND || in.op == aluOR || in.op == aluXOR)
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

// pure reports whether an instruction only sets A, X or M[] and cannot end
// the filter. Loads from the packet can fail, so they are not, but their
// guards are emitted apart from them.
func pure(in insn) bool {
	switch in.kind {
	case kLdImm, kLdMem, kLdLen, kSt, kNeg, kTax, kTxa, kNop:
		return true
	case kLdExt:
		return in.k != extPktType
	case kAlu:
		return !in.alwaysFails() && !(in.useX && (in.op == aluDIV || in.op == aluMOD))
	}
	return false
}

// target follows chains of forward jumps from t, so that a jump in either
// backend lands where the work is.
func (p *program) target(t int) int {
	for n := 0; n < 64; n++ {
		in := p.insns[t]
		if in.kind != kJa || in.jback {
			break
		}
		t = in.jt
	}
	return t
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
		needLoads: make([]int, n),
		dead:      make([]bool, n),
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
			dead := pure(p.insns[i]) && def&out == 0
			if dead {
				use = 0
			}
			f.dead[i] = dead
			in := use | (out &^ def)
			if in != f.liveIn[i] || out != f.liveOut[i] {
				f.liveIn[i], f.liveOut[i] = in, out
				changed = true
			}
		}
	}

	f.guards()
	f.rawLoads()
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

// intervalTest finds whether conditional jump i and the comparison of A it
// leads to straight away send the values of A in one interval [lo, hi]
// one way (inside) and the rest the other (outside), as libpcap's port
// ranges do ("jge lo", then "jgt hi"), with A read on neither way: the
// eBPF backend then tests "A - lo > hi - lo" once, which leaves the
// verifier one path less to walk than two conditional jumps.
func (f *facts) intervalTest(i int) (lo, hi uint32, inside, outside int, ok bool) {
	p := f.p
	in := p.insns[i]
	if !mergeable(p, i) {
		return 0, 0, 0, 0, false
	}
	j, other := p.target(in.jt), p.target(in.jf)
	if !mergeable(p, j) {
		j, other = other, j
	}
	if !mergeable(p, j) || j == i {
		return 0, 0, 0, 0, false
	}
	next := p.insns[j]
	dest := func(a uint32) int {
		t := p.target(in.jf)
		if condConst(in.op, a, in.k) {
			t = p.target(in.jt)
		}
		if t == j {
			t = p.target(next.jf)
			if condConst(next.op, a, next.k) {
				t = p.target(next.jt)
			}
		}
		return t
	}
	// The interval's ends are where the outcome changes.
	var ends []uint32
	for _, t := range []insn{in, next} {
		switch t.op {
		case jmpJGE:
			ends = append(ends, t.k)
		case jmpJGT:
			if t.k == math.MaxUint32 {
				return 0, 0, 0, 0, false
			}
			ends = append(ends, t.k+1)
		default:
			return 0, 0, 0, 0, false
		}
	}
	lo, end := min(ends[0], ends[1]), max(ends[0], ends[1])
	if lo == 0 || lo == end {
		return 0, 0, 0, 0, false
	}
	hi = end - 1
	inside, outside = dest(lo), dest(lo-1)
	if inside == outside || dest(hi) != inside || dest(end) != outside || other != outside && other != inside {
		return 0, 0, 0, 0, false
	}
	if f.liveIn[inside]&liveA != 0 || f.liveIn[outside]&liveA != 0 {
		return 0, 0, 0, 0, false
	}
	return lo, hi, inside, outside, true
}

// guardAt says whether absolute load i checks the packet bounds: when the
// bytes it loads are not known to lie in the packet, or, in eBPF, when
// more are needed on every path from it than are checked. Checking the
// most every path needs as early as possible leaves the code after it,
// which the verifier may walk once per path that leads there, shorter.
// (clang schedules the C backend's checks its own way.)
func (f *facts) guardAt(i int, s flowState) bool {
	in := f.p.insns[i]
	n := f.needLoads[i]
	return s.checkedA < extent(in) || f.ebpf && n != zeroAnyway && n <= maxPacketOffset && s.checkedA < n
}
