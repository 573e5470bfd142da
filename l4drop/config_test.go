package l4drop

import (
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

// The sample configuration reads and writes in both layouts: rule sets
// built before the seed have a 16-byte l4drop_cfg, which a newer l4drop
// still loads and sets the rate of.
func TestConfigLayouts(t *testing.T) {
	fixture.RequireRoot(t)
	for _, tt := range []struct {
		size     uint32
		wantSeed uint64
	}{{legacyConfigSize, 0}, {24, 0x1234}} {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: tt.size, MaxEntries: 1})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		in := config{Threshold: SampleThreshold(64), Snaplen: 256, Seed: 0x1234}
		if err := writeConfig(m, in); err != nil {
			t.Fatalf("%d bytes: write: %v", tt.size, err)
		}
		out, err := readConfig(m)
		if err != nil {
			t.Fatalf("%d bytes: read: %v", tt.size, err)
		}
		if want := (config{Threshold: in.Threshold, Snaplen: 256, Seed: tt.wantSeed}); out != want {
			t.Errorf("%d bytes: read %+v, want %+v", tt.size, out, want)
		}
	}
}
