package cbpfc

import (
	"errors"
	"fmt"
)

// Sentinel errors, wrapped by [*Error], for callers that branch on the cause.
var (
	// ErrEmpty means the filter has no instructions.
	ErrEmpty = errors.New("empty filter")
	// ErrTooLong means the filter has more than [MaxInstructions] instructions.
	ErrTooLong = errors.New("filter too long")
	// ErrUnsupported means the instruction is valid cBPF that cannot be
	// compiled for XDP: an extension XDP cannot answer, or a negative offset.
	ErrUnsupported = errors.New("unsupported")
	// ErrInvalid means the instruction is not valid cBPF: an unknown opcode,
	// a scratch index above 15, a jump past the end, or a last instruction
	// that is not a return.
	ErrInvalid = errors.New("invalid instruction")
	// ErrOptions means the EBPFOpts or COpts are not usable (say, a register
	// used for two roles).
	ErrOptions = errors.New("invalid options")
)

// Error is a compile error, naming the cBPF instruction it concerns.
type Error struct {
	// Index of the cBPF instruction, or -1 when the error concerns the
	// whole filter or the options.
	Index int
	// Err is the cause; it wraps one of the sentinel errors.
	Err error
}

func (e *Error) Error() string {
	if e.Index < 0 {
		return e.Err.Error()
	}
	return fmt.Sprintf("instruction %d: %v", e.Index, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

func errorf(index int, sentinel error, format string, args ...any) *Error {
	return &Error{Index: index, Err: fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))}
}

func fmtErr(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...))
}
