package l4drop

import (
	"errors"
	"testing"
)

func TestPlanHash(t *testing.T) {
	for _, n := range []int{1, 2, 5, 100, 10000} {
		keys := make([][]uint64, n)
		for i := range keys {
			// Keys alike but for a few bits, as names and ports are.
			keys[i] = []uint64{0x6d6f632e656c7000 | uint64(i%256), uint64(i / 256)}
		}
		h, err := PlanHash(keys)
		if err != nil {
			t.Fatalf("%d keys: %v", n, err)
		}
		if h.Bits < 1 || 1<<h.Bits < n/hashSlots || 1<<h.Bits > 8*n+2 {
			t.Errorf("%d keys: %d bucket bits", n, h.Bits)
		}
		counts := map[uint32]int{}
		for _, k := range keys {
			counts[h.bucket(k)]++
		}
		for b, c := range counts {
			if c > hashSlots || b >= 1<<h.Bits {
				t.Errorf("%d keys: bucket %d has %d", n, b, c)
			}
		}
		if again, _ := PlanHash(keys); again != h {
			t.Errorf("%d keys: planned %+v, then %+v", n, h, again)
		}
	}
	// More equal keys than a bucket holds: no hash separates them.
	same := make([][]uint64, hashSlots+1)
	for i := range same {
		same[i] = []uint64{42}
	}
	if _, err := PlanHash(same); !errors.Is(err, errHashPlan) {
		t.Errorf("equal keys: %v, want errHashPlan", err)
	}
}

// TestPlanHashSlots: a key given as many times as it takes slots fits
// buckets of that many slots, and not fewer.
func TestPlanHashSlots(t *testing.T) {
	var keys [][]uint64
	for i := range 200 {
		for range 1 + i%3 {
			keys = append(keys, []uint64{uint64(i)})
		}
	}
	for range 10 {
		keys = append(keys, []uint64{1000})
	}
	tests := []struct {
		slots int
		ok    bool
	}{{4, false}, {8, false}, {10, true}, {16, true}, {0, false}, {MaxBucketSlots + 1, false}}
	for _, tt := range tests {
		h, err := PlanHashSlots(keys, tt.slots)
		if ok := err == nil; ok != tt.ok {
			t.Errorf("%d slots: %v, want ok %v", tt.slots, err, tt.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, errHashPlan) {
				t.Errorf("%d slots: %v, want errHashPlan", tt.slots, err)
			}
			continue
		}
		f := newBucketFill(tt.slots, 8, 0)
		for _, k := range keys {
			slot := f.slot(h.bucket(k))
			if slot == nil {
				t.Fatalf("%d slots: bucket %d overflows", tt.slots, h.bucket(k))
			}
			slot[0] = 1
		}
	}
}
