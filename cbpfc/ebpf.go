package cbpfc

import (
	"fmt"
	"math"
	"strconv"

	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/cbpfinsn"
)

// Stack layout below the rounded StackOffset: M[] (64 bytes), the loop
// counter (8), saved registers (8 each), 8 bytes through which loops pass
// X (see widenX), then the ld [x+k] pointers for X = M[k] of two k (see
// facts.ptrSlots).
const (
	stackMem     = 0
	stackLoop    = 64
	stackSpill   = 72
	stackWiden   = stackSpill + 4*8
	stackPtr     = stackWiden + 8
	maxStackUsed = stackPtr + 2*8
)

// flowState is what the code emitted so far guarantees at an instruction,
// on every path to it.
type flowState struct {
	valid    bool // some path reaches it (false: not yet seen)
	checkedA int  // bytes from PacketStart known to be in the packet
	pxValid  bool // the ind base register holds PacketStart+X+pxOff
	pxOff    int
	// cur is c when the guard register holds PacketStart+c on every
	// path, -1 when unknown: a guard can then just add to it.
	cur      int
	checkedX int    // bytes from PacketStart+X known to be in the packet
	xMax     uint32 // X is at most this
	// xMixed: paths that hold the pointer PacketStart+X+pxOff and paths
	// that hold X itself meet here (matters when X's register holds the
	// pointer, facts.xptr).
	xMixed bool
	// xMem is k+1 when X equals M[k] on every path (0: no such k), so
	// that ldx M[k] has nothing to do.
	xMem uint32
	// ptrValid[j] says that stack slot j holds PacketStart+M[k]+ptrOff[j]
	// for its k (facts.ptrSlots), checked against PacketEnd.
	ptrValid [2]bool
	ptrOff   [2]int
	// xStale: X's register was left as it was by an ldx M[k] whose one
	// reader, the next ld [x+k], takes the pointer from the stack.
	xStale bool
}

func join(a, b flowState) flowState {
	if !a.valid {
		return b
	}
	if !b.valid {
		return a
	}
	out := flowState{valid: true, checkedA: min(a.checkedA, b.checkedA), xMax: max(a.xMax, b.xMax), cur: -1}
	out.xMixed = a.xMixed || b.xMixed || a.pxValid != b.pxValid || a.pxValid && a.pxOff != b.pxOff
	if a.cur == b.cur {
		out.cur = a.cur
	}
	if a.xMem == b.xMem {
		out.xMem = a.xMem
	}
	for j := range a.ptrValid {
		if a.ptrValid[j] && b.ptrValid[j] && a.ptrOff[j] == b.ptrOff[j] {
			out.ptrValid[j], out.ptrOff[j] = true, a.ptrOff[j]
		}
	}
	if a.pxValid && b.pxValid && a.pxOff == b.pxOff {
		out.pxOff = a.pxOff
		out.pxValid, out.checkedX = true, min(a.checkedX, b.checkedX)
	}
	return out
}

// xBound is the largest X the code allows for ld [x+k]: PacketStart+X plus
// the largest extent must stay within the offsets the verifier tracks.
func (f *facts) xBound() uint32 { return uint32(maxPacketOffset - f.maxIndExtent) }

// ptrSlot is the stack slot that keeps the ld [x+k] pointer for X = M[k],
// given k+1 (flowState.xMem); -1 for none.
func (f *facts) ptrSlot(mem uint32) int {
	for j, m := range f.ptrSlots {
		if m != 0 && m == mem {
			return j
		}
	}
	return -1
}

// xPtrOnly says whether ldx M[k] at i needs no code when the stack holds
// the ld [x+k] pointer for M[k]: the load right after it, which nothing
// else leads to, is all that reads X. It returns the stack slot, or -1.
func (f *facts) xPtrOnly(i int) int {
	in := f.p.insns[i]
	if !f.ebpf || f.xptr || in.kind != kLdMem || in.dst != regX || f.dead[i] || i+1 >= len(f.p.insns) {
		return -1
	}
	if next := f.p.insns[i+1]; next.kind != kLdInd || f.joins[i+1] || f.liveOut[i+1]&liveX != 0 {
		return -1
	}
	return f.ptrSlot(in.k + 1)
}

// ptrHit says whether ld [x+k] takes its pointer from the stack: X is
// M[k], whose pointer is kept there. X's register then still holds what
// the stack gave, which the verifier knows no bound of.
func (f *facts) ptrHit(s flowState) bool {
	j := f.ptrSlot(s.xMem)
	return j >= 0 && s.ptrValid[j]
}

// earlyGuard says whether the eBPF code checks the packet bounds before
// instruction i, ahead of the load that needs it: where paths meet, so
// that they share the check and the verifier sees the same packet range
// whichever way it came. Not at a jump, which jumps to it skip (see
// target).
func (f *facts) earlyGuard(i int, s flowState) bool {
	n := f.needLoads[i]
	return f.ebpf && f.joins[i] && f.p.insns[i].kind != kJa && n != zeroAnyway && n <= maxPacketOffset && s.checkedA < n
}

// step applies instruction i to the state, as the emitted code does.
func (f *facts) step(i int, s flowState) flowState {
	out := f.stepCode(i, s)
	if f.p.insns[i].kind == kLdInd && (s.xStale || f.xIntoPtr(i, s)) {
		// X's register does not hold X any more (or never got it): the
		// next ldx M[k] must load it.
		out.xMem, out.pxValid, out.xStale = 0, false, false
	}
	return out
}

// xIntoPtr says whether ld [x+k] makes X's register the pointer, as with
// xptr, since nothing reads X after it (and X is no M[k] a later ldx
// would find there).
func (f *facts) xIntoPtr(i int, s flowState) bool {
	return !f.xptr && !s.pxValid && !f.ptrHit(s) && s.xMem == 0 && f.liveOut[i]&liveX == 0
}

