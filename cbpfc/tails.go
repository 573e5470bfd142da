package cbpfc

// Shared tails. libpcap compiles "port 53" once for IPv6, whose transport
// header is at a fixed offset ("ldh [54]", "ldh [56]"), and once for IPv4,
// whose header length varies ("ldh [x + 14]", "ldh [x + 16]" after "ldxb
// 4*([14]&0xf)"): the same tests, the same exits. With X = 40 the IPv4
// code loads exactly the bytes the IPv6 code does, and fails on exactly the
// packets too short for them. So the IPv6 code can become "ldx #40; ja" to
// the IPv4 code, when X is read nowhere after it: one copy of the tests
// instead of two.

// maxTail bounds the instructions a shared tail compares, and
// maxTailWork the pairs of instructions one search compares in all, so
// that a large filter still compiles quickly.
const (
	maxTail     = 1024
	maxTailWork = 1 << 18
)

// mergeTails replaces one piece of code that loads at fixed offsets by a
// jump to code that does the same through X (see above), and reports
// whether it did.
func mergeTails(p *program) bool {
	if p.hasLoops {
		return false
	}
	f := analyze(p)
	preds := f.preds()
	work := maxTailWork
	for a, in := range p.insns {
		// a becomes ldx #c, a+1 the jump: nothing else may lead to a+1.
		if !f.reachable[a] || f.fails[a] || in.kind != kLdAbs || f.liveIn[a]&liveX != 0 ||
			a+2 >= len(p.insns) || len(preds[a+1]) != 1 || preds[a+1][0] != a {
			continue
		}
		if _, ok := p.params[a+1]; ok {
			continue
		}
		for b := a + 2; b < len(p.insns); b++ {
			ind := p.insns[b]
			if !f.reachable[b] || ind.kind != kLdInd || ind.size != in.size || ind.k > in.k || f.fails[b] {
				continue
			}
			c := in.k - ind.k
			if work <= 0 {
				return false
			}
			if !sameTail(p, f, a, b, c, &work) {
				continue
			}
			p.insns[a] = insn{kind: kLdImm, dst: regX, k: c}
			p.insns[a+1] = insn{kind: kJa, jt: b}
			return true
		}
	}
	return false
}

// sameTail says whether the code from a, run with any X, does what the
// code from b does run with X = c: instruction for instruction the same up
// to where the two meet, but for the loads, absolute ones from a where b
// has ld [x+k] at c bytes less; neither reads or writes X otherwise.
//
// budget counts down the pairs compared.
func sameTail(p *program, f *facts, a, b int, c uint32, budget *int) bool {
	pairs := map[int]int{}
	work := [][2]int{{a, b}}
	for len(work) > 0 {
		if *budget--; *budget < 0 {
			return false
		}
		u, v := p.resolve(work[0][0]), p.resolve(work[0][1])
		work = work[1:]
		if u == v {
			continue
		}
		if w, ok := pairs[u]; ok {
			if w != v {
				return false
			}
			continue
		}
		if len(pairs) == maxTail || u >= len(p.insns) || v >= len(p.insns) || !f.reachable[u] || !f.reachable[v] || f.fails[u] || f.fails[v] {
			return false
		}
		pairs[u] = v
		_, pu := p.params[u]
		_, pv := p.params[v]
		if pu || pv {
			return false
		}
		iu, iv := p.insns[u], p.insns[v]
		useU, defU := useDef(iu)
		useV, defV := useDef(iv)
		if (useU|defU|defV)&liveX != 0 || useV&liveX != 0 && iv.kind != kLdInd {
			return false
		}
		switch {
		case iu.kind == kLdAbs && iv.kind == kLdInd:
			if iu.size != iv.size || uint64(iv.k)+uint64(c) != uint64(iu.k) {
				return false
			}
		case iu.kind != iv.kind || iu.dst != iv.dst || iu.size != iv.size || iu.op != iv.op || iu.useX != iv.useX || iu.k != iv.k:
			return false
		}
		switch iu.kind {
		case kRetA, kRetK:
		case kJa:
			if iu.jback || iv.jback {
				return false
			}
			work = append(work, [2]int{iu.jt, iv.jt})
		case kJcond:
			work = append(work, [2]int{iu.jt, iv.jt}, [2]int{iu.jf, iv.jf})
		default:
			work = append(work, [2]int{u + 1, v + 1})
		}
	}
	return true
}
