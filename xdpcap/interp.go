package xdpcap

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpfc"
)

// An interpreter runs a capture filter's eBPF code, the instructions
// cbpfc compiles the cBPF filter to and the capture program embeds,
// in user space: a BPF_PROG_TEST_RUN costs microseconds a packet, the
// interpreter tens of nanoseconds, which is what lets xdpcap -r keep up
// with tcpdump -r. It runs filters that read only the packet (no helper
// call, no XDP context field); TestFilter checks it against the kernel.
//
// The instructions are decoded once into a compact form, an operation
// per (ALU or jump operation, width) pair, so that a packet costs a
// switch per instruction and no more: immediates live in registers of
// their own (regs[numRegs:]), so every operation takes its operand from
// a register. An interpreter is not safe for concurrent use.
type interpreter struct {
	insns []interpInsn
	// regs are the eleven eBPF registers, then the constants.
	regs []uint64
	// stack is the program's stack; stackLow is the lowest byte of it the
	// program can touch, zeroed before each run.
	stack    [interpStackN]byte
	stackLow int
}

// interpInsn is an instruction decoded for the interpreter.
type interpInsn struct {
	op       interpOp
	dst, src uint16 // indexes in regs; src may be a constant
	// off is a load's or a store's offset, sign-extended; target is a
	// jump's target, an index (len(insns) for the result label).
	off    uint64
	target int32
	back   bool // a backward jump
}

// numRegs is the number of eBPF registers, R0 to R10.
const numRegs = 11

// interpOp is a decoded operation.
type interpOp uint8

// The operations: ALU operations in both widths, jumps in both widths,
// loads and stores by size, byte swaps, and the end of the program.
const (
	opAdd interpOp = iota
	opSub
	opMul
	opDiv
	opMod
	opOr
	opAnd
	opXor
	opLSh
	opRSh
	opArSh
	opNeg
	opMov
	opAdd32
	opSub32
	opMul32
	opDiv32
	opMod32
	opOr32
	opAnd32
	opXor32
	opLSh32
	opRSh32
	opArSh32
	opNeg32
	opMov32
	opJEq
	opJNE
	opJGT
	opJGE
	opJLT
	opJLE
	opJSet
	opJSGT
	opJSGE
	opJSLT
	opJSLE
	opJEq32
	opJNE32
	opJGT32
	opJGE32
	opJLT32
	opJLE32
	opJSet32
	opJSGT32
	opJSGE32
	opJSLT32
	opJSLE32
	opJa
	opMayGoto
	opLdB
	opLdH
	opLdW
	opLdDW
	opStB
	opStH
	opStW
	opStDW
	opLE16
	opLE32
	opBE16
	opBE32
	opBE64
	opNop // a 64-bit little-endian swap on a little-endian machine
	opDone
)

// aluOps and jumpOps map asm's operations to the 64-bit forms; the 32-bit
// forms follow at a fixed distance.
var (
	aluOps = map[asm.ALUOp]interpOp{
		asm.Add: opAdd, asm.Sub: opSub, asm.Mul: opMul, asm.Div: opDiv, asm.Mod: opMod,
		asm.Or: opOr, asm.And: opAnd, asm.Xor: opXor, asm.LSh: opLSh, asm.RSh: opRSh,
		asm.ArSh: opArSh, asm.Neg: opNeg, asm.Mov: opMov,
	}
	jumpOps = map[asm.JumpOp]interpOp{
		asm.JEq: opJEq, asm.JNE: opJNE, asm.JGT: opJGT, asm.JGE: opJGE, asm.JLT: opJLT,
		asm.JLE: opJLE, asm.JSet: opJSet, asm.JSGT: opJSGT, asm.JSGE: opJSGE, asm.JSLT: opJSLT,
		asm.JSLE: opJSLE,
	}
	loadOps  = map[asm.Size]interpOp{asm.Byte: opLdB, asm.Half: opLdH, asm.Word: opLdW, asm.DWord: opLdDW}
	storeOps = map[asm.Size]interpOp{asm.Byte: opStB, asm.Half: opStH, asm.Word: opStW, asm.DWord: opStDW}
)