func (f *facts) stepCode(i int, s flowState) flowState {
	in := f.p.insns[i]
	if f.earlyGuard(i, s) {
		s.checkedA = f.needAbs[i]
		s.cur = s.checkedA
	}
	switch in.kind {
	case kLdAbs, kLdMsh:
		if f.guardAt(i, s) {
			s.checkedA = f.needAbs[i]
			s.cur = s.checkedA
		}
		if f.loadsFar(i) {
			s.cur = -1
		}
	case kLdInd:
		switch {
		case s.pxValid:
		case f.ptrHit(s):
			j := f.ptrSlot(s.xMem)
			s.pxValid, s.checkedX, s.pxOff = true, s.ptrOff[j], s.ptrOff[j]
		default:
			s.pxValid, s.checkedX, s.pxOff = true, f.needInd[i], f.needInd[i]
			s.xMax = min(s.xMax, f.xBound())
			if j := f.ptrSlot(s.xMem); j >= 0 {
				s.ptrValid[j], s.ptrOff[j] = true, s.pxOff
			}
		}
		if s.checkedX < extent(in) {
			s.checkedX, s.pxOff = f.needInd[i], f.needInd[i]
		}
		if f.liveOut[i]&liveA != 0 && farOffset(int(in.k)-s.pxOff) {
			s.cur = -1
		}
	case kLdExt:
		// Helper calls and the type computation use the working
		// registers; X's own register survives them.
		s.cur = -1
		if !f.xptr {
			s.pxValid = false
		}
	case kLdMem:
		if in.dst == regX && s.xMem == in.k+1 {
			return s // X holds M[k] already: no code
		}
		if j := f.xPtrOnly(i); j >= 0 && s.ptrValid[j] {
			s.xStale = true // no code: the next load needs only the pointer
		}
	case kSt:
		if j := f.ptrSlot(in.k + 1); j >= 0 {
			s.ptrValid[j] = false
		}
		switch {
		case in.dst == regX && !f.dead[i]:
			s.xMem = in.k + 1
		case in.dst == regX || s.xMem == in.k+1:
			s.xMem = 0
		}
	case kJa:
		if in.jback {
			s.cur = -1 // the loop counter goes through the guard register
			if f.widenX(i) {
				s.xMax, s.pxValid = math.MaxUint32, false
			}
		}
	}
	if k, ok := f.xAdd[i]; ok && s.pxValid && int(k) <= s.checkedX {
		// X grew by k in its register, the ld [x+k] pointer stayed:
		// it now points k bytes before PacketStart+X+pxOff.
		s.pxOff -= int(k)
		s.checkedX -= int(k)
		s.xMem = 0
		s.xMax = uint32(min(uint64(s.xMax)+uint64(k), math.MaxUint32))
		return s
	}
	_, def := useDef(in)
	if def&liveX != 0 {
		s.pxValid, s.xMixed, s.xMem = false, false, 0
		if in.kind == kLdMem && !f.dead[i] {
			s.xMem = in.k + 1
		}
		switch {
		case in.kind == kLdImm:
			s.xMax = in.k
		case in.kind == kLdMsh:
			s.xMax = 60
		default:
			s.xMax = math.MaxUint32
		}
	}
	return s
}

// widenX says whether backward jump i passes X through the stack, where
// the verifier loses what it knew of X's value: otherwise each way of
// reaching the loop head (X grown by different headers, say) is a state of
// its own, which the verifier checks through every later iteration. Loops
// then cost the verifier a fraction, and the next ld [x+k] checks X's bound
// again. A loop head only one backward jump leads to has one way round:
// no widening then.
func (f *facts) widenX(i int) bool {
	t := f.p.insns[i].jt
	if !f.ebpf || f.xptr || f.liveIn[t]&liveX == 0 {
		return false
	}
	for j, in := range f.p.insns {
		if j != i && f.reachable[j] && in.kind == kJa && in.jback && in.jt == t {
			return true
		}
	}
	return false
}

// loopsConverge says whether, at every backward jump, each of A, X and
// M[] that the loop head reads holds a value that does not depend on
// earlier iterations (from the packet, a constant, the length, or
// computed from such values only in this iteration), or is X passed
// through the stack (widenX). The verifier's state at the back edge then
// repeats after an iteration or two, so that it can stop there at a
// may_goto; a value that grows each iteration (X += 8 with nothing reset)
// would instead make it walk until its complexity limit.
func (f *facts) loopsConverge() bool {
	if f.xptr {
		return false
	}
	n := len(f.p.insns)
	head := make([]bool, n)
	for i, in := range f.p.insns {
		if f.reachable[i] && in.kind == kJa && in.jback {
			head[in.jt] = true
		}
	}
	for i, in := range f.p.insns {
		if !f.reachable[i] || in.kind != kJa || !in.jback {
			continue
		}
		t := in.jt
		// fresh[j]: the values that are fresh on every way from the
		// loop head to j within this iteration.
		fresh := make([]uint32, i+1)
		seen := make([]bool, i+1)
		seen[t] = true
		for j := t; j <= i; j++ {
			if !seen[j] {
				continue
			}
			if head[j] && j != t {
				fresh[j] = 0
			}
			out := freshAfter(f.p.insns[j], fresh[j])
			if j == i {
				need := f.liveIn[t] &^ out
				if need&^liveX != 0 || need&liveX != 0 && !f.widenX(i) {
					return false
				}
				break
			}
			for _, s := range f.succs[j] {
				if s <= j || s > i {
					continue
				}
				if seen[s] {
					fresh[s] &= out
				} else {
					seen[s], fresh[s] = true, out
				}
			}
		}
	}
	return true
}

// freshAfter is loopsConverge's transfer function: which of A, X and M[]
// are fresh after in, given those fresh before it.
func freshAfter(in insn, fresh uint32) uint32 {
	bit := func(r reg) uint32 {
		if r == regA {
			return liveA
		}
		return liveX
	}
	set := func(b uint32, ok bool) uint32 {
		if ok {
			return fresh | b
		}
		return fresh &^ b
	}
	switch in.kind {
	case kLdImm, kLdLen:
		return set(bit(in.dst), true)
	case kLdAbs, kLdInd, kLdExt:
		return set(liveA, true)
	case kLdMsh:
		return set(liveX, true)
	case kLdMem:
		return set(bit(in.dst), fresh&liveM(in.k) != 0)
	case kSt:
		return set(liveM(in.k), fresh&bit(in.dst) != 0)
	case kAlu:
		return set(liveA, fresh&liveA != 0 && (!in.useX || fresh&liveX != 0))
	case kTax:
		return set(liveX, fresh&liveA != 0)
	case kTxa:
		return set(liveA, fresh&liveX != 0)
	}
	return fresh
}

