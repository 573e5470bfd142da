package build

import (
	"bytes"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/l4drop"
)

// TestQuietTwins: of the first program's four builds, the quiet twin makes
// no tail call at all (any would cost every packet the JIT's set-up of the
// tail-call counter), its --next twin only the one to the chain's --next
// slot, and the loud one and the hook's body call the hook as well.
func TestQuietTwins(t *testing.T) {
	rs, err := ParseRuleSet("twins.yaml", []byte(`rules:
  - name: name
    dns: ["host0.attack.example"]
  - name: port
    expr: "udp dst port 1000"
  - name: pass
    expr: "udp dst port 2000"
    action: pass
`))
	if err != nil {
		t.Fatal(err)
	}
	obj, gen, err := Build(rs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		prog       string
		next, hook bool
	}{
		{l4drop.ProgQuiet, false, false},
		{l4drop.ProgQuietNext, true, false},
		{l4drop.ProgBody, true, true},
		{gen.Meta.Programs[0], true, true},
	} {
		ps := spec.Programs[tt.prog]
		if ps == nil {
			t.Fatalf("program %s missing", tt.prog)
		}
		next, hook := tailCalls(ps.Instructions)
		if next != tt.next || hook != tt.hook {
			t.Errorf("%s: tail calls to --next %v, to the hook %v; want %v, %v", tt.prog, next, hook, tt.next, tt.hook)
		}
	}
}

// tailCalls reports whether insns make tail calls through the chain map
// (to --next, in a rule set of one program) and through the xdpcap hook.
func tailCalls(insns asm.Instructions) (chain, hook bool) {
	var r2 string // the map R2 was last loaded with
	for _, ins := range insns {
		if ins.IsLoadFromMap() && ins.Dst == asm.R2 {
			r2 = ins.Reference()
		}
		if ins.IsBuiltinCall() && ins.Constant == int64(asm.FnTailCall) {
			switch r2 {
			case l4drop.MapChain:
				chain = true
			case l4drop.MapHook:
				hook = true
			}
		}
	}
	return chain, hook
}
