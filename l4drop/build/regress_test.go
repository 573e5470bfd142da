package build

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop"
)

// TestRegressions builds and loads the rule sets the property test and
// FuzzRuleSet once found failing (testdata/regress).
func TestRegressions(t *testing.T) {
	fixture.RequireRoot(t)
	files, _ := filepath.Glob(filepath.Join("testdata", "regress", "*.yaml"))
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			rs, err := ParseRuleSet(f, data)
			if err != nil {
				t.Fatal(err)
			}
			obj, gen, err := Build(rs, BuildOptions{})
			if err != nil {
				t.Fatal(err)
			}
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
			if err != nil {
				t.Fatalf("%d programs: %v", len(gen.Meta.Programs), err)
			}
			d.Close()
			// How far from the verifier's limit the layout keeps each
			// program, every rule on.
			most := 0
			for _, c := range verifierCosts(t, obj) {
				if c.err != nil {
					t.Fatalf("%s: %v", c.name, c.err)
				}
				most = max(most, c.processed)
			}
			t.Logf("%d rules, %d programs, at most %d instructions processed of %d", len(rs.Rules), len(gen.Meta.Programs), most, verifierLimit)
		})
	}
}
