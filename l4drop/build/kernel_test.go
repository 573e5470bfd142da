package build

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4drop/l4drop/l4drop"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
)

// buildYAML builds a rule set given as YAML text.
func buildYAML(tb testing.TB, text string) []byte {
	tb.Helper()
	rs, err := ParseRuleSet("test.yaml", []byte(text))
	if err != nil {
		tb.Fatal(err)
	}
	obj, _, err := Build(rs, BuildOptions{})
	if err != nil {
		tb.Fatal(err)
	}
	return obj
}

func bytecode(tb testing.TB, expr string) string {
	tb.Helper()
	prog, err := cbpf.Compile(expr, cbpf.LinkTypeRaw, 0)
	if err != nil {
		tb.Fatal(err)
	}
	s, err := cbpf.Format(prog)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// testRules is a rule set exercising order, families, both matcher kinds,
// a combined rule and locations.
func testRules(tb testing.TB) string {
	return fmt.Sprintf(`
sample_rate: 0
rules:
  - name: allow-client-5353
    family: ipv4
    expr: "src host %[1]s and udp dst port 5353"
    action: pass
  - name: udp-5353
    expr: "udp dst port 5353"
  - name: syn-80
    expr: "tcp[tcpflags] & tcp-syn != 0 and dst port 80"
  - name: v6-udp-53
    family: ipv6
    bpf: %[2]q
  - name: combined-7000
    expr: "udp dst port 7000"
    bpf: %[3]q
  - name: ams-7100
    expr: "udp dst port 7100"
    locations: [ams]
  - name: sjc-7200
    expr: "udp dst port 7200"
    locations: [sjc]
`, fixture.ClientIPv4, bytecode(tb, "ip6 and udp dst port 53"), bytecode(tb, "udp src port 1000"))
}

type testPacket struct {
	name   string
	frame  []byte
	action string // expected at location "" unless a test says otherwise
	rule   string // "" = no rule
}

func testPackets() []testPacket {
	c4, s4, c6, s6 := fixture.ClientIPv4, fixture.ServerIPv4, fixture.ClientIPv6, fixture.ServerIPv6
	legit := []byte("legitimate")
	return []testPacket{
		{"legit udp4", fixture.UDP4(c4, s4, 40000, 9999, legit), "pass", ""},
		{"legit udp6", fixture.UDP6(c6, s6, 40000, 9999, legit), "pass", ""},
		{"allowed 5353", fixture.UDP4(c4, s4, 40000, 5353, legit), "pass", "allow-client-5353"},
		{"other 5353", fixture.UDP4("198.18.0.9", s4, 40000, 5353, legit), "drop", "udp-5353"},
		{"v6 5353", fixture.UDP6(c6, s6, 40000, 5353, legit), "drop", "udp-5353"},
		{"syn4 80", fixture.TCP4SYN(c4, s4, 40000, 80), "drop", "syn-80"},
		// libpcap indexes tcp[] for IPv4 only: the expression cannot match IPv6.
		{"syn6 80", fixture.TCP6SYN(c6, s6, 40000, 80), "pass", ""},
		{"syn4 81", fixture.TCP4SYN(c4, s4, 40000, 81), "pass", ""},
		{"vlan syn4 80", fixture.VLAN(fixture.TCP4SYN(c4, s4, 40000, 80), 100), "drop", "syn-80"},
		{"qinq udp6 5353", fixture.VLAN(fixture.UDP6(c6, s6, 40000, 5353, legit), 10, 20), "drop", "udp-5353"},
		{"vlan legit", fixture.VLAN(fixture.UDP4(c4, s4, 40000, 9999, legit), 100), "pass", ""},
		{"udp6 53", fixture.UDP6(c6, s6, 40000, 53, fixture.DNSQuery("example.com", 1)), "drop", "v6-udp-53"},
		{"udp4 53", fixture.UDP4(c4, s4, 40000, 53, fixture.DNSQuery("example.com", 1)), "pass", ""},
		{"combined both", fixture.UDP4(c4, s4, 1000, 7000, legit), "drop", "combined-7000"},
		{"combined one", fixture.UDP4(c4, s4, 1001, 7000, legit), "pass", ""},
		{"ams 7100", fixture.UDP4(c4, s4, 40000, 7100, legit), "pass", ""},
		{"sjc 7200", fixture.UDP4(c4, s4, 40000, 7200, legit), "pass", ""},
		{"arp", arpFrame(), "pass", ""},
		{"truncated ipv4", fixture.UDP4(c4, s4, 40000, 5353, legit)[:14+12], "pass", ""},
		{"vlan truncated", fixture.VLAN(fixture.UDP4(c4, s4, 40000, 5353, legit), 5)[:16], "pass", ""},
	}
}

func arpFrame() []byte {
	f := make([]byte, 42)
	copy(f, fixture.ServerMAC)
	copy(f[6:], fixture.ClientMAC)
	f[12], f[13] = 0x08, 0x06
	return f
}

func TestDryRun(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	for _, loc := range []string{"", "ams", "sjc"} {
		t.Run("location="+loc, func(t *testing.T) {
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: loc})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			for _, p := range testPackets() {
				action, rule := p.action, p.rule
				switch {
				case loc == "ams" && p.name == "ams 7100":
					action, rule = "drop", "ams-7100"
				case loc == "sjc" && p.name == "sjc 7200":
					action, rule = "drop", "sjc-7200"
				}
				v, err := d.Run(p.frame)
				if err != nil {
					t.Fatalf("%s: %v", p.name, err)
				}
				if v.Action != action || v.Name != rule {
					t.Errorf("%s: %s by %q, want %s by %q", p.name, v.Action, v.Name, action, rule)
				}
			}
		})
	}
}