const (
	alu32Shift  = opAdd32 - opAdd
	jump32Shift = opJEq32 - opJEq
)

// Fake addresses of the packet and the stack: registers hold addresses,
// loads turn them back into offsets. They fit 32 bits, as the kernel's
// ctx->data does for the program.
const (
	interpPacket = 0x10000000
	interpStack  = 0x30000000 // the frame pointer; the stack lies below
	interpStackN = 512
	stackBase    = interpStack - interpStackN
)

// errInterp is an interpreter's failure on a packet: the caller runs the
// kernel instead.
var errInterp = errors.New("filter beyond the interpreter")

// Registers the capture program hands the filter (see progSpec).
const (
	interpStart = asm.R2
	interpEnd   = asm.R3
	interpCtx   = asm.R6
)

// maxBackJumps bounds the backward jumps a run takes (cbpfc's protochain
// loops): the kernel's verifier bounds them too, so a run that goes
// further is the interpreter's bug, and the kernel judges the packet.
const maxBackJumps = 1 << 16

// maxMayGoto is how often a run's may_goto instructions fall through
// before they jump, as in the kernel (BPF_MAX_LOOPS).
const maxMayGoto = 8 << 20

// newInterpreter compiles filter as the capture program does and decodes
// it, or returns errInterp if it needs what the interpreter lacks.
func newInterpreter(filter []bpf.Instruction) (*interpreter, error) {
	const result = "xdpcap_result"
	f, err := cbpfc.ToEBPF(filter, cbpfc.EBPFOpts{
		PacketStart: interpStart,
		PacketEnd:   interpEnd,
		Result:      asm.R0,
		Working:     [3]asm.Register{asm.R1, asm.R4, asm.R5},
		Context:     interpCtx,
		ResultLabel: result,
		StackOffset: 32,
		LabelPrefix: "xdpcap_filter_",
	})
	if err != nil {
		return nil, fmt.Errorf("compile filter: %w", err)
	}
	return decode(f, result)
}

