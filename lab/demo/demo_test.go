package demo

import (
	"io"
	"strings"
	"testing"
)

func TestPct(t *testing.T) {
	for _, tc := range []struct {
		part, whole uint64
		want        float64
	}{
		{0, 0, 0},
		{5, 0, 0},
		{50, 200, 25},
		{210, 200, 100}, // counters read at different moments: never above 100 %
	} {
		if got := pct(tc.part, tc.whole); got != tc.want {
			t.Errorf("pct(%d, %d) = %v, want %v", tc.part, tc.whole, got, tc.want)
		}
	}
}

func TestCountLines(t *testing.T) {
	out := "12:00 IP 1.2.3.4 > 5.6.7.8\n12:01 IP6 ::1 > ::2\nreading from file\n12:02 IP 1.2.3.4 > 5.6.7.8\n"
	if got := countLines(out, " IP "); got != 2 {
		t.Errorf("countLines = %d, want 2", got)
	}
}

func TestTrimLog(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`time=2026 level=INFO msg="auto: deploy" rule=x`, `msg="auto: deploy" rule=x`},
		{"no message", "no message"},
		{"msg=" + strings.Repeat("x", 300), "msg=" + strings.Repeat("x", 213) + "..."},
	} {
		if got := trimLog(tc.in); got != tc.want {
			t.Errorf("trimLog(%.40q) = %.40q (%d bytes), want %.40q (%d bytes)", tc.in, got, len(got), tc.want, len(tc.want))
		}
	}
}

func TestRunNeedsCommands(t *testing.T) {
	err := Run(io.Discard, Options{Short: true, Bins: map[string]string{"l4drop": "/bin/true"}})
	if err == nil || !strings.Contains(err.Error(), "no path for xdpcap") {
		t.Errorf("Run without xdpcap: %v", err)
	}
}
