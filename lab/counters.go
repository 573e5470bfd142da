package lab

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Counters are what a namespace's network stack and one interface saw.
type Counters struct {
	// RxPackets and RxDropped are the interface's receive counters. Frames
	// an XDP program drops count in neither.
	RxPackets, RxDropped uint64
	// IPIn counts packets the IPv4 and IPv6 layers received: what reached
	// the stack.
	IPIn uint64
	// UDPIn counts datagrams delivered to sockets, UDPNoPorts those for a
	// port nobody listens on, UDPRcvbufErrors those lost to full sockets.
	UDPIn, UDPNoPorts, UDPRcvbufErrors uint64
	// TCPInSegs counts TCP segments received.
	TCPInSegs uint64
}

// Sub returns c - old, field by field.
func (c Counters) Sub(old Counters) Counters {
	return Counters{
		RxPackets: c.RxPackets - old.RxPackets, RxDropped: c.RxDropped - old.RxDropped,
		IPIn: c.IPIn - old.IPIn, UDPIn: c.UDPIn - old.UDPIn, UDPNoPorts: c.UDPNoPorts - old.UDPNoPorts,
		UDPRcvbufErrors: c.UDPRcvbufErrors - old.UDPRcvbufErrors, TCPInSegs: c.TCPInSegs - old.TCPInSegs,
	}
}

// ServerCounters reads the server side's counters.
func (l *Lab) ServerCounters() (Counters, error) {
	var c Counters
	err := l.Server.Do(func() error {
		var err error
		c, err = readCounters(l.ServerIf)
		return err
	})
	return c, err
}

// readCounters reads the counters of the calling thread's namespace.
func readCounters(ifname string) (Counters, error) {
	var c Counters
	var err error
	if c.RxPackets, c.RxDropped, _, _, err = ifaceStats(ifname); err != nil {
		return c, err
	}
	snmp, err := readSNMP("/proc/thread-self/net/snmp")
	if err != nil {
		return c, err
	}
	snmp6, err := readSNMP("/proc/thread-self/net/snmp6")
	if err != nil {
		return c, err
	}
	c.IPIn = snmp["Ip.InReceives"] + snmp6["Ip6InReceives"]
	c.UDPIn = snmp["Udp.InDatagrams"] + snmp6["Udp6InDatagrams"]
	c.UDPNoPorts = snmp["Udp.NoPorts"] + snmp6["Udp6NoPorts"]
	c.UDPRcvbufErrors = snmp["Udp.RcvbufErrors"] + snmp6["Udp6RcvbufErrors"]
	c.TCPInSegs = snmp["Tcp.InSegs"]
	return c, nil
}

// readSNMP reads /proc/net/snmp (header line, value line per protocol) or
// /proc/net/snmp6 (name value per line) into "Proto.Name" or "Name" keys.
func readSNMP(path string) (map[string]uint64, error) {
	buf, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	lines := strings.Split(strings.TrimSpace(string(buf)), "\n")
	for i := 0; i < len(lines); i++ {
		f := strings.Fields(lines[i])
		if len(f) == 2 && !strings.HasSuffix(f[0], ":") {
			v, _ := strconv.ParseUint(f[1], 10, 64)
			out[f[0]] = v
			continue
		}
		if len(f) < 2 || i+1 >= len(lines) {
			continue
		}
		g := strings.Fields(lines[i+1])
		if len(g) != len(f) || g[0] != f[0] {
			return nil, fmt.Errorf("%s: line %d: header and values differ", path, i+1)
		}
		proto := strings.TrimSuffix(f[0], ":")
		for j := 1; j < len(f); j++ {
			v, _ := strconv.ParseUint(g[j], 10, 64)
			out[proto+"."+f[j]] = v
		}
		i++
	}
	return out, nil
}
