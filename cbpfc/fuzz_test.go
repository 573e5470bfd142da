package cbpfc

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/clang"
	"github.com/l4drop/l4drop/internal/fixture"
)

// byteReader hands out fuzz input, then zeros.
type byteReader struct {
	b []byte
}

func (r *byteReader) next() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *byteReader) u32() uint32 {
	return uint32(r.next()) | uint32(r.next())<<8 | uint32(r.next())<<16 | uint32(r.next())<<24
}

// genProgram makes a valid cBPF program from fuzz input: loads of every
// kind (some past any packet), ALU operations including division and
// modulo by X of zero (by a constant 0 the kernel refuses), scratch memory, forward jumps, backward jumps (loops),
// extensions, and returns.
func genProgram(r *byteReader, extensions bool) []bpf.Instruction {
	n := 1 + int(r.next()%28)
	prog := make([]bpf.Instruction, 0, n+1)
	offset := func(limit uint32) uint32 {
		switch c := r.next(); {
		case c < 8:
			return 40000 + uint32(c)
		case c < 12:
			return 70000
		default:
			return uint32(c) % limit
		}
	}
	aluOps := []bpf.ALUOp{bpf.ALUOpAdd, bpf.ALUOpSub, bpf.ALUOpMul, bpf.ALUOpDiv, bpf.ALUOpOr, bpf.ALUOpAnd,
		bpf.ALUOpShiftLeft, bpf.ALUOpShiftRight, bpf.ALUOpMod, bpf.ALUOpXor}
	conds := []bpf.JumpTest{bpf.JumpEqual, bpf.JumpNotEqual, bpf.JumpGreaterThan, bpf.JumpLessThan,
		bpf.JumpGreaterOrEqual, bpf.JumpLessOrEqual, bpf.JumpBitsSet, bpf.JumpBitsNotSet}
	sizes := []int{1, 2, 4}
	for i := 0; i < n; i++ {
		after := n - i - 1 // instructions between this one and the final return
		var in bpf.Instruction
		switch op := r.next() % 22; op {
		case 0, 1:
			in = bpf.LoadAbsolute{Off: offset(80), Size: sizes[r.next()%3]}
		case 2:
			in = bpf.LoadIndirect{Off: offset(48), Size: sizes[r.next()%3]}
		case 3:
			in = bpf.LoadMemShift{Off: offset(64)}
		case 4:
			in = bpf.LoadConstant{Dst: bpf.Register(r.next() % 2), Val: uint32(r.next() % 64)}
		case 5:
			in = bpf.LoadConstant{Dst: bpf.Register(r.next() % 2), Val: r.u32()}
		case 6:
			in = bpf.LoadScratch{Dst: bpf.Register(r.next() % 2), N: int(r.next() % 16)}
		case 7:
			in = bpf.StoreScratch{Src: bpf.Register(r.next() % 2), N: int(r.next() % 16)}
		case 8, 9:
			v := uint32(r.next())
			if r.next()%4 == 0 {
				v = r.u32()
			}
			op := aluOps[r.next()%uint8(len(aluOps))]
			switch op {
			case bpf.ALUOpDiv, bpf.ALUOpMod:
				v = max(v, 1)
			case bpf.ALUOpShiftLeft, bpf.ALUOpShiftRight:
				v %= 32
			}
			in = bpf.ALUOpConstant{Op: op, Val: v}
		case 10:
			in = bpf.ALUOpX{Op: aluOps[r.next()%uint8(len(aluOps))]}
		case 11:
			in = bpf.NegateA{}
		case 12:
			in = bpf.TAX{}
		case 13:
			in = bpf.TXA{}
		case 14, 15, 16:
			v := uint32(r.next())
			if r.next()%4 == 0 {
				v = r.u32()
			}
			jt, jf := r.next()%uint8(after+1), r.next()%uint8(after+1)
			if after > 255 {
				jt, jf = 0, 0
			}
			c := conds[r.next()%uint8(len(conds))]
			if r.next()%4 == 0 {
				in = bpf.JumpIfX{Cond: c, SkipTrue: jt, SkipFalse: jf}
			} else {
				in = bpf.JumpIf{Cond: c, Val: v, SkipTrue: jt, SkipFalse: jf}
			}
		case 17:
			// Backward or forward, as libpcap's protochain does.
			t := int(r.next()) % n
			in = bpf.RawInstruction{Op: 0x05, K: uint32(int32(t - i - 1))}
		case 18:
			in = bpf.RetA{}
		case 19:
			in = bpf.RetConstant{Val: uint32(r.next())}
		case 20:
			in = bpf.LoadExtension{Num: bpf.ExtLen}
		case 21:
			if !extensions {
				in = bpf.LoadExtension{Num: bpf.ExtLen}
				break
			}
			exts := []bpf.Extension{bpf.ExtInterfaceIndex, bpf.ExtType, bpf.ExtCPUID, bpf.ExtRand}
			in = bpf.LoadExtension{Num: exts[r.next()%4]}
		}
		prog = append(prog, in)
	}
	if r.next()%2 == 0 {
		prog = append(prog, bpf.RetA{})
	} else {
		prog = append(prog, bpf.RetConstant{Val: uint32(r.next()) + 1})
	}
	return prog
}

