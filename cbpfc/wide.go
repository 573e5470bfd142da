package cbpfc

import (
	"math"

	"github.com/cilium/ebpf/asm"
)

// Wide tests. libpcap tests a field at a time: "ld [22]; jeq #0" then
// "ld [26]; jeq #0" for the two halves of an IPv6 address's first 8 bytes,
// "ldb [23]; jeq #6" then "ldh [20]; jset #0x1fff" for the IPv4 protocol
// and fragment offset. When such tests follow one another, each passing
// into the next and all failing to the same place, and the bytes they read
// lie within 8 bytes the code has already checked are in the packet, one
// load of those bytes, masked and compared once, decides the same: the
// eBPF backend emits that (a wide test). One test alone may get narrower
// the same way: "ld [26]; and #0xffff0000; jeq #k" reads 2 bytes.

// packetTest is one libpcap-style test: the packet bytes [k, k+size), as a
// big-endian number, masked with mask, equal val.
type packetTest struct {
	load, jump int // the load and the conditional jump
	k, size    int
	mask, val  uint32
	pass, fail int // where the jump goes, through forward jumps
	cost       int // eBPF instructions emitted for it otherwise
}

// wideTest is a run of packet tests emitted as one: the size bytes at off
// from PacketStart, loaded (byte-swapped when swap), masked with mask,
// equal val.
type wideTest struct {
	off, size  int
	swap       bool
	mask, val  uint64
	last       int // the last instruction of the run
	pass, fail int
}

// maxWideOffset keeps wide loads within one load's reach of the guard
// register or PacketStart.
const maxWideOffset = math.MaxInt16 - 8

// packetTest returns the test whose load is instruction i, if it is one
// the eBPF code may merge: nothing but the previous instruction leads into
// it past its load, and its jump has two ways.
func (g *ebpfGen) packetTest(i int) (packetTest, bool) {
	f, p := g.f, g.f.p
	usable := func(j int) bool {
		return j < len(p.insns) && f.reachable[j] && !g.skip[j] && !g.deferred[j] && !f.fails[j] && !f.dead[j]
	}
	in := p.insns[i]
	if !usable(i) || in.kind != kLdAbs || f.liveOut[i]&liveA == 0 || extent(in) > maxWideOffset {
		return packetTest{}, false
	}
	t := packetTest{load: i, k: int(in.k), size: in.size, mask: sizeMax(in.size), cost: 2}
	if in.size > 1 && f.rawA[i] == 0 {
		t.cost++ // the byte swap
	}
	next := func(j int) int {
		for j++; j < len(p.insns) && p.insns[j].kind == kNop && !f.joins[j]; j++ {
		}
		return j
	}
	j := next(i)
	if !usable(j) || f.joins[j] {
		return packetTest{}, false
	}
	if a := p.insns[j]; a.kind == kAlu && !a.useX && a.op == aluAND {
		t.mask &= a.k
		t.cost++
		if j = next(j); !usable(j) || f.joins[j] {
			return packetTest{}, false
		}
	}
	jc := p.insns[j]
	if jc.kind != kJcond || jc.useX || jc.jt == jc.jf {
		return packetTest{}, false
	}
	t.jump = j
	switch jc.op {
	case jmpJEQ:
		t.val, t.pass, t.fail = jc.k, p.target(jc.jt), p.target(jc.jf)
	case jmpJSET:
		t.mask &= jc.k
		t.pass, t.fail = p.target(jc.jf), p.target(jc.jt)
	default:
		return packetTest{}, false
	}
	if t.mask == 0 || t.val&^t.mask != 0 {
		return packetTest{}, false // the optimizer folds these
	}
	return t, true
}

// sameEnd says whether instructions a and b end the filter alike: the
// same instruction, or returns of the same constant.
func (g *ebpfGen) sameEnd(a, b int) bool {
	p := g.f.p
	return a == b || p.insns[a].kind == kRetK && p.insns[b].kind == kRetK && p.insns[a].k == p.insns[b].k
}

// findWide decides which runs of packet tests the eBPF code emits as wide
// tests, given the flow states, and marks the instructions they replace
// (all but the first load) skipped.
func (g *ebpfGen) findWide(states []flowState) {
	f, p := g.f, g.f.p
	g.wide = map[int]wideTest{}
	for i := 0; i < len(p.insns); i++ {
		first, ok := g.packetTest(i)
		if !ok {
			continue
		}
		// The bytes checked once the first load's guard is done.
		s := states[i]
		if f.earlyGuard(i, s) {
			s.checkedA, s.cur = f.needAbs[i], f.needAbs[i]
		}
		checked := s.checkedA
		if f.guardAt(i, s) {
			checked, s.cur = f.needAbs[i], f.needAbs[i]
		}
		// The run: each test passes into the next, all fail alike, and
		// no later load checks bounds of its own.
		run := []packetTest{first}
		for len(run) < 8 {
			last := run[len(run)-1]
			t, ok := g.packetTest(last.pass)
			if !ok || last.pass <= last.jump || f.joins[t.load] || !g.sameEnd(t.fail, first.fail) ||
				f.guardAt(t.load, states[t.load]) || states[t.load].cur != s.cur || extent(p.insns[t.load]) > checked {
				break
			}
			between := true
			for j := last.jump + 1; j < t.load; j++ {
				between = between && (p.insns[j].kind == kNop || !f.reachable[j])
			}
			if !between {
				break
			}
			run = append(run, t)
		}
		// The longest prefix that saves the most.
		best, bestSave := wideTest{}, 0
		cost := 0
		for n := range run {
			cost += run[n].cost
			w, wcost, ok := g.wideFor(run[:n+1], checked)
			if ok && cost-wcost >= bestSave && cost-wcost > 0 {
				best, bestSave = w, cost-wcost
			}
		}
		if bestSave == 0 {
			continue
		}
		end := len(run)
		for n, t := range run {
			if t.jump == best.last {
				end = n + 1
			}
		}
		run = run[:end]
		best.pass = run[len(run)-1].pass
		best.fail = first.fail
		if f.liveIn[best.pass]&liveA != 0 || f.liveIn[best.fail]&liveA != 0 {
			continue
		}
		g.wide[i] = best
		for j := i + 1; j <= best.last; j++ {
			g.skip[j] = true
		}
		i = best.last
	}
}

