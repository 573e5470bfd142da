package cbpfc

import (
	"golang.org/x/net/bpf"
)

// Classic BPF opcode fields, as in linux/filter.h.
const (
	clsLD   = 0x00
	clsLDX  = 0x01
	clsST   = 0x02
	clsSTX  = 0x03
	clsALU  = 0x04
	clsJMP  = 0x05
	clsRET  = 0x06
	clsMISC = 0x07

	sizeW = 0x00
	sizeH = 0x08
	sizeB = 0x10

	modeIMM = 0x00
	modeABS = 0x20
	modeIND = 0x40
	modeMEM = 0x60
	modeLEN = 0x80
	modeMSH = 0xa0

	srcK = 0x00
	srcX = 0x08

	aluADD = 0x00
	aluSUB = 0x10
	aluMUL = 0x20
	aluDIV = 0x30
	aluOR  = 0x40
	aluAND = 0x50
	aluLSH = 0x60
	aluRSH = 0x70
	aluNEG = 0x80
	aluMOD = 0x90
	aluXOR = 0xa0

	jmpJA   = 0x00
	jmpJEQ  = 0x10
	jmpJGT  = 0x20
	jmpJGE  = 0x30
	jmpJSET = 0x40

	retK = 0x00
	retA = 0x10

	miscTAX = 0x00
	miscTXA = 0x80
)