// genPacket makes a packet of at least 14 bytes from fuzz input.
func genPacket(r *byteReader) []byte {
	n := 14 + int(r.next())%100
	pkt := make([]byte, n)
	for i := range pkt {
		pkt[i] = r.next()
	}
	return pkt
}

func fuzzSeeds(f *testing.F) {
	f.Add([]byte{3, 0, 10, 1, 14, 12, 1, 0, 200, 8, 18})
	f.Add([]byte{5, 17, 0, 2, 40, 1, 10, 3, 3, 0, 16, 1, 4, 0, 20})
	f.Add([]byte("\x10\x03\x0e\x02\x05\x01\x0a\x09\x05\x0e\x06\x07\x11\x02\x12"))
	f.Add([]byte("\x18\x15\x01\x15\x02\x15\x03\x15\x00\x08\x03\x00\x0c\x11\x00\x12"))
}

// onlyReference says whether only cbpfc's reference interpreter can
// judge a program: libpcap's cannot run loops (its validator refuses
// backward jumps) nor the XDP extensions.
// Nor programs that may read M[] before writing it: libpcap leaves M[]
// uninitialized (the kernel refuses such programs; cbpfc zeroes M[]).
func onlyReference(prog []bpf.Instruction) bool {
	p, err := decodeAll(prog)
	if err != nil {
		return true
	}
	return p.hasLoops || p.usesContext || p.usesHelpers || analyze(p).liveIn[0]&^(liveA|liveX) != 0
}

// FuzzEBPF runs random cBPF programs compiled to eBPF in the kernel on
// random packets, against libpcap's interpreter (and cbpfc's reference
// interpreter for loops and extensions).
func FuzzEBPF(f *testing.F) {
	fuzzSeeds(f)
	fixture.RequireRoot(f)
	r := fixture.NewXDPRunner(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		br := &byteReader{b: data}
		prog := genProgram(br, true)
		pkt := genPacket(br)
		ep, err := loadEBPF(t, prog)
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				t.Fatalf("compile: %v\n%s", err, listing(prog))
			}
			t.Fatalf("%v\n%s", err, listing(prog))
		}
		defer ep.Close()
		checkRuns(t, r, ep, prog, pkt)
	})
}

func listing(prog []bpf.Instruction) string { return cbpf.Listing(prog) }

