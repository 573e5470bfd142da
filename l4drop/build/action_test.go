package build

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
	"github.com/l4drop/l4drop/l4drop"
	"github.com/l4drop/l4drop/xdpcap"
)

// getSysctl reads a sysctl inside ns.
func getSysctl(tb testing.TB, ns *netns.NS, name string) string {
	tb.Helper()
	var v []byte
	err := ns.Do(func() error {
		var err error
		v, err = os.ReadFile("/proc/sys/" + strings.ReplaceAll(name, ".", "/"))
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// actionDelta returns the action counters' growth since before.
func actionDelta(tb testing.TB, h *l4drop.Handle, before map[string]uint64) map[string]uint64 {
	tb.Helper()
	st, err := h.Status(0)
	if err != nil {
		tb.Fatal(err)
	}
	d := map[string]uint64{}
	for k, v := range st.Actions {
		d[k] = v - before[k]
	}
	return d
}

func actionCounts(tb testing.TB, h *l4drop.Handle) map[string]uint64 {
	tb.Helper()
	st, err := h.Status(0)
	if err != nil {
		tb.Fatal(err)
	}
	if st.Actions == nil {
		tb.Fatal("status has no action counters")
	}
	return st.Actions
}

// TestSyncookieRule connects real clients (Go's net.Dial, the kernel's TCP
// stack, in another namespace) through a rule set with a syncookie rule,
// loaded by the loader, to a real server: IPv4 and IPv6, with and without
// timestamps. The loader sets the namespace's sysctls and puts them back on
// unload; the SYN-ACKs leave through the xdpcap hook as XDP_TX.
func TestSyncookieRule(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, fmt.Sprintf(`
rules:
  - name: web
    action: syncookie
    expr: tcp dst port %d
`, syncookiePort))
	lab := fixture.Lab(t)
	// Known values to come back to, not the defaults.
	setSysctl(t, lab.Server, "net.ipv4.tcp_syncookies", "1")
	setSysctl(t, lab.Server, "net.ipv4.tcp_timestamps", "1")
	l := loadOnServer(t, lab, fixture.BPFFS(t), obj, l4drop.LoadOptions{})
	unloaded := false
	defer func() {
		if !unloaded {
			l4drop.Unload(l.Dir)
		}
	}()
	for _, name := range []string{"net.ipv4.tcp_syncookies", "net.ipv4.tcp_timestamps"} {
		if v := getSysctl(t, lab.Server, name); v != "2" {
			t.Errorf("loaded: %s = %s, want 2", name, v)
		}
	}
	h := openLoaded(t, l)
	// XDP_TX into a veth is delivered only with NAPI (an XDP program) on the peer.
	fixture.AttachXDP(t, lab.Client, lab.ClientIndex, fixture.PassProgram(t))
	echoServer(t, lab.Server, syncookiePort)

	hook, err := xdpcap.OpenHook(l.Dir + "/" + l4drop.PinHook)
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	capt, err := xdpcap.Start([]*ebpf.Map{hook}, xdpcap.Options{Actions: []xdpcap.Action{xdpcap.TX}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()

	const n = 20
	for _, tc := range []struct {
		name string
		addr string
		ts   string
	}{
		{"ipv4 timestamps", fixture.ServerIPv4, "1"},
		{"ipv4 no timestamps", fixture.ServerIPv4, "0"},
		{"ipv6 timestamps", fixture.ServerIPv6, "1"},
		{"ipv6 no timestamps", fixture.ServerIPv6, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setSysctl(t, lab.Client, "net.ipv4.tcp_timestamps", tc.ts)
			before := actionCounts(t, h)
			for i := range n {
				if err := echoOnce(lab.Client, net.JoinHostPort(tc.addr, fmt.Sprint(syncookiePort))); err != nil {
					t.Fatalf("connection %d: %v (counters %v)", i, err, actionDelta(t, h, before))
				}
			}
			d := actionDelta(t, h, before)
			t.Logf("action counters: %v", d)
			// At most one SYN a second goes to the stack (armed).
			if d["syncookie_sent"]+d["syncookie_armed"] < n || d["syncookie_sent"] < n/2 {
				t.Errorf("%d SYNs answered in XDP, %d handed to the stack, want most of %d answered", d["syncookie_sent"], d["syncookie_armed"], n)
			}
			if d["syncookie_ok"] < d["syncookie_sent"] {
				t.Errorf("%d cookie ACKs passed for %d SYN-ACKs sent", d["syncookie_ok"], d["syncookie_sent"])
			}
			if d["syncookie_bad"] != 0 || d["syncookie_err"] != 0 {
				t.Errorf("%d bad cookies, %d errors", d["syncookie_bad"], d["syncookie_err"])
			}
			if d["syncookie_known"] == 0 {
				t.Errorf("no packet of a known connection passed")
			}
		})
	}
	// The SYN-ACKs went out through the hook's XDP_TX slot.
	pc := make(chan xdpcap.Packet, 1)
	go func() {
		if p, err := capt.Read(); err == nil {
			pc <- p
		}
	}()
	select {
	case p := <-pc:
		if p.Action != xdpcap.TX || len(p.Data) < 54 {
			t.Errorf("captured %v, %d bytes; want a SYN-ACK sent with XDP_TX", p.Action, len(p.Data))
		}
	case <-time.After(5 * time.Second):
		t.Errorf("xdpcap saw no XDP_TX packet")
	}
	st, err := h.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rules[0].Packets == 0 {
		t.Errorf("rule counter: %+v", st.Rules[0])
	}

	if err := l4drop.Unload(l.Dir); err != nil {
		t.Fatal(err)
	}
	unloaded = true
	for _, name := range []string{"net.ipv4.tcp_syncookies", "net.ipv4.tcp_timestamps"} {
		if v := getSysctl(t, lab.Server, name); v != "1" {
			t.Errorf("unloaded: %s = %s, want 1 back", name, v)
		}
	}
}