// farOffset says whether a load offset does not fit the instruction, so
// the load goes through the guard register.
func farOffset(off int) bool { return off > math.MaxInt16 || off < math.MinInt16 }

// loadsFar says whether absolute load i is emitted through the guard
// register.
func (f *facts) loadsFar(i int) bool {
	in := f.p.insns[i]
	live := liveA
	if in.kind == kLdMsh {
		live = liveX
	}
	return f.liveOut[i]&uint32(live) != 0 && farOffset(int(in.k))
}

// useXPtr decides whether X's register can hold the pointer
// PacketStart+X+off for ld [x+k] itself, which saves a register and a
// move per pointer: when X serves nothing but ld [x+k], and every ld [x+k]
// finds either X or the pointer in the register, the same on every path.
// It sets f.xptr.
func (f *facts) useXPtr(checked int) bool {
	p := f.p
	f.xptr = false
	if p.usesHelpers {
		return false // helper calls save and restore X as a number
	}
	ind := false
	for i, in := range p.insns {
		if !f.reachable[i] || f.fails[i] || f.dead[i] {
			continue
		}
		if use, _ := useDef(in); use&liveX == 0 {
			continue
		}
		if in.kind != kLdInd {
			return false
		}
		ind = true
	}
	if !ind {
		return false
	}
	f.xptr = true
	states := f.flow(checked)
	for i, in := range p.insns {
		if in.kind == kLdInd && f.reachable[i] && !f.fails[i] && states[i].xMixed {
			f.xptr = false
			return false
		}
	}
	return true
}

// flow computes the state at the start of every instruction.
func (f *facts) flow(checked int) []flowState {
	n := len(f.p.insns)
	states := make([]flowState, n)
	states[0] = flowState{valid: true, checkedA: checked, cur: -1}
	for changed := true; changed; {
		changed = false
		for i := range n {
			if !states[i].valid || f.fails[i] {
				continue
			}
			out := f.step(i, states[i])
			for _, s := range f.succs[i] {
				j := join(states[s], out)
				if s == 0 {
					// The entry also has the initial state.
					j = join(j, flowState{valid: true, checkedA: checked, cur: -1})
				}
				if j != states[s] {
					states[s] = j
					changed = true
				}
			}
		}
	}
	return states
}

// interval is a pair of comparisons the eBPF backend emits as one
// (facts.intervalTest).
type interval struct {
	lo, hi          uint32
	inside, outside int
}

type ebpfGen struct {
	f *facts
	// intervals are the comparisons emitted with the next one they lead
	// to, and skip the comparisons left out since nothing else leads
	// there.
	intervals map[int]interval
	skip      []bool
	// deferred marks the instructions of blocks emitted at the end,
	// blockEnd has for each the instruction the block rejoins.
	deferred []bool
	blockEnd map[int]int
	// xArith holds, at a txa, the ALU operation it and the next two
	// instructions do to X (findXArith).
	xArith map[int]insn
	// wide holds, at the first load of a run of packet tests emitted as
	// one, that test (findWide).
	wide   map[int]wideTest
	opts   EBPFOpts
	out    asm.Instructions
	labels map[string]int // label -> position in out
	base   int            // stack offset of our area
	fail   string
	a, x   asm.Register
	tmp    asm.Register
	px     asm.Register
	// mayGoto: loops converge (facts.loopsConverge), so back edges pass
	// a may_goto and the loop counter is kept where the verifier does not
	// track it.
	mayGoto bool
}

func checkOpts(p *program, o EBPFOpts) error {
	regs := map[asm.Register]string{}
	add := func(r asm.Register, name string) error {
		if r > asm.R9 {
			return &Error{Index: -1, Err: fmtErr(ErrOptions, "%s: %v is not a general-purpose register (R0 to R9)", name, r)}
		}
		if other, ok := regs[r]; ok {
			return &Error{Index: -1, Err: fmtErr(ErrOptions, "%s and %s are both %v", other, name, r)}
		}
		regs[r] = name
		return nil
	}
	for i, r := range []asm.Register{o.PacketStart, o.PacketEnd, o.Result, o.Working[0], o.Working[1], o.Working[2]} {
		name := []string{"PacketStart", "PacketEnd", "Result", "Working[0]", "Working[1]", "Working[2]"}[i]
		if err := add(r, name); err != nil {
			return err
		}
	}
	if o.Context != asm.R0 {
		if err := add(o.Context, "Context"); err != nil {
			return err
		}
	} else if p.usesContext {
		for i, in := range p.insns {
			if in.kind == kLdExt && (in.k == extIfIndex || in.k == extPktType) {
				return errorf(i, ErrOptions, "extension %s needs the XDP context, but EBPFOpts.Context is not set", cbpfinsn.ExtName(in.k))
			}
		}
	}
	if (o.MatchLabel == "") != (o.NoMatchLabel == "") {
		return &Error{Index: -1, Err: fmtErr(ErrOptions, "MatchLabel and NoMatchLabel go together")}
	}
	if _, named := regs[asm.R0]; p.usesHelpers && !named {
		for i, in := range p.insns {
			if in.kind == kLdExt && (in.k == extCPU || in.k == extRandom) {
				return errorf(i, ErrOptions, "extension %s calls a helper, which returns in R0: R0 must be one of the registers EBPFOpts names (say, Result)", cbpfinsn.ExtName(in.k))
			}
		}
	}
	if o.ResultLabel == "" && o.MatchLabel == "" {
		return &Error{Index: -1, Err: fmtErr(ErrOptions, "ResultLabel is empty")}
	}
	if o.StackOffset < 0 || roundUp8(o.StackOffset)+StackSize > 512 {
		return &Error{Index: -1, Err: fmtErr(ErrOptions, "StackOffset %d leaves no room for %d bytes in the 512-byte stack", o.StackOffset, StackSize)}
	}
	if o.Checked < 0 {
		return &Error{Index: -1, Err: fmtErr(ErrOptions, "Checked %d is negative", o.Checked)}
	}
	return nil
}

func roundUp8(n int) int { return (n + 7) &^ 7 }

