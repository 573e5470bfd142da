package scenario

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/lab"
)

// short are the options of the end-to-end tests: a learning period just
// long enough for the engine (1 s of learning, 2 s of quarantine), a
// short attack, a short expiry. Each run takes about 12 s.
func short(t *testing.T) Options {
	t.Helper()
	return Options{
		Learn: 3500 * time.Millisecond, EngineLearn: time.Second,
		Duration: 2500 * time.Millisecond, Expire: 2 * time.Second,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	}
}

func run(t *testing.T, name string, o Options) Result {
	t.Helper()
	fixture.RequireRoot(t)
	sc, err := lab.LookupScenario(name)
	if err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), sc, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", res)
	for _, r := range res.Rules {
		t.Logf("rule %+v", r)
	}
	return res
}

func autoRules(res Result) []Rule {
	var out []Rule
	for _, r := range res.Rules {
		if r.Auto {
			out = append(out, r)
		}
	}
	return out
}

// checkMitigated asserts the goals every attack must meet: a rule within
// 2 s, no legitimate packet matched by any auto rule, the rule gone within
// the expiry and 5 s of the attack's end, and (unless part of the attack
// is allow-listed) 99% of the attack dropped once mitigated.
func checkMitigated(t *testing.T, res Result, o Options, whole bool) {
	t.Helper()
	rules := autoRules(res)
	if len(rules) == 0 {
		t.Fatal("no auto rule")
	}
	if d := rules[0].Deployed; d == nil || *d > 2 || *d < 0 {
		t.Errorf("first rule deployed at %v s after the attack's start, want within 2 s", *d)
	}
	if res.LegitDropped != 0 {
		t.Errorf("%d legitimate packets matched by an auto rule", res.LegitDropped)
	}
	for _, r := range rules {
		if r.LegitMatched != 0 {
			t.Errorf("%s (%s) matches %d legitimate packets", r.Name, r.Expr, r.LegitMatched)
		}
	}
	limit := (o.Expire + 5*time.Second).Seconds()
	if res.ExpiredAfter == nil || *res.ExpiredAfter > limit {
		t.Errorf("rules expired %v s after the attack's end, want within %.0f s", res.ExpiredAfter, limit)
	}
	if res.LegitSent == 0 || res.LegitOK*10 < res.LegitSent*9 {
		t.Errorf("%d of %d legitimate packets reached the server", res.LegitOK, res.LegitSent)
	}
	if !whole {
		return
	}
	if res.TimeToMitigate == nil || *res.TimeToMitigate > 2 {
		t.Errorf("time to mitigate %v s, want within 2 s", res.TimeToMitigate)
	}
	// What the rule let through is what reached the server after it
	// (or may have, where the counting socket missed frames): at most 1%
	// of what it dropped. The program's drops fall short of what was
	// sent by what the lab loses before the program on a busy machine
	// (legitimate packets too, LegitOK): that shortfall is no leak, but
	// a rule that drops little of the attack is.
	if through := res.AttackAtServer - res.AllowedAtServer + res.TapLost; through*100 > res.AttackDropped {
		t.Errorf("%d attack packets reached the server after the rule (%d missed by the counting socket), %d dropped: want at most 1%%", res.AttackAtServer-res.AllowedAtServer, res.TapLost, res.AttackDropped)
	}
	if res.AttackDroppedPct < 95 {
		t.Errorf("%.2f%% of the attack dropped after mitigation, want 95%%", res.AttackDroppedPct)
	}
}

// TestScenarios runs an IPv4 and an IPv6 scenario end to end.
func TestScenarios(t *testing.T) {
	for _, name := range []string{"udp-payload", "dns-random-subdomain-v6"} {
		t.Run(name, func(t *testing.T) {
			o := short(t)
			res := run(t, name, o)
			checkMitigated(t, res, o, true)
		})
	}
}