// genTests makes, from fuzz input, a packet of 64 bytes and a chain of up to
// 6 libpcap-style tests of its bytes ("ld [k]; and #m; jeq #v" or "jset #m"
// away), each passing into the next and most failing to the same return,
// all passing on the packet: what the eBPF backend merges into wide tests.
// Before them, maybe a load that only sets how many bytes are checked.
func genTests(r *byteReader) (prog []bpf.Instruction, pkt []byte, base int) {
	pkt = make([]byte, 64)
	for i := range pkt {
		pkt[i] = r.next()
	}
	if r.next()%2 == 0 {
		prog = append(prog, bpf.LoadAbsolute{Off: uint32(r.next() % 64), Size: 1}, bpf.JumpIf{Cond: bpf.JumpEqual})
	}
	n := 1 + int(r.next()%6)
	base = int(r.next() % 48)
	type test struct {
		ins    []bpf.Instruction
		breaks bool // fails to the passing return, not the failing one
	}
	var tests []test
	for range n {
		size := []int{1, 2, 4}[r.next()%3]
		off := min(base+int(r.next()%10), len(pkt)-size)
		var v uint32
		for b := range size {
			v = v<<8 | uint32(pkt[off+b])
		}
		t := test{ins: []bpf.Instruction{bpf.LoadAbsolute{Off: uint32(off), Size: size}}, breaks: r.next()%8 == 0}
		mask := uint32(math.MaxUint32)
		switch r.next() % 4 {
		case 0:
			mask = r.u32()
		case 1:
			mask = []uint32{0xff, 0xff00, 0xffff, 0xffff0000, 0xff000000, 0xffffff00}[r.next()%6]
		}
		if mask != math.MaxUint32 {
			t.ins = append(t.ins, bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: mask})
		}
		if r.next()%3 == 0 {
			t.ins = append(t.ins, bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: r.u32() &^ (v & mask)})
		} else {
			t.ins = append(t.ins, bpf.JumpIf{Cond: bpf.JumpEqual, Val: v & mask})
		}
		tests = append(tests, t)
	}
	for _, t := range tests {
		prog = append(prog, t.ins...)
	}
	// The returns: passing, then failing.
	pass := len(prog)
	prog = append(prog, bpf.RetConstant{Val: 7}, bpf.RetConstant{Val: uint32(r.next() % 2)})
	at := pass - 1
	for k := len(tests) - 1; k >= 0; k-- {
		j := prog[at].(bpf.JumpIf)
		skip := uint8(pass + 1 - at - 1)
		if tests[k].breaks {
			skip--
		}
		if j.Cond == bpf.JumpBitsSet {
			j.SkipTrue = skip
		} else {
			j.SkipFalse = skip
		}
		prog[at] = j
		at -= len(tests[k].ins)
	}
	return prog, pkt, base
}

