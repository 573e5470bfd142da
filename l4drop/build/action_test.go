package build

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket/layers"

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
	// The port "port reused" binds, kept from the connections before it:
	// one of those given it at random and left in TIME_WAIT made its bind
	// fail (address already in use) once in a few hundred runs.
	setSysctl(t, lab.Client, "net.ipv4.ip_local_reserved_ports", "41000")
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
	for _, tc := range syncookieClients {
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
	// A client that reuses its port while the server still holds the last
	// connection on it in TIME_WAIT (the server closes first) connects
	// again: its SYN goes to the stack, which retires the old socket.
	t.Run("port reused", func(t *testing.T) {
		for _, addr := range []string{fixture.ServerIPv4, fixture.ServerIPv6} {
			for i := range 3 {
				if err := echoFromPort(lab.Client, net.JoinHostPort(addr, fmt.Sprint(syncookiePort)), 41000); err != nil {
					t.Fatalf("%s, connection %d from port 41000: %v", addr, i, err)
				}
			}
		}
	})
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

// TestMonitorRule: packets a monitor rule matches are counted (rule and
// monitored counters) and reach the server unless a later rule drops them.
func TestMonitorRule(t *testing.T) {
	fixture.RequireRoot(t)
	const other = "192.0.2.77" // a source the later drop rule names
	obj := buildYAML(t, fmt.Sprintf(`
rules:
  - name: watch
    action: monitor
    expr: udp dst port 9999
  - name: block-one
    expr: udp dst port 9999 and src host %s
`, other))
	lab := fixture.Lab(t)
	l := loadOnServer(t, lab, fixture.BPFFS(t), obj, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	h := openLoaded(t, l)
	u := listenUDP(t, lab.Server, 9999)
	const good, bad = 30, 7
	var frames [][]byte
	for range good {
		frames = append(frames, fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 9999, []byte("seen")))
	}
	for range bad {
		frames = append(frames, fixture.UDP4(other, fixture.ServerIPv4, 40000, 9999, []byte("dropped")))
	}
	sendFrames(t, lab.Client, lab.ClientIf, frames)
	if got := u.wait(); got != good {
		t.Errorf("server received %d datagrams, want the %d the monitor rule let through", got, good)
	}
	st, err := h.Status(0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Rules[0].Packets != good+bad || st.Rules[1].Packets != bad {
		t.Errorf("counters: watch %d (want %d), block-one %d (want %d)", st.Rules[0].Packets, good+bad, st.Rules[1].Packets, bad)
	}
	if st.Actions["monitored"] != good+bad {
		t.Errorf("monitored %d, want %d", st.Actions["monitored"], good+bad)
	}
}

// TestRatelimitRule runs packets from several sources through a built
// rule set's ratelimit rule, far faster than its limit, for about a
// second: what each bucket lets through is within 5 % of rate × time +
// burst, time running from its first packet to its last. Packets within
// the limit go on to the next rule; those over it are the rule's.
func TestRatelimitRule(t *testing.T) {
	fixture.RequireRoot(t)
	const rate, burst = 300, 40
	v4 := func(src string) []byte { return fixture.UDP4(src, fixture.ServerIPv4, 1000, 53, []byte("x")) }
	v6 := func(src string) []byte { return fixture.UDP6(src, fixture.ServerIPv6, 1000, 53, []byte("x")) }
	type source struct {
		frame  []byte
		bucket int
	}
	for _, tc := range []struct {
		per     string
		sources []source
		buckets int
	}{
		{"rule", []source{{v4("198.18.1.1"), 0}, {v4("198.18.2.1"), 0}, {v6("fd00::1"), 0}}, 1},
		{"source", []source{{v4("198.18.1.1"), 0}, {v4("198.18.1.2"), 1}, {v6("fd00::1"), 2}, {v6("fd00::2"), 3}}, 4},
		{"source/24", []source{{v4("198.18.1.1"), 0}, {v4("198.18.1.200"), 0}, {v4("198.18.2.1"), 1},
			{v6("fd00:0:0:1::1"), 2}, {v6("fd00:0:0:1:ffff::9"), 2}, {v6("fd00:0:0:2::1"), 3}}, 4},
	} {
		t.Run(tc.per, func(t *testing.T) {
			obj := buildYAML(t, fmt.Sprintf(`
rules:
  - name: dns-limit
    action: ratelimit
    rate: %d
    burst: %d
    per: %s%s
    expr: udp dst port 53
  - name: dns-after
    action: pass
    expr: udp dst port 53
`, rate, burst, tc.per, map[bool]string{true: "\n    max_sources: 1024"}[tc.per != "rule"]))
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			// The kernel ran each packet between before and after: its
			// time is taken as the middle.
			passed := make([]int, tc.buckets)
			times := make([][]time.Time, tc.buckets)
			start := time.Now()
			for time.Since(start) < time.Second {
				for _, s := range tc.sources {
					before := time.Now()
					v, err := d.Run(s.frame)
					if err != nil {
						t.Fatal(err)
					}
					after := time.Now()
					times[s.bucket] = append(times[s.bucket], before.Add(after.Sub(before)/2))
					switch {
					case v.Action == "pass" && v.Name == "dns-after":
						passed[s.bucket]++
					case v.Action == "drop" && v.Name == "dns-limit" && v.Detail == "ratelimited":
					default:
						t.Fatalf("verdict %+v: want pass by dns-after or drop by dns-limit (ratelimited)", v)
					}
				}
			}
			for b := range passed {
				checkBucket(t, b, passed[b], times[b], rate, burst)
			}
		})
	}
}

// checkBucket checks what a bucket let through against rate × time +
// burst, time running from its first packet to its last, within 5 %. That
// holds for a sender always over the limit; a loaded machine slows the test
// (a bucket then gets its packets below the limit for a while, or none for
// longer than burst/rate, and what it would have earned meanwhile is not
// spent or is wasted): the figure is then that of a token bucket fed the
// packets at the times they were sent, the same formula applied packet by
// packet.
func checkBucket(t *testing.T, b, passed int, times []time.Time, rate, burst float64) {
	t.Helper()
	if len(times) == 0 {
		t.Errorf("bucket %d: no packets", b)
		return
	}
	formula := burst + rate*times[len(times)-1].Sub(times[0]).Seconds()
	interval := time.Duration(float64(time.Second) / rate)
	depth := time.Duration(burst * float64(interval))
	var tat time.Time
	sim := 0
	for _, now := range times {
		base := tat
		if base.Before(now) {
			base = now
		}
		if base.Add(interval).Sub(now) > depth {
			continue
		}
		tat = base.Add(interval)
		sim++
	}
	t.Logf("bucket %d: %d of %d passed; rate × time + burst %.1f, token bucket over the send times %d", b, passed, len(times), formula, sim)
	if math.Abs(float64(passed-sim)) > 0.05*float64(sim)+1 {
		t.Errorf("bucket %d: %d passed, want %d ± 5 %%", b, passed, sim)
	}
}

// TestSyncookieHostSetupRefused: with tcp_sack off the kernel would refuse
// the cookies, so load refuses, names the command that fixes it, and
// leaves nothing behind: no program, no pins, the sysctls as they were.
func TestSyncookieHostSetupRefused(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, "rules:\n  - name: web\n    action: syncookie\n    expr: tcp dst port 80\n")
	lab := fixture.Lab(t)
	setSysctl(t, lab.Server, "net.ipv4.tcp_syncookies", "1")
	setSysctl(t, lab.Server, "net.ipv4.tcp_sack", "0")
	root := fixture.BPFFS(t)
	_, err := l4drop.Load(obj, l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root})
	want := "ip netns exec " + lab.Server.Name + " sysctl -w net.ipv4.tcp_sack=1"
	if !errors.Is(err, l4drop.ErrHostSetup) || !strings.Contains(err.Error(), want) {
		t.Fatalf("load with tcp_sack=0: %v; want ErrHostSetup naming %q", err, want)
	}
	if v := getSysctl(t, lab.Server, "net.ipv4.tcp_syncookies"); v != "1" {
		t.Errorf("tcp_syncookies %s after a refused load, want 1", v)
	}
	if _, err := os.Stat(l4drop.Dir(root, lab.ServerIf, lab.Server.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("pin directory left after a refused load: %v", err)
	}
}

// TestSyncookieReloadSysctls: reloading a syncookie set keeps the values
// saved by the first load, and a reload without syncookie rules (or with
// them switched off) puts them back.
func TestSyncookieReloadSysctls(t *testing.T) {
	fixture.RequireRoot(t)
	sc := buildYAML(t, "rules:\n  - name: web\n    action: syncookie\n    expr: tcp dst port 80\n")
	plain := buildYAML(t, "rules:\n  - name: web\n    expr: tcp dst port 80\n")
	lab := fixture.Lab(t)
	setSysctl(t, lab.Server, "net.ipv4.tcp_syncookies", "0")
	setSysctl(t, lab.Server, "net.ipv4.tcp_timestamps", "1")
	root := fixture.BPFFS(t)
	check := func(step, cookies, ts string) {
		t.Helper()
		if c, s := getSysctl(t, lab.Server, "net.ipv4.tcp_syncookies"), getSysctl(t, lab.Server, "net.ipv4.tcp_timestamps"); c != cookies || s != ts {
			t.Errorf("%s: tcp_syncookies %s tcp_timestamps %s, want %s and %s", step, c, s, cookies, ts)
		}
	}
	l := loadOnServer(t, lab, root, sc, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	check("first load", "2", "2")
	loadOnServer(t, lab, root, sc, l4drop.LoadOptions{})
	check("reload", "2", "2")
	loadOnServer(t, lab, root, sc, l4drop.LoadOptions{Disable: []string{"web"}})
	check("reload with the rule off", "0", "1")
	loadOnServer(t, lab, root, sc, l4drop.LoadOptions{})
	check("reload with the rule on", "2", "2")
	loadOnServer(t, lab, root, plain, l4drop.LoadOptions{})
	check("reload without syncookie", "0", "1")
}

// echoFromPort connects from ns and local port, sends a line, reads it
// back and waits for the server to close first, so that the server keeps
// the connection in TIME_WAIT.
func echoFromPort(ns *netns.NS, addr string, port int) error {
	var c net.Conn
	err := ns.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{Port: port}}
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte("again\n")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	got := 0
	for {
		n, err := c.Read(buf[got:])
		got += n
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read back: %w", err)
		}
	}
	if string(buf[:got]) != "again\n" {
		return fmt.Errorf("read back %q", buf[:got])
	}
	return nil
}

