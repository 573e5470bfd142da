package l4drop

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/splitmix"
)

// The generated program's lookup tables (DNS names, constants of rules
// tested at once) are array maps of buckets the program indexes itself,
// not kernel hash maps: a hash map lookup hashes the key with jhash and
// walks a bucket list behind a helper call, 30-40 ns a packet here, while
// the program hashes the words it already holds in registers with two
// instructions a word and compares a bucket's few slots inline.
//
// Every key a table may hold is known when the rule set is built, so the
// build picks a seed and a number of buckets under which no bucket gets
// more keys than it has slots; the loader places the keys of the enabled
// rules, a subset, with the same hash.

// HashSlots is the number of slots of a bucket (the programs'
// L4_HASH_SLOTS).
const HashSlots = hashSlots

const hashSlots = 4

// hashMul is the multiplier of tableHash (2^64 divided by the golden ratio).
const hashMul = 0x9e3779b97f4a7c15

// maxHashBits bounds the buckets of a table (2^maxHashBits).
const maxHashBits = 24

// HashTable says how a table of the program hashes its keys: the bucket of
// key words w is their hash's top Bits bits. The hash is the sum of the
// words times multipliers drawn from Seed (Sum, Multiplier): the program
// multiplies the words at once, where folding them into the hash one after
// the other waits for each multiply in turn (3 cycles a word). Rule sets
// built before Sum fold them (tableHash); the loader hashes as the ELF
// says.
type HashTable struct {
	Seed uint64 `json:"seed"`
	Bits int    `json:"bits"`
	Sum  bool   `json:"sum,omitempty"`
}

// Multiplier returns the odd multiplier of key word i of a Sum table.
func (t HashTable) Multiplier(i int) uint64 {
	return splitmix.Mix(t.Seed+uint64(i)) | 1
}

// hash returns the hash of key words under t.
func (t HashTable) hash(words []uint64) uint64 {
	if !t.Sum {
		return tableHash(t.Seed, words)
	}
	var h uint64
	for i, w := range words {
		h += w * t.Multiplier(i)
	}
	return h
}

// errHashPlan is returned when no seed spreads the keys well enough.
var errHashPlan = errors.New("no hash spreads the keys over buckets")

// tableHash folds key words into a hash, as programs built before
// HashTable.Sum did.
func tableHash(seed uint64, words []uint64) uint64 {
	h := seed
	for _, w := range words {
		h = (h ^ w) * hashMul
	}
	return h
}

// bucket returns the bucket of key words under t.
func (t HashTable) bucket(words []uint64) uint32 {
	return uint32(t.hash(words) >> (64 - t.Bits))
}

// PlanHash returns a HashTable under which no bucket gets more than
// hashSlots of keys, which must be distinct. Seeds are tried in a fixed
// order, so that a rule set always builds the same program.
func PlanHash(keys [][]uint64) (HashTable, error) {
	return PlanHashSlots(keys, hashSlots)
}

// MaxBucketSlots is the most slots a bucket of a table may have.
const MaxBucketSlots = 64

// PlanHashSlots is PlanHash for buckets of slots slots (at most
// MaxBucketSlots), with as many buckets: a key may be given more than
// once, to take as many slots of its bucket.
func PlanHashSlots(keys [][]uint64, slots int) (HashTable, error) {
	if slots < 1 || slots > MaxBucketSlots {
		return HashTable{}, fmt.Errorf("%w: %d slots a bucket", errHashPlan, slots)
	}
	// From one to two buckets a key (the memory is buckets times slots
	// times the key size): below, a bucket overflows too often for any
	// seed to avoid it; above, few seeds fail.
	b := max(1, bits.Len(uint(len(keys)-1)))
	for ; b <= maxHashBits; b++ {
		counts := make([]uint8, 1<<b)
		for try := uint64(1); try <= 64; try++ {
			t := HashTable{Seed: splitmix.Mix(try), Bits: b, Sum: true}
			clear(counts)
			ok := true
			for _, k := range keys {
				i := t.bucket(k)
				if int(counts[i]) == slots {
					ok = false
					break
				}
				counts[i]++
			}
			if ok {
				return t, nil
			}
		}
	}
	return HashTable{}, fmt.Errorf("%w (%d keys)", errHashPlan, len(keys))
}