// genTails makes, from fuzz input, a packet of 64 bytes and a program
// that tests one of its bytes, then runs one of two copies of a piece of
// code: one with absolute loads, the other, after setting X, with ld
// [x+k] at c bytes less, as libpcap compiles a port test for IPv6 and for
// IPv4: what the optimizer shares. Sometimes the copies differ in one
// constant, and must not be shared. sel is the offset of the byte the
// program tests first.
func genTails(r *byteReader) (prog []bpf.Instruction, pkt []byte, sel int) {
	pkt = make([]byte, 64)
	for i := range pkt {
		pkt[i] = r.next()
	}
	sel = int(r.next() % 64)
	c := uint32(r.next() % 48)
	// The X-setter of the second copy.
	var setX []bpf.Instruction
	switch r.next() % 3 {
	case 0:
		setX = []bpf.Instruction{bpf.LoadMemShift{Off: uint32(r.next() % 64)}}
	case 1:
		setX = []bpf.Instruction{bpf.LoadConstant{Dst: bpf.RegX, Val: uint32(r.next() % 64)}}
	default:
		setX = []bpf.Instruction{bpf.LoadAbsolute{Off: uint32(r.next() % 64), Size: 1}, bpf.TAX{}}
	}
	type op struct {
		k, size int
		alu     *bpf.ALUOpConstant
		cond    bpf.JumpTest
		val     uint32
		jt, jf  int // -1: the next op; 0 to 2: an exit
	}
	n := 1 + int(r.next()%6)
	ops := make([]op, n)
	for i := range ops {
		o := op{k: int(r.next() % 24), size: []int{1, 2, 4}[r.next()%3], jt: -1, jf: -1}
		if r.next()%3 == 0 {
			o.alu = &bpf.ALUOpConstant{Op: []bpf.ALUOp{bpf.ALUOpAnd, bpf.ALUOpAdd, bpf.ALUOpShiftRight}[r.next()%3], Val: uint32(r.next() % 16)}
		}
		o.cond = []bpf.JumpTest{bpf.JumpEqual, bpf.JumpGreaterThan, bpf.JumpGreaterOrEqual, bpf.JumpBitsSet}[r.next()%4]
		o.val = uint32(r.next())
		if b := r.next(); b%3 != 0 || i == n-1 {
			o.jt = int(b/3) % 3
		}
		if b := r.next(); b%3 != 0 || i == n-1 {
			o.jf = int(b/3) % 3
		}
		ops[i] = o
	}
	differ := r.next()%4 == 0
	// Each copy, with its jumps as (target kind, op index or exit).
	copyOf := func(ind bool) (code []bpf.Instruction, starts []int, jumps []int) {
		for i, o := range ops {
			starts = append(starts, len(code))
			if ind {
				code = append(code, bpf.LoadIndirect{Off: uint32(o.k), Size: o.size})
			} else {
				code = append(code, bpf.LoadAbsolute{Off: uint32(o.k) + c, Size: o.size})
			}
			if o.alu != nil {
				code = append(code, *o.alu)
			}
			val := o.val
			if differ && !ind && i == n-1 {
				val++
			}
			jumps = append(jumps, len(code))
			code = append(code, bpf.JumpIf{Cond: o.cond, Val: val})
		}
		return code, starts, jumps
	}
	abs, absStarts, absJumps := copyOf(false)
	ind, indStarts, indJumps := copyOf(true)
	// ldb [sel]; jeq #v: the absolute copy when equal.
	prog = []bpf.Instruction{bpf.LoadAbsolute{Off: uint32(sel), Size: 1}, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(pkt[sel])}}
	absAt := len(prog)
	prog = append(prog, abs...)
	indAt := len(prog) + len(setX)
	prog = append(prog, setX...)
	prog = append(prog, ind...)
	exits := len(prog)
	prog = append(prog, bpf.RetConstant{Val: 7}, bpf.RetConstant{Val: 0}, bpf.RetA{})
	j := prog[1].(bpf.JumpIf)
	j.SkipFalse = uint8(indAt - len(setX) - 2)
	prog[1] = j
	patch := func(at int, starts, jumps []int) {
		for i, o := range ops {
			pos := at + jumps[i]
			target := func(t int) uint8 {
				to := exits + t
				switch {
				case t < 0 && i+1 < n:
					to = at + starts[i+1]
				case t < 0:
					to = exits + 1
				}
				return uint8(to - pos - 1)
			}
			jc := prog[pos].(bpf.JumpIf)
			jc.SkipTrue, jc.SkipFalse = target(o.jt), target(o.jf)
			prog[pos] = jc
		}
	}
	patch(absAt, absStarts, absJumps)
	patch(indAt, indStarts, indJumps)
	return prog, pkt, sel
}

// FuzzTails runs the programs of genTails, compiled to eBPF and to the
// minimal XDP program, in the kernel against the reference interpreter,
// each copy at every packet length.
func FuzzTails(f *testing.F) {
	f.Add([]byte("\x00"))
	fixture.RequireRoot(f)
	r := fixture.NewXDPRunner(f)
	if fuzzing() {
		limitMinimizing(f, cMinimizeTime)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		prog, pkt, sel := genTails(&byteReader{b: data})
		var pkts [][]byte
		for _, flip := range []byte{0, 1} {
			p := append([]byte(nil), pkt...)
			p[sel] ^= flip
			for n := minRunLen; n <= len(p); n++ {
				pkts = append(pkts, p[:n])
			}
		}
		checkBoth(t, r, prog, pkts)
	})
}

