package build

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/l4drop/l4drop/l4drop"
)

// verifierLimit is the kernel's bound on instructions the verifier
// processes for one program.
const verifierLimit = 1_000_000

// progCost is what the verifier reported for one program of a build.
type progCost struct {
	name      string
	processed int   // instructions processed, or at least the limit
	err       error // the verifier's refusal, if any
}

// verifierCosts loads every program of obj on its own, with every rule
// switched on (the worst case a location can choose), and returns the
// instructions the verifier processed for each. Unlike NewDryRun it goes
// on past a refused program, so a test sees how far each one is from the
// limit.
func verifierCosts(tb testing.TB, obj []byte) []progCost {
	tb.Helper()
	_ = rlimit.RemoveMemlock()
	meta, err := l4drop.ReadMeta(obj)
	if err != nil {
		tb.Fatal(err)
	}
	var out []progCost
	for _, name := range meta.Programs {
		spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
		if err != nil {
			tb.Fatal(err)
		}
		for n := range spec.Programs {
			if n != name {
				delete(spec.Programs, n)
			}
		}
		// Switches on: the immediates the loader patches.
		for i := range spec.Programs[name].Instructions {
			ins := &spec.Programs[name].Instructions[i]
			ref := ins.Reference()
			if ins.OpCode.IsDWordLoad() && (strings.HasPrefix(ref, "RULE_") || ref == "L4_NEXT_ENABLED") {
				ins.Constant = 1
				*ins = ins.WithReference("")
			}
		}
		if ms := spec.Maps[l4drop.MapSamples]; ms != nil && ms.MaxEntries == 0 {
			ms.MaxEntries = 1
		}
		pc := progCost{name: name}
		coll, err := ebpf.NewCollection(spec)
		if err == nil {
			info, ierr := coll.Programs[name].Info()
			if ierr != nil {
				tb.Fatal(ierr)
			}
			n, ok := info.VerifiedInstructions()
			if !ok {
				tb.Skip("the kernel does not report verified instructions")
			}
			pc.processed = int(n)
			coll.Close()
		} else {
			pc.err = err
			pc.processed = verifierLimit
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				for _, l := range ve.Log {
					var n int
					if _, serr := fmt.Sscanf(l, "processed %d insns", &n); serr == nil {
						pc.processed = n
					}
				}
			}
		}
		out = append(out, pc)
	}
	return out
}
