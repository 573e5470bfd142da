package cbpfc

import (
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/internal/fixture"
)

// TestDirection runs tcpdump's inbound and outbound, "ldh [type]" then a
// comparison with PACKET_OUTGOING, in the kernel through both backends.
// An XDP program sees only packets coming in, never one going out, so
// inbound must match every packet and outbound none, whatever the
// destination (unicast, broadcast, multicast). libpcap's own interpreter
// cannot judge these: it has no packet type, and takes the load for one
// past the end of the packet.
func TestDirection(t *testing.T) {
	fixture.RequireRoot(t)
	// As tcpdump -ddd prints them for an Ethernet interface.
	tcpdump := map[string]string{
		"inbound":  "4,40 0 0 4294963204,21 0 1 4,6 0 0 0,6 0 0 262144",
		"outbound": "4,40 0 0 4294963204,21 0 1 4,6 0 0 262144,6 0 0 0",
	}
	type filter struct {
		name    string
		prog    []bpf.Instruction
		inbound bool
	}
	var filters []filter
	for _, expr := range []string{"inbound", "outbound", "inbound and udp", "outbound or not udp"} {
		prog, err := cbpf.Compile(expr, cbpf.LinkTypeEthernet, 0)
		if err != nil {
			t.Fatal(err)
		}
		filters = append(filters, filter{"libpcap " + expr, prog, expr[0] == 'i'})
	}
	for _, dir := range []string{"inbound", "outbound"} {
		prog, err := cbpf.Parse(tcpdump[dir])
		if err != nil {
			t.Fatalf("tcpdump -ddd %s: %v", dir, err)
		}
		if r, err := prog[0].Assemble(); err != nil || r.Op != 0x28 {
			t.Fatalf("tcpdump -ddd %s: first instruction %v, want ldh [type]", dir, prog[0])
		}
		filters = append(filters, filter{"tcpdump -ddd " + dir, prog, dir == "inbound"})
	}

	unicast := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1000, 53, []byte("q"))
	broadcast := append([]byte{}, unicast...)
	copy(broadcast, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	multicast := append([]byte{}, unicast...)
	copy(multicast, []byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb})
	pkts := map[string][]byte{"unicast": unicast, "broadcast": broadcast, "multicast": multicast}

	var progs [][]bpf.Instruction
	for _, f := range filters {
		progs = append(progs, f.prog)
	}
	spec, err := cPrograms(t, progs)
	if err != nil {
		t.Fatal(err)
	}
	r := fixture.NewXDPRunner(t)
	for i, f := range filters {
		ep, err := loadEBPF(t, f.prog)
		if err != nil {
			t.Fatalf("%s: eBPF: %v", f.name, err)
		}
		defer ep.Close()
		cp, err := ebpf.NewProgram(spec.Programs[fmt.Sprintf("f%d", i)])
		if err != nil {
			t.Fatalf("%s: C: %v", f.name, err)
		}
		defer cp.Close()
		for pname, pkt := range pkts {
			// Every test packet is UDP: the udp terms do not change the
			// verdict.
			for backend, prog := range map[string]*ebpf.Program{"ebpf": ep, "c": cp} {
				got, err := runValue(r, prog, pkt)
				if err != nil {
					t.Fatal(err)
				}
				if (got != 0) != f.inbound {
					t.Errorf("%s, %s, %s packet: result %d, want a match %v", f.name, backend, pname, got, f.inbound)
				}
			}
		}
	}
}
