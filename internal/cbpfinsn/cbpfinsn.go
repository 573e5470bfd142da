// Package cbpfinsn decodes and checks classic BPF instructions. It is the
// module's one table of cBPF opcodes: cbpf's Validate and cbpfc's compiler
// both decode through it, so they accept and refuse the same programs,
// those the kernel's classic BPF checker accepts and refuses. It has no
// cgo, so cbpfc stays free of libpcap.
package cbpfinsn

import (
	"errors"
	"fmt"

	"golang.org/x/net/bpf"
)

// MaxInstructions is the longest program the kernel takes (BPF_MAXINSNS).
const MaxInstructions = 4096

// ExtOffset is SKF_AD_OFF: an absolute load at ExtOffset+N loads
// extension N (say [ExtType]) instead of packet bytes.
const ExtOffset = 0xfffff000

// Extensions (SKF_AD_*), offsets from [ExtOffset].
const (
	ExtProto    = 0
	ExtType     = 4 // the packet type, PACKET_HOST and so on
	ExtIfIndex  = 8
	ExtCPU      = 36
	ExtRandom   = 56
	lastKnownAD = 60
)

// ExtName is the name tcpdump -d gives extension ext, or "unknown".
func ExtName(ext uint32) string {
	names := map[uint32]string{
		0: "proto", 4: "type", 8: "ifidx", 12: "nla", 16: "nlan", 20: "mark", 24: "queue",
		28: "hatype", 32: "rxhash", 36: "cpu", 40: "xor_x", 44: "vlan_tci", 48: "vlan_avail",
		52: "poff", 56: "rand", 60: "vlan_tpid",
	}
	if s, ok := names[ext]; ok {
		return s
	}
	return "unknown"
}

// Opcode fields (BPF_CLASS, BPF_SIZE, BPF_MODE, BPF_SRC), as in
// linux/filter.h.
const (
	clsLD, clsLDX, clsST, clsSTX, clsALU, clsJMP, clsRET, clsMISC = 0, 1, 2, 3, 4, 5, 6, 7

	modeIMM, modeABS, modeIND, modeMEM, modeLEN, modeMSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xa0
	sizeW, sizeH, sizeB                                  = 0x00, 0x08, 0x10

	srcX             = 0x08
	retK, retA       = 0x00, 0x10
	miscTAX, miscTXA = 0x00, 0x80
)

// ALU operations (BPF_OP of class ALU), the Op of an [ALU] instruction.
const (
	ALUAdd = 0x00
	ALUSub = 0x10
	ALUMul = 0x20
	ALUDiv = 0x30
	ALUOr  = 0x40
	ALUAnd = 0x50
	ALULsh = 0x60
	ALURsh = 0x70
	aluNeg = 0x80
	ALUMod = 0x90
	ALUXor = 0xa0
)

// Jump tests (BPF_OP of class JMP), the Op of a [Jump] instruction.
const (
	jmpJA   = 0x00
	JumpEq  = 0x10
	JumpGT  = 0x20
	JumpGE  = 0x30
	JumpSet = 0x40
)

// Kind is what an instruction does.
type Kind uint8

// The kinds of instruction. Dst is A unless Insn.X.
const (
	LdImm Kind = iota + 1 // Dst = K
	LdMem                 // Dst = M[K]
	LdLen                 // Dst = the packet's length
	LdAbs                 // A = P[K:Size]
	LdInd                 // A = P[X+K:Size]
	LdMsh                 // X = 4*(P[K]&0xf)
	LdExt                 // A = extension K (an offset from ExtOffset)
	St                    // M[K] = A, or X if Insn.X
	ALU                   // A = A Op (K, or X if UseX)
	Neg                   // A = -A
	Ja                    // goto Jt
	Jump                  // if A Op (K, or X if UseX) goto Jt else goto Jf
	RetA                  // return A
	RetK                  // return K
	Tax                   // X = A
	Txa                   // A = X
)

