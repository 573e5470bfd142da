package cbpfc

import (
	"errors"
	"fmt"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/cbpfinsn"
)

// Operations of kAlu and kJcond instructions, from the module's one cBPF
// opcode table.
const (
	aluADD = cbpfinsn.ALUAdd
	aluSUB = cbpfinsn.ALUSub
	aluMUL = cbpfinsn.ALUMul
	aluDIV = cbpfinsn.ALUDiv
	aluOR  = cbpfinsn.ALUOr
	aluAND = cbpfinsn.ALUAnd
	aluLSH = cbpfinsn.ALULsh
	aluRSH = cbpfinsn.ALURsh
	aluMOD = cbpfinsn.ALUMod
	aluXOR = cbpfinsn.ALUXor

	jmpJEQ  = cbpfinsn.JumpEq
	jmpJGT  = cbpfinsn.JumpGT
	jmpJGE  = cbpfinsn.JumpGE
	jmpJSET = cbpfinsn.JumpSet
)

// Kernel extensions (SKF_AD_*) XDP can answer.
const (
	extPktType   = cbpfinsn.ExtType
	extIfIndex   = cbpfinsn.ExtIfIndex
	extCPU       = cbpfinsn.ExtCPU
	extRandom    = cbpfinsn.ExtRandom
	negOffsetMin = 0x80000000
	// maxPacketOffset is the largest packet offset the verifier tracks;
	// XDP packets are shorter, so a load reaching past it always fails.
	maxPacketOffset = 0xffff
)

type kind uint8

const (
	kLdImm kind = iota // dst = k
	kLdMem             // dst = M[k]
	kLdLen             // dst = len
	kLdAbs             // A = P[k:size]
	kLdInd             // A = P[X+k:size]
	kLdMsh             // X = 4*(P[k:1]&0xf)
	kLdExt             // A = extension k
	kSt                // M[k] = src
	kAlu               // A = A op (k or X)
	kNeg               // A = -A
	kJa                // goto
	kJcond             // if A op (k or X)
	kRetA
	kRetK
	kTax
	kTxa
	kNop // removed by optimize: does nothing
)

type reg uint8

const (
	regA reg = iota
	regX
)

// insn is one decoded cBPF instruction.
type insn struct {
	kind  kind
	dst   reg    // kLd*, kSt (source register)
	size  int    // loads: 1, 2 or 4
	op    uint16 // kAlu, kJcond: ALU or jump operation
	useX  bool   // kAlu, kJcond: operand is X rather than k
	k     uint32 // immediate, offset, scratch index or extension
	jt    int    // kJa, kJcond: target index
	jf    int    // kJcond: target index when false
	jback bool   // kJa: the jump goes backwards
}

// program is a decoded, validated filter.
type program struct {
	insns       []insn
	usesContext bool
	usesHelpers bool
	hasLoops    bool
	// params are the conditional jumps whose constant is a parameter of
	// the C function (COpts.Params): never folded, never byte-swapped.
	params map[int]string
}

func parse(filter []bpf.Instruction) (*program, error) {
	p, err := decodeAll(filter)
	if err != nil {
		return nil, err
	}
	optimize(p)
	return p, nil
}