func compileEBPF(p *program, opts EBPFOpts) (asm.Instructions, error) {
	if err := checkOpts(p, opts); err != nil {
		return nil, err
	}
	f := analyze(p)
	f.ebpf = true
	f.joins = make([]bool, len(p.insns))
	for i, ps := range f.preds() {
		f.joins[i] = len(ps) > 1
	}
	f.useXPtr(opts.Checked)
	if !f.xptr && !p.hasLoops {
		// The two M[k] loaded into X most often, more than once.
		var loads [16]int
		for i, in := range p.insns {
			if f.reachable[i] && !f.dead[i] && in.kind == kLdMem && in.dst == regX {
				loads[in.k]++
			}
		}
		for j := range f.ptrSlots {
			best := -1
			for k, n := range loads {
				if n > 1 && (best < 0 || n > loads[best]) {
					best = k
				}
			}
			if best >= 0 {
				f.ptrSlots[j], loads[best] = uint32(best)+1, 0
			}
		}
	}
	g := &ebpfGen{
		f:      f,
		opts:   opts,
		labels: map[string]int{},
		base:   roundUp8(opts.StackOffset),
		a:      opts.Result,
		x:      opts.Working[0],
		tmp:    opts.Working[1],
		px:     opts.Working[2],
	}
	if f.xptr {
		g.px = g.x
	}
	g.skip = make([]bool, len(p.insns))
	g.mayGoto = p.hasLoops && f.loopsConverge()
	g.findXArith()
	return g.compile()
}

// findIntervals decides which comparisons are emitted as interval tests,
// in program order: a comparison left out cannot start one, nor be left
// out when another interval test leads to it.
func (g *ebpfGen) findIntervals() {
	f := g.f
	g.intervals = map[int]interval{}
	dests := map[int]bool{}
	for i := range f.p.insns {
		if !f.reachable[i] || g.skip[i] || f.dead[i] || f.fails[i] {
			continue
		}
		lo, hi, inside, outside, ok := f.intervalTest(i)
		if !ok {
			continue
		}
		in := f.p.insns[i]
		var skipped []int
		for _, j := range []int{f.p.target(in.jt), f.p.target(in.jf)} {
			if j != inside && j != outside && !f.joins[j] && !dests[j] && f.p.insns[in.jt].kind != kJa && f.p.insns[in.jf].kind != kJa {
				g.skip[j] = true
				skipped = append(skipped, j)
			}
		}
		// Only where one of the ways falls through: otherwise it
		// takes a jump more than the two comparisons.
		if next := g.nextEmitted(i); next != inside && next != outside {
			for _, j := range skipped {
				g.skip[j] = false
			}
			continue
		}
		g.intervals[i] = interval{lo, hi, inside, outside}
		dests[inside], dests[outside] = true, true
	}
}

// maxXStep is the largest k by which "X += k" keeps the ld [x+k] pointer
// (facts.xAdd): it only moves the offsets of the loads through it.
const maxXStep = 4096

// findXArith finds "txa; A op k; tax" where A is read by nothing after:
// X op k in X's register does, and the three emit that one instruction
// (libpcap's protochain steps X this way).
func (g *ebpfGen) findXArith() {
	f, p := g.f, g.f.p
	g.xArith = map[int]insn{}
	f.xAdd = map[int]uint32{}
	for i := 0; i+2 < len(p.insns); i++ {
		alu, tax := p.insns[i+1], p.insns[i+2]
		if p.insns[i].kind != kTxa || !f.reachable[i] || f.dead[i] || f.leader[i+1] || f.leader[i+2] ||
			alu.kind != kAlu || alu.useX || f.fails[i+1] || tax.kind != kTax || f.liveOut[i+2]&liveA != 0 {
			continue
		}
		g.xArith[i] = alu
		g.skip[i+1], g.skip[i+2] = true, true
		if alu.op == aluADD && alu.k <= maxXStep {
			f.xAdd[i+2] = alu.k
		}
		i += 2
	}
}

// nextEmitted is the instruction whose code follows that of instruction
// i, -1 if none: the last of a block moved to the end (see findDeferred).
func (g *ebpfGen) nextEmitted(i int) int {
	n := i + 1
	if end, ok := g.blockEnd[i]; ok {
		for n < end && (g.skip[n] || !g.f.reachable[n]) {
			n++
		}
		if n == end {
			return -1
		}
		return n
	}
	for n < len(g.skip) && (g.skip[n] || g.deferred[n] || !g.f.reachable[n]) {
		n++
	}
	return n
}

// findDeferred finds the blocks the eBPF code moves to its end: the code
// after a conditional jump that checks more packet bounds and then rejoins
// the code the jump's other way leads to. The verifier walks the way that
// falls through first; where the ways meet, it can skip a later way whose
// state is covered by the first one's, and a packet range that is shorter
// is covered by a longer one, not the other way round. So the way with
// fewer bytes checked should come first: it falls through to the join,
// and the block that checks more comes after the rest, jumping back.
// It costs a jump and saves walking what follows the join twice.
func (g *ebpfGen) findDeferred(states []flowState) {
	f, p := g.f, g.f.p
	n := len(p.insns)
	g.deferred = make([]bool, n)
	g.blockEnd = map[int]int{}
	preds := f.preds()
	for i := 0; i < n; i++ {
		in := p.insns[i]
		if !f.reachable[i] || g.skip[i] || f.fails[i] || in.kind != kJcond || in.jt == in.jf {
			continue
		}
		if _, _, _, _, ok := f.intervalTest(i); ok {
			continue
		}
		a, end := i+1, in.jf
		if in.jt != a {
			end = in.jt
			if in.jf != a {
				continue
			}
		}
		if k := p.insns[end].kind; end <= a || !f.joins[end] || k == kJa || k == kRetK || k == kRetA || len(preds[a]) != 1 {
			continue
		}
		ok, guards, rejoins := true, false, false
		for k := a; k < end && ok; k++ {
			if !f.reachable[k] {
				continue
			}
			for _, q := range preds[k] {
				ok = ok && (q >= a && q < end || k == a && q == i)
			}
			for _, t := range f.succs[k] {
				ok = ok && t > k
				rejoins = rejoins || t == end
			}
			ok = ok && !g.skip[k]
			if kk := p.insns[k].kind; (kk == kLdAbs || kk == kLdMsh) && !f.fails[k] && f.guardAt(k, states[k]) {
				guards = true
			}
		}
		if !ok || !guards || !rejoins {
			continue
		}
		for k := a; k < end; k++ {
			g.deferred[k] = true
			g.blockEnd[k] = end
		}
		i = end - 1
	}
}

