package lab

import (
	"fmt"
	"net"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
)

// vethEnd and newAddressedVeth are the part New shares with fixture.Lab:
// a veth pair, addressed, with static neighbours. They are proposed for
// internal/netns (as netns.End and netns.NewAddressedVeth); until they move,
// this test keeps the proposal honest.

// vethEnd is one end of a veth pair: the namespace and name of the
// interface, its MAC, and its addresses (without prefix length).
type vethEnd struct {
	NS         *netns.NS
	Name       string
	MAC        net.HardwareAddr
	IPv4, IPv6 string
}

// newAddressedVeth creates a veth pair between a and b, gives each end its
// MAC and addresses (IPv4 /24, IPv6 /64 without duplicate address
// detection) and a permanent neighbour entry for the other end, so that no
// ARP, neighbour discovery or DAD delays the first packets, and returns the
// ends' ifindexes inside their namespaces.
func newAddressedVeth(a, b vethEnd) (aIndex, bIndex int, err error) {
	if err := netns.NewVeth(a.NS, a.Name, b.NS, b.Name); err != nil {
		return 0, 0, err
	}
	var index [2]int
	for i, pair := range [2][2]vethEnd{{a, b}, {b, a}} {
		self, peer := pair[0], pair[1]
		for _, args := range [][]string{
			{"link", "set", self.Name, "address", self.MAC.String()},
			{"addr", "add", self.IPv4 + "/24", "dev", self.Name},
			{"addr", "add", self.IPv6 + "/64", "dev", self.Name, "nodad"},
			{"neigh", "replace", peer.IPv4, "lladdr", peer.MAC.String(), "dev", self.Name, "nud", "permanent"},
			{"neigh", "replace", peer.IPv6, "lladdr", peer.MAC.String(), "dev", self.Name, "nud", "permanent"},
		} {
			if err := self.NS.IP(args...); err != nil {
				return 0, 0, err
			}
		}
		err := self.NS.Do(func() error {
			ifi, err := net.InterfaceByName(self.Name)
			if err == nil {
				index[i] = ifi.Index
			}
			return err
		})
		if err != nil {
			return 0, 0, fmt.Errorf("netns %s: %w", self.NS.Name, err)
		}
	}
	return index[0], index[1], nil
}

func TestNewAddressedVeth(t *testing.T) {
	fixture.RequireRoot(t)
	a, b := fixture.Netns(t, "l4vt-a"), fixture.Netns(t, "l4vt-b")
	ai, bi, err := newAddressedVeth(
		vethEnd{NS: a, Name: "va", MAC: InetMAC, IPv4: InetIPv4, IPv6: InetIPv6},
		vethEnd{NS: b, Name: "vb", MAC: ServerMAC, IPv4: ServerIPv4, IPv6: ServerIPv6},
	)
	if err != nil {
		t.Fatal(err)
	}
	// lo is 1 in every namespace; the veth ends come after it.
	if ai <= 1 || bi <= 1 {
		t.Errorf("ifindexes %d and %d", ai, bi)
	}
	if got := fixture.Ping(t, a, ServerIPv4, 3); got != 3 {
		t.Errorf("%d of 3 pings answered", got)
	}
	err = b.Do(func() error {
		ifi, err := net.InterfaceByIndex(bi)
		if err != nil {
			return err
		}
		if ifi.Name != "vb" || ifi.HardwareAddr.String() != ServerMAC.String() {
			return fmt.Errorf("index %d is %s %s", bi, ifi.Name, ifi.HardwareAddr)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}
