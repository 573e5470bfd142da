package cbpfc

import (
	"testing"
	"time"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestLargeFilter compiles a filter of the largest size accepted, with
// many loads, stores and branches, and loads it: compile time stays small
// and the verifier accepts it.
func TestLargeFilter(t *testing.T) {
	var prog []bpf.Instruction
	for len(prog) < MaxInstructions-8 {
		i := len(prog)
		prog = append(prog,
			bpf.LoadAbsolute{Off: uint32(i % 1400), Size: 2},
			bpf.StoreScratch{Src: bpf.RegA, N: i % 16},
			bpf.LoadMemShift{Off: uint32(i % 60)},
			bpf.LoadIndirect{Off: uint32(i % 40), Size: 1},
			bpf.ALUOpX{Op: bpf.ALUOpAdd},
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(i), SkipTrue: 2},
			bpf.LoadScratch{Dst: bpf.RegX, N: (i + 5) % 16},
			bpf.TXA{},
		)
	}
	prog = append(prog, bpf.RetA{})
	start := time.Now()
	insns, err := ToEBPF(prog, testOpts)
	if err != nil {
		t.Fatal(err)
	}
	src, err := ToC(prog, COpts{})
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("compiling %d instructions took %v", len(prog), d)
	}
	t.Logf("%d cBPF instructions: %d eBPF, %d bytes of C", len(prog), len(insns), len(src))
	fixture.RequireRoot(t)
	p, err := loadAsm(t, "cbpfc_large", valueProgram(insns))
	if err != nil {
		t.Fatalf("%.2000s", err)
	}
	p.Close()
}
