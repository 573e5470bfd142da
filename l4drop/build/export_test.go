package build

import "testing"

// ProgCost and VerifierCosts are progCost and verifierCosts for the
// external tests (package build_test), which import lab/bench and so
// cannot be in package build.
type ProgCost struct {
	Name      string
	Processed int
	Err       error
}

func VerifierCosts(tb testing.TB, obj []byte) []ProgCost {
	var out []ProgCost
	for _, c := range verifierCosts(tb, obj) {
		out = append(out, ProgCost{c.name, c.processed, c.err})
	}
	return out
}

const VerifierLimit = verifierLimit