// FuzzTests runs chains of packet tests (genTests), compiled to eBPF and to
// the minimal XDP program, in the kernel, against the reference
// interpreter: on the packet at every length (the bytes checked decide
// which tests merge), and with each byte changed in its lowest or highest
// bit. The seeds in testdata: an IPv6 address's last 12 bytes (::1),
// the IPv4 protocol and fragment offset, an IPv4 /16.
func FuzzTests(f *testing.F) {
	fixture.RequireRoot(f)
	r := fixture.NewXDPRunner(f)
	if fuzzing() {
		// An input costs a few hundred test runs.
		limitMinimizing(f, cMinimizeTime)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		prog, pkt, base := genTests(&byteReader{b: data})
		var pkts [][]byte
		for n := minRunLen; n <= len(pkt); n++ {
			pkts = append(pkts, pkt[:n])
		}
		// The bytes tested, and those a wide load may read round them.
		for i := max(0, base-8); i < min(len(pkt), base+18); i++ {
			for _, bit := range []byte{0x01, 0x80} {
				p := append([]byte(nil), pkt...)
				p[i] ^= bit
				pkts = append(pkts, p)
			}
		}
		checkBoth(t, r, prog, pkts)
	})
}

// checkBoth compiles prog to eBPF and to the minimal XDP program, loads
// both and runs them over pkts against the reference interpreter.
func checkBoth(t *testing.T, r *fixture.XDPRunner, prog []bpf.Instruction, pkts [][]byte) {
	t.Helper()
	ep, err := loadEBPF(t, prog)
	if err != nil {
		t.Fatalf("%v\n%s", err, listing(prog))
	}
	defer ep.Close()
	mp, err := loadMatch(t, prog)
	if err != nil {
		t.Fatalf("%v\n%s", err, listing(prog))
	}
	defer mp.Close()
	for _, p := range pkts {
		want := interpret(prog, p, extValues{ifindex: 1})
		got, err := runValue(r, ep, p)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("kernel %#x, want %#x on %d bytes %x\n%s", got, want, len(p), p, listing(prog))
		}
		ret, err := r.Run(mp, p)
		if err != nil {
			t.Fatal(err)
		}
		if (ret == 2) != (want != 0) {
			t.Fatalf("minimal XDP program returns %d, filter %#x on %d bytes %x\n%s", ret, want, len(p), p, listing(prog))
		}
	}
}

// shiftsByX says whether prog shifts A by X, where libpcap and the kernel
// differ for X >= 32.
func shiftsByX(prog []bpf.Instruction) bool {
	for _, in := range prog {
		if a, ok := in.(bpf.ALUOpX); ok && (a.Op == bpf.ALUOpShiftLeft || a.Op == bpf.ALUOpShiftRight) {
			return true
		}
	}
	return false
}

// checkRuns runs the program over pkt and its prefixes.
func checkRuns(t *testing.T, r *fixture.XDPRunner, prog *ebpf.Program, filter []bpf.Instruction, pkt []byte) {
	t.Helper()
	deterministic := !UsesHelpers(filter)
	ref := onlyReference(filter)
	var lp *cbpf.Filter
	if !ref {
		var err error
		if lp, err = cbpf.NewFilter(filter); err != nil {
			ref = true // libpcap refuses it (say, division by a constant 0)
		}
	}
	for _, n := range []int{len(pkt), 14, 20, 34, 54} {
		if n > len(pkt) {
			continue
		}
		p := pkt[:n]
		want := interpret(filter, p, extValues{ifindex: 1})
		if lp != nil {
			// libpcap makes a shift by X of 32 or more 0; the kernel,
			// whose semantics cbpfc has, shifts by X mod 32 (as eBPF and
			// the CPU do). The kernel run below checks those programs.
			if lw := lp.Run(p, len(p)); lw != want && !shiftsByX(filter) {
				t.Fatalf("reference interpreter %#x, libpcap %#x on %d bytes\n%s", want, lw, n, listing(filter))
			}
		}
		got, err := runValue(r, prog, p)
		if err != nil {
			t.Fatal(err)
		}
		if deterministic && got != want {
			t.Fatalf("kernel %#x, want %#x on %d bytes %x\n%s", got, want, n, p, listing(filter))
		}
	}
}

