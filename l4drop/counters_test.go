package l4drop

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// newCountersMap makes a MapCounters map of n counters, chunk to an
// element.
func newCountersMap(t *testing.T, n, chunk int) *counterTable {
	t.Helper()
	fixture.RequireRoot(t)
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "l4t_counters", Type: ebpf.PerCPUArray, KeySize: 4,
		ValueSize: uint32(16 * chunk), MaxEntries: uint32((n + chunk - 1) / chunk),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	ct, err := newCounterTable(m)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// perCPU is a counter's distinct values on each CPU.
func perCPU(ct *counterTable, i int) []Counter {
	per := make([]Counter, ct.cpus)
	for c := range per {
		per[c] = Counter{uint64(1000*i + c + 1), uint64(7 * (1000*i + c + 1))}
	}
	return per
}

// TestCounterTable writes counters at the edges of elements of each layout
// (one to an element, as rule sets of more than CounterChunk counters and
// those built before version 3 have, and many) and reads them back, each
// and summed.
func TestCounterTable(t *testing.T) {
	for _, tt := range []struct{ n, chunk int }{{40, 1}, {40, 64}, {100, 32}, {CounterChunk, CounterChunk}} {
		ct := newCountersMap(t, tt.n, tt.chunk)
		set := map[int][]Counter{}
		for _, i := range []int{0, tt.chunk - 1, tt.chunk, tt.n - 1} {
			if i < ct.len() {
				set[i] = perCPU(ct, i)
			}
		}
		if err := ct.set(set); err != nil {
			t.Fatal(err)
		}
		all, err := ct.all()
		if err != nil {
			t.Fatal(err)
		}
		sums, err := ReadCounterMap(ct.m)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) != ct.len() || len(sums) != ct.len() || ct.len() < tt.n {
			t.Fatalf("%d counters, %d to an element: read %d and %d of %d", tt.n, tt.chunk, len(all), len(sums), ct.len())
		}
		for i := range all {
			want := set[i]
			if want == nil {
				want = make([]Counter, ct.cpus)
			}
			var sum Counter
			for c := range want {
				if all[i][c] != want[c] {
					t.Errorf("%d counters, %d to an element: counter %d on CPU %d is %v, want %v", tt.n, tt.chunk, i, c, all[i][c], want[c])
				}
				sum.Packets += want[c].Packets
				sum.Bytes += want[c].Bytes
			}
			if sums[i] != sum {
				t.Errorf("%d counters, %d to an element: counter %d sums to %v, want %v", tt.n, tt.chunk, i, sums[i], sum)
			}
			if got, err := ct.get(i); err != nil || got[0] != want[0] {
				t.Errorf("%d counters, %d to an element: get(%d) = %v, %v; want %v", tt.n, tt.chunk, i, got, err, want)
			}
		}
	}
}

// TestCarryAcrossLayouts reloads from a rule set whose counters are one to
// an element (built before version 3, or past CounterChunk) to one whose
// are in one element, and back: a kept rule, the no-rule counter and the
// auto rules' carry, with what the old program counts until the swap.
func TestCarryAcrossLayouts(t *testing.T) {
	a := MetaRule{Name: "a", Action: "drop", Matchers: []string{"expr"}}
	b := MetaRule{Name: "b", Action: "drop", Matchers: []string{"dns"}}
	c := MetaRule{Name: "c", Action: "pass", Matchers: []string{"expr"}}
	oldMeta := Meta{Rules: []MetaRule{a, b}}
	newMeta := Meta{Rules: []MetaRule{b, c, a}}
	n := func(m Meta) int { return len(m.Rules) + 1 + AutoSlots }
	for _, tt := range []struct{ from, to int }{{1, 32}, {32, 1}, {32, 32}} {
		old := newCountersMap(t, n(oldMeta), tt.from)
		to := newCountersMap(t, n(newMeta), tt.to)
		set := map[int][]Counter{}
		for i := range n(oldMeta) {
			set[i] = perCPU(old, i)
		}
		if err := old.set(set); err != nil {
			t.Fatal(err)
		}
		p := &previous{state: &State{Meta: oldMeta}, counters: old.m}
		cr := p.carry(&newMeta, to.m)
		// The old program counts on until the swap: one more packet of
		// b (old rule 1) on CPU 0.
		more := perCPU(old, 1)
		more[0].Packets++
		if err := old.set(map[int][]Counter{1: more}); err != nil {
			t.Fatal(err)
		}
		cr.delta()
		got, err := to.all()
		if err != nil {
			t.Fatal(err)
		}
		want := map[int][]Counter{0: more, 1: nil, 2: perCPU(old, 0)} // b, c (new), a
		for k := 0; k <= AutoSlots; k++ {
			want[len(newMeta.Rules)+k] = perCPU(old, len(oldMeta.Rules)+k)
		}
		for i, w := range want {
			for cpu := range got[i] {
				var wc Counter
				if w != nil {
					wc = w[cpu]
				}
				if got[i][cpu] != wc {
					t.Errorf("%d to %d to an element: counter %d on CPU %d is %v, want %v", tt.from, tt.to, i, cpu, got[i][cpu], wc)
				}
			}
		}
	}
}
