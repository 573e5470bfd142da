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
type interpreter struct {
	insns []interpInsn
}

// interpInsn is an instruction decoded for the interpreter: its jump
// target resolved to an index (len(insns) for the result label).
type interpInsn struct {
	op       asm.OpCode
	dst, src asm.Register
	off      int16
	imm      int64
	target   int
}

// Fake addresses of the packet and the stack: registers hold addresses,
// loads turn them back into offsets. They fit 32 bits, as the kernel's
// ctx->data does for the program.
const (
	interpPacket = 0x10000000
	interpStack  = 0x30000000 // the frame pointer; the stack lies below
	interpStackN = 512
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
	labels := map[string]int{result: len(f)}
	for i, in := range f {
		if sym := in.Symbol(); sym != "" {
			labels[sym] = i
		}
	}
	it := &interpreter{insns: make([]interpInsn, len(f))}
	for i, in := range f {
		d := interpInsn{op: in.OpCode, dst: in.Dst, src: in.Src, off: in.Offset, imm: in.Constant, target: -1}
		switch cls := in.OpCode.Class(); {
		case cls.IsJump():
			if in.OpCode.JumpOp() == asm.Call || in.OpCode.JumpOp() == asm.Exit {
				return nil, errInterp
			}
			if ref := in.Reference(); ref != "" {
				t, ok := labels[ref]
				if !ok {
					return nil, fmt.Errorf("%w: jump to unknown label %q", errInterp, ref)
				}
				d.target = t
			} else {
				d.target = i + 1 + int(in.Offset)
			}
		case cls.IsALU():
			if cls == asm.ALU64Class && in.OpCode.ALUOp() == asm.Swap {
				// An unconditional byte swap (cpu v4): not from cbpfc.
				return nil, errInterp
			}
		case cls.IsLoad():
			if in.OpCode.Mode() != asm.MemMode && !in.IsLoadFromMap() && !in.IsConstantLoad(asm.DWord) {
				return nil, errInterp
			}
			if in.IsLoadFromMap() || in.Src == interpCtx {
				return nil, errInterp
			}
		}
		it.insns[i] = d
	}
	return it, nil
}

