package build

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

// progMap opens the map of a loaded program by name; nil if it has none.
func progMap(t *testing.T, prog *ebpf.Program, name string) *ebpf.Map {
	t.Helper()
	info, err := prog.Info()
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := info.MapIDs()
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		if mi, err := m.Info(); err == nil && mi.Name == name {
			return m
		}
		m.Close()
	}
	return nil
}

// countersOf reads prog's counters (l4drop.ReadCounterMap), summed over
// CPUs.
func countersOf(t *testing.T, prog *ebpf.Program) []l4drop.Counter {
	t.Helper()
	m := progMap(t, prog, l4drop.MapCounters)
	if m == nil {
		t.Fatal("no counters map")
	}
	defer m.Close()
	cs, err := l4drop.ReadCounterMap(m)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// counterOf sums the packets counter entry i of prog counted on all CPUs.
func counterOf(t *testing.T, prog *ebpf.Program, i int) uint64 {
	t.Helper()
	return countersOf(t, prog)[i].Packets
}

// TestCountersLayouts: each packet counts, with its bytes, for the rule
// that decided it (or for none), in a rule set whose counters fit in one
// element of the counters map, which the program looks up as it starts,
// and in one whose counters are one to an element (more than
// l4drop.CounterChunk), each looked up as the packet is counted.
func TestCountersLayouts(t *testing.T) {
	fixture.RequireRoot(t)
	for _, n := range []int{3, l4drop.CounterChunk} {
		var b strings.Builder
		b.WriteString("sample_rate: 0\nrules:\n")
		for i := range n {
			fmt.Fprintf(&b, "  - name: p%d\n    expr: \"udp dst port %d\"\n", i, 1000+i)
		}
		d, err := l4drop.NewDryRun(buildYAML(t, b.String()), l4drop.LoadOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		if err := d.SetSampleRate(0); err != nil {
			t.Fatal(err)
		}
		// Packets per counter: the first rule, one in the middle, the
		// last, and none (port 9).
		sent := map[int]int{0: 1, n / 2: 2, n - 1: 3, n: 4}
		size := map[int]int{}
		for rule, k := range sent {
			port := 1000 + rule
			if rule == n {
				port = 9
			}
			frame := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, uint16(port), make([]byte, rule%7))
			size[rule] = len(frame)
			for range k {
				if _, err := d.Program().Run(&ebpf.RunOptions{Data: frame}); err != nil {
					t.Fatal(err)
				}
			}
		}
		cs := countersOf(t, d.Program())
		if len(cs) < n+1+l4drop.AutoSlots {
			t.Fatalf("%d rules: %d counters, want %d at least", n, len(cs), n+1+l4drop.AutoSlots)
		}
		for i := range n + 1 + l4drop.AutoSlots {
			want := l4drop.Counter{Packets: uint64(sent[i]), Bytes: uint64(sent[i] * size[i])}
			if cs[i] != want {
				t.Errorf("%d rules: counter %d is %+v, want %+v", n, i, cs[i], want)
			}
		}
	}
}
