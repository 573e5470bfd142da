// Package xdpcaptest holds what the xdpcap package's tests and the xdpcap
// command's tests share: building the example C program, attaching
// programs inside a namespace, and sending real packets.
package xdpcaptest

import (
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
)

// BuildExample builds xdpcap/testdata/example.c with clang and returns its
// collection spec. The example uses xdpcap.h's XDPCAP_HOOK(xdpcap_hook)
// and has one program, xdp_example.
func BuildExample(tb testing.TB) *ebpf.CollectionSpec {
	tb.Helper()
	if _, err := exec.LookPath("clang"); err != nil {
		if fixture.InCI() {
			tb.Fatal("clang missing")
		}
		tb.Skip("clang missing")
	}
	dir := filepath.Join(fixture.ModuleRoot(tb), "xdpcap")
	out := filepath.Join(tb.TempDir(), "example.o")
	cmd := exec.Command("clang", "-O2", "-g", "-target", "bpf", "-I"+dir, "-I/usr/include/x86_64-linux-gnu",
		"-Wall", "-Werror", "-c", filepath.Join(dir, "testdata", "example.c"), "-o", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("clang: %v\n%s", err, b)
	}
	spec, err := ebpf.LoadCollectionSpec(out)
	if err != nil {
		tb.Fatal(err)
	}
	return spec
}

// Attach attaches prog to ifindex inside ns (native mode) until cleanup.
func Attach(tb testing.TB, ns *netns.NS, ifindex int, prog *ebpf.Program) {
	tb.Helper()
	err := ns.Do(func() error {
		l, err := link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifindex})
		if err != nil {
			return err
		}
		tb.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// PassProgram returns an XDP program that passes every packet. Attached to
// the peer of a veth whose XDP program bounces packets (XDP_TX), it turns
// on the NAPI that delivers them.
func PassProgram(tb testing.TB) *ebpf.Program {
	tb.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "pass",
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { prog.Close() })
	return prog
}

// ListenUDP opens a UDP socket on addr:port inside ns until cleanup, so
// that datagrams to it draw no ICMP errors.
func ListenUDP(tb testing.TB, ns *netns.NS, addr string, port int) {
	tb.Helper()
	err := ns.Do(func() error {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(addr), Port: port})
		if err == nil {
			tb.Cleanup(func() { c.Close() })
		}
		return err
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// SendUDP sends n datagrams from inside ns to dst:port.
func SendUDP(tb testing.TB, ns *netns.NS, dst string, port, n int) {
	tb.Helper()
	err := ns.Do(func() error {
		c, err := net.Dial("udp4", net.JoinHostPort(dst, fmt.Sprint(port)))
		if err != nil {
			return err
		}
		defer c.Close()
		for i := range n {
			if _, err := fmt.Fprintf(c, "xdpcap test %d to port %d", i, port); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
}

// Ping sends n ICMP echo requests from inside ns to dst, one at a time,
// and returns how many replies came back.
func Ping(tb testing.TB, ns *netns.NS, dst string, n int) int {
	tb.Helper()
	replies := 0
	err := ns.Do(func() error {
		c, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 1500)
		for i := range n {
			msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: 0x4444, Seq: i, Data: []byte("xdpcap")}}
			b, err := msg.Marshal(nil)
			if err != nil {
				return err
			}
			if _, err := c.WriteTo(b, &net.IPAddr{IP: net.ParseIP(dst)}); err != nil {
				return err
			}
			c.SetReadDeadline(time.Now().Add(time.Second))
			for {
				k, _, err := c.ReadFrom(buf)
				if err != nil {
					break
				}
				if m, err := icmp.ParseMessage(1, buf[:k]); err == nil && m.Type == ipv4.ICMPTypeEchoReply {
					replies++
					break
				}
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	return replies
}