// decode decodes insns, whose jumps to label result end the program.
func decode(f asm.Instructions, result string) (*interpreter, error) {
	labels := map[string]int{result: len(f)}
	for i, in := range f {
		if sym := in.Symbol(); sym != "" {
			labels[sym] = i
		}
	}
	it := &interpreter{insns: make([]interpInsn, len(f)+1), regs: make([]uint64, numRegs), stackLow: interpStackN}
	consts := map[uint64]uint16{}
	constant := func(v uint64) (uint16, error) {
		if i, ok := consts[v]; ok {
			return i, nil
		}
		if len(it.regs) > 1<<16-1 {
			return 0, fmt.Errorf("%w: too many constants", errInterp)
		}
		i := uint16(len(it.regs))
		it.regs = append(it.regs, v)
		consts[v] = i
		return i, nil
	}
	reg := func(r asm.Register) (uint16, error) {
		if r >= numRegs {
			return 0, fmt.Errorf("%w: register %v", errInterp, r)
		}
		return uint16(r), nil
	}
	// The frame pointer read other than as a load's or store's base: the
	// program may reach any of the stack.
	stackAll := false
	for i, in := range f {
		d := interpInsn{target: -1, off: uint64(int64(in.Offset))}
		var err error
		if d.dst, err = reg(in.Dst); err != nil {
			return nil, err
		}
		op := in.OpCode
		// The second operand: a register, or the immediate as a constant.
		operand := func(alu32 bool) error {
			if op.Source() == asm.RegSource {
				if in.Src == asm.RFP {
					stackAll = true
				}
				d.src, err = reg(in.Src)
				return err
			}
			v := uint64(in.Constant)
			if alu32 {
				v = uint64(uint32(v))
			}
			d.src, err = constant(v)
			return err
		}
		if in.Dst == asm.RFP && (op.Class().IsALU() || op.Class().IsJump()) {
			stackAll = true
		}
		switch cls := op.Class(); {
		case cls.IsJump():
			jop := op.JumpOp()
			if jop == asm.Call || jop == asm.Exit {
				return nil, errInterp
			}
			switch {
			case jop == asm.Ja && cls == asm.JumpClass:
				d.op = opJa
			case jop == asm.JCOND && cls == asm.JumpClass && in.Src == 0:
				// may_goto, which cbpfc's loops (protochain) end with.
				d.op = opMayGoto
			case jop == asm.Ja || jop == asm.JCOND:
				return nil, fmt.Errorf("%w: jump %v", errInterp, op)
			default:
				o, ok := jumpOps[jop]
				if !ok {
					return nil, fmt.Errorf("%w: jump %v", errInterp, jop)
				}
				if cls == asm.Jump32Class {
					o += jump32Shift
				}
				d.op = o
				if err := operand(false); err != nil {
					return nil, err
				}
			}
			if ref := in.Reference(); ref != "" {
				t, ok := labels[ref]
				if !ok {
					return nil, fmt.Errorf("%w: jump to unknown label %q", errInterp, ref)
				}
				d.target = int32(t)
			} else {
				d.target = int32(i + 1 + int(in.Offset))
			}
			if d.target < 0 || int(d.target) > len(f) {
				return nil, fmt.Errorf("%w: jump out of the program", errInterp)
			}
			d.back = int(d.target) <= i
		case cls.IsALU():
			alu32 := cls == asm.ALUClass
			aop := op.ALUOp()
			if aop == asm.Swap {
				if !alu32 {
					// An unconditional byte swap (cpu v4): not from cbpfc.
					return nil, errInterp
				}
				be := op.Endianness() == asm.BE
				switch {
				case in.Constant == 16 && be:
					d.op = opBE16
				case in.Constant == 32 && be:
					d.op = opBE32
				case in.Constant == 64 && be:
					d.op = opBE64
				case in.Constant == 16:
					d.op = opLE16
				case in.Constant == 32:
					d.op = opLE32
				case in.Constant == 64:
					d.op = opNop
				default:
					return nil, fmt.Errorf("%w: swap of %d bits", errInterp, in.Constant)
				}
				break
			}
			o, ok := aluOps[aop]
			if !ok || in.Offset != 0 {
				// Signed division, sign-extending moves (cpu v4).
				return nil, fmt.Errorf("%w: ALU operation %v", errInterp, aop)
			}
			if alu32 {
				o += alu32Shift
			}
			d.op = o
			if err := operand(alu32); err != nil {
				return nil, err
			}
		case in.IsConstantLoad(asm.DWord):
			d.op = opMov
			if d.src, err = constant(uint64(in.Constant)); err != nil {
				return nil, err
			}
		case cls == asm.LdXClass:
			if op.Mode() != asm.MemMode || in.Src == interpCtx {
				return nil, errInterp
			}
			d.op = loadOps[op.Size()]
			if d.src, err = reg(in.Src); err != nil {
				return nil, err
			}
			if in.Src == asm.RFP {
				it.stackLow = min(it.stackLow, interpStackN+int(in.Offset))
			}
		case cls == asm.StClass || cls == asm.StXClass:
			if op.Mode() != asm.MemMode {
				return nil, errInterp
			}
			d.op = storeOps[op.Size()]
			if cls == asm.StXClass {
				if in.Src == asm.RFP {
					stackAll = true
				}
				if d.src, err = reg(in.Src); err != nil {
					return nil, err
				}
			} else if d.src, err = constant(uint64(in.Constant)); err != nil {
				return nil, err
			}
			if in.Dst == asm.RFP {
				it.stackLow = min(it.stackLow, interpStackN+int(in.Offset))
			}
		default:
			return nil, fmt.Errorf("%w: instruction %v", errInterp, in)
		}
		it.insns[i] = d
	}
	it.insns[len(f)] = interpInsn{op: opDone}
	if stackAll || it.stackLow < 0 {
		it.stackLow = 0
	}
	return it, nil
}

