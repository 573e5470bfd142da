package scenario

import (
	"context"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/l4drop/build"
	"github.com/l4drop/l4drop/lab"
)

// synfloodRules is the rule set of the SYN flood check: SYN cookies for the
// web port.
const synfloodRules = `
rules:
  - name: web
    action: syncookie
    expr: "tcp dst port 80"
`

// TestSynFlood is the short SYN flood check: a spoofed SYN flood from the
// generator (random sources, ports, sequence numbers, timestamps) while 200
// real clients connect to a TCP echo server, send a line and read it back.
// Behind action syncookie at least 99.9 % of them (all 200) must complete;
// the kernel alone is run beside it and reported. Connect times are
// reported, not asserted (a shared machine); l4lab synflood runs the full
// check with 2,000 clients and judges them.
func TestSynFlood(t *testing.T) {
	l := synLab(t)
	rs, err := build.ParseRuleSet("synflood.yaml", []byte(synfloodRules))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := build.Build(rs, build.BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	const clients = 200
	for _, tc := range []struct {
		name  string
		rules []byte
	}{{"kernel alone", nil}, {"syncookie", obj}} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := SynFlood(context.Background(), l, SynFloodOptions{Rules: tc.rules, Clients: clients})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%d of %d clients completed (%.2f %%); connect p50 %v p99 %v max %v; flood %d SYNs at %.0f pps (packet socket %v); errors %v; actions %v",
				res.Completed, res.Clients, 100*res.CompletedShare(), res.ConnectP50, res.ConnectP99, res.ConnectMax,
				res.FloodSent, res.FloodPPS, res.PacketSocket, res.Errors, res.Actions)
			if res.FloodSent == 0 {
				t.Errorf("the flood sent nothing")
			}
			if tc.rules == nil {
				return
			}
			if res.CompletedShare() < 0.999 {
				t.Errorf("%d of %d clients completed, want at least 99.9 %%", res.Completed, res.Clients)
			}
			if res.Actions["syncookie_sent"] < clients/2 || res.Actions["syncookie_ok"] == 0 {
				t.Errorf("action counters %v: want cookies sent and checked", res.Actions)
			}
		})
	}
}

func synLab(tb testing.TB) *lab.Lab {
	tb.Helper()
	fixture.RequireRoot(tb)
	l, err := lab.New()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Error(err)
		}
	})
	return l
}
