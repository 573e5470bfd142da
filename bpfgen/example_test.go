package bpfgen_test

import (
	"fmt"

	"github.com/l4drop/l4drop/bpfgen"
	"github.com/l4drop/l4drop/cbpf"
)

func ExampleDNS() {
	// Queries for one label under example.com, in any case, over IPv4, in
	// packets that start at the IP header.
	p, err := bpfgen.DNS(bpfgen.Options{}, bpfgen.DNSOptions{CaseInsensitive: true}, "*.example.com")
	if err != nil {
		fmt.Println(err)
		return
	}
	text, _ := cbpf.Format(p.Insns)
	fmt.Println(text)
	fmt.Print(p.Listing)
	// Output:
	// 29,48 0 0 0,53 0 26 69,37 25 0 79,48 0 0 9,21 0 23 17,40 0 0 6,69 21 0 8191,177 0 0 0,72 0 0 2,21 0 18 53,80 0 0 20,53 0 16 1,37 15 0 63,12 0 0 0,4 0 0 21,7 0 0 0,64 0 0 0,68 0 0 2105376,21 0 9 124090465,64 0 0 4,68 0 0 538976288,21 0 6 1836084325,64 0 0 8,68 0 0 2105376,21 0 3 56848237,80 0 0 12,21 0 1 0,6 0 0 65535,6 0 0 0
	// ; dns -i ["*.example.com"], IPv4, IP header at 0
	// ; match: ret #65535, no match: ret #0
	//     ldb [0]                      ; IP version
	//     jlt #0x45, notdns            ; IPv4 with a header of 20 bytes or more?
	//     jgt #0x4f, notdns
	//     ldb [9]                      ; protocol
	//     jne #0x11, notdns            ; UDP?
	//     ldh [6]                      ; fragment offset
	//     jset #0x1fff, notdns         ; not the first fragment: no UDP header
	//     ldx 4*([0]&0xf)              ; X = IPv4 header length
	//     ldh [x + 2]                  ; UDP destination port
	//     jne #0x35, notdns
	//     ldb [x + 20]                 ; label length, for *
	//     jlt #0x1, nomatch
	//     jgt #0x3f, nomatch           ; longer labels do not exist: a compression pointer
	//     add x
	//     add #21
	//     tax                          ; X = after the label
	//     ld [x + 0]                   ; "\aexa"
	//     or #0x202020                 ; fold case
	//     jne #0x7657861, nomatch
	//     ld [x + 4]                   ; "mple"
	//     or #0x20202020               ; fold case
	//     jne #0x6d706c65, nomatch
	//     ld [x + 8]                   ; "\x03com"
	//     or #0x202020                 ; fold case
	//     jne #0x3636f6d, nomatch
	//     ldb [x + 12]                 ; "\x00"
	//     jne #0x0, nomatch
	//     ret #65535                   ; matches "*.example.com"
	// nomatch:
	// notdns:
	//     ret #0
}

func ExampleSuffix() {
	p, err := bpfgen.Suffix(bpfgen.Options{}, "de ad xx ef")
	if err != nil {
		fmt.Println(err)
		return
	}
	text, _ := cbpf.Format(p.Insns)
	fmt.Println(text)
	// Output:
	// 9,128 0 0 0,53 0 6 4,20 0 0 4,7 0 0 0,64 0 0 0,84 0 0 4294902015,21 0 1 3735879919,6 0 0 65535,6 0 0 0
}

// Generate takes a generator's name and arguments as bpfgen's command line
// does.
func ExampleGenerate() {
	p, err := bpfgen.Generate(bpfgen.Options{}, "suffix", []string{"de ad xx ef"})
	if err != nil {
		fmt.Println(err)
		return
	}
	text, _ := cbpf.Format(p.Insns)
	fmt.Println(text)
	// Output:
	// 9,128 0 0 0,53 0 6 4,20 0 0 4,7 0 0 0,64 0 0 0,84 0 0 4294902015,21 0 1 3735879919,6 0 0 65535,6 0 0 0
}