// TestActionsManyRules: syncookie, ratelimit and monitor rules among
// hundreds of rules tested one by one (no sets) load, and decide as they
// would alone. Their C is in global functions, which the verifier checks
// once; inlined, a ratelimit rule had the rest of its block of rules
// walked once per way out of it, past the verifier's limit.
func TestActionsManyRules(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range 800 {
		fmt.Fprintf(&b, "  - name: r%d\n    expr: \"udp dst port %d\"\n", i, 10000+i)
		if i%200 == 0 {
			fmt.Fprintf(&b, "  - name: sc%d\n    action: syncookie\n    expr: \"tcp dst port %d\"\n", i, 80+i)
			fmt.Fprintf(&b, "  - name: rl%d\n    action: ratelimit\n    rate: 1\n    per: source/24\n    max_sources: 1024\n    expr: \"udp dst port %d\"\n", i, 20000+i)
			fmt.Fprintf(&b, "  - name: mon%d\n    action: monitor\n    expr: \"udp dst port %d and udp[8] = 1\"\n", i, 30000+i)
		}
	}
	rs, err := ParseRuleSet("many.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := Build(rs, BuildOptions{NoSets: true})
	if err != nil {
		t.Fatal(err)
	}
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	syn := func(port uint16) []byte { return fixture.TCP4SYN(c4, s4, 40000, port) }
	udp := func(port uint16, payload ...byte) []byte { return fixture.UDP4(c4, s4, 1000, port, payload) }
	for _, p := range []struct {
		frame              []byte
		action, name, want string
	}{
		{syn(80 + 600), "pass", "sc600", "syncookie_armed"},
		{syn(80 + 600), "tx", "sc600", "syncookie_sent"},
		{udp(20000 + 400), "pass", "", ""},
		{udp(20000 + 400), "drop", "rl400", "ratelimited"},
		{udp(30000+200, 1), "pass", "", ""},
		{udp(10000 + 799), "drop", "r799", ""},
	} {
		v, err := d.Run(p.frame)
		if err != nil {
			t.Fatal(err)
		}
		if v.Action != p.action || v.Name != p.name || v.Detail != p.want {
			t.Errorf("verdict %+v, want %s by %q (%s)", v, p.action, p.name, p.want)
		}
	}
}

// TestFragmentsRatelimit: with fragments: ratelimit, later fragments no
// rule matched pass up to the burst, then at the rate, and the others are
// dropped and counted as ratelimited; first fragments are not limited.
func TestFragmentsRatelimit(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, "fragments: ratelimit\nfragments_rate: 1\nfragments_burst: 3\nrules:\n  - name: r\n    expr: udp dst port 7\n")
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	first := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1000, 9, []byte("first"))
	later := append([]byte(nil), first...)
	later[14+6], later[14+7] = 0x00, 0x10 // fragment offset 128 bytes
	v6later := fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 1000, 9, nil)
	// A Fragment header after the fixed header, offset 128 bytes.
	v6later[14+6] = 44
	v6later = append(v6later[:54], append([]byte{17, 0, 0x00, 0x80, 0, 0, 0, 1}, v6later[54:]...)...)
	var got []string
	for _, f := range [][]byte{later, first, later, v6later, later, later, first} {
		v, err := d.Run(f)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, v.Action+" "+v.Detail)
	}
	want := []string{"pass ", "pass ", "pass ", "pass ", "drop ratelimited", "drop ratelimited", "pass "}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("verdicts %q, want %q", got, want)
	}
}

