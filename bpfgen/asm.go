package bpfgen

import (
	"fmt"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
)

// asm builds a cBPF program with symbolic jump targets. cBPF jumps only
// forward, and a conditional jump reaches at most 255 instructions ahead:
// resolve puts a "ja" trampoline (32-bit offset) behind any conditional
// jump that would reach farther.
type asm struct {
	ops    []op
	labels []string // labels for the next op
	header []string
	auto   int
}

type op struct {
	labels  []string
	insn    bpf.Instruction // a non-jump instruction, or nil
	cond    bpf.JumpTest    // for conditional jumps: one the machine has
	val     uint32
	jt, jf  string // targets of a conditional jump
	ja      string // target of an unconditional jump
	comment string
}

func (o *op) isCond() bool { return o.insn == nil && o.ja == "" }

// comment adds a line to the listing's header.
func (a *asm) comment(format string, args ...any) {
	a.header = append(a.header, fmt.Sprintf(format, args...))
}

// label names the next instruction.
func (a *asm) label(name string) { a.labels = append(a.labels, name) }

func (a *asm) add(o op) {
	o.labels, a.labels = a.labels, nil
	a.ops = append(a.ops, o)
}

// emit appends an instruction; note, if given, is its comment.
func (a *asm) emit(in bpf.Instruction, note ...string) {
	a.add(op{insn: in, comment: strings.Join(note, " ")})
}

// next returns a fresh label for the instruction after the one being
// emitted, for a jump's fall-through branch.
func (a *asm) newLabel() string {
	a.auto++
	return fmt.Sprintf(".L%d", a.auto)
}

// jump appends a conditional jump: to jt if the test holds, else to jf;
// an empty target is the next instruction.
func (a *asm) jump(cond bpf.JumpTest, val uint32, jt, jf string, note ...string) {
	var fall string
	if jt == "" || jf == "" {
		fall = a.newLabel()
		if jt == "" {
			jt = fall
		}
		if jf == "" {
			jf = fall
		}
	}
	a.add(op{cond: cond, val: val, jt: jt, jf: jf, comment: strings.Join(note, " ")})
	if fall != "" {
		a.label(fall)
	}
}

// jne, jeq, jlt, jgt and jset jump to target when the test holds and fall
// through otherwise.
func (a *asm) jne(val uint32, target string, note ...string) {
	a.jump(bpf.JumpEqual, val, "", target, note...)
}
func (a *asm) jeq(val uint32, target string, note ...string) {
	a.jump(bpf.JumpEqual, val, target, "", note...)
}
func (a *asm) jlt(val uint32, target string, note ...string) {
	a.jump(bpf.JumpGreaterOrEqual, val, "", target, note...)
}
func (a *asm) jgt(val uint32, target string, note ...string) {
	a.jump(bpf.JumpGreaterThan, val, target, "", note...)
}
func (a *asm) jset(val uint32, target string, note ...string) {
	a.jump(bpf.JumpBitsSet, val, target, "", note...)
}

func (a *asm) ret(k uint32, note ...string) { a.emit(bpf.RetConstant{Val: k}, note...) }

// resolve turns the program into instructions and a listing.
func (a *asm) resolve() (*Program, error) {
	if len(a.labels) > 0 {
		return nil, fmt.Errorf("internal error: labels %v at the end", a.labels)
	}
	ops := a.ops
	for {
		if len(ops) > 4*cbpf.MaxInstructions {
			return nil, fmt.Errorf("%w: the rule needs more than %d instructions", ErrPattern, cbpf.MaxInstructions)
		}
		pos := map[string]int{}
		for i, o := range ops {
			for _, l := range o.labels {
				pos[l] = i
			}
		}
		target := func(i int, l string) (int, error) {
			t, ok := pos[l]
			if !ok {
				return 0, fmt.Errorf("internal error: undefined label %q", l)
			}
			if t <= i {
				return 0, fmt.Errorf("internal error: backward jump to %q", l)
			}
			return t - i - 1, nil
		}
		changed := false
		for i := 0; i < len(ops) && !changed; i++ {
			o := ops[i]
			if !o.isCond() {
				if o.ja != "" {
					if _, err := target(i, o.ja); err != nil {
						return nil, err
					}
				}
				continue
			}
			dt, err := target(i, o.jt)
			if err != nil {
				return nil, err
			}
			df, err := target(i, o.jf)
			if err != nil {
				return nil, err
			}
			if dt <= 255 && df <= 255 {
				continue
			}
			// Send the far branches through a "ja" within reach, one
			// already there or a new one right behind the jump.
			var tramps []op
			for _, far := range []*string{&ops[i].jt, &ops[i].jf} {
				if d, _ := target(i, *far); d <= 255 {
					continue
				}
				if l := a.trampoline(ops, i, *far); l != "" {
					*far = l
					continue
				}
				l := a.newLabel()
				// Best behind an instruction that does not fall
				// through, where later jumps can share it.
				if k := noFallThrough(ops, i); k > 0 {
					ops = append(ops[:k], append([]op{{labels: []string{l}, ja: *far}}, ops[k:]...)...)
					*far = l
					changed = true
					break
				}
				tramps = append(tramps, op{labels: []string{l}, ja: *far})
				*far = l
			}
			if changed {
				continue
			}
			if len(tramps) > 0 {
				ops = append(ops[:i+1], append(tramps, ops[i+1:]...)...)
				changed = true
			}
		}
		if !changed {
			if len(ops) > cbpf.MaxInstructions {
				return nil, fmt.Errorf("%w: the rule needs %d instructions, more than the %d the kernel takes", ErrPattern, len(ops), cbpf.MaxInstructions)
			}
			a.ops = ops
			return a.finish(pos)
		}
	}
}

