package splitmix

import (
	"math/bits"
	"testing"
)

// The first outputs of SplitMix64 seeded with 0 are published values
// (Vigna's reference implementation): Mix of the running state must give
// them.
func TestReference(t *testing.T) {
	want := []uint64{0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f}
	for i, w := range want {
		if got := Mix(uint64(i) * 0x9e3779b97f4a7c15); got != w {
			t.Errorf("Mix(state %d) = %#x, want %#x", i, got, w)
		}
	}
}

// Avalanche: flipping one input bit flips close to half the output bits
// on average.
func TestAvalanche(t *testing.T) {
	total := 0
	const n = 1000
	for i := range uint64(n) {
		x := i * 0x2545f4914f6cdd1d
		total += bits.OnesCount64(Mix(x) ^ Mix(x^1<<(i%64)))
	}
	if avg := float64(total) / n; avg < 28 || avg > 36 {
		t.Errorf("average %.1f output bits change per input bit, want about 32", avg)
	}
}