// TestSyncookieDryRunChecksCookie: offline, an ACK answering a SYN-ACK this
// host made is checked with the kernel's cookie check and passes; one off
// by a cookie is dropped as bad.
func TestSyncookieDryRunChecksCookie(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, fmt.Sprintf("rules:\n  - name: web\n    action: syncookie\n    expr: tcp dst port %d\n", syncookiePort))
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// A SYN-ACK made on this host (the cookie secret is the kernel's):
	// by the action's C in a test program, whose output a test run returns.
	coll := syncookieProgram(t, SyncookieOptions{})
	r := fixture.NewXDPRunner(t)
	syn := synFrame(false, 77, nil)
	ret, out, err := r.RunData(coll.Programs["l4t_syncookie"], syn)
	if err == nil && ret == 2 { // the second of a second is answered
		ret, out, err = r.RunData(coll.Programs["l4t_syncookie"], syn)
	}
	if err != nil || ret != 3 {
		t.Fatalf("SYN: action %d, %v; want XDP_TX", ret, err)
	}
	synack := checkSynAck(t, syn, out, 0)
	for _, tc := range []struct {
		ack          uint32
		action, want string
	}{
		{synack.Seq + 1, "pass", "syncookie_ok"},
		{synack.Seq + 1 + 1<<20, "drop", "syncookie_bad"},
	} {
		ack := tcpFrame(false, &layers.TCP{SrcPort: synack.DstPort, DstPort: synack.SrcPort, ACK: true, Seq: synack.Ack, Ack: tc.ack, Window: 502})
		v, err := d.Run(ack)
		if err != nil {
			t.Fatal(err)
		}
		if v.Action != tc.action || v.Detail != tc.want || v.Name != "web" {
			t.Errorf("ACK %#x: verdict %+v, want %s (%s) by web", tc.ack, v, tc.action, tc.want)
		}
	}
}

// TestManyRatelimitRules: each ratelimit rule has a map of its own, and a
// program may use 64: the layout splits the rule set so that each program
// stays within that, and every rule limits (per rule, whose function reads
// neither the packet nor its family: clang must still pass them).
func TestManyRatelimitRules(t *testing.T) {
	fixture.RequireRoot(t)
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range 100 {
		fmt.Fprintf(&b, "  - name: rl%d\n    action: ratelimit\n    rate: 1\n    expr: \"udp dst port %d\"\n", i, 20000+i)
	}
	obj := buildYAML(t, b.String())
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if len(d.Meta.Programs) < 2 {
		t.Errorf("100 ratelimit rules in %d program(s), want them split", len(d.Meta.Programs))
	}
	for _, i := range []int{0, 50, 99} {
		frame := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1000, uint16(20000+i), nil)
		for k, want := range []string{"pass", "drop"} {
			v, err := d.Run(frame)
			if err != nil {
				t.Fatal(err)
			}
			if v.Action != want || k == 1 && v.Name != fmt.Sprintf("rl%d", i) {
				t.Errorf("rule rl%d, packet %d: verdict %+v, want %s", i, k+1, v, want)
			}
		}
	}
}