// match runs the filter over pkt, as the first (only) buffer of an XDP
// packet, and returns its result: non-zero for a match.
func (it *interpreter) match(pkt []byte) (uint64, error) {
	r := it.regs
	clear(r[:numRegs])
	clear(it.stack[it.stackLow:])
	stack := &it.stack
	n := uint64(len(pkt))
	r[interpStart] = interpPacket
	r[interpEnd] = interpPacket + n
	r[asm.RFP] = interpStack
	insns := it.insns
	backJumps, mayGoto := 0, maxMayGoto
	pc := 0
	for {
		in := &insns[pc]
		pc++
		switch in.op {
		case opAdd:
			r[in.dst] += r[in.src]
		case opSub:
			r[in.dst] -= r[in.src]
		case opMul:
			r[in.dst] *= r[in.src]
		case opDiv:
			if s := r[in.src]; s == 0 {
				r[in.dst] = 0
			} else {
				r[in.dst] /= s
			}
		case opMod:
			if s := r[in.src]; s != 0 {
				r[in.dst] %= s
			}
		case opOr:
			r[in.dst] |= r[in.src]
		case opAnd:
			r[in.dst] &= r[in.src]
		case opXor:
			r[in.dst] ^= r[in.src]
		case opLSh:
			r[in.dst] <<= r[in.src] & 63
		case opRSh:
			r[in.dst] >>= r[in.src] & 63
		case opArSh:
			r[in.dst] = uint64(int64(r[in.dst]) >> (r[in.src] & 63))
		case opNeg:
			r[in.dst] = -r[in.dst]
		case opMov:
			r[in.dst] = r[in.src]
		case opAdd32:
			r[in.dst] = uint64(uint32(r[in.dst]) + uint32(r[in.src]))
		case opSub32:
			r[in.dst] = uint64(uint32(r[in.dst]) - uint32(r[in.src]))
		case opMul32:
			r[in.dst] = uint64(uint32(r[in.dst]) * uint32(r[in.src]))
		case opDiv32:
			if s := uint32(r[in.src]); s == 0 {
				r[in.dst] = 0
			} else {
				r[in.dst] = uint64(uint32(r[in.dst]) / s)
			}
		case opMod32:
			if s := uint32(r[in.src]); s != 0 {
				r[in.dst] = uint64(uint32(r[in.dst]) % s)
			} else {
				r[in.dst] = uint64(uint32(r[in.dst]))
			}
		case opOr32:
			r[in.dst] = uint64(uint32(r[in.dst]) | uint32(r[in.src]))
		case opAnd32:
			r[in.dst] = uint64(uint32(r[in.dst]) & uint32(r[in.src]))
		case opXor32:
			r[in.dst] = uint64(uint32(r[in.dst]) ^ uint32(r[in.src]))
		case opLSh32:
			r[in.dst] = uint64(uint32(r[in.dst]) << (r[in.src] & 31))
		case opRSh32:
			r[in.dst] = uint64(uint32(r[in.dst]) >> (r[in.src] & 31))
		case opArSh32:
			r[in.dst] = uint64(uint32(int32(r[in.dst]) >> (r[in.src] & 31)))
		case opNeg32:
			r[in.dst] = uint64(-uint32(r[in.dst]))
		case opMov32:
			r[in.dst] = uint64(uint32(r[in.src]))
		case opLE16:
			r[in.dst] = uint64(uint16(r[in.dst]))
		case opLE32:
			r[in.dst] = uint64(uint32(r[in.dst]))
		case opBE16:
			r[in.dst] = uint64(bits.ReverseBytes16(uint16(r[in.dst])))
		case opBE32:
			r[in.dst] = uint64(bits.ReverseBytes32(uint32(r[in.dst])))
		case opBE64:
			r[in.dst] = bits.ReverseBytes64(r[in.dst])
		case opNop:
		case opJa:
			goto jump
		case opMayGoto:
			if mayGoto == 0 {
				goto jump
			}
			mayGoto--
		case opDone:
			return r[asm.R0], nil
		case opLdB, opLdH, opLdW, opLdDW:
			size := uint64(1) << (in.op - opLdB)
			a := r[in.src] + in.off
			var b []byte
			if o := a - interpPacket; o < n && n-o >= size {
				b = pkt[o : o+size]
			} else if o := a - stackBase; o < interpStackN && interpStackN-o >= size {
				b = stack[o : o+size]
			} else {
				return 0, fmt.Errorf("%w: access to %#x", errInterp, a)
			}
			switch size {
			case 1:
				r[in.dst] = uint64(b[0])
			case 2:
				r[in.dst] = uint64(binary.LittleEndian.Uint16(b))
			case 4:
				r[in.dst] = uint64(binary.LittleEndian.Uint32(b))
			default:
				r[in.dst] = binary.LittleEndian.Uint64(b)
			}
		case opStB, opStH, opStW, opStDW:
			size := uint64(1) << (in.op - opStB)
			a := r[in.dst] + in.off
			o := a - stackBase
			if o >= interpStackN || interpStackN-o < size {
				return 0, fmt.Errorf("%w: store to %#x", errInterp, a)
			}
			b, v := stack[o:o+size], r[in.src]
			switch size {
			case 1:
				b[0] = byte(v)
			case 2:
				binary.LittleEndian.PutUint16(b, uint16(v))
			case 4:
				binary.LittleEndian.PutUint32(b, uint32(v))
			default:
				binary.LittleEndian.PutUint64(b, v)
			}
		case opJEq:
			if r[in.dst] == r[in.src] {
				goto jump
			}
		case opJNE:
			if r[in.dst] != r[in.src] {
				goto jump
			}
		case opJGT:
			if r[in.dst] > r[in.src] {
				goto jump
			}
		case opJGE:
			if r[in.dst] >= r[in.src] {
				goto jump
			}
		case opJLT:
			if r[in.dst] < r[in.src] {
				goto jump
			}
		case opJLE:
			if r[in.dst] <= r[in.src] {
				goto jump
			}
		case opJSet:
			if r[in.dst]&r[in.src] != 0 {
				goto jump
			}
		case opJSGT:
			if int64(r[in.dst]) > int64(r[in.src]) {
				goto jump
			}
		case opJSGE:
			if int64(r[in.dst]) >= int64(r[in.src]) {
				goto jump
			}
		case opJSLT:
			if int64(r[in.dst]) < int64(r[in.src]) {
				goto jump
			}
		case opJSLE:
			if int64(r[in.dst]) <= int64(r[in.src]) {
				goto jump
			}
		case opJEq32:
			if uint32(r[in.dst]) == uint32(r[in.src]) {
				goto jump
			}
		case opJNE32:
			if uint32(r[in.dst]) != uint32(r[in.src]) {
				goto jump
			}
		case opJGT32:
			if uint32(r[in.dst]) > uint32(r[in.src]) {
				goto jump
			}
		case opJGE32:
			if uint32(r[in.dst]) >= uint32(r[in.src]) {
				goto jump
			}
		case opJLT32:
			if uint32(r[in.dst]) < uint32(r[in.src]) {
				goto jump
			}
		case opJLE32:
			if uint32(r[in.dst]) <= uint32(r[in.src]) {
				goto jump
			}
		case opJSet32:
			if uint32(r[in.dst])&uint32(r[in.src]) != 0 {
				goto jump
			}
		case opJSGT32:
			if int32(r[in.dst]) > int32(r[in.src]) {
				goto jump
			}
		case opJSGE32:
			if int32(r[in.dst]) >= int32(r[in.src]) {
				goto jump
			}
		case opJSLT32:
			if int32(r[in.dst]) < int32(r[in.src]) {
				goto jump
			}
		case opJSLE32:
			if int32(r[in.dst]) <= int32(r[in.src]) {
				goto jump
			}
		default:
			return 0, fmt.Errorf("%w: operation %d", errInterp, in.op)
		}
		continue
	jump:
		if in.back {
			if backJumps++; backJumps > maxBackJumps {
				return 0, fmt.Errorf("%w: too many steps", errInterp)
			}
		}
		pc = int(in.target)
	}
}