func (g *ebpfGen) label(i int) string { return g.opts.LabelPrefix + "L" + strconv.Itoa(i) }

func (g *ebpfGen) emit(ins ...asm.Instruction) { g.out = append(g.out, ins...) }

func (g *ebpfGen) mark(label string) { g.labels[label] = len(g.out) }

func (g *ebpfGen) memOff(n uint32) int16 { return int16(-(g.base + stackMem + 4*int(n) + 4)) }

// loopOff is the loop counter's slot. With may_goto it is, like widenOff,
// never 8-byte aligned: the verifier then keeps no count of iterations, and
// at the may_goto on the back edge prunes an iteration whose state an
// earlier one covers. Without, the verifier counts, and walks every
// iteration.
func (g *ebpfGen) loopOff() int16 {
	if g.mayGoto {
		return int16(-(g.base + stackLoop + 4))
	}
	return int16(-(g.base + stackLoop + 8))
}

func (g *ebpfGen) spillOff(j int) int16 { return int16(-(g.base + stackSpill + 8*j + 8)) }

// widenOff is the upper half of an 8-byte stack slot: never 8-byte
// aligned, so the verifier keeps no register state for what is stored
// there.
func (g *ebpfGen) widenOff() int16 { return int16(-(g.base + stackWiden + 4)) }

// ptrOff is 8-byte slot j: the verifier keeps a pointer spilled there.
func (g *ebpfGen) ptrOff(j int) int16 { return int16(-(g.base + stackPtr + 8*j + 8)) }

func (g *ebpfGen) matchMode() bool { return g.opts.MatchLabel != "" }

func (g *ebpfGen) retLabel(k uint32) string {
	if k == 0 {
		return g.opts.NoMatchLabel
	}
	return g.opts.MatchLabel
}

// labelFor is the label to jump to for instruction t: straight to the
// match or no-match label when t returns a constant.
func (g *ebpfGen) labelFor(t int) string {
	if in := g.f.p.insns[t]; g.matchMode() && in.kind == kRetK {
		return g.retLabel(in.k)
	}
	return g.label(t)
}

func (g *ebpfGen) compile() (asm.Instructions, error) {
	f, p := g.f, g.f.p
	states := f.flow(g.opts.Checked)
	g.fail = g.opts.LabelPrefix + "fail"
	if g.opts.NoMatchLabel != "" {
		g.fail = g.opts.NoMatchLabel
	} else {
		for i, in := range p.insns {
			if f.reachable[i] && in.kind == kRetK && in.k == 0 {
				g.fail = g.label(i)
				break
			}
		}
	}

	// Entry: zero what is read before written, start the loop counter.
	live := f.liveIn[0]
	if live&liveA != 0 {
		g.emit(asm.Mov.Imm32(g.a, 0))
	}
	if live&liveX != 0 {
		g.emit(asm.Mov.Imm32(g.x, 0))
	}
	for n := uint32(0); n < 16; n++ {
		if live&liveM(n) != 0 {
			g.emit(asm.StoreImm(asm.RFP, g.memOff(n), 0, asm.Word))
		}
	}
	if p.hasLoops {
		g.emit(asm.StoreImm(asm.RFP, g.loopOff(), 0, asm.Word))
	}

	g.findDeferred(states)
	g.findIntervals()
	g.findWide(states)
	for i, in := range p.insns {
		if !f.reachable[i] || g.skip[i] || g.deferred[i] {
			continue
		}
		if f.leader[i] {
			g.mark(g.label(i))
		}
		if err := g.insn(i, in, states[i]); err != nil {
			return nil, err
		}
	}
	// The deferred blocks, each jumping back to where it rejoins.
	for i, in := range p.insns {
		if !g.deferred[i] || !f.reachable[i] || g.skip[i] {
			continue
		}
		if f.leader[i] {
			g.mark(g.label(i))
		}
		if err := g.insn(i, in, states[i]); err != nil {
			return nil, err
		}
		if g.nextEmitted(i) < 0 {
			switch {
			case in.kind == kRetA || in.kind == kRetK || in.kind == kJa || in.kind == kJcond || f.fails[i]:
			default:
				g.emit(asm.Ja.Label(g.labelFor(g.blockEnd[i])))
			}
		}
	}
	if _, ok := g.labels[g.fail]; !ok && g.referenced(g.fail) && g.fail != g.opts.NoMatchLabel {
		g.mark(g.fail)
		g.emit(asm.Mov.Imm32(g.a, 0), asm.Ja.Label(g.opts.ResultLabel))
	}
	g.dropUnreachable()
	return g.link()
}

// dropUnreachable removes instructions no path reaches, which jumps
// straight to the match labels can leave behind; the verifier refuses
// unreachable code.
func (g *ebpfGen) dropUnreachable() {
	n := len(g.out)
	at := map[string]int{}
	for name, pos := range g.labels {
		at[name] = pos
	}
	reach := make([]bool, n)
	stack := []int{0}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i >= n || reach[i] {
			continue
		}
		reach[i] = true
		ins := g.out[i]
		op := ins.OpCode.JumpOp()
		if ins.OpCode.Class().IsJump() && op != asm.Call && op != asm.Exit {
			if t, ok := at[ins.Reference()]; ok {
				stack = append(stack, t)
			}
			if op == asm.Ja {
				continue
			}
		}
		stack = append(stack, i+1)
	}
	var out asm.Instructions
	newPos := make([]int, n+1)
	for i, ins := range g.out {
		newPos[i] = len(out)
		if reach[i] {
			out = append(out, ins)
		}
	}
	newPos[n] = len(out)
	for name, pos := range g.labels {
		if pos < n && !reach[pos] {
			// Unreachable: nobody jumps there, but the label may sit on
			// code that follows it.
			j := pos
			for j < n && !reach[j] {
				j++
			}
			g.labels[name] = newPos[j]
			continue
		}
		g.labels[name] = newPos[pos]
	}
	g.out = out
}

