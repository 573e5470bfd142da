package build_test

import (
	"fmt"
	"log"

	"github.com/l4drop/l4drop/l4drop/build"
)

func ExampleGenerate() {
	rs, err := build.ParseRuleSet("rules.yaml", []byte(`
sample_rate: 1000
rules:
  - name: syn-flood-80
    expr: "tcp[tcpflags] & tcp-syn != 0 and dst port 80"
  - name: bad-names
    dns: ["a.attack.example", "b.attack.example"]
    locations: [ams]
`))
	if err != nil {
		log.Fatal(err)
	}
	gen, err := build.Generate(rs, build.BuildOptions{})
	if err != nil {
		log.Fatal(err)
	}
	// gen.C is the program; build.Build also runs clang over it.
	for _, r := range gen.Meta.Rules {
		fmt.Printf("%s %v switch=%q\n", r.Name, r.Matchers, r.Symbol)
	}
	fmt.Println(len(gen.Meta.Programs), "program")
	// Output:
	// syn-flood-80 [expr] switch="RULE_0_ENABLED"
	// bad-names [dns-table] switch="RULE_1_ENABLED"
	// 1 program
}

func ExampleRule_EnabledAt() {
	r := build.Rule{Name: "only-in-ams", Locations: []string{"ams"}}
	fmt.Println(r.EnabledAt("ams"), r.EnabledAt("sjc"))
	// Output: true false
}
