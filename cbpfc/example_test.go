package cbpfc_test

import (
	"fmt"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpfc"
)

// IPv4 over Ethernet: tcpdump -d 'ip'.
var ipv4 = []bpf.Instruction{
	bpf.LoadAbsolute{Off: 12, Size: 2},
	bpf.JumpIf{Cond: bpf.JumpEqual, Val: 0x800, SkipFalse: 1},
	bpf.RetConstant{Val: 262144},
	bpf.RetConstant{Val: 0},
}

// A filter embedded in an XDP program whose context is in R1: the program
// loads data and data_end into R2 and R3, and continues at "match" or
// "nomatch".
func ExampleToEBPF() {
	filter, err := cbpfc.ToEBPF(ipv4, cbpfc.EBPFOpts{
		PacketStart:  asm.R2,
		PacketEnd:    asm.R3,
		Result:       asm.R0,
		Working:      [3]asm.Register{asm.R4, asm.R5, asm.R6},
		MatchLabel:   "match",
		NoMatchLabel: "nomatch",
		LabelPrefix:  "ipv4_",
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	prog := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // xdp_md->data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // xdp_md->data_end
	}
	prog = append(prog, filter...)
	prog = append(prog,
		asm.Mov.Imm(asm.R0, 2).WithSymbol("match"), // XDP_PASS
		asm.Return(),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("nomatch"), // XDP_DROP
		asm.Return(),
	)
	for _, ins := range prog {
		if sym := ins.Symbol(); sym != "" {
			fmt.Printf("%s:\n", sym)
		}
		fmt.Printf("  %v\n", ins)
	}
	// Output:
	//   LdXMemW dst: r2 src: r1 off: 0 imm: 0
	//   LdXMemW dst: r3 src: r1 off: 4 imm: 0
	//   MovReg dst: r5 src: r2
	//   AddImm dst: r5 imm: 14
	//   JGTReg dst: r5 off: -1 src: r3 <nomatch>
	//   LdXMemH dst: r0 src: r5 off: -2 imm: 0
	//   JNE32Imm dst: r0 off: -1 imm: 8 <nomatch>
	//   Ja off: -1 <match>
	// match:
	//   MovImm dst: r0 imm: 2
	//   Exit
	// nomatch:
	//   MovImm dst: r0 imm: 1
	//   Exit
}

// The same filter as a C function for an XDP program built with clang.
func ExampleToC() {
	src, err := cbpfc.ToC(ipv4, cbpfc.COpts{FunctionName: "is_ipv4"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(src)
	// Output:
	// static __always_inline uint32_t is_ipv4(const uint8_t *const data, const uint8_t *const data_end)
	// {
	// 	uint32_t A = 0, X = 0;
	// 	(void)A; (void)X; (void)data; (void)data_end;
	// 	if (data + 14 > data_end) return 0;
	// 	A = *(const uint16_t *)(data + 12);
	// 	if (!(A == 0x8u)) goto L3;
	// L2:
	// 	return 0x40000;
	// L3:
	// 	return 0x0;
	// }
}