// match runs the filter over pkt, as the first (only) buffer of an XDP
// packet, and returns its result: non-zero for a match.
func (it *interpreter) match(pkt []byte) (uint64, error) {
	var r [11]uint64
	var stack [interpStackN]byte
	r[interpStart] = interpPacket
	r[interpEnd] = interpPacket + uint64(len(pkt))
	r[asm.RFP] = interpStack
	mem := func(addr uint64, size int) ([]byte, error) {
		switch {
		case addr >= interpPacket && addr+uint64(size) <= interpPacket+uint64(len(pkt)):
			return pkt[addr-interpPacket : addr-interpPacket+uint64(size)], nil
		case addr >= interpStack-interpStackN && addr+uint64(size) <= interpStack:
			o := addr - (interpStack - interpStackN)
			return stack[o : o+uint64(size)], nil
		}
		return nil, fmt.Errorf("%w: access to %#x", errInterp, addr)
	}
	for pc, steps := 0, 0; pc < len(it.insns); steps++ {
		if steps > 1<<16 {
			return 0, fmt.Errorf("%w: too many steps", errInterp)
		}
		in := &it.insns[pc]
		pc++
		op := in.op
		switch cls := op.Class(); {
		case cls.IsALU():
			src := uint64(in.imm)
			if op.Source() == asm.RegSource {
				src = r[in.src]
			}
			alu32 := cls == asm.ALUClass
			dst := r[in.dst]
			if alu32 {
				dst, src = uint64(uint32(dst)), uint64(uint32(src))
			}
			switch op.ALUOp() {
			case asm.Add:
				dst += src
			case asm.Sub:
				dst -= src
			case asm.Mul:
				dst *= src
			case asm.Div:
				if src == 0 {
					dst = 0
				} else {
					dst /= src
				}
			case asm.Mod:
				if src != 0 {
					dst %= src
				}
			case asm.Or:
				dst |= src
			case asm.And:
				dst &= src
			case asm.Xor:
				dst ^= src
			case asm.LSh:
				if alu32 {
					dst <<= src & 31
				} else {
					dst <<= src & 63
				}
			case asm.RSh:
				if alu32 {
					dst >>= src & 31
				} else {
					dst >>= src & 63
				}
			case asm.ArSh:
				if alu32 {
					dst = uint64(uint32(int32(dst) >> (src & 31)))
				} else {
					dst = uint64(int64(dst) >> (src & 63))
				}
			case asm.Neg:
				dst = -dst
			case asm.Mov:
				dst = src
			case asm.Swap:
				// Byte order to or from big endian on a little-endian
				// machine: a swap of the low imm bits.
				if op.Endianness() != asm.BE && op.Endianness() != asm.LE {
					return 0, errInterp
				}
				switch in.imm {
				case 16:
					dst = uint64(uint16(r[in.dst]))
					if op.Endianness() == asm.BE {
						dst = uint64(bits.ReverseBytes16(uint16(dst)))
					}
				case 32:
					dst = uint64(uint32(r[in.dst]))
					if op.Endianness() == asm.BE {
						dst = uint64(bits.ReverseBytes32(uint32(dst)))
					}
				case 64:
					dst = r[in.dst]
					if op.Endianness() == asm.BE {
						dst = bits.ReverseBytes64(dst)
					}
				default:
					return 0, errInterp
				}
				r[in.dst] = dst
				continue
			default:
				return 0, errInterp
			}
			if alu32 {
				dst = uint64(uint32(dst))
			}
			r[in.dst] = dst
		case cls.IsJump():
			jop := op.JumpOp()
			if jop == asm.Ja {
				pc = in.target
				continue
			}
			a, b := r[in.dst], uint64(in.imm)
			if op.Source() == asm.RegSource {
				b = r[in.src]
			}
			if cls == asm.Jump32Class {
				a, b = uint64(uint32(a)), uint64(uint32(b))
			}
			sa, sb := int64(a), int64(b)
			if cls == asm.Jump32Class {
				sa, sb = int64(int32(a)), int64(int32(b))
			}
			var take bool
			switch jop {
			case asm.JEq:
				take = a == b
			case asm.JNE:
				take = a != b
			case asm.JGT:
				take = a > b
			case asm.JGE:
				take = a >= b
			case asm.JLT:
				take = a < b
			case asm.JLE:
				take = a <= b
			case asm.JSet:
				take = a&b != 0
			case asm.JSGT:
				take = sa > sb
			case asm.JSGE:
				take = sa >= sb
			case asm.JSLT:
				take = sa < sb
			case asm.JSLE:
				take = sa <= sb
			default:
				return 0, errInterp
			}
			if take {
				pc = in.target
			}
		case cls.IsLoad():
			if op.Mode() == asm.ImmMode {
				r[in.dst] = uint64(in.imm)
				continue
			}
			size := op.Size().Sizeof()
			b, err := mem(r[in.src]+uint64(int64(in.off)), size)
			if err != nil {
				return 0, err
			}
			r[in.dst] = loadLE(b)
		case cls.IsStore():
			if op.Mode() != asm.MemMode {
				return 0, errInterp
			}
			v := uint64(in.imm)
			if cls == asm.StXClass {
				v = r[in.src]
			}
			addr := r[in.dst] + uint64(int64(in.off))
			if addr < interpStack-interpStackN || addr >= interpStack {
				return 0, fmt.Errorf("%w: store to %#x", errInterp, addr)
			}
			b, err := mem(addr, op.Size().Sizeof())
			if err != nil {
				return 0, err
			}
			storeLE(b, v)
		default:
			return 0, errInterp
		}
	}
	return r[asm.R0], nil
}

func loadLE(b []byte) uint64 {
	switch len(b) {
	case 1:
		return uint64(b[0])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b))
	}
	return binary.LittleEndian.Uint64(b)
}

func storeLE(b []byte, v uint64) {
	switch len(b) {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	default:
		binary.LittleEndian.PutUint64(b, v)
	}
}