// wideFor returns the wide test that does the tests of run, with its cost
// in instructions, within the first checked bytes; ok is false if the
// bytes are too far apart or the constants do not fit the instructions.
func (g *ebpfGen) wideFor(run []packetTest, checked int) (wideTest, int, bool) {
	// What each byte must be: mask and value.
	type want struct{ mask, val byte }
	bytes := map[int]want{}
	lo, hi := math.MaxInt, 0
	for _, t := range run {
		for b := 0; b < t.size; b++ {
			sh := 8 * (t.size - 1 - b)
			m, v := byte(t.mask>>sh), byte(t.val>>sh)
			if m == 0 {
				continue
			}
			off := t.k + b
			old := bytes[off]
			if (old.val^v)&old.mask&m != 0 {
				return wideTest{}, 0, false // no byte passes both
			}
			bytes[off] = want{old.mask | m, old.val | v}
			lo, hi = min(lo, off), max(hi, off+1)
		}
	}
	size := 1
	for size < hi-lo {
		size *= 2
	}
	if size > 8 || checked < size {
		return wideTest{}, 0, false
	}
	// The window [off, off+size) holds the bytes, within the checked
	// ones; a load of 8 bytes then needs constants that fit 32-bit
	// immediates, sign-extended (the bytes as loaded, little-endian, or
	// swapped to big-endian).
	best, bestCost := wideTest{}, math.MaxInt
	for off := max(0, hi-size); off <= lo && off+size <= checked; off++ {
		for _, swap := range []bool{false, true} {
			if swap && size < 8 {
				continue
			}
			w := wideTest{off: off, size: size, swap: swap, last: run[len(run)-1].jump}
			for b := range size {
				sh := 8 * b
				if swap {
					sh = 8 * (size - 1 - b)
				}
				x := bytes[off+b]
				w.mask |= uint64(x.mask) << sh
				w.val |= uint64(x.val) << sh
			}
			cost, ok := w.cost()
			if ok && cost < bestCost {
				best, bestCost = w, cost
			}
		}
	}
	return best, bestCost, bestCost != math.MaxInt
}

// full says whether the test compares every byte it loads.
func (w wideTest) full() bool {
	return w.mask == 1<<(8*w.size)-1 || w.size == 8 && w.mask == math.MaxUint64
}

// cost is the number of instructions of the wide test, when it jumps away
// on failure; ok is false when its constants do not fit.
func (w wideTest) cost() (int, bool) {
	fits := func(v uint64) bool { return w.size < 8 || int64(int32(v)) == int64(v) }
	n := 2 // load, jump
	if w.swap {
		n++
	}
	switch {
	case w.full():
		return n, fits(w.val)
	case w.val == 0:
		return n, fits(w.mask) // jset
	}
	return n + 1, fits(w.mask) && fits(w.val) // and, jne
}

// emitWide emits wide test w, its load through the guard register when
// that holds PacketStart+cur, then jumps: to w.fail when the test fails,
// to w.pass when it passes, falling through where it can.
func (g *ebpfGen) emitWide(w wideTest, cur int) {
	g.loadAbs(g.a, cur, uint32(w.off), w.size)
	if w.swap {
		g.emit(asm.HostTo(asm.BE, g.a, asm.DWord))
	}
	and, jeq, jne, jset := asm.And.Imm32, asm.JEq.Imm32, asm.JNE.Imm32, asm.JSet.Imm32
	if w.size == 8 {
		and, jeq, jne, jset = asm.And.Imm, asm.JEq.Imm, asm.JNE.Imm, asm.JSet.Imm
	}
	mask, val := int32(uint32(w.mask)), int32(uint32(w.val))
	pass, fail := g.labelFor(w.pass), g.labelFor(w.fail)
	next := g.nextEmitted(w.last)
	if w.fail == next && w.pass != next {
		// Jump away when it passes.
		if !w.full() {
			g.emit(and(g.a, mask))
		}
		g.emit(jeq(g.a, val, pass))
		return
	}
	switch {
	case w.full():
		g.emit(jne(g.a, val, fail))
	case w.val == 0:
		g.emit(jset(g.a, mask, fail))
	default:
		g.emit(and(g.a, mask), jne(g.a, val, fail))
	}
	if w.pass != next {
		g.emit(asm.Ja.Label(pass))
	}
}