// TestFlashCrowd: six times the legitimate mix, above the threshold, gets
// no rule.
func TestFlashCrowd(t *testing.T) {
	o := short(t)
	o.FlashCrowd = true
	res := run(t, "ntp-reflection", o)
	// Below the threshold the test would say nothing: the crowd must
	// look like an attack by its rate.
	if total := res.AttackPPS + 2500; total < 10000 {
		t.Errorf("the crowd and the users reached only %.0f pps, below the threshold", total)
	}
	if rules := autoRules(res); len(rules) > 0 {
		t.Errorf("%d auto rules for a flash crowd, first %s", len(rules), rules[0].Expr)
	}
	if res.LegitDropped != 0 || res.AttackDropped != 0 {
		t.Errorf("dropped %d legitimate and %d crowd packets", res.LegitDropped, res.AttackDropped)
	}
}

// TestAllowListWins: a pass rule of the file matching a sixteenth of the
// attack (by source address) comes before the auto rule, which matches
// the whole attack: those packets reach the server, the rest is dropped.
func TestAllowListWins(t *testing.T) {
	o := short(t)
	o.Allow = "src net 198.18.0.0/20"
	res := run(t, "udp-payload", o)
	checkMitigated(t, res, o, false)
	rules := autoRules(res)
	if len(rules) == 0 {
		return
	}
	if rules[0].AttackMatchedPct < 99 {
		t.Errorf("the auto rule matches %.2f%% of the attack, want it all (allow-listed part included)", rules[0].AttackMatchedPct)
	}
	var allow uint64
	for _, r := range res.Rules {
		if r.Name == "allow" {
			allow = r.Packets
		}
	}
	if allow == 0 || res.AllowedAtServer == 0 {
		t.Errorf("the allow rule counted %d packets, %d allow-listed attack packets reached the server after the rule", allow, res.AllowedAtServer)
	}
	// About a sixteenth of the attack is allow-listed; the rest must not
	// reach the server once the rule is there.
	if other := res.AttackAtServer - res.AllowedAtServer; other*100 > res.AttackSent {
		t.Errorf("%d attack packets outside the allow list reached the server after the rule (of %d sent), the last %.3fs after it", other, res.AttackSent, *res.LastOtherAtServer)
	}
	if res.AllowedAtServer*100 < res.AttackSent*2 {
		t.Errorf("%d allow-listed attack packets reached the server, want about 1/16 of %d", res.AllowedAtServer, res.AttackSent)
	}
}

// TestRestartDuringAttack stops the daemon half a second after its rule
// appeared and starts a new one: the rule stays in the program all along
// (the attack stays dropped), the new daemon adopts it (no second rule)
// and expires it, and the run leaves no file descriptor or goroutine
// behind.
func TestRestartDuringAttack(t *testing.T) {
	fixture.RequireRoot(t)
	fds0, gs0 := openFDs(t), runtime.NumGoroutine()
	o := short(t)
	o.Restart = 500 * time.Millisecond
	o.Duration = 3 * time.Second
	res := run(t, "syn-flood", o)
	if !res.Restarted {
		t.Fatal("the daemon was not restarted")
	}
	checkMitigated(t, res, o, true)
	if rules := autoRules(res); len(rules) != 1 {
		t.Errorf("%d auto rules, want the first one kept across the restart", len(rules))
	}
	// Goroutines of closed sockets and timers take a moment to go.
	var fds1, gs1 int
	for range 20 {
		fds1, gs1 = openFDs(t), runtime.NumGoroutine()
		if fds1 <= fds0 && gs1 <= gs0+2 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if fds1 > fds0 || gs1 > gs0+2 {
		t.Errorf("file descriptors %d -> %d, goroutines %d -> %d", fds0, fds1, gs0, gs1)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func TestOptionsErrors(t *testing.T) {
	sc, err := lab.LookupScenario("syn-flood")
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []Options{
		{Mode: "magic"},
		{Mode: "rules="},
		{Mode: "none", Allow: "udp"},
		{AttackRate: -1},
		{Duration: -time.Second},
	} {
		if _, err := Run(context.Background(), sc, o); !errors.Is(err, ErrOptions) {
			t.Errorf("Run(%+v) = %v, want ErrOptions", o, err)
		}
	}
	if _, err := Run(context.Background(), sc, Options{Mode: "rules=/nonexistent.yaml"}); err == nil {
		t.Error("a missing rules file: no error")
	}
}