// bucketFill builds the contents of a bucket table: buckets of slots
// slots of slotSize bytes, a slot being free while the uint32 at busyAt in
// it is 0. Slots fill in order, and a table is never changed once loaded:
// the programs stop at a bucket's first free slot.
type bucketFill struct {
	slots, bucketSize, slotSize, busyAt int
	buckets                             map[uint32][]byte
	used                                []uint32 // in the order first used
}

func newBucketFill(slots, slotSize, busyAt int) *bucketFill {
	return &bucketFill{slots: slots, bucketSize: slots * slotSize, slotSize: slotSize, busyAt: busyAt, buckets: map[uint32][]byte{}}
}

// slot returns the first free slot of bucket i, or nil if it is full.
func (f *bucketFill) slot(i uint32) []byte {
	bk := f.buckets[i]
	if bk == nil {
		bk = make([]byte, f.bucketSize)
		f.buckets[i] = bk
		f.used = append(f.used, i)
	}
	for s := 0; s < f.slots; s++ {
		slot := bk[s*f.slotSize : (s+1)*f.slotSize]
		if binary.NativeEndian.Uint32(slot[f.busyAt:]) == 0 {
			return slot
		}
	}
	return nil
}

// contents returns the buckets used, as map contents.
func (f *bucketFill) contents() []ebpf.MapKV {
	kvs := make([]ebpf.MapKV, 0, len(f.used))
	for _, i := range f.used {
		kvs = append(kvs, ebpf.MapKV{Key: i, Value: f.buckets[i]})
	}
	return kvs
}

// GlobalTablePrefix names the ELF section of a table the program holds as a
// global array of buckets (TableSection) rather than as an array map of
// them: it indexes the array itself, where a map lookup goes through a
// key on the stack and a check of it, about 0.9 ns a lookup.
const GlobalTablePrefix = ".data."

// TableSection returns the ELF section of the global array of table name.
func TableSection(name string) string { return GlobalTablePrefix + name }

// MaxGlobalTable is the largest table, in bytes, a build makes a global
// array: the map of its section is one value of that size, which the
// kernel allocates in one piece (at most 4 MiB).
const MaxGlobalTable = 1 << 20

// table is a bucket table of a spec: an array map of buckets, or the one
// value of a global array's section.
type table struct {
	spec       *ebpf.MapSpec
	vars       []*ebpf.VariableSpec // of a global's section: they make its contents
	global     bool
	bucketSize int
}

// findTable returns the table name of spec, of 1<<bits buckets, in either
// layout, or ok false if spec has neither.
func findTable(spec *ebpf.CollectionSpec, name string, bits int) (t table, ok bool, err error) {
	if ms := spec.Maps[name]; ms != nil {
		if ms.Type != ebpf.Array || ms.MaxEntries != 1<<bits {
			return t, true, fmt.Errorf("map %s: unknown layout", name)
		}
		return table{spec: ms, bucketSize: int(ms.ValueSize)}, true, nil
	}
	ms := spec.Maps[TableSection(name)]
	if ms == nil {
		return t, false, nil
	}
	if ms.Type != ebpf.Array || ms.MaxEntries != 1 || ms.ValueSize%(1<<bits) != 0 {
		return t, true, fmt.Errorf("section %s: unknown layout", TableSection(name))
	}
	t = table{spec: ms, global: true, bucketSize: int(ms.ValueSize >> bits)}
	for _, v := range spec.Variables {
		if v.SectionName == TableSection(name) {
			t.vars = append(t.vars, v)
		}
	}
	if len(t.vars) != 1 || t.vars[0].Offset != 0 || t.vars[0].Size() != ms.ValueSize {
		return t, true, fmt.Errorf("section %s: want one variable, the table", TableSection(name))
	}
	return t, true, nil
}

// fill sets t's contents to f's buckets.
func (t table) fill(f *bucketFill) {
	if !t.global {
		t.spec.Contents = f.contents()
		return
	}
	all := make([]byte, t.spec.ValueSize)
	for _, i := range f.used {
		copy(all[int(i)*t.bucketSize:], f.buckets[i])
	}
	// The loader writes a data section's variables over its contents.
	t.vars[0].Value = all
	t.spec.Contents = []ebpf.MapKV{{Key: uint32(0), Value: all}}
}
