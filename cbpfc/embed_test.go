package cbpfc

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestEmbedding puts two filters into one program, with label prefixes,
// the caller's own stack slot above StackOffset, a guard of the caller's
// own (Checked), and helper calls, and checks that each gives its result
// and that the caller's registers and stack survive.
func TestEmbedding(t *testing.T) {
	var f2Insns asm.Instructions
	fixture.RequireRoot(t)
	r := fixture.NewXDPRunner(t)
	// Uses M[], a loop and a helper call: M[0] counts down from 3.
	loop := []bpf.Instruction{
		bpf.LoadConstant{Dst: bpf.RegA, Val: 3},
		bpf.StoreScratch{Src: bpf.RegA, N: 0},
		bpf.LoadScratch{Dst: bpf.RegA, N: 0}, // 2
		bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: 1},
		bpf.StoreScratch{Src: bpf.RegA, N: 0},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0, SkipTrue: 1},
		bpf.RawInstruction{Op: 0x05, K: uint32(0xffffffff - 4)}, // ja 2
		bpf.LoadExtension{Num: bpf.ExtRand},
		bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: 0},
		bpf.LoadAbsolute{Off: 12, Size: 2},
		bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 0x10000},
		bpf.RetA{},
	}
	// Byte 13 plus the length.
	second := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 13, Size: 1},
		bpf.TAX{},
		bpf.LoadExtension{Num: bpf.ExtLen},
		bpf.ALUOpX{Op: bpf.ALUOpAdd},
		bpf.RetA{},
	}
	const canary = 0x5eed
	// With the 14 bytes the caller checked, the second filter checks nothing.
	defer func(f2 *asm.Instructions) {
		for _, ins := range *f2 {
			if ins.OpCode.JumpOp() == asm.JGT && ins.Src == asm.R3 {
				t.Errorf("second filter checks bounds itself: %v", ins)
			}
		}
	}(&f2Insns)
	f1, err := ToEBPF(loop, EBPFOpts{
		PacketStart: asm.R2, PacketEnd: asm.R3, Result: asm.R0,
		Working: [3]asm.Register{asm.R4, asm.R5, asm.R1}, ResultLabel: "r1",
		StackOffset: 8, LabelPrefix: "one_",
	})
	if err != nil {
		t.Fatal(err)
	}
	f2Insns, err = ToEBPF(second, EBPFOpts{
		PacketStart: asm.R2, PacketEnd: asm.R3, Result: asm.R4,
		Working: [3]asm.Register{asm.R5, asm.R0, asm.R1}, ResultLabel: "r2",
		StackOffset: 8, LabelPrefix: "two_", Checked: 14,
	})
	if err != nil {
		t.Fatal(err)
	}
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.StoreImm(asm.RFP, -8, canary, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 0, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, 4, asm.Word),
	}
	insns = append(insns, f1...)
	insns = append(insns,
		asm.Mov.Reg(asm.R7, asm.R0).WithSymbol("r1"),
		// The caller's own check: 14 bytes, for Checked above.
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
	)
	insns = append(insns, f2Insns...)
	insns = append(insns,
		asm.Mov.Reg(asm.R8, asm.R4).WithSymbol("r2"),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 12),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
		asm.StoreMem(asm.R2, 0, asm.R7, asm.Word),
		asm.StoreMem(asm.R2, 4, asm.R8, asm.Word),
		asm.LoadMem(asm.R1, asm.RFP, -8, asm.Word),
		asm.StoreMem(asm.R2, 8, asm.R1, asm.Word),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("out"),
		asm.Return(),
	)
	prog, err := loadAsm(t, "cbpfc_embed", insns)
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	for _, pkt := range testPackets() {
		_, out, err := r.RunData(prog, pkt)
		if err != nil {
			t.Fatal(err)
		}
		got1 := binary.NativeEndian.Uint32(out[0:])
		got2 := binary.NativeEndian.Uint32(out[4:])
		got3 := binary.NativeEndian.Uint32(out[8:])
		want1 := interpret(loop, pkt, extValues{})
		want2 := interpret(second, pkt, extValues{})
		if got1 != want1 || got2 != want2 || got3 != canary {
			t.Errorf("%d bytes: got %#x %#x canary %#x, want %#x %#x %#x", len(pkt), got1, got2, got3, want1, want2, canary)
		}
	}
}