// FuzzC is FuzzEBPF through the C backend and clang.
//
// A clang run costs a fixed 0.2 s to a second (starting clang, reading the
// headers), next to which the programs cost nothing; the fuzz engine ends a
// worker whose input takes 10 s ("fuzzing process hung or terminated
// unexpectedly") and minimizes every input with new coverage for up to
// 60 s. With one program and one clang run per input, a 15 s -fuzztime ran
// 6 to 9 inputs, then spent the rest minimizing, one clang run per
// candidate, until the deadline killed the workers inside clang (leaving
// clang's temporary directories behind); nothing ever reached the fuzz
// cache. So here:
//   - an input is a batch of up to cBatch programs, compiled in one clang run;
//   - compiled batches are kept by C source: minimizing candidates that
//     change only the packets (which come after the programs) need no clang;
//   - a clang run stops at the interrupt that ends a worker, and after
//     cClangTimeout, well below the engine's 10 s: the input is skipped, not
//     failed, since a busy machine is no compiler bug;
//   - minimizing lasts cMinimizeTime unless -fuzzminimizetime is given.
func FuzzC(f *testing.F) {
	fuzzSeeds(f)
	fixture.RequireRoot(f)
	if _, err := clang.Binary(); err != nil {
		f.Skip(err)
	}
	r := fixture.NewXDPRunner(f)
	// While fuzzing, the coordinator interrupts a worker to stop it at the
	// deadline, and the engine's 10 s watchdog runs; a plain go test has
	// neither.
	interrupted := context.Background()
	var cache cSpecCache
	if fuzzing() {
		var stop context.CancelFunc
		interrupted, stop = signal.NotifyContext(interrupted, os.Interrupt)
		f.Cleanup(stop)
		cache.timeout = cClangTimeout
		limitMinimizing(f, cMinimizeTime)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		br := &byteReader{b: data}
		// Programs first, then packets: trimming the input's tail, as
		// minimizing does, changes the packets and keeps the programs.
		progs := make([][]bpf.Instruction, 1+int(br.next())%cBatch)
		for i := range progs {
			progs[i] = genProgram(br, true)
		}
		pkts := make([][]byte, len(progs))
		for i := range pkts {
			pkts[i] = genPacket(br)
		}
		spec, err := cache.get(interrupted, progs)
		if errors.Is(err, context.DeadlineExceeded) || interrupted.Err() != nil {
			t.Skipf("clang did not finish in %v (machine busy) or the run ends: input not judged", cClangTimeout)
		}
		if err != nil {
			t.Fatalf("%v\n%s", err, listings(progs))
		}
		for i, prog := range progs {
			cp, err := ebpf.NewProgram(spec.Programs[fmt.Sprintf("f%d", i)])
			if err != nil {
				src, _ := ToC(prog, COpts{})
				t.Fatalf("load program %d: %v\n%s\n%s", i, err, listing(prog), src)
			}
			t.Cleanup(func() { cp.Close() })
			checkRuns(t, r, cp, prog, pkts[i])
		}
	})
}

// cBatch is the most programs one FuzzC input makes; cClangTimeout bounds
// its clang run, well below the fuzz engine's 10 s per input.
const (
	cBatch        = 8
	cClangTimeout = 4 * time.Second
)

// fuzzing says whether the test binary runs with -test.fuzz (as the
// coordinator or a worker).
func fuzzing() bool {
	f := flag.Lookup("test.fuzz")
	return f != nil && f.Value.String() != ""
}

// cMinimizeTime is how long FuzzC minimizes an input unless
// -fuzzminimizetime says otherwise: the engine's default, 60 s, is hundreds
// of clang runs for each input with new coverage, more than a whole
// `make fuzz` run, and an input not minimized in time is lost to the fuzz
// cache.
const cMinimizeTime = "3s"

// limitMinimizing sets -fuzzminimizetime to d unless the command line set
// it. The engine reads it when F.Fuzz starts coordinating.
func limitMinimizing(f *testing.F, d string) {
	f.Helper()
	set := false
	flag.Visit(func(fl *flag.Flag) { set = set || fl.Name == "test.fuzzminimizetime" })
	if set {
		return
	}
	if err := flag.Set("test.fuzzminimizetime", d); err != nil {
		f.Fatal(err)
	}
}

