package cbpfc

import (
	"strings"
	"testing"

	"golang.org/x/net/bpf"
)

// ParamTest stands for a parameter's equality tests and bounds, so that a
// caller can watch the values they compare; jset stays a test.
func TestParamTest(t *testing.T) {
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 2},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: 7, SkipTrue: 3},              // 1: port 7 matches
		bpf.JumpIf{Cond: bpf.JumpGreaterOrEqual, Val: 1000, SkipFalse: 3}, // 2: lower bound
		bpf.JumpIf{Cond: bpf.JumpGreaterThan, Val: 1010, SkipTrue: 2},     // 3: upper bound
		bpf.JumpIf{Cond: bpf.JumpBitsSet, Val: 0x10, SkipTrue: 1},         // 4: flags
		bpf.RetConstant{Val: 1},
		bpf.RetConstant{Val: 1},
		bpf.RetConstant{Val: 0},
	}
	src, err := ToC(prog, COpts{FunctionName: "f", Params: map[int]string{1: "eq", 2: "lo", 3: "hi", 4: "fl"}, ParamTest: "watch"})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"watch(eq, A)", "watch(lo, A)", "watch(hi, A)", "A & fl"} {
		if !strings.Contains(src, want) {
			t.Errorf("the C lacks %q:\n%s", want, src)
		}
	}
}