// Insn is one decoded instruction.
type Insn struct {
	Kind Kind
	X    bool   // LdImm, LdMem, LdLen, St: the register is X, not A
	Size int    // LdAbs, LdInd, LdExt: 1, 2 or 4 bytes; LdMsh: 1
	Op   uint16 // ALU, Jump: one of the ALU* or Jump* constants
	UseX bool   // ALU, Jump: the operand is X, not K
	K    uint32
	Jt   int // Ja, Jump: the index of the next instruction if true
	Jf   int // Jump: the index of the next instruction if false
}

// Sentinel errors, wrapped by every [*Error].
var (
	ErrEmpty   = errors.New("empty program")
	ErrTooLong = errors.New("program too long")
	ErrInvalid = errors.New("invalid instruction")
)

// Error is a program the kernel's checker would refuse.
type Error struct {
	Index  int    // the instruction, from 0; -1 for the whole program
	Err    error  // ErrEmpty, ErrTooLong or ErrInvalid
	Detail string // what is wrong, "" when Err says it all
}

func (e *Error) Error() string {
	s := e.Err.Error()
	if e.Detail != "" {
		s += ": " + e.Detail
	}
	if e.Index < 0 {
		return s
	}
	return fmt.Sprintf("instruction %d: %s", e.Index, s)
}

func (e *Error) Unwrap() error { return e.Err }

func invalid(i int, format string, args ...any) *Error {
	return &Error{Index: i, Err: ErrInvalid, Detail: fmt.Sprintf(format, args...)}
}

// Decode decodes and checks a whole program as the kernel's classic BPF
// checker does: not empty, at most [MaxInstructions] long, every opcode
// known, scratch slots 0-15, no division or modulo by a constant 0, no
// shift by a constant of 32 or more, every jump inside the program, and a
// return at the end. Backward jumps ("ja" whose offset wraps around 2^32,
// as libpcap emits for protochain) are accepted if they land inside the
// program. Errors are [*Error]s wrapping [ErrEmpty], [ErrTooLong] or
// [ErrInvalid].
//
// Negative offsets and extensions are decoded, not judged: whether a
// backend supports them is its own business.
func Decode(raw []bpf.RawInstruction) ([]Insn, error) {
	n := len(raw)
	if n == 0 {
		return nil, &Error{Index: -1, Err: ErrEmpty}
	}
	if n > MaxInstructions {
		return nil, &Error{Index: -1, Err: ErrTooLong, Detail: fmt.Sprintf("%d instructions, more than the %d the kernel takes", n, MaxInstructions)}
	}
	out := make([]Insn, n)
	for i, r := range raw {
		in, err := decode(r, i, n)
		if err != nil {
			return nil, err
		}
		out[i] = in
	}
	if k := out[n-1].Kind; k != RetA && k != RetK {
		return nil, invalid(n-1, "the last instruction must return")
	}
	return out, nil
}

