package cbpf

import (
	"errors"
	"fmt"

	"golang.org/x/net/bpf"
)

// MaxInstructions is the longest program the kernel takes (BPF_MAXINSNS).
const MaxInstructions = 4096

// ErrInvalid is wrapped by every error Validate returns.
var ErrInvalid = errors.New("invalid cBPF program")

// InstructionError is a problem with one instruction of a program.
type InstructionError struct {
	Index int // the instruction's index, from 0
	Err   error
}

func (e *InstructionError) Error() string {
	return fmt.Sprintf("instruction %d: %v", e.Index, e.Err)
}

func (e *InstructionError) Unwrap() error { return e.Err }

func insnErr(i int, format string, args ...any) error {
	return &InstructionError{Index: i, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)}
}

// Validate reports whether prog is a program libpcap's interpreter and the
// kernel can run safely: not empty, at most [MaxInstructions] long, every
// instruction known, every jump landing inside the program, scratch slots
// 0-15, no division or modulo by a constant 0, no shift by a constant of 32
// or more, and a return at the end. Then libpcap's own bpf_validate must
// agree. Errors wrap [ErrInvalid]; those about one instruction are an
// [*InstructionError] naming it.
//
// Backward jumps ("ja" whose offset wraps around 2^32, which libpcap emits
// for protochain) are accepted as long as they land inside the program.
// Extensions other than len are accepted too: libpcap's interpreter treats
// them as loads past the end of the packet.
func Validate(prog []bpf.Instruction) error {
	raw, err := assemble(prog)
	if err != nil {
		return err
	}
	if err := validate(raw); err != nil {
		return err
	}
	if !pcapValidate(raw) {
		return fmt.Errorf("%w: libpcap's bpf_validate refuses the program", ErrInvalid)
	}
	return nil
}

// assemble turns prog into raw instructions, naming the one that fails.
func assemble(prog []bpf.Instruction) ([]bpf.RawInstruction, error) {
	if len(prog) == 0 {
		return nil, fmt.Errorf("%w: empty program", ErrInvalid)
	}
	raw := make([]bpf.RawInstruction, len(prog))
	for i, in := range prog {
		if in == nil {
			return nil, insnErr(i, "nil instruction")
		}
		r, err := in.Assemble()
		if err != nil {
			return nil, insnErr(i, "%v", err)
		}
		raw[i] = r
	}
	return raw, nil
}

// Opcode fields (BPF_CLASS, BPF_SIZE, BPF_MODE, BPF_OP, BPF_SRC).
const (
	clsLD, clsLDX, clsST, clsSTX, clsALU, clsJMP, clsRET, clsMISC = 0, 1, 2, 3, 4, 5, 6, 7

	modeIMM, modeABS, modeIND, modeMEM, modeLEN, modeMSH = 0x00, 0x20, 0x40, 0x60, 0x80, 0xa0
	sizeW, sizeH, sizeB                                  = 0x00, 0x08, 0x10

	aluDIV, aluLSH, aluRSH, aluNEG, aluMOD, aluXOR = 0x30, 0x60, 0x70, 0x80, 0x90, 0xa0
	srcX                                           = 0x08
	jmpJA                                          = 0x00
	retA                                           = 0x10
	miscTAX, miscTXA                               = 0x00, 0x80
)

// validate checks the raw program; the checks are those of libpcap's
// bpf_validate and the kernel's classic BPF checker, done here so that the
// error can name the instruction.
func validate(raw []bpf.RawInstruction) error {
	n := len(raw)
	if n == 0 {
		return fmt.Errorf("%w: empty program", ErrInvalid)
	}
	if n > MaxInstructions {
		return fmt.Errorf("%w: %d instructions, more than the %d the kernel takes", ErrInvalid, n, MaxInstructions)
	}
	for i, r := range raw {
		op := r.Op
		if op > 0xff {
			return insnErr(i, "opcode %#x does not fit in 8 bits", op)
		}
		switch op & 7 {
		case clsLD, clsLDX:
			mode, size := op&0xe0, op&0x18
			if size == 0x18 {
				return insnErr(i, "unknown load size in opcode %#02x", op)
			}
			switch {
			case mode == modeIMM && size == sizeW,
				mode == modeABS && op&7 == clsLD,
				mode == modeIND && op&7 == clsLD,
				mode == modeLEN && size == sizeW:
			case mode == modeMEM && size == sizeW:
				if r.K >= 16 {
					return insnErr(i, "scratch slot M[%d] out of range 0-15", r.K)
				}
			case mode == modeMSH && op&7 == clsLDX && size == sizeB:
			default:
				return insnErr(i, "unknown load opcode %#02x", op)
			}
		case clsST, clsSTX:
			if op&^7 != 0 {
				return insnErr(i, "unknown store opcode %#02x", op)
			}
			if r.K >= 16 {
				return insnErr(i, "scratch slot M[%d] out of range 0-15", r.K)
			}
		case clsALU:
			aop := op & 0xf0
			if aop > aluXOR {
				return insnErr(i, "unknown ALU opcode %#02x", op)
			}
			if aop == aluNEG {
				if op != clsALU|aluNEG {
					return insnErr(i, "unknown ALU opcode %#02x", op)
				}
				break
			}
			if op&srcX == 0 {
				switch {
				case (aop == aluDIV || aop == aluMOD) && r.K == 0:
					return insnErr(i, "division or modulo by constant 0")
				case (aop == aluLSH || aop == aluRSH) && r.K >= 32:
					return insnErr(i, "shift by constant %d, 32 or more", r.K)
				}
			}
		case clsJMP:
			jop := op & 0xf0
			if jop > 0x40 || op&0x07 != clsJMP {
				return insnErr(i, "unknown jump opcode %#02x", op)
			}
			if jop == jmpJA {
				if op != clsJMP {
					return insnErr(i, "unknown jump opcode %#02x", op)
				}
				// libpcap sign-extends the offset: a backward jump.
				target := i + 1 + int(int32(r.K))
				if target < 0 || target >= n {
					return insnErr(i, "ja to %d, outside the program (0-%d)", target, n-1)
				}
				break
			}
			if t := i + 1 + int(r.Jt); t >= n {
				return insnErr(i, "jump if true to %d, past the end of the program (%d instructions)", t, n)
			}
			if f := i + 1 + int(r.Jf); f >= n {
				return insnErr(i, "jump if false to %d, past the end of the program (%d instructions)", f, n)
			}
		case clsRET:
			// "ret x" is neither in libpcap's interpreter nor the kernel's.
			if op != clsRET && op != clsRET|retA {
				return insnErr(i, "unknown return opcode %#02x", op)
			}
		case clsMISC:
			if op != clsMISC|miscTAX && op != clsMISC|miscTXA {
				return insnErr(i, "unknown opcode %#02x", op)
			}
		}
	}
	if last := raw[n-1]; last.Op&7 != clsRET {
		return insnErr(n-1, "the last instruction must return")
	}
	return nil
}
