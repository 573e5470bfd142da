package cbpf

import (
	"errors"
	"fmt"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/cbpfinsn"
)

// MaxInstructions is the longest program the kernel takes (BPF_MAXINSNS).
const MaxInstructions = cbpfinsn.MaxInstructions

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
		return nil, fmt.Errorf("%w: %w", ErrInvalid, cbpfinsn.ErrEmpty)
	}
	raw := make([]bpf.RawInstruction, len(prog))
	for i, in := range prog {
		if in == nil {
			return nil, insnErr(i, "nil instruction")
		}
		r, err := in.Assemble()
		if err != nil {
			return nil, insnErr(i, "%w", err)
		}
		raw[i] = r
	}
	return raw, nil
}

// validate checks the raw program as the kernel's classic BPF checker does
// (the module's one decoder, [cbpfinsn.Decode]), naming the instruction.
func validate(raw []bpf.RawInstruction) error {
	_, err := cbpfinsn.Decode(raw)
	var e *cbpfinsn.Error
	if !errors.As(err, &e) {
		return err
	}
	msg := e.Err.Error()
	if e.Err == cbpfinsn.ErrInvalid {
		msg = e.Detail
	} else if e.Detail != "" {
		msg += ": " + e.Detail
	}
	if e.Index < 0 {
		return fmt.Errorf("%w: %s", ErrInvalid, msg)
	}
	return &InstructionError{Index: e.Index, Err: fmt.Errorf("%w: %s", ErrInvalid, msg)}
}
