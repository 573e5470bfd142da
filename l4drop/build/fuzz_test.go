package build

import (
	"encoding/binary"
	"hash/fnv"
	"math/rand/v2"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// byteSource is a rand.Source that gives the fuzzer's bytes first, eight
// at a time, so that mutating them changes the choices they drive (the
// size, shapes, constants and actions of the first rules), then a PCG
// seeded with their hash.
type byteSource struct {
	data []byte
	rest *rand.PCG
}

func newByteSource(data []byte) *byteSource {
	h := fnv.New64a()
	h.Write(data)
	return &byteSource{data: data, rest: rand.NewPCG(h.Sum64(), 0xf022)}
}

func (s *byteSource) Uint64() uint64 {
	if len(s.data) == 0 {
		return s.rest.Uint64()
	}
	var b [8]byte
	n := copy(b[:], s.data)
	s.data = s.data[n:]
	return binary.LittleEndian.Uint64(b[:])
}

// FuzzRuleSet builds a rule set the fuzzer's bytes choose (1 to 256 rules
// of the property test's shapes and actions), loads it, and compares its
// verdicts with libpcap's on its packets, broken copies of them and the
// corpus, as TestRuleSetProperty does. A failing set is also kept in
// testdata/regress.
func FuzzRuleSet(f *testing.F) {
	fixture.RequireRoot(f)
	for _, seed := range [][]byte{
		{0}, // one rule
		{3, 0, 0, 0, 0, 0, 0, 0, 0x42, 0x17, 0x99, 0xfe},
		[]byte("a dozen rules of up to three shapes"),
	} {
		f.Add(seed)
	}
	corpus := corpusIP(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r := rand.New(newByteSource(data))
		size := 1 + r.IntN(256)
		fragDrop := r.IntN(2) == 0
		checkBatch(t, []propSet{genSet(r, "fuzz", size)}, fragDrop, corpus)
	})
}