// noFallThrough returns the farthest place k that a conditional jump at i
// reaches (k - i - 1 <= 255) and that follows a return or a "ja", or 0.
func noFallThrough(ops []op, i int) int {
	for k := min(i+256, len(ops)); k > i+1; k-- {
		prev := ops[k-1]
		if prev.ja != "" {
			return k
		}
		if _, ok := prev.insn.(bpf.RetConstant); ok {
			return k
		}
		if _, ok := prev.insn.(bpf.RetA); ok {
			return k
		}
	}
	return 0
}

// trampoline returns the label of a "ja target" that the conditional jump
// at i reaches, or "".
func (a *asm) trampoline(ops []op, i int, target string) string {
	for j := i + 1; j < len(ops) && j <= i+256; j++ {
		if ops[j].ja == target && len(ops[j].labels) > 0 {
			return ops[j].labels[0]
		}
	}
	return ""
}

func (a *asm) finish(pos map[string]int) (*Program, error) {
	p := &Program{Insns: make([]bpf.Instruction, len(a.ops))}
	texts := make([]string, len(a.ops))
	used := map[string]bool{}
	for i, o := range a.ops {
		isNext := func(l string) bool { return pos[l] == i+1 }
		switch {
		case o.insn != nil:
			p.Insns[i] = o.insn
			texts[i] = fmt.Sprint(o.insn)
			// Masks read better in hex.
			if alu, ok := o.insn.(bpf.ALUOpConstant); ok && (alu.Op == bpf.ALUOpAnd || alu.Op == bpf.ALUOpOr) {
				texts[i] = fmt.Sprintf("%s #%#x", map[bpf.ALUOp]string{bpf.ALUOpAnd: "and", bpf.ALUOpOr: "or"}[alu.Op], alu.Val)
			}
		case o.ja != "":
			p.Insns[i] = bpf.Jump{Skip: uint32(pos[o.ja] - i - 1)}
			texts[i] = "ja " + o.ja
			used[o.ja] = true
		default:
			p.Insns[i] = bpf.JumpIf{Cond: o.cond, Val: o.val,
				SkipTrue: uint8(pos[o.jt] - i - 1), SkipFalse: uint8(pos[o.jf] - i - 1)}
			switch {
			case isNext(o.jf):
				texts[i] = fmt.Sprintf("%s #%#x, %s", condName[o.cond][0], o.val, o.jt)
				used[o.jt] = true
			case isNext(o.jt) && o.cond != bpf.JumpBitsSet:
				texts[i] = fmt.Sprintf("%s #%#x, %s", condName[o.cond][1], o.val, o.jf)
				used[o.jf] = true
			default:
				texts[i] = fmt.Sprintf("%s #%#x, %s, %s", condName[o.cond][0], o.val, o.jt, o.jf)
				used[o.jt], used[o.jf] = true, true
			}
		}
	}
	var b strings.Builder
	for _, h := range a.header {
		fmt.Fprintf(&b, "; %s\n", h)
	}
	for i, o := range a.ops {
		for _, l := range o.labels {
			if used[l] {
				fmt.Fprintf(&b, "%s:\n", l)
			}
		}
		if o.comment != "" {
			fmt.Fprintf(&b, "    %-28s ; %s\n", texts[i], o.comment)
		} else {
			fmt.Fprintf(&b, "    %s\n", texts[i])
		}
	}
	p.Listing = b.String()
	return p, nil
}

// condName holds the names of a test and of its negation.
var condName = map[bpf.JumpTest][2]string{
	bpf.JumpEqual:          {"jeq", "jne"},
	bpf.JumpGreaterThan:    {"jgt", "jle"},
	bpf.JumpGreaterOrEqual: {"jge", "jlt"},
	bpf.JumpBitsSet:        {"jset", "jset"},
}