// cSpecCache keeps the compiled batches of a FuzzC worker by C source.
type cSpecCache struct {
	specs   map[string]*ebpf.CollectionSpec
	timeout time.Duration // of a clang run; 0: none
}

func (c *cSpecCache) get(ctx context.Context, progs [][]bpf.Instruction) (*ebpf.CollectionSpec, error) {
	var key strings.Builder
	for _, p := range progs {
		src, err := ToC(p, COpts{})
		if err != nil {
			return nil, err
		}
		key.WriteString(src)
	}
	if spec, ok := c.specs[key.String()]; ok {
		return spec.Copy(), nil
	}
	if c.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
		defer cancel()
	}
	spec, err := cProgramsContext(ctx, progs)
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, err
	}
	if len(c.specs) >= 1024 {
		c.specs = nil // bounded: start over
	}
	if c.specs == nil {
		c.specs = map[string]*ebpf.CollectionSpec{}
	}
	c.specs[key.String()] = spec
	return spec.Copy(), nil
}

func listings(progs [][]bpf.Instruction) string {
	var b strings.Builder
	for i, p := range progs {
		fmt.Fprintf(&b, "program %d:\n%s", i, listing(p))
	}
	return b.String()
}

// FuzzCompile feeds arbitrary instructions to both backends: they must
// compile or return an *Error, never panic.
func FuzzCompile(f *testing.F) {
	f.Add([]byte{0x28, 0, 0, 0, 0, 0, 0, 12, 0x15, 0, 0, 1, 0, 0, 8, 0, 0x06, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte{0x05, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x06, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		var prog []bpf.Instruction
		for len(data) >= 8 {
			prog = append(prog, bpf.RawInstruction{
				Op: uint16(data[0]) | uint16(data[1])<<8, Jt: data[2], Jf: data[3],
				K: uint32(data[4]) | uint32(data[5])<<8 | uint32(data[6])<<16 | uint32(data[7])<<24,
			})
			data = data[8:]
		}
		check := func(err error) {
			var e *Error
			if err != nil && !errors.As(err, &e) {
				t.Fatalf("error %v is not an *Error", err)
			}
		}
		_, err := ToEBPF(prog, testOpts)
		check(err)
		_, err = ToEBPF(prog, EBPFOpts{PacketStart: asm.R6, PacketEnd: asm.R7, Result: asm.R8, Working: [3]asm.Register{asm.R9, asm.R1, asm.R2},
			MatchLabel: "m", NoMatchLabel: "n", StackOffset: 13})
		check(err)
		src, err := ToC(prog, COpts{FunctionName: "f"})
		check(err)
		if err == nil && !strings.Contains(src, "uint32_t f(") {
			t.Fatalf("C source without the function:\n%s", src)
		}
	})
}

// TestDeterministic compiles programs that put several labels on one
// instruction many times: the output must be the same every time, whatever
// order Go's maps hand the labels out in. (Once, a jump could name a label
// that had been merged away, depending on that order.)
func TestDeterministic(t *testing.T) {
	for _, seed := range []string{"1B00\x941\x827+Z19\x94C2zX", "\x188\x0181[78~C1\x939cAAYy\\20\xd429YX1"} {
		prog := genProgram(&byteReader{b: []byte(seed)}, true)
		var first string
		for i := range 100 {
			insns, err := ToEBPF(prog, testOpts)
			if err != nil {
				t.Fatalf("compile %d: %v\n%s", i, err, listing(prog))
			}
			// Every jump lands on a label that is there.
			if err := valueProgram(insns).Marshal(io.Discard, binary.LittleEndian); err != nil {
				t.Fatalf("compile %d: %v\n%s", i, err, listing(prog))
			}
			if s := fmt.Sprint(insns); i == 0 {
				first = s
			} else if s != first {
				t.Fatalf("compile %d differs from the first:\n%s\nvs\n%s", i, s, first)
			}
		}
	}
}
