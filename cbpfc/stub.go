package cbpfc

import (
	"errors"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/net/bpf"
)

type program struct {
	usesContext, usesHelpers bool
}

func parse(filter []bpf.Instruction) (*program, error) {
	return nil, &Error{Index: -1, Err: errors.New("not implemented")}
}

func compileEBPF(p *program, opts EBPFOpts) (asm.Instructions, error) { return nil, nil }
func compileC(p *program, opts COpts) (string, error)                  { return "", nil }