// Kernel extension offsets (SKF_AD_OFF + SKF_AD_*).
const (
	skfADOff     = 0xfffff000
	extPktType   = 4
	extIfIndex   = 8
	extCPU       = 36
	extRandom    = 56
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

// decodeAll decodes and checks a filter, without rewriting it.
func decodeAll(filter []bpf.Instruction) (*program, error) {
	if len(filter) == 0 {
		return nil, &Error{Index: -1, Err: ErrEmpty}
	}
	if len(filter) > MaxInstructions {
		return nil, &Error{Index: MaxInstructions, Err: fmtErr(ErrTooLong, "%d instructions, at most %d", len(filter), MaxInstructions)}
	}
	p := &program{insns: make([]insn, len(filter))}
	for i, ins := range filter {
		raw, err := ins.Assemble()
		if err != nil {
			return nil, errorf(i, ErrInvalid, "%v", err)
		}
		d, err := decode(raw, i, len(filter))
		if err != nil {
			return nil, err
		}
		if d.kind == kLdExt {
			switch d.k {
			case extPktType, extIfIndex:
				p.usesContext = true
			case extCPU, extRandom:
				p.usesHelpers = true
			}
		}
		if d.kind == kJa && d.jback {
			p.hasLoops = true
		}
		p.insns[i] = d
	}
	if k := p.insns[len(filter)-1].kind; k != kRetA && k != kRetK {
		return nil, errorf(len(filter)-1, ErrInvalid, "the last instruction must be a return")
	}
	return p, nil
}

func decode(ri bpf.RawInstruction, i, n int) (insn, error) {
	bad := func() (insn, error) {
		return insn{}, errorf(i, ErrInvalid, "unknown opcode %#x", ri.Op)
	}
	op, k := ri.Op, ri.K
	var size int
	switch op & 0x18 {
	case sizeW:
		size = 4
	case sizeH:
		size = 2
	case sizeB:
		size = 1
	}
	switch op & 0x07 {
	case clsLD, clsLDX:
		dst := regA
		if op&0x07 == clsLDX {
			dst = regX
		}
		mode := op & 0xe0
		switch {
		case mode == modeIMM && size == 4:
			return insn{kind: kLdImm, dst: dst, k: k}, nil
		case mode == modeMEM && size == 4:
			if k > 15 {
				return insn{}, errorf(i, ErrInvalid, "scratch memory M[%d] does not exist (M[0] to M[15])", k)
			}
			return insn{kind: kLdMem, dst: dst, k: k}, nil
		case mode == modeLEN && size == 4:
			return insn{kind: kLdLen, dst: dst}, nil
		case mode == modeMSH && dst == regX && size == 1:
			if k >= negOffsetMin {
				return insn{}, errorf(i, ErrUnsupported, "negative offset %d", int32(k))
			}
			return insn{kind: kLdMsh, dst: regX, size: 1, k: k}, nil
		case mode == modeABS && dst == regA && op&0x18 != 0x18:
			if k >= skfADOff {
				ext := k - skfADOff
				switch ext {
				case extPktType, extIfIndex, extCPU, extRandom:
					return insn{kind: kLdExt, k: ext}, nil
				}
				return insn{}, errorf(i, ErrUnsupported, "extension %s (SKF_AD_OFF%+d): XDP cannot answer it", extName(ext), ext)
			}
			if k >= negOffsetMin {
				return insn{}, errorf(i, ErrUnsupported, "negative offset %d", int32(k))
			}
			return insn{kind: kLdAbs, size: size, k: k}, nil
		case mode == modeIND && dst == regA && op&0x18 != 0x18:
			if k >= negOffsetMin {
				return insn{}, errorf(i, ErrUnsupported, "negative offset %d in [x%+d]", int32(k), int32(k))
			}
			return insn{kind: kLdInd, size: size, k: k}, nil
		}
		return bad()
	case clsST, clsSTX:
		if op != clsST && op != clsSTX {
			return bad()
		}
		if k > 15 {
			return insn{}, errorf(i, ErrInvalid, "scratch memory M[%d] does not exist (M[0] to M[15])", k)
		}
		src := regA
		if op == clsSTX {
			src = regX
		}
		return insn{kind: kSt, dst: src, k: k}, nil
	case clsALU:
		aop := op & 0xf0
		useX := op&0x08 == srcX
		if op&^0xf8 != clsALU {
			return bad()
		}
		switch aop {
		case aluNEG:
			if op != clsALU|aluNEG {
				return bad()
			}
			return insn{kind: kNeg}, nil
		case aluADD, aluSUB, aluMUL, aluDIV, aluOR, aluAND, aluLSH, aluRSH, aluMOD, aluXOR:
			return insn{kind: kAlu, op: aop, useX: useX, k: k}, nil
		}
		return bad()
	case clsJMP:
		jop := op & 0xf0
		if op&^0xf8 != clsJMP {
			return bad()
		}
		if jop == jmpJA {
			if op != clsJMP|jmpJA {
				return bad()
			}
			// The offset is added modulo 2^32: libpcap's protochain
			// jumps backwards that way.
			t := i + 1 + int(int32(k))
			if t < 0 || t >= n {
				return insn{}, errorf(i, ErrInvalid, "jump to %d, outside the filter (0 to %d)", t, n-1)
			}
			return insn{kind: kJa, jt: t, jback: t <= i}, nil
		}
		switch jop {
		case jmpJEQ, jmpJGT, jmpJGE, jmpJSET:
		default:
			return bad()
		}
		jt, jf := i+1+int(ri.Jt), i+1+int(ri.Jf)
		if jt >= n || jf >= n {
			return insn{}, errorf(i, ErrInvalid, "jump to %d, past the end of the filter (%d instructions)", max(jt, jf), n)
		}
		return insn{kind: kJcond, op: jop, useX: op&0x08 == srcX, k: k, jt: jt, jf: jf}, nil
	case clsRET:
		switch op {
		case clsRET | retK:
			return insn{kind: kRetK, k: k}, nil
		case clsRET | retA:
			return insn{kind: kRetA}, nil
		}
		return bad()
	case clsMISC:
		switch op {
		case clsMISC | miscTAX:
			return insn{kind: kTax}, nil
		case clsMISC | miscTXA:
			return insn{kind: kTxa}, nil
		}
		return bad()
	}
	return bad()
}

func extName(ext uint32) string {
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
