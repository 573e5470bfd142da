package l4drop

import (
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
)

// CounterChunk is the most counters one element of MapCounters holds: a
// per-CPU element is at most 32 KiB. A rule set with as many counters or
// fewer has them all in one element, which a program looks up once, as it
// starts, where the lookup's chain of dependent loads overlaps the
// parsing, and counts a packet with one add where it ends (1,000 DNS
// wildcards in BPF_PROG_TEST_RUN: 5.0 to 4.3 ns above drop-all). A larger
// set has its counters one to an element, looked up as the packet is
// counted.
const CounterChunk = 2048

// Counter is a packet and byte count.
type Counter struct{ Packets, Bytes uint64 }

// counterTable is a MapCounters map: the rules' counters, then the one of
// packets no rule matched, then the auto rules', chunk to an element, each
// per CPU. A map of rule sets built before the chunks has one counter to
// an element, which is chunk 1.
type counterTable struct {
	m     *ebpf.Map
	chunk int
	cpus  int
}

func newCounterTable(m *ebpf.Map) (*counterTable, error) {
	size := int(unsafe.Sizeof(Counter{}))
	vs := int(m.ValueSize())
	if vs == 0 || vs%size != 0 || vs/size > CounterChunk {
		return nil, fmt.Errorf("counters map: value of %d bytes is not 1 to %d counters of %d: rebuild the rules", vs, CounterChunk, size)
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("counters map: %w", err)
	}
	return &counterTable{m: m, chunk: vs / size, cpus: cpus}, nil
}

// len is the number of counters.
func (t *counterTable) len() int { return int(t.m.MaxEntries()) * t.chunk }

// element reads element e: per CPU, its counters.
func (t *counterTable) element(e int) ([][]Counter, error) {
	v := make([][]Counter, t.cpus)
	for c := range v {
		v[c] = make([]Counter, t.chunk)
	}
	if err := t.m.Lookup(uint32(e), v); err != nil {
		return nil, fmt.Errorf("read counters %d to %d: %w", e*t.chunk, (e+1)*t.chunk-1, err)
	}
	return v, nil
}

func (t *counterTable) putElement(e int, v [][]Counter) error {
	if err := t.m.Put(uint32(e), v); err != nil {
		return fmt.Errorf("write counters %d to %d: %w", e*t.chunk, (e+1)*t.chunk-1, err)
	}
	return nil
}

// get reads counter i: per CPU.
func (t *counterTable) get(i int) ([]Counter, error) {
	v, err := t.element(i / t.chunk)
	if err != nil {
		return nil, err
	}
	return counterOf(v, i%t.chunk), nil
}

// counterOf takes counter i of an element's: per CPU.
func counterOf(v [][]Counter, i int) []Counter {
	per := make([]Counter, len(v))
	for c := range per {
		per[c] = v[c][i]
	}
	return per
}

// all reads every counter: per counter, per CPU.
func (t *counterTable) all() ([][]Counter, error) {
	out := make([][]Counter, 0, t.len())
	for e := range int(t.m.MaxEntries()) {
		v, err := t.element(e)
		if err != nil {
			return nil, err
		}
		for i := range t.chunk {
			out = append(out, counterOf(v, i))
		}
	}
	return out, nil
}

// set writes counters (index to per-CPU values), each element once;
// indexes past the map are left out.
func (t *counterTable) set(vals map[int][]Counter) error {
	byElem := map[int][]int{}
	for i := range vals {
		if i >= 0 && i < t.len() {
			byElem[i/t.chunk] = append(byElem[i/t.chunk], i)
		}
	}
	for e, is := range byElem {
		v, err := t.element(e)
		if err != nil {
			return err
		}
		for _, i := range is {
			for c := range v {
				v[c][i%t.chunk] = Counter{}
				if c < len(vals[i]) {
					v[c][i%t.chunk] = vals[i][c]
				}
			}
		}
		if err := t.putElement(e, v); err != nil {
			return err
		}
	}
	return nil
}

// ReadCounterMap returns the counters of a MapCounters map, summed over
// CPUs: per rule, then packets no rule matched, then the auto rules.
func ReadCounterMap(m *ebpf.Map) ([]Counter, error) {
	t, err := newCounterTable(m)
	if err != nil {
		return nil, err
	}
	all, err := t.all()
	if err != nil {
		return nil, err
	}
	out := make([]Counter, len(all))
	for i, per := range all {
		for _, c := range per {
			out[i].Packets += c.Packets
			out[i].Bytes += c.Bytes
		}
	}
	return out, nil
}