// decode decodes instruction i of n.
func decode(r bpf.RawInstruction, i, n int) (Insn, error) {
	op, k := r.Op, r.K
	if op > 0xff {
		return Insn{}, invalid(i, "opcode %#x does not fit in 8 bits", op)
	}
	switch op & 7 {
	case clsLD, clsLDX:
		x := op&7 == clsLDX
		mode, size := op&0xe0, op&0x18
		bytes := map[uint16]int{sizeW: 4, sizeH: 2, sizeB: 1}[size]
		switch {
		case size == 0x18:
			return Insn{}, invalid(i, "unknown load size in opcode %#02x", op)
		case mode == modeIMM && size == sizeW:
			return Insn{Kind: LdImm, X: x, K: k}, nil
		case mode == modeMEM && size == sizeW:
			if k >= 16 {
				return Insn{}, invalid(i, "scratch slot M[%d] out of range 0-15", k)
			}
			return Insn{Kind: LdMem, X: x, K: k}, nil
		case mode == modeLEN && size == sizeW:
			return Insn{Kind: LdLen, X: x}, nil
		case mode == modeMSH && x && size == sizeB:
			return Insn{Kind: LdMsh, X: true, Size: 1, K: k}, nil
		case mode == modeABS && !x:
			// The kernel reads an extension whatever the load's size:
			// tcpdump prints "ldh [type]" for inbound and outbound.
			if k >= ExtOffset {
				return Insn{Kind: LdExt, Size: bytes, K: k - ExtOffset}, nil
			}
			return Insn{Kind: LdAbs, Size: bytes, K: k}, nil
		case mode == modeIND && !x:
			return Insn{Kind: LdInd, Size: bytes, K: k}, nil
		}
		return Insn{}, invalid(i, "unknown load opcode %#02x", op)
	case clsST, clsSTX:
		if op&^7 != 0 {
			return Insn{}, invalid(i, "unknown store opcode %#02x", op)
		}
		if k >= 16 {
			return Insn{}, invalid(i, "scratch slot M[%d] out of range 0-15", k)
		}
		return Insn{Kind: St, X: op == clsSTX, K: k}, nil
	case clsALU:
		aop := op & 0xf0
		if aop > ALUXor {
			return Insn{}, invalid(i, "unknown ALU opcode %#02x", op)
		}
		if aop == aluNeg {
			if op != clsALU|aluNeg {
				return Insn{}, invalid(i, "unknown ALU opcode %#02x", op)
			}
			return Insn{Kind: Neg}, nil
		}
		useX := op&srcX != 0
		if !useX {
			switch {
			case (aop == ALUDiv || aop == ALUMod) && k == 0:
				return Insn{}, invalid(i, "%s #0: division or modulo by constant 0", map[uint16]string{ALUDiv: "div", ALUMod: "mod"}[aop])
			case (aop == ALULsh || aop == ALURsh) && k >= 32:
				return Insn{}, invalid(i, "shift by constant %d, 32 or more", k)
			}
		}
		return Insn{Kind: ALU, Op: aop, UseX: useX, K: k}, nil
	case clsJMP:
		jop := op & 0xf0
		if jop > JumpSet {
			return Insn{}, invalid(i, "unknown jump opcode %#02x", op)
		}
		if jop == jmpJA {
			if op != clsJMP {
				return Insn{}, invalid(i, "unknown jump opcode %#02x", op)
			}
			// The offset is added modulo 2^32: libpcap's protochain
			// jumps backwards that way.
			t := i + 1 + int(int32(k))
			if t < 0 || t >= n {
				return Insn{}, invalid(i, "ja to %d, outside the program (0-%d)", t, n-1)
			}
			return Insn{Kind: Ja, Jt: t}, nil
		}
		jt, jf := i+1+int(r.Jt), i+1+int(r.Jf)
		if jt >= n {
			return Insn{}, invalid(i, "jump if true to %d, past the end of the program (%d instructions)", jt, n)
		}
		if jf >= n {
			return Insn{}, invalid(i, "jump if false to %d, past the end of the program (%d instructions)", jf, n)
		}
		return Insn{Kind: Jump, Op: jop, UseX: op&srcX != 0, K: k, Jt: jt, Jf: jf}, nil
	case clsRET:
		// "ret x" is neither in libpcap's interpreter nor the kernel's.
		switch op {
		case clsRET | retK:
			return Insn{Kind: RetK, K: k}, nil
		case clsRET | retA:
			return Insn{Kind: RetA}, nil
		}
		return Insn{}, invalid(i, "unknown return opcode %#02x", op)
	default: // clsMISC
		switch op {
		case clsMISC | miscTAX:
			return Insn{Kind: Tax}, nil
		case clsMISC | miscTXA:
			return Insn{Kind: Txa}, nil
		}
		return Insn{}, invalid(i, "unknown opcode %#02x", op)
	}
}

// IsExtension reports whether r loads an extension, whatever its size
// ("ld [type]", "ldh [type]").
func IsExtension(r bpf.RawInstruction) bool {
	in, err := decode(r, 0, 1)
	return err == nil && in.Kind == LdExt
}