// TestEnableDisable: --enable and --disable override locations.
func TestEnableDisable(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: "ams", Enable: []string{"sjc-7200"}, Disable: []string{"ams-7100", "syn-80"}})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	for _, p := range []testPacket{
		{"ams 7100", fixture.UDP4(c4, s4, 40000, 7100, nil), "pass", ""},
		{"sjc 7200", fixture.UDP4(c4, s4, 40000, 7200, nil), "drop", "sjc-7200"},
		{"syn4 80", fixture.TCP4SYN(c4, s4, 40000, 80), "pass", ""},
		{"other 5353", fixture.UDP4("198.18.0.9", s4, 40000, 5353, nil), "drop", "udp-5353"},
	} {
		v, err := d.Run(p.frame)
		if err != nil {
			t.Fatal(err)
		}
		if v.Action != p.action || v.Name != p.rule {
			t.Errorf("%s: %s by %q, want %s by %q", p.name, v.Action, v.Name, p.action, p.rule)
		}
	}
	if _, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Enable: []string{"nope"}}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown rule: %v", err)
	}
}

// sendFrames sends Ethernet frames out of ifname inside ns with an
// AF_PACKET socket, bypassing the stack of the sender.
func sendFrames(tb testing.TB, ns *netns.NS, ifname string, frames [][]byte) {
	tb.Helper()
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		sa := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Halen: 6}
		for i, f := range frames {
			for {
				err := unix.Sendto(fd, f, 0, sa)
				if err == unix.ENOBUFS {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					return fmt.Errorf("frame %d: %w", i, err)
				}
				break
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// udpCounter counts datagrams arriving on a UDP port in a namespace.
type udpCounter struct {
	conns []*net.UDPConn
	stop  atomic.Bool
	got   chan int
}

func listenUDP(tb testing.TB, ns *netns.NS, port int) *udpCounter {
	tb.Helper()
	u := &udpCounter{got: make(chan int, 2)}
	err := ns.Do(func() error {
		for _, nw := range []string{"udp4", "udp6"} {
			c, err := net.ListenUDP(nw, &net.UDPAddr{Port: port})
			if err != nil {
				return err
			}
			c.SetReadBuffer(4 << 20)
			u.conns = append(u.conns, c)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	for _, c := range u.conns {
		go func(c *net.UDPConn) {
			n, buf, last := 0, make([]byte, 2048), time.Now()
			for {
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if _, _, err := c.ReadFromUDP(buf); err == nil {
					n++
					last = time.Now()
					continue
				} else if !os.IsTimeout(err) {
					break
				}
				if u.stop.Load() && time.Since(last) > 300*time.Millisecond {
					break
				}
			}
			u.got <- n
		}(c)
	}
	tb.Cleanup(func() {
		for _, c := range u.conns {
			c.Close()
		}
	})
	return u
}

// wait returns the number of datagrams received until 300 ms pass
// without one.
func (u *udpCounter) wait() int {
	u.stop.Store(true)
	total := 0
	for range u.conns {
		total += <-u.got
	}
	return total
}

func loadOnServer(tb testing.TB, lab *fixture.LabPair, root string, obj []byte, opts l4drop.LoadOptions) *l4drop.Loaded {
	tb.Helper()
	opts.Iface, opts.Netns, opts.Root = lab.ServerIf, lab.Server.Name, root
	l, err := l4drop.Load(obj, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { l.Close() })
	return l
}

// TestLive sends attack and legitimate traffic through a veth with the rule
// set attached to the server end, and checks every counter exactly: the
// dry run's verdicts, the rule counters, and what the server's sockets got.
func TestLive(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	for _, mode := range []string{"native", "generic"} {
		t.Run(mode, func(t *testing.T) {
			l := loadOnServer(t, lab, root, obj, l4drop.LoadOptions{Mode: mode, Location: "ams"})
			defer func() {
				if err := l4drop.Unload(l.Dir); err != nil {
					t.Error(err)
				}
			}()
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: "ams"})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()

			const repeat = 50
			want := make(map[string]uint64) // rule name -> packets
			var frames [][]byte
			legit := 0
			for _, p := range testPackets() {
				v, err := d.Run(p.frame)
				if err != nil {
					t.Fatal(err)
				}
				want[v.Name] += repeat
				if v.Action == "pass" && strings.HasPrefix(p.name, "legit") {
					legit += repeat
				}
				for i := 0; i < repeat; i++ {
					frames = append(frames, p.frame)
				}
			}
			u := listenUDP(t, lab.Server, 9999)
			sendFrames(t, lab.Client, lab.ClientIf, frames)
			if got := u.wait(); got != legit {
				t.Errorf("server received %d legitimate datagrams, sent %d", got, legit)
			}
			h, err := l4drop.Open(l.Dir)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			st, err := h.Status(0)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range append(st.Rules, st.Unmatched) {
				name := r.Name
				if name == "(no rule)" {
					name = ""
				}
				if name == "" && r.Packets > want[name] && r.Packets < want[name]+20 {
					// The kernel's own chatter (IPv6 MLD and the like)
					// passes too and is counted with no rule.
					continue
				}
				if r.Packets != want[name] {
					t.Errorf("rule %q: %d packets, want %d", r.Name, r.Packets, want[name])
				}
				if r.Enabled != (name != "sjc-7200") {
					t.Errorf("rule %q: enabled %v at ams", r.Name, r.Enabled)
				}
			}
		})
	}
}

// TestLoadErrors: bad input fails clearly and leaves the loaded set alone.
// refusedRule builds the test rules with a packet read the verifier
// refuses in rule syn-80 (index 2): the loader must name the rule.
func refusedRule(tb testing.TB) []byte {
	tb.Helper()
	rs, err := ParseRuleSet("test.yaml", []byte(testRules(tb)))
	if err != nil {
		tb.Fatal(err)
	}
	if rs.Rules[2].Name != "syn-80" {
		tb.Fatalf("rule 2 is %q, not syn-80", rs.Rules[2].Name)
	}
	obj, _, err := Build(rs, BuildOptions{spoil: 3})
	if err != nil {
		tb.Fatal(err)
	}
	return obj
}

func TestBuildNoClang(t *testing.T) {
	rs, err := ParseRuleSet("test.yaml", []byte("rules:\n  - name: x\n    expr: udp\n"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("CLANG", "/nonexistent/clang")
	_, _, err = Build(rs, BuildOptions{})
	if !errors.Is(err, ErrNoClang) {
		t.Errorf("got %v, want ErrNoClang", err)
	}
}

func TestLoadErrors(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	l := loadOnServer(t, lab, root, obj, l4drop.LoadOptions{})
	progBefore, err := os.Stat(filepath.Join(l.Dir, l4drop.PinProg))
	if err != nil {
		t.Fatal(err)
	}
	base := l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root}
	refused := refusedRule(t)
	tests := []struct {
		name string
		obj  []byte
		opts func(o *l4drop.LoadOptions)
		want string
	}{
		{"not ELF", []byte("hello"), nil, "ELF"},
		{"unknown rule", obj, func(o *l4drop.LoadOptions) { o.Enable = []string{"nope"} }, "nope"},
		{"unknown interface", obj, func(o *l4drop.LoadOptions) { o.Iface = "nosuch0" }, "nosuch0"},
		{"bad mode", obj, func(o *l4drop.LoadOptions) { o.Mode = "fast" }, ""},
		{"bad next", obj, func(o *l4drop.LoadOptions) { o.Next = filepath.Join(root, "nothing") }, "next"},
		{"verifier", refused, nil, `rule "syn-80" (line 10 of test.yaml)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			if tt.opts != nil {
				tt.opts(&o)
			}
			_, err := l4drop.Load(tt.obj, o)
			if err == nil {
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			after, err := os.Stat(filepath.Join(l.Dir, l4drop.PinProg))
			if err != nil || !os.SameFile(progBefore, after) {
				t.Errorf("the loaded rule set changed: %v", err)
			}
		})
	}
	if err := l4drop.Unload(l.Dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
		t.Errorf("pins left after unload: %v", err)
	}
}

// TestReloadAfterInterfaceGone: pins left by an interface that went away do
// not swallow the next load; it attaches to the new interface.
func TestReloadAfterInterfaceGone(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	l := loadOnServer(t, lab, root, obj, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	if err := lab.Server.IP("link", "del", lab.ServerIf); err != nil {
		t.Fatal(err)
	}
	if err := netns.NewVeth(lab.Client, lab.ClientIf, lab.Server, lab.ServerIf); err != nil {
		t.Fatal(err)
	}
	l2 := loadOnServer(t, lab, root, obj, l4drop.LoadOptions{})
	if l2.Replaced {
		t.Error("load updated the dead link instead of attaching")
	}
	var attached bool
	err := lab.Server.Do(func() error {
		ifi, err := net.InterfaceByName(lab.ServerIf)
		if err != nil {
			return err
		}
		lk, err := link.LoadPinnedLink(filepath.Join(l2.Dir, l4drop.PinLink), nil)
		if err != nil {
			return err
		}
		defer lk.Close()
		attached = l4drop.AttachedTo(lk, ifi.Index)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !attached {
		t.Error("the new link is not attached to the new interface")
	}
}
