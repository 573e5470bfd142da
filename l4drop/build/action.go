package build

import (
	"fmt"
	"slices"
	"strings"

	"github.com/l4drop/l4drop/l4drop"

	"gopkg.in/yaml.v3"
)

// Action is what happens to a packet a rule matches.
type Action string

// Actions a rule may take. The first matching rule with a final action
// (drop, pass, syncookie) decides; monitor rules count and sample the
// packets they match and let the next rules judge them; ratelimit rules
// drop the packets over their limit and let the next rules judge the
// others.
const (
	ActionDrop      Action = "drop"
	ActionPass      Action = "pass"
	ActionMonitor   Action = "monitor"
	ActionSyncookie Action = "syncookie"
	ActionRatelimit Action = "ratelimit"
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
	// cond, if set, returns C that is ANDed to rule i's condition: the
	// rule decides only the packets for which it holds as well (ip, end
	// and fam are in scope).
	cond func(i int, r *Rule) string
	// ruleC, if set, returns C rule i needs of its own (its maps),
	// written before the programs.
	ruleC func(i int, r *Rule) string
}

// resultShift is how far a rule's index is shifted in a test's result, to
// make room for the action's code; codeMask keeps the code.
const (
	resultShift = l4drop.ResultShift
	codeMask    = 1<<resultShift - 1
)

// testResult is what a test returns for rule i, whose action has code:
// the C after matched: takes them apart again.
func testResult(i, code int) int { return i<<resultShift | code }

