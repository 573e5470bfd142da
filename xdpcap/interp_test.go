package xdpcap

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/xdprun"
)

// TestInterpreterOps runs every ALU operation, jump and byte swap the
// interpreter decodes, in both widths, with a register and with
// immediates as the operand, over edge values, in the interpreter and in
// the kernel: the results must be equal. Corpus filters use few of them
// (TestInterpreterAgreesWithKernel); a filter may use any.
//
// Each program reads its operands A (into R0) and B (into R5) from the
// packet; the kernel's writes the result into the packet, the
// interpreter's returns it.
func TestInterpreterOps(t *testing.T) {
	fixture.RequireRoot(t)
	runner, err := xdprun.New()
	if err != nil {
		t.Fatal(err)
	}
	defer runner.Close()

	values := []uint64{0, 1, 7, 31, 32, 63, 64, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000,
		0x8000000000000000, 0xffffffffffffffff, 0xfffffffffffffff9, 0x123456789abcdef0}
	imms := []int32{0, 1, 7, 31, 63, -1, -7, 0x7fffffff, -0x80000000}

	type opCase struct {
		name string
		core func(b asm.Instruction) asm.Instructions // computes R0 from R0 and R5
		imm  func(v int32) bool                       // immediates the verifier takes; nil: no immediate form
		reg  bool                                     // a register form
		// unary operations read no B.
		unary bool
	}
	var cases []opCase
	for _, op := range []asm.ALUOp{asm.Add, asm.Sub, asm.Mul, asm.Div, asm.Mod, asm.Or, asm.And, asm.Xor,
		asm.LSh, asm.RSh, asm.ArSh, asm.Neg, asm.Mov} {
		for _, alu32 := range []bool{false, true} {
			bits := int32(64)
			name := op.String()
			if alu32 {
				bits, name = 32, name+"32"
			}
			c := opCase{name: name, reg: op != asm.Neg, unary: op == asm.Neg, imm: func(int32) bool { return true }}
			switch op {
			case asm.Div, asm.Mod:
				c.imm = func(v int32) bool { return v != 0 }
			case asm.LSh, asm.RSh, asm.ArSh:
				c.imm = func(v int32) bool { return v >= 0 && v < bits }
			case asm.Neg:
				c.imm = func(v int32) bool { return v == 0 }
			}
			c.core = func(b asm.Instruction) asm.Instructions {
				in := b
				in.OpCode = asm.OpCode(asm.ALU64Class).SetALUOp(op).SetSource(asm.RegSource)
				if alu32 {
					in.OpCode = asm.OpCode(asm.ALUClass).SetALUOp(op).SetSource(asm.RegSource)
				}
				if b.OpCode.Source() == asm.ImmSource {
					in.OpCode = in.OpCode.SetSource(asm.ImmSource)
				}
				in.Dst = asm.R0
				return asm.Instructions{in}
			}
			cases = append(cases, c)
		}
	}
	for _, op := range []asm.JumpOp{asm.JEq, asm.JNE, asm.JGT, asm.JGE, asm.JLT, asm.JLE, asm.JSet,
		asm.JSGT, asm.JSGE, asm.JSLT, asm.JSLE} {
		for _, cls := range []asm.Class{asm.JumpClass, asm.Jump32Class} {
			name := op.String()
			if cls == asm.Jump32Class {
				name += "32"
			}
			cases = append(cases, opCase{name: name, reg: true, imm: func(int32) bool { return true },
				core: func(b asm.Instruction) asm.Instructions {
					j := b
					j.OpCode = asm.OpCode(cls).SetJumpOp(op).SetSource(b.OpCode.Source())
					j.Dst, j.Offset = asm.R0, -1
					return asm.Instructions{
						j.WithReference("ops_taken"),
						asm.Mov.Imm(asm.R0, 0),
						asm.Ja.Label("ops_end"),
						asm.Mov.Imm(asm.R0, 1).WithSymbol("ops_taken"),
						asm.Mov.Reg(asm.R0, asm.R0).WithSymbol("ops_end"),
					}
				}})
		}
	}
	for _, sw := range []struct {
		end  asm.Endianness
		size asm.Size
	}{{asm.BE, asm.Half}, {asm.BE, asm.Word}, {asm.BE, asm.DWord}, {asm.LE, asm.Half}, {asm.LE, asm.Word}, {asm.LE, asm.DWord}} {
		cases = append(cases, opCase{name: fmt.Sprintf("swap-%v-%d", sw.end, sw.size.Sizeof()*8), reg: true, unary: true,
			core: func(asm.Instruction) asm.Instructions {
				return asm.Instructions{asm.HostTo(sw.end, asm.R0, sw.size)}
			}})
	}

	pkt := make([]byte, 64)
	out := make([]byte, len(pkt))
	compared := 0
	for _, c := range cases {
		operands := []asm.Instruction{}
		if c.reg {
			operands = append(operands, asm.Mov.Reg(asm.R0, asm.R5))
		}
		for _, v := range imms {
			if c.imm != nil && c.imm(v) {
				operands = append(operands, asm.Mov.Imm(asm.R0, v))
			}
		}
		for _, operand := range operands {
			core := c.core(operand)
			name := fmt.Sprintf("%s %v", c.name, operand)
			prog, it := opPrograms(t, name, core)
			for _, a := range values {
				for _, b := range values {
					binary.LittleEndian.PutUint64(pkt[0:], a)
					binary.LittleEndian.PutUint64(pkt[8:], b)
					if _, err := runner.Run(prog, &ebpf.RunOptions{Data: pkt, DataOut: out}); err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					want := binary.LittleEndian.Uint64(out[16:])
					got, err := it.match(pkt)
					if err != nil || got != want {
						t.Errorf("%s, A %#x, B %#x: interpreter %#x, %v; kernel %#x", name, a, b, got, err, want)
					}
					compared++
					if operand.OpCode.Source() == asm.ImmSource || c.unary {
						break // B is not read
					}
				}
			}
			prog.Close()
		}
	}
	t.Logf("%d operations, %d results agree with the kernel", len(cases), compared)
}

// opPrograms returns core (which computes R0 from R0 and R5) as a kernel
// program, which writes R0 to the packet's bytes 16 to 24, and decoded
// for the interpreter, whose result is R0.
func opPrograms(t *testing.T, name string, core asm.Instructions) (*ebpf.Program, *interpreter) {
	t.Helper()
	head := asm.Instructions{
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 24),
		asm.JGT.Reg(asm.R4, asm.R3, "ops_short"),
		asm.LoadMem(asm.R0, asm.R2, 0, asm.DWord),
		asm.LoadMem(asm.R5, asm.R2, 8, asm.DWord),
	}
	kernel := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word),
	}
	kernel = append(append(append(kernel, head...), core...),
		asm.StoreMem(asm.R2, 16, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R0, int32(Pass)).WithSymbol("ops_short"),
		asm.Return(),
	)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.XDP, License: "GPL", Instructions: kernel})
	if err != nil {
		t.Fatalf("%s: load: %v", name, err)
	}
	interp := append(append(append(asm.Instructions(nil), head...), core...),
		asm.Ja.Label("ops_result"),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("ops_short"),
	)
	it, err := decode(interp, "ops_result")
	if err != nil {
		prog.Close()
		t.Fatalf("%s: decode: %v", name, err)
	}
	return prog, it
}
