package cbpfc

import (
	"golang.org/x/net/bpf"
)

// extValues are what the extensions return in a reference run.
type extValues struct {
	ifindex, cpu, rand uint32
	frame              []byte // the frame start, for type; nil: the packet
}

// interpret is the reference: libpcap's bpf_filter semantics (no wrap of
// X+k, zeroed A, X, M[], division by zero returns 0), plus what cbpfc
// defines beyond it: backward jumps wrap modulo 2^32 and are bounded by
// MaxBackwardJumps, loads beyond maxPacketOffset fail, shifts take k mod
// 32, and the XDP extensions.
func interpret(filter []bpf.Instruction, pkt []byte, ext extValues) uint32 {
	p, err := decodeAll(filter)
	if err != nil {
		panic(err)
	}
	var a, x uint32
	var mem [16]uint32
	loops := 0
	n := uint64(len(pkt))
	load := func(off uint64, size int) (uint32, bool) {
		if off+uint64(size) > n || off+uint64(size) > maxPacketOffset {
			return 0, false
		}
		var v uint32
		for j := range size {
			v = v<<8 | uint32(pkt[off+uint64(j)])
		}
		return v, true
	}
	for pc := 0; ; {
		in := p.insns[pc]
		pc++
		set := func(r reg, v uint32) {
			if r == regA {
				a = v
			} else {
				x = v
			}
		}
		get := func(r reg) uint32 {
			if r == regA {
				return a
			}
			return x
		}
		switch in.kind {
		case kLdImm:
			set(in.dst, in.k)
		case kLdMem:
			set(in.dst, mem[in.k])
		case kLdLen:
			set(in.dst, uint32(len(pkt)))
		case kLdAbs:
			v, ok := load(uint64(in.k), in.size)
			if !ok {
				return 0
			}
			a = v
		case kLdInd:
			v, ok := load(uint64(x)+uint64(in.k), in.size)
			if !ok {
				return 0
			}
			a = v
		case kLdMsh:
			v, ok := load(uint64(in.k), 1)
			if !ok {
				return 0
			}
			x = 4 * (v & 0xf)
		case kLdExt:
			switch in.k {
			case extIfIndex:
				a = ext.ifindex
			case extCPU:
				a = ext.cpu
			case extRandom:
				a = ext.rand
			case extPktType:
				f := ext.frame
				if f == nil {
					f = pkt
				}
				if len(f) < 6 {
					return 0
				}
				switch {
				case f[0]&1 == 0:
					a = 0
				case f[0]&f[1]&f[2]&f[3]&f[4]&f[5] == 0xff:
					a = 1
				default:
					a = 2
				}
			}
		case kSt:
			mem[in.k] = get(in.dst)
		case kAlu:
			v := in.k
			if in.useX {
				v = x
			}
			switch in.op {
			case aluADD:
				a += v
			case aluSUB:
				a -= v
			case aluMUL:
				a *= v
			case aluDIV:
				if v == 0 {
					return 0
				}
				a /= v
			case aluMOD:
				if v == 0 {
					return 0
				}
				a %= v
			case aluOR:
				a |= v
			case aluAND:
				a &= v
			case aluXOR:
				a ^= v
			case aluLSH:
				a <<= v & 31
			case aluRSH:
				a >>= v & 31
			}
		case kNeg:
			a = -a
		case kTax:
			x = a
		case kTxa:
			a = x
		case kRetA:
			return a
		case kRetK:
			return in.k
		case kJa:
			if in.jback {
				loops++
				if loops > MaxBackwardJumps {
					return 0
				}
			}
			pc = in.jt
		case kJcond:
			v := in.k
			if in.useX {
				v = x
			}
			var c bool
			switch in.op {
			case jmpJEQ:
				c = a == v
			case jmpJGT:
				c = a > v
			case jmpJGE:
				c = a >= v
			case jmpJSET:
				c = a&v != 0
			}
			if c {
				pc = in.jt
			} else {
				pc = in.jf
			}
		}
	}
}