// link puts the labels on the instructions, merging labels that share
// one position.
func (g *ebpfGen) link() (asm.Instructions, error) {
	external := map[string]bool{g.opts.ResultLabel: true, g.opts.MatchLabel: true, g.opts.NoMatchLabel: true}
	refs := map[string]bool{}
	for _, ins := range g.out {
		if r := ins.Reference(); r != "" {
			refs[r] = true
		}
	}
	// Each position keeps the least of its labels' names, whatever the
	// order of the map: the output must not depend on it.
	byPos := map[int]string{}
	for name, pos := range g.labels {
		if !refs[name] {
			continue
		}
		if pos >= len(g.out) {
			return nil, &Error{Index: -1, Err: fmt.Errorf("internal error: label %s past the end", name)}
		}
		if first, ok := byPos[pos]; !ok || name < first {
			byPos[pos] = name
		}
	}
	rename := map[string]string{}
	for name, pos := range g.labels {
		if kept, ok := byPos[pos]; ok && refs[name] && kept != name {
			rename[name] = kept
		}
	}
	for pos, name := range byPos {
		g.out[pos] = g.out[pos].WithSymbol(name)
	}
	for i, ins := range g.out {
		ref := ins.Reference()
		if ref == "" {
			continue
		}
		if r, ok := rename[ref]; ok {
			ref = r
		}
		if _, ok := g.labels[ref]; !ok && !external[ref] {
			return nil, &Error{Index: -1, Err: fmt.Errorf("internal error: jump to unknown label %s", ref)}
		}
		g.out[i] = ins.WithReference(ref)
	}
	return dropJumpsToNext(g.out), nil
}

// dropJumpsToNext removes jumps, conditional or not, to the instruction
// right after them: a comparison has no effect of its own, and both its
// ways lead there (a test whose one way only did what nothing reads, say).
// A label on a removed jump moves to the instruction after it.
func dropJumpsToNext(insns asm.Instructions) asm.Instructions {
	for i := 0; i+1 < len(insns); i++ {
		ins, next := insns[i], insns[i+1]
		op := ins.OpCode.JumpOp()
		if !ins.OpCode.Class().IsJump() || op == asm.Call || op == asm.Exit || op == asm.JCOND ||
			ins.Reference() == "" || ins.Reference() != next.Symbol() {
			continue
		}
		if sym := ins.Symbol(); sym != "" {
			for j := range insns {
				if insns[j].Reference() == sym {
					insns[j] = insns[j].WithReference(next.Symbol())
				}
			}
		}
		insns = append(insns[:i], insns[i+1:]...)
		i = max(i-2, -1) // a jump before it may now lead to the next one
	}
	return insns
}

func (g *ebpfGen) referenced(label string) bool {
	for _, ins := range g.out {
		if ins.Reference() == label {
			return true
		}
	}
	return false
}

// swapLoad puts a loaded value into host order, unless all its uses can
// take it as loaded.
func (g *ebpfGen) swapLoad(i int, in insn) {
	if in.size > 1 && g.f.rawA[i] == 0 {
		g.emit(asm.HostTo(asm.BE, g.a, sizes[in.size]))
	}
}

// swapConst swaps the bytes of a constant compared with an unswapped load
// of size bytes.
func swapConst(k uint32, size int) uint32 {
	switch size {
	case 2:
		return k>>8&0xff | k&0xff<<8
	case 4:
		return k>>24 | k>>8&0xff00 | k<<8&0xff0000 | k<<24
	}
	return k
}

func (g *ebpfGen) dst(r reg) asm.Register {
	if r == regA {
		return g.a
	}
	return g.x
}

var sizes = map[int]asm.Size{1: asm.Byte, 2: asm.Half, 4: asm.Word, 8: asm.DWord}

// guard returns 0 unless PacketStart+n is within the packet. When the
// guard register already holds PacketStart+cur, adding to it is enough.
func (g *ebpfGen) guard(cur, n int) {
	if cur < 0 {
		g.emit(asm.Mov.Reg(g.tmp, g.opts.PacketStart))
		cur = 0
	}
	g.emit(
		asm.Add.Imm(g.tmp, int32(n-cur)),
		asm.JGT.Reg(g.tmp, g.opts.PacketEnd, g.fail),
	)
}

// load emits dst = *(size *)(base + off), for any off the verifier allows.
func (g *ebpfGen) load(dst, base asm.Register, off uint32, size int) {
	if off > math.MaxInt16 {
		g.emit(asm.Mov.Reg(g.tmp, base), asm.Add.Imm(g.tmp, int32(off)))
		base, off = g.tmp, 0
	}
	g.emit(asm.LoadMem(dst, base, int16(off), sizes[size]))
}

// loadAbs emits dst = *(size *)(PacketStart + off). When the guard
// register holds PacketStart+cur (cur >= 0), the load goes through it: a
// filter whose loads all do needs PacketStart only to start the guard
// register, and the minimal XDP program then loads xdp_md->data straight
// into the guard register (coalesce).
func (g *ebpfGen) loadAbs(dst asm.Register, cur int, off uint32, size int) {
	if rel := int(off) - cur; cur >= 0 && !farOffset(rel) {
		g.emit(asm.LoadMem(dst, g.tmp, int16(rel), sizes[size]))
		return
	}
	g.load(dst, g.opts.PacketStart, off, size)
}

// loadRel emits dst = *(size *)(base + off) for an offset that may be
// negative.
func (g *ebpfGen) loadRel(dst, base asm.Register, off int, size int) {
	if off > math.MaxInt16 || off < math.MinInt16 {
		g.emit(asm.Mov.Reg(g.tmp, base), asm.Add.Imm(g.tmp, int32(off)))
		base, off = g.tmp, 0
	}
	g.emit(asm.LoadMem(dst, base, int16(off), sizes[size]))
}

