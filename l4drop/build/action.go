package build

import (
	"slices"
	"strings"
)

// Action is what happens to a packet a rule matches.
type Action string

// Actions a rule may take. The first matching rule with a final action
// (drop, pass) decides; monitor rules count and sample the packets they
// match and let the next rules judge them.
const (
	ActionDrop    Action = "drop"
	ActionPass    Action = "pass"
	ActionMonitor Action = "monitor"
)

// actionKind is how the generator compiles an action. An action is added
// with an entry in actionKinds: a final one gets a code, which the rule's
// test returns (rule << 4 | code), and verdict, which turns a match into
// an XDP action in the program's main function; C it needs (maps,
// functions) goes in prelude, written once before the programs when a
// rule of the set uses the action.
type actionKind struct {
	// final: a match ends the evaluation. Otherwise the match is counted
	// and sampled (l4_monitor) and the next rule is tried.
	final bool
	// code is the action's number in a test's result, 0 to 15.
	code int
	// verdict writes C that sets action (an XDP action) for a packet rule
	// matched; ctx, data, end, ip, fam and rule are in scope.
	verdict func(w *cWriter)
	// prelude is C the verdict needs, or "".
	prelude string
}

// resultShift is how far a rule's index is shifted in a test's result, to
// make room for the action's code.
const resultShift = 4

// actionKinds are the actions rules may take.
var actionKinds = map[Action]*actionKind{
	ActionDrop: {final: true, code: 0, verdict: func(w *cWriter) { w.printf("\t\taction = XDP_DROP;\n") }},
	ActionPass: {final: true, code: 1, verdict: func(w *cWriter) { w.printf("\t\taction = XDP_PASS;\n") }},
	// Monitor has a code only for the tables' sake; it never returns it.
	ActionMonitor: {final: false, code: 2},
}

// kind returns how a is compiled; nil for an unknown action.
func (a Action) kind() *actionKind { return actionKinds[a] }

// code is the action's number in a test's result.
func (a Action) code() int {
	if k := a.kind(); k != nil {
		return k.code
	}
	return 0
}

// final reports whether a match with a ends the evaluation.
func (a Action) final() bool {
	k := a.kind()
	return k == nil || k.final
}

// simple reports whether a is drop or pass, which the fast paths (DNS
// tables, sets) decide on their own.
func (a Action) simple() bool { return a == ActionDrop || a == ActionPass }

// actionNames lists the actions, for messages.
func actionNames() string {
	var names []string
	for a := range actionKinds {
		names = append(names, string(a))
	}
	slices.Sort(names)
	return strings.Join(names, ", ")
}
