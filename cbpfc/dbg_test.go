package cbpfc

import (
	"fmt"
	"github.com/l4drop/l4drop/cbpf"
	"os"
	"testing"
)

func TestDbg(t *testing.T) {
	lt, _ := cbpf.ParseLinkType(os.Getenv("LT"))
	p, err := cbpf.Compile(os.Getenv("EXPR"), lt, 262144)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(cbpf.Listing(p))
	ins, err := XDPProgram(p)
	fmt.Println(ins, err, len(ins))
	if os.Getenv("C") != "" {
		s, _ := ToC(p, COpts{})
		fmt.Println(s)
	}
}
func TestDbgC(t *testing.T) {
	lt, _ := cbpf.ParseLinkType(os.Getenv("LT"))
	p, _ := cbpf.Compile(os.Getenv("EXPR"), lt, 262144)
	s, _ := XDPProgramC(p, "f0")
	os.WriteFile("/tmp/dbg.c", []byte(CPrelude+s+"char _license[] __attribute__((section(\"license\"), used)) = \"GPL\";\n"), 0o644)
}