func (g *ebpfGen) insn(i int, in insn, s flowState) error {
	f := g.f
	if f.fails[i] {
		g.emit(asm.Ja.Label(g.fail))
		return nil
	}
	if f.earlyGuard(i, s) {
		g.guard(s.cur, f.needAbs[i])
		s.checkedA, s.cur = f.needAbs[i], f.needAbs[i]
	}
	if f.dead[i] {
		return nil
	}
	switch in.kind {
	case kLdImm:
		if in.dst == regA {
		}
		g.emit(asm.Mov.Imm32(g.dst(in.dst), int32(in.k)))
	case kLdMem:
		if in.dst == regX && s.xMem == in.k+1 {
			return nil // X holds M[k] already
		}
		if j := f.xPtrOnly(i); j >= 0 && s.ptrValid[j] {
			return nil // the next load takes the pointer from the stack
		}
		g.emit(asm.LoadMem(g.dst(in.dst), asm.RFP, g.memOff(in.k), asm.Word))
	case kLdLen:
		if in.dst == regA {
		}
		d := g.dst(in.dst)
		g.emit(asm.Mov.Reg(d, g.opts.PacketEnd), asm.Sub.Reg(d, g.opts.PacketStart))
	case kLdAbs:
		if f.guardAt(i, s) {
			g.guard(s.cur, f.needAbs[i])
			s.cur = f.needAbs[i]
		}
		if w, ok := g.wide[i]; ok {
			g.emitWide(w, s.cur)
			return nil
		}
		if f.liveOut[i]&liveA != 0 {
			g.loadAbs(g.a, s.cur, in.k, in.size)
			g.swapLoad(i, in)
		}
	case kLdMsh:
		if f.guardAt(i, s) {
			g.guard(s.cur, f.needAbs[i])
			s.cur = f.needAbs[i]
		}
		if f.liveOut[i]&liveX != 0 {
			g.loadAbs(g.x, s.cur, in.k, 1)
			g.emit(asm.And.Imm32(g.x, 0xf), asm.LSh.Imm32(g.x, 2))
		}
	case kLdInd:
		// px = PacketStart + X + off, checked right away: the first
		// load needs it anyway.
		off, px := s.pxOff, g.px
		if !s.pxValid && f.ptrHit(s) {
			j := f.ptrSlot(s.xMem)
			g.emit(asm.LoadMem(g.px, asm.RFP, g.ptrOff(j), asm.DWord))
			off = s.ptrOff[j]
			if off < extent(in) {
				g.emit(
					asm.Add.Imm(g.px, int32(f.needInd[i]-off)),
					asm.JGT.Reg(g.px, g.opts.PacketEnd, g.fail),
				)
				off = f.needInd[i]
			}
		} else if !s.pxValid {
			if s.xMax > f.xBound() {
				// A 64-bit comparison: X's register holds a
				// zero-extended 32-bit value, and the verifier then
				// bounds all of it (after a 32-bit mod it bounds only
				// the low half from a 32-bit one, and refuses the add).
				g.emit(asm.JGT.Imm(g.x, int32(f.xBound()), g.fail))
			}
			off = f.needInd[i]
			// From the guard register when it holds PacketStart+cur,
			// as absolute loads do (loadAbs).
			base, at := g.opts.PacketStart, 0
			if s.cur >= 0 {
				base, at = g.tmp, s.cur
			}
			if f.xptr || f.xIntoPtr(i, s) {
				// X becomes the pointer: scalar += packet pointer
				// (nothing reads X after this load otherwise).
				g.emit(asm.Add.Reg(g.x, base))
				px = g.x
			} else {
				g.emit(asm.Mov.Reg(px, base), asm.Add.Reg(px, g.x))
			}
			if off != at {
				g.emit(asm.Add.Imm(px, int32(off-at)))
			}
			g.emit(asm.JGT.Reg(px, g.opts.PacketEnd, g.fail))
			if j := f.ptrSlot(s.xMem); j >= 0 {
				g.emit(asm.StoreMem(asm.RFP, g.ptrOff(j), px, asm.DWord))
			}
		} else if s.checkedX < extent(in) {
			// Move px on: loads then use offsets from the new place.
			g.emit(
				asm.Add.Imm(g.px, int32(f.needInd[i]-off)),
				asm.JGT.Reg(g.px, g.opts.PacketEnd, g.fail),
			)
			off = f.needInd[i]
		}
		if f.liveOut[i]&liveA != 0 {
			g.loadRel(g.a, px, int(in.k)-off, in.size)
			g.swapLoad(i, in)
		}
	case kLdExt:
		g.ext(i, in)
	case kSt:
		if in.dst == regA {
		}
		g.emit(asm.StoreMem(asm.RFP, g.memOff(in.k), g.dst(in.dst), asm.Word))
	case kAlu:
		in.k = swapConst(in.k, f.rawA[i])
		g.alu(in)
	case kNeg:
		g.emit(asm.Neg.Imm32(g.a, 0))
	case kTax:
		g.emit(asm.Mov.Reg32(g.x, g.a))
	case kTxa:
		if op, ok := g.xArith[i]; ok {
			g.aluOn(g.x, op)
			return nil
		}
		g.emit(asm.Mov.Reg32(g.a, g.x))
	case kNop:
	case kRetA:
		if g.matchMode() {
			g.emit(asm.JNE.Imm32(g.a, 0, g.opts.MatchLabel), asm.Ja.Label(g.opts.NoMatchLabel))
			return nil
		}
		g.emit(asm.Ja.Label(g.opts.ResultLabel))
	case kRetK:
		if g.matchMode() {
			g.emit(asm.Ja.Label(g.retLabel(in.k)))
			return nil
		}
		g.emit(asm.Mov.Imm32(g.a, int32(in.k)), asm.Ja.Label(g.opts.ResultLabel))
	case kJa:
		t := g.f.p.target(in.jt)
		if in.jback {
			if f.widenX(i) {
				g.emit(
					asm.StoreMem(asm.RFP, g.widenOff(), g.x, asm.Word),
					asm.LoadMem(g.x, asm.RFP, g.widenOff(), asm.Word),
				)
			}
			g.emit(
				asm.LoadMem(g.tmp, asm.RFP, g.loopOff(), asm.Word),
				asm.Add.Imm32(g.tmp, 1),
				asm.JGT.Imm32(g.tmp, MaxBackwardJumps, g.fail),
				asm.StoreMem(asm.RFP, g.loopOff(), g.tmp, asm.Word),
			)
			if g.mayGoto {
				// may_goto jumps only once the kernel's own budget
				// (millions of iterations) is spent.
				g.emit(asm.JCOND.Label(g.fail))
			}
			g.emit(asm.Ja.Label(g.label(in.jt)))
			return nil
		}
		if t != g.nextEmitted(i) {
			g.emit(asm.Ja.Label(g.labelFor(t)))
		}
	case kJcond:
		g.jcond(i, in)
	default:
		return errorf(i, ErrInvalid, "internal error: unhandled instruction kind %d", in.kind)
	}
	return nil
}

