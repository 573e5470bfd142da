package cbpfc

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/net/bpf"
)

// Stats are the sizes of a filter compiled into the minimal XDP program
// (XDPProgram), as cbpfc -emit stats prints them in JSON.
type Stats struct {
	// CBPF counts the filter's cBPF instructions.
	CBPF int `json:"cbpf"`
	// EBPF counts the eBPF instructions of the XDP program (a 64-bit
	// immediate load counts twice, as the kernel counts).
	EBPF int `json:"ebpf"`
	// Processed is the number of instructions the verifier processed
	// loading the program: what the kernel's complexity limit counts.
	Processed int `json:"processed"`
}

// VerifierStats compiles filter into the minimal XDP program, loads it
// into the kernel to learn how many instructions the verifier processed,
// and returns the program's sizes. It needs CAP_BPF, and Linux 5.16 for
// the verifier's count.
func VerifierStats(filter []bpf.Instruction) (Stats, error) {
	insns, err := XDPProgram(filter)
	if err != nil {
		return Stats{}, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return Stats{}, fmt.Errorf("memlock limit: %w", err)
	}
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "cbpfc", Type: ebpf.XDP, License: "GPL", Instructions: insns})
	if err != nil {
		return Stats{}, fmt.Errorf("load into the kernel: %w", err)
	}
	defer p.Close()
	info, err := p.Info()
	if err != nil {
		return Stats{}, fmt.Errorf("program info: %w", err)
	}
	processed, ok := info.VerifiedInstructions()
	if !ok {
		return Stats{}, errors.New("the kernel does not report verified instructions (needs Linux 5.16)")
	}
	return Stats{CBPF: len(filter), EBPF: int(insns.Size() / 8), Processed: int(processed)}, nil
}
