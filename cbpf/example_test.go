package cbpf_test

import (
	"fmt"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
)

func ExampleCompile() {
	prog, err := cbpf.Compile("udp", cbpf.LinkTypeIPv4, 65535)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(cbpf.Listing(prog))

	_, err = cbpf.Compile("udp port x53", cbpf.LinkTypeEthernet, 0)
	fmt.Println(err)
	// Output:
	// (000) ld       #0x0
	// (001) ldb      [9]
	// (002) jeq      #0x11            jt 3	jf 4
	// (003) ret      #65535
	// (004) ret      #0
	// compile "udp port x53": unknown port 'x53'
}

func ExampleParse() {
	// What iptables-save prints after --bytecode, tcpdump -ddd on one line.
	prog, err := cbpf.Parse(`"4,48 0 0 9,21 0 1 17,6 0 0 65535,6 0 0 0"`)
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, in := range prog {
		fmt.Println(in)
	}
	// A UDP packet from the IP header on: protocol 17 at offset 9.
	pkt := make([]byte, 20)
	pkt[0], pkt[9] = 0x45, 17
	fmt.Println(cbpf.Interpret(prog, pkt, len(pkt)))

	_, err = cbpf.Parse("2,48 0 0 9,6 0 0")
	fmt.Println(err)
	// Output:
	// ldb [9]
	// jneq #17,1
	// ret #65535
	// ret #0
	// 65535
	// instruction 1: bad cBPF bytecode: want "op jt jf k", got "6 0 0"
}

func ExampleFormat() {
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 6, SkipFalse: 1},
		bpf.RetConstant{Val: 65535},
		bpf.RetConstant{Val: 0},
	}
	text, err := cbpf.Format(prog)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(text)
	c, _ := cbpf.FormatC(prog)
	fmt.Print(c)
	// Output:
	// 4,48 0 0 9,21 0 1 6,6 0 0 65535,6 0 0 0
	// { 0x30, 0, 0, 0x00000009 },
	// { 0x15, 0, 1, 0x00000006 },
	// { 0x6, 0, 0, 0x0000ffff },
	// { 0x6, 0, 0, 0x00000000 },
}
