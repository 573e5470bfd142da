//go:build !loadonly

// The output of l4drop test: packet number ranges and the JSON form.

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/l4drop/l4drop/l4drop"
)

// ranges prints 1,2,3,5 as 1-3,5.
func ranges(ns []int) string {
	var parts []string
	for i := 0; i < len(ns); {
		j := i
		for j+1 < len(ns) && ns[j+1] == ns[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", ns[i], ns[j]))
		} else {
			parts = append(parts, fmt.Sprint(ns[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// testJSON is what test --json prints.
type testJSON struct {
	// Packets counts the packets of the capture; Unmatched those no rule
	// matched (passed), Unseen those XDP never sees (in neither).
	Packets   int            `json:"packets"`
	Unmatched int            `json:"unmatched"`
	Unseen    int            `json:"unseen,omitempty"`
	Rules     []testRuleJSON `json:"rules"`
}

type testRuleJSON struct {
	Name    string `json:"name"`
	Action  string `json:"action"`
	Packets int    `json:"packets"`
}

// printTestJSON prints the packets each rule of the set decided, every
// rule in the set's order, for scripts that judge a rule set offline.
func printTestJSON(w io.Writer, meta *l4drop.Meta, counts map[string]int, total, unseen int) error {
	out := testJSON{Packets: total, Unmatched: counts["(no rule)"], Unseen: unseen, Rules: []testRuleJSON{}}
	for _, r := range meta.Rules {
		out.Rules = append(out.Rules, testRuleJSON{Name: r.Name, Action: r.Action, Packets: counts[r.Name]})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
