package cbpfc

import (
	"fmt"
	"regexp"
	"strings"
)

var cIdent = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

type cGen struct {
	f    *facts
	opts COpts
	used map[int]bool // labels jumped to
}

func compileC(p *program, opts COpts) (string, error) {
	name := opts.FunctionName
	if name == "" {
		name = "filter"
	}
	if !cIdent.MatchString(name) {
		return "", &Error{Index: -1, Err: fmtErr(ErrOptions, "function name %q is not a C identifier", name)}
	}
	f := analyze(p)
	states := f.flow(0)
	g := &cGen{f: f, opts: opts, used: map[int]bool{}}

	// The first pass learns which labels are used, the second writes.
	var body strings.Builder
	for pass := 0; pass < 2; pass++ {
		body.Reset()
		for i, in := range p.insns {
			if f.reachable[i] {
				g.insn(&body, i, in, states[i])
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "static __always_inline uint32_t %s(const uint8_t *const data, const uint8_t *const data_end", name)
	if p.usesContext {
		b.WriteString(", const struct xdp_md *const ctx")
	}
	b.WriteString(paramList(opts))
	b.WriteString(")\n{\n")
	live := f.liveIn[0]
	b.WriteString("\tuint32_t A = 0, X = 0;\n")
	for n := uint32(0); n < 16; n++ {
		if g.usesMem(n) {
			init := ""
			if live&liveM(n) != 0 {
				init = " = 0"
			}
			fmt.Fprintf(&b, "\tuint32_t M%d%s;\n", n, init)
		}
	}
	if p.hasLoops {
		b.WriteString("\tuint32_t loops = 0;\n")
	}
	if f.maxIndExtent > 0 {
		b.WriteString("\tconst uint8_t *px = data;\n")
	}
	b.WriteString("\t(void)A; (void)X; (void)data; (void)data_end;\n")
	b.WriteString(body.String())
	b.WriteString("}\n")
	return b.String(), nil
}

func (g *cGen) usesMem(n uint32) bool {
	for _, in := range g.f.p.insns {
		if (in.kind == kLdMem || in.kind == kSt) && in.k == n {
			return true
		}
	}
	return false
}

func cLoad(size int, ptr string, raw bool) string {
	switch {
	case size == 2 && raw:
		return fmt.Sprintf("*(const uint16_t *)(%s)", ptr)
	case size == 4 && raw:
		return fmt.Sprintf("*(const uint32_t *)(%s)", ptr)
	}
	switch size {
	case 1:
		return fmt.Sprintf("*(const uint8_t *)(%s)", ptr)
	case 2:
		return fmt.Sprintf("__builtin_bswap16(*(const uint16_t *)(%s))", ptr)
	}
	return fmt.Sprintf("__builtin_bswap32(*(const uint32_t *)(%s))", ptr)
}

func (g *cGen) insn(b *strings.Builder, i int, in insn, s flowState) {
	f := g.f
	w := func(format string, args ...any) { fmt.Fprintf(b, "\t"+format+"\n", args...) }
	if f.leader[i] && g.used[i] {
		fmt.Fprintf(b, "L%d:\n", i)
	}
	if f.fails[i] {
		w("return 0;")
		return
	}
	if f.dead[i] {
		return
	}
	reg := func(r reg) string {
		if r == regA {
			return "A"
		}
		return "X"
	}
	switch in.kind {
	case kLdImm:
		w("%s = %#x;", reg(in.dst), in.k)
	case kLdMem:
		w("%s = M%d;", reg(in.dst), in.k)
	case kLdLen:
		// The difference in 64 bits, then truncated: clang may
		// otherwise subtract the pointers' low halves in 32 bits, which
		// the verifier refuses on pointers.
		w("{ long len_ = data_end - data; asm volatile(\"\" : \"+r\"(len_)); %s = (uint32_t)len_; }", reg(in.dst))
	case kLdAbs:
		if f.guardAt(i, s) {
			w("if (data + %d > data_end) return 0;", f.needAbs[i])
		}
		w("A = %s;", cLoad(in.size, fmt.Sprintf("data + %d", in.k), f.rawA[i] != 0))
	case kLdMsh:
		if f.guardAt(i, s) {
			w("if (data + %d > data_end) return 0;", f.needAbs[i])
		}
		w("X = (uint32_t)(data[%d] & 0xf) << 2;", in.k)
	case kLdInd:
		if !s.pxValid {
			if s.xMax > f.xBound() {
				w("if (X > %d) return 0;", f.xBound())
			}
			w("px = data + X;")
		}
		if s.checkedX < extent(in) {
			w("if (px + %d > data_end) return 0;", f.needInd[i])
		}
		w("A = %s;", cLoad(in.size, fmt.Sprintf("px + %d", in.k), f.rawA[i] != 0))
	case kLdExt:
		switch in.k {
		case extIfIndex:
			w("A = ctx->ingress_ifindex;")
		case extPktType:
			w("{")
			w("\tconst uint8_t *const eth = (const uint8_t *)(unsigned long)ctx->data;")
			w("\tif (eth + 6 > data_end) return 0;")
			w("\tA = !(eth[0] & 1) ? 0 : (eth[0] & eth[1] & eth[2] & eth[3] & eth[4] & eth[5]) == 0xff ? 1 : 2;")
			w("}")
		case extCPU:
			w("A = bpf_get_smp_processor_id();")
		case extRandom:
			w("A = bpf_get_prandom_u32();")
		}
	case kSt:
		w("M%d = %s;", in.k, reg(in.dst))
	case kAlu:
		src := "X"
		if !in.useX {
			src = fmt.Sprintf("%#xu", swapConst(in.k, f.rawA[i]))
		}
		switch in.op {
		case aluADD:
			w("A += %s;", src)
		case aluSUB:
			w("A -= %s;", src)
		case aluMUL:
			w("A *= %s;", src)
		case aluOR:
			w("A |= %s;", src)
		case aluAND:
			w("A &= %s;", src)
		case aluXOR:
			w("A ^= %s;", src)
		case aluDIV, aluMOD:
			op := "/"
			if in.op == aluMOD {
				op = "%"
			}
			if in.useX {
				w("if (X == 0) return 0;")
			}
			w("A %s= %s;", op, src)
		case aluLSH, aluRSH:
			op := "<<"
			if in.op == aluRSH {
				op = ">>"
			}
			if in.useX {
				w("A %s= X & 31;", op)
			} else {
				w("A %s= %d;", op, in.k&31)
			}
		}
	case kNeg:
		w("A = -A;")
	case kTax:
		w("X = A;")
	case kTxa:
		w("A = X;")
	case kNop:
	case kRetA:
		w("return A;")
	case kRetK:
		w("return %#x;", in.k)
	case kJa:
		if in.jback {
			w("if (++loops > %d) return 0;", MaxBackwardJumps)
			w("goto L%d;", in.jt)
			g.used[in.jt] = true
			return
		}
		if t := g.f.p.target(in.jt); t != i+1 {
			w("goto L%d;", t)
			g.used[t] = true
		}
	case kJcond:
		jt, jf := g.f.p.target(in.jt), g.f.p.target(in.jf)
		src := "X"
		if !in.useX {
			src = fmt.Sprintf("%#xu", swapConst(in.k, f.rawA[i]))
		}
		if name, ok := g.opts.Params[i]; ok {
			src = name
		}
		var cond string
		switch in.op {
		case jmpJEQ:
			cond = "A == " + src
			if _, ok := g.opts.Params[i]; ok && g.opts.ParamTest != "" {
				cond = g.opts.ParamTest + "(" + src + ", A)"
			}
		case jmpJGT:
			cond = "A > " + src
			if _, ok := g.opts.Params[i]; ok && g.opts.ParamTest != "" {
				cond = g.opts.ParamTest + "(" + src + ", A)"
			}
		case jmpJGE:
			cond = "A >= " + src
			if _, ok := g.opts.Params[i]; ok && g.opts.ParamTest != "" {
				cond = g.opts.ParamTest + "(" + src + ", A)"
			}
		case jmpJSET:
			cond = "A & " + src
		}
		g.used[jt], g.used[jf] = true, true
		switch {
		case jt == jf:
			if jt != i+1 {
				w("goto L%d;", jt)
			}
		case jf == i+1:
			w("if (%s) goto L%d;", cond, jt)
		case jt == i+1:
			w("if (!(%s)) goto L%d;", cond, jf)
		default:
			w("if (%s) goto L%d;", cond, jt)
			w("goto L%d;", jf)
		}
	}
}