// decodeAll decodes and checks a filter, without rewriting it: the kernel's
// checks (cbpfinsn.Decode), then what XDP cannot run.
func decodeAll(filter []bpf.Instruction) (*program, error) {
	if len(filter) == 0 {
		return nil, &Error{Index: -1, Err: ErrEmpty}
	}
	if len(filter) > MaxInstructions {
		return nil, &Error{Index: MaxInstructions, Err: fmtErr(ErrTooLong, "%d instructions, at most %d", len(filter), MaxInstructions)}
	}
	raw := make([]bpf.RawInstruction, len(filter))
	for i, ins := range filter {
		if ins == nil {
			return nil, errorf(i, ErrInvalid, "nil instruction")
		}
		r, err := ins.Assemble()
		if err != nil {
			return nil, &Error{Index: i, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
		}
		raw[i] = r
	}
	decoded, err := cbpfinsn.Decode(raw)
	if err != nil {
		var e *cbpfinsn.Error
		if !errors.As(err, &e) {
			return nil, &Error{Index: -1, Err: fmt.Errorf("%w: %w", ErrInvalid, err)}
		}
		return nil, &Error{Index: e.Index, Err: fmtErr(ErrInvalid, "%s", e.Detail)}
	}
	p := &program{insns: make([]insn, len(filter))}
	for i, d := range decoded {
		in, err := fromDecoded(d, i)
		if err != nil {
			return nil, err
		}
		switch {
		case in.kind == kLdExt && (in.k == extPktType || in.k == extIfIndex):
			p.usesContext = true
		case in.kind == kLdExt && (in.k == extCPU || in.k == extRandom):
			p.usesHelpers = true
		case in.kind == kJa && in.jback:
			p.hasLoops = true
		}
		p.insns[i] = in
	}
	return p, nil
}

// fromDecoded turns instruction i into the compiler's form, refusing what
// XDP cannot run: negative offsets (SKF_NET_OFF, SKF_LL_OFF) and the
// extensions XDP has no answer for.
func fromDecoded(d cbpfinsn.Insn, i int) (insn, error) {
	dst := regA
	if d.X {
		dst = regX
	}
	switch d.Kind {
	case cbpfinsn.LdImm:
		return insn{kind: kLdImm, dst: dst, k: d.K}, nil
	case cbpfinsn.LdMem:
		return insn{kind: kLdMem, dst: dst, k: d.K}, nil
	case cbpfinsn.LdLen:
		return insn{kind: kLdLen, dst: dst}, nil
	case cbpfinsn.LdMsh:
		if d.K >= negOffsetMin {
			return insn{}, errorf(i, ErrUnsupported, "negative offset %d", int32(d.K))
		}
		return insn{kind: kLdMsh, dst: regX, size: 1, k: d.K}, nil
	case cbpfinsn.LdExt:
		switch d.K {
		case extPktType, extIfIndex, extCPU, extRandom:
			return insn{kind: kLdExt, k: d.K}, nil
		}
		return insn{}, errorf(i, ErrUnsupported, "extension %s (SKF_AD_OFF%+d): XDP cannot answer it", cbpfinsn.ExtName(d.K), d.K)
	case cbpfinsn.LdAbs:
		if d.K >= negOffsetMin {
			return insn{}, errorf(i, ErrUnsupported, "negative offset %d", int32(d.K))
		}
		return insn{kind: kLdAbs, size: d.Size, k: d.K}, nil
	case cbpfinsn.LdInd:
		if d.K >= negOffsetMin {
			return insn{}, errorf(i, ErrUnsupported, "negative offset %d in [x%+d]", int32(d.K), int32(d.K))
		}
		return insn{kind: kLdInd, size: d.Size, k: d.K}, nil
	case cbpfinsn.St:
		return insn{kind: kSt, dst: dst, k: d.K}, nil
	case cbpfinsn.ALU:
		return insn{kind: kAlu, op: d.Op, useX: d.UseX, k: d.K}, nil
	case cbpfinsn.Neg:
		return insn{kind: kNeg}, nil
	case cbpfinsn.Ja:
		return insn{kind: kJa, jt: d.Jt, jback: d.Jt <= i}, nil
	case cbpfinsn.Jump:
		return insn{kind: kJcond, op: d.Op, useX: d.UseX, k: d.K, jt: d.Jt, jf: d.Jf}, nil
	case cbpfinsn.RetA:
		return insn{kind: kRetA}, nil
	case cbpfinsn.RetK:
		return insn{kind: kRetK, k: d.K}, nil
	case cbpfinsn.Tax:
		return insn{kind: kTax}, nil
	case cbpfinsn.Txa:
		return insn{kind: kTxa}, nil
	}
	return insn{}, errorf(i, ErrInvalid, "unknown instruction kind %d", d.Kind)
}