func (g *ebpfGen) alu(in insn) { g.aluOn(g.a, in) }

// aluOn emits dst op= (k or X), as the cBPF ALU instruction in does to A.
func (g *ebpfGen) aluOn(dst asm.Register, in insn) {
	var op asm.ALUOp
	switch in.op {
	case aluADD:
		op = asm.Add
	case aluSUB:
		op = asm.Sub
	case aluMUL:
		op = asm.Mul
	case aluDIV:
		op = asm.Div
	case aluMOD:
		op = asm.Mod
	case aluOR:
		op = asm.Or
	case aluAND:
		op = asm.And
	case aluXOR:
		op = asm.Xor
	case aluLSH:
		op = asm.LSh
	case aluRSH:
		op = asm.RSh
	}
	if in.useX {
		if in.op == aluDIV || in.op == aluMOD {
			g.emit(asm.JEq.Imm32(g.x, 0, g.fail))
		}
		g.emit(op.Reg32(dst, g.x))
		return
	}
	k := in.k
	if in.op == aluLSH || in.op == aluRSH {
		// Shifts by 32 or more: the kernel refuses them, libpcap's
		// interpreter on x86 shifts by k mod 32.
		k &= 31
	}
	g.emit(op.Imm32(dst, int32(k)))
}

func (g *ebpfGen) jcond(i int, in insn) {
	f := g.f
	jt, jf := g.f.p.target(in.jt), g.f.p.target(in.jf)
	k := in.k
	k = swapConst(k, f.rawA[i])
	if jt == jf {
		if jt != g.nextEmitted(i) {
			g.emit(asm.Ja.Label(g.labelFor(jt)))
		}
		return
	}
	if iv, ok := g.intervals[i]; ok {
		lo, hi, inside, outside := iv.lo, iv.hi, iv.inside, iv.outside
		next := g.nextEmitted(i)
		g.emit(asm.Sub.Imm32(g.a, int32(lo)))
		switch {
		case outside == next:
			g.emit(asm.JLE.Imm32(g.a, int32(hi-lo), g.labelFor(inside)))
		case inside == next:
			g.emit(asm.JGT.Imm32(g.a, int32(hi-lo), g.labelFor(outside)))
		}
		return
	}
	ops := map[uint16][2]asm.JumpOp{
		jmpJEQ:  {asm.JEq, asm.JNE},
		jmpJGT:  {asm.JGT, asm.JLE},
		jmpJGE:  {asm.JGE, asm.JLT},
		jmpJSET: {asm.JSet, asm.InvalidJumpOp},
	}[in.op]
	cond := func(op asm.JumpOp, label string) asm.Instruction {
		if in.useX {
			return op.Reg32(g.a, g.x, label)
		}
		return op.Imm32(g.a, int32(k), label)
	}
	next := g.nextEmitted(i)
	switch {
	case jf == next:
		g.emit(cond(ops[0], g.labelFor(jt)))
	case jt == next && ops[1] != asm.InvalidJumpOp:
		g.emit(cond(ops[1], g.labelFor(jf)))
	default:
		g.emit(cond(ops[0], g.labelFor(jt)), asm.Ja.Label(g.labelFor(jf)))
	}
}

// ext emits A = extension.
func (g *ebpfGen) ext(i int, in insn) {
	switch in.k {
	case extIfIndex:
		g.emit(asm.LoadMem(g.a, g.opts.Context, 12, asm.Word))
	case extPktType:
		notBcast := g.opts.LabelPrefix + "T" + strconv.Itoa(i) + "m"
		done := g.opts.LabelPrefix + "T" + strconv.Itoa(i) + "d"
		g.emit(
			asm.LoadMem(g.tmp, g.opts.Context, 0, asm.Word),
			asm.Mov.Reg(g.a, g.tmp),
			asm.Add.Imm(g.a, 6),
			asm.JGT.Reg(g.a, g.opts.PacketEnd, g.fail),
			asm.LoadMem(g.a, g.tmp, 4, asm.Half),
			asm.LoadMem(g.tmp, g.tmp, 0, asm.Word),
			asm.JNE.Imm32(g.a, 0xffff, notBcast),
			asm.JNE.Imm32(g.tmp, -1, notBcast),
			asm.Mov.Imm32(g.a, 1),
			asm.Ja.Label(done),
		)
		g.mark(notBcast)
		g.emit(asm.Mov.Reg32(g.a, g.tmp), asm.And.Imm32(g.a, 1), asm.LSh.Imm32(g.a, 1))
		g.labels[done] = len(g.out) // the next instruction
		g.pendingDone(done)
	case extCPU, extRandom:
		xLive := g.f.liveOut[i]&liveX != 0
		fn := asm.FnGetSmpProcessorId
		if in.k == extRandom {
			fn = asm.FnGetPrandomU32
		}
		var saved []asm.Register
		for _, r := range []asm.Register{g.opts.PacketStart, g.opts.PacketEnd, g.opts.Context, g.x} {
			if r == g.x && !xLive || r == asm.R0 && r == g.opts.Context {
				continue
			}
			if r <= asm.R5 {
				saved = append(saved, r)
			}
		}
		for j, r := range saved {
			g.emit(asm.StoreMem(asm.RFP, g.spillOff(j), r, asm.DWord))
		}
		g.emit(fn.Call())
		if g.a != asm.R0 {
			g.emit(asm.Mov.Reg(g.a, asm.R0))
		}
		for j, r := range saved {
			g.emit(asm.LoadMem(r, asm.RFP, g.spillOff(j), asm.DWord))
		}
	}
}

// pendingDone makes sure a label placed at the current end gets an
// instruction: the next cBPF instruction always emits one, except a jump
// to its successor, so emit nothing here and let link check.
func (g *ebpfGen) pendingDone(string) {}