// actionKinds are the actions rules may take.
var actionKinds = map[Action]*actionKind{
	ActionDrop: {final: true, code: 0, verdict: func(w *cWriter) { w.printf("\t\taction = XDP_DROP;\n") }},
	ActionPass: {final: true, code: 1, verdict: func(w *cWriter) { w.printf("\t\taction = XDP_PASS;\n") }},
	// Monitor has a code only for the tables' sake; it never returns it.
	ActionMonitor:   {final: false, code: 2},
	ActionSyncookie: {final: true, code: 3, verdict: syncookieVerdict, prelude: syncookieGenC()},
	// A ratelimit rule matches only the packets over its limit (cond),
	// which it drops; the others go on to the next rules.
	ActionRatelimit: {final: true, code: 4, verdict: ratelimitVerdict, prelude: ratelimitSupportC(),
		cond: ratelimitCond, ruleC: ratelimitRuleC},
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

// actionCond is the C ANDed to rule i's condition for its action, "" or
// " && ...".
func actionCond(i int, r *Rule) string {
	if k := r.Action.kind(); k != nil && k.cond != nil {
		return " && " + k.cond(i, r)
	}
	return ""
}

// actionRuleC is the C of rule i's action of its own (maps), or "".
func actionRuleC(i int, r *Rule) string {
	if k := r.Action.kind(); k != nil && k.ruleC != nil {
		return k.ruleC(i, r)
	}
	return ""
}

// checkAction checks the fields that belong to r's action: rate, burst,
// per and max_sources only with ratelimit.
func (rs *RuleSet) checkAction(r *Rule) error {
	if r.Action != ActionRatelimit {
		if r.Rate != 0 || r.Burst != 0 || r.Per != "" || r.MaxSources != 0 {
			return rs.errorf(r, "rate, burst, per and max_sources are for action ratelimit, not %s", r.Action)
		}
		return nil
	}
	rl, err := ParseRateLimit(r.Rate, r.Burst, r.Per)
	if err != nil {
		return rs.errorf(r, "%v (ratelimit wants rate: PACKETS_PER_SECOND, optional burst: N, per: rule|source|source/24|source/64)", err)
	}
	if rl.Per == PerRule && r.MaxSources != 0 {
		return rs.errorf(r, "max_sources is for per: source, not per: rule")
	}
	if r.MaxSources > maxMaxSources {
		return rs.errorf(r, "max_sources %d: at most %d", r.MaxSources, maxMaxSources)
	}
	rl.MaxSources = r.MaxSources
	r.ratelimit = rl
	return nil
}

// maxMaxSources bounds a per-source table: 2^24 sources are 512 MiB.
const maxMaxSources = 1 << 24

// actionCountC is the per-action counters' map (l4drop.MapActions) and
// l4_action_count, written after the maps: every program has them, so that
// status reads the same map whatever the rule set.
var actionCountC = fmt.Sprintf(`
/* Per-action counters: l4drop.ActionCounterNames. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, %d);
	__type(key, __u32);
	__type(value, __u64);
} %s SEC(".maps");

#define L4_COUNT_RATELIMITED %d
#define L4_COUNT_MONITORED %d

static __always_inline void l4_action_count(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&%s, &slot);
	if (n)
		*n += 1;
}
`, l4drop.ActionCounterSlots, l4drop.MapActions, l4drop.CountRatelimited, l4drop.CountMonitored, l4drop.MapActions)

// syncookieVerdict answers a packet of a syncookie rule (SyncookieOptions)
// and counts the outcome; the SYN-ACK leaves through l4_finish's XDP_TX path.
func syncookieVerdict(w *cWriter) {
	w.printf("\t\t{\n")
	w.printf("\t\t\t__u32 sc = l4_sc_global(ctx, (__u32)(ip - data), (__u32)fam);\n")
	w.printf("\t\t\taction = l4_syncookie_action(sc);\n")
	// The frame may have been resized.
	w.printf("\t\t\tdata = (const uint8_t *)(long)ctx->data;\n\t\t\tend = (const uint8_t *)(long)ctx->data_end;\n")
	w.printf("\t\t\tl4_action_count(sc);\n\t\t}\n")
}

// ratelimitVerdict drops a packet over its rule's limit and counts it.
func ratelimitVerdict(w *cWriter) {
	w.printf("\t\taction = XDP_DROP;\n\t\tl4_action_count(L4_COUNT_RATELIMITED);\n")
}

// ratelimitCond holds for packets over rule i's limit.
func ratelimitCond(i int, r *Rule) string {
	return fmt.Sprintf("!l4_rl_global_%d(ctx, L4_IPOFF(ctx, ip), (__u64)fam)", i)
}

// ratelimitRuleC is rule i's bucket map and a global function that takes
// a token from it. Global, so that the verifier checks it once: inlined in
// a block of rules, each of its ways out would have the rest of the block
// walked again, past the verifier's limit in blocks of many rules.
func ratelimitRuleC(i int, r *Rule) string {
	return ratelimitMapC(i, r.ratelimit) + fmt.Sprintf(`
__attribute__((noinline)) int l4_rl_global_%d(struct xdp_md *ctx, __u64 ip_off, __u64 fam)
{
	/* Used, so that clang passes them: a per-rule limit reads neither, and
	 * the verifier refuses a global function called with an argument unset.
	 * 64 bits wide, so that the bounds check below covers all of ip_off. */
	asm volatile("" : : "r"(ip_off), "r"(fam));
	const uint8_t *data = (const uint8_t *)(long)ctx->data;
	const uint8_t *end = (const uint8_t *)(long)ctx->data_end;
	if (ip_off > L4_MAX_IPOFF)
		return 1;
	const uint8_t *ip = data + ip_off;
	return %s;
}
`, i, ratelimitCall(i, r.ratelimit, "ip", "end", "(int)fam"))
}

// checkFragments checks the rule set's fragments option: pass (the
// default), drop, or ratelimit with fragments_rate and fragments_burst.
func (rs *RuleSet) checkFragments(root *yaml.Node) error {
	line := keyLine(root, "fragments")
	switch rs.Fragments {
	case "":
		rs.Fragments = ActionPass
	case ActionPass, ActionDrop:
	case ActionRatelimit:
		rl, err := ParseRateLimit(rs.FragmentsRate, rs.FragmentsBurst, "rule")
		if err != nil {
			return fmt.Errorf("%s:%d: %w: fragments ratelimit: %w (want fragments_rate: PACKETS_PER_SECOND, optional fragments_burst: N)", rs.File, line, ErrRuleSet, err)
		}
		rs.fragmentsLimit = rl
		return nil
	default:
		return fmt.Errorf("%s:%d: %w: fragments %q: want pass, drop or ratelimit", rs.File, line, ErrRuleSet, rs.Fragments)
	}
	if rs.FragmentsRate != 0 || rs.FragmentsBurst != 0 {
		if l := keyLine(root, "fragments_rate"); l != 0 {
			line = l
		}
		return fmt.Errorf("%s:%d: %w: fragments_rate and fragments_burst are for fragments: ratelimit", rs.File, line, ErrRuleSet)
	}
	return nil
}

// fragmentsMapIndex is the bucket map's index for fragments: ratelimit,
// after any rule's (ratelimitMapName).
const fragmentsMapIndex = 1 << 30

// fragmentsMapC is the bucket of fragments: ratelimit, and the ratelimit
// action's shared C unless a rule's use of the action wrote it (ruleLimits).
func fragmentsMapC(rs *RuleSet, ruleLimits bool) string {
	if rs.Fragments != ActionRatelimit {
		return ""
	}
	c := "\n/* fragments: ratelimit. */\n"
	if !ruleLimits {
		c += ratelimitSupportC()
	}
	return c + ratelimitMapC(fragmentsMapIndex, rs.fragmentsLimit)
}

// fragmentsC is what the last program does, after the rules, with a later
// fragment no rule matched: drop it, or drop it over the limit (counted
// as ratelimited); otherwise the auto rules judge it.
func fragmentsC(rs *RuleSet) string {
	switch rs.Fragments {
	case ActionDrop:
		return fmt.Sprintf("\tif (l4_later_fragment(ip, end, fam))\n\t\t%s\n", finishC("L4_NRULES", "XDP_DROP"))
	case ActionRatelimit:
		return fmt.Sprintf("\tif (l4_later_fragment(ip, end, fam) && !%s) {\n\t\tl4_action_count(L4_COUNT_RATELIMITED);\n\t\t%s\n\t}\n",
			ratelimitCall(fragmentsMapIndex, rs.fragmentsLimit, "ip", "end", "fam"), finishC("L4_NRULES", "XDP_DROP"))
	}
	return ""
}

// actionCost is what rule r's action adds to its program, for the layout:
// maps (of the 64 a program may use) and functions (subprograms).
func actionCost(r *Rule) (maps, funcs int) {
	switch r.Action {
	case ActionRatelimit:
		return 1, 1 // its buckets and l4_rl_global_N
	case ActionSyncookie:
		return 0, 2 // l4_sc_global and its option walk's callback, counted once per rule
	}
	return 0, 0
}
