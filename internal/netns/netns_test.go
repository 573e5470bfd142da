package netns_test

import (
	"errors"
	"fmt"
	"net"
	"os"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/internal/netns"
)

func TestNewOpenClose(t *testing.T) {
	fixture.RequireRoot(t)
	name := fmt.Sprintf("l4dt-nstest-%d", os.Getpid())
	ns, err := netns.New(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if _, err := netns.New(name); !errors.Is(err, netns.ErrExists) {
		t.Fatalf("second New = %v, want ErrExists", err)
	}
	other, err := netns.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	// Inside the namespace there is only lo, and it is up.
	err = other.Do(func() error {
		ifs, err := net.Interfaces()
		if err != nil {
			return err
		}
		if len(ifs) != 1 || ifs[0].Name != "lo" || ifs[0].Flags&net.FlagUp == 0 {
			return fmt.Errorf("interfaces %v, want lo up only", ifs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Close(); err != nil || !netns.Exists(name) {
		t.Fatalf("closing an opened namespace: %v, exists %v; want it kept", err, netns.Exists(name))
	}
	if err := ns.Close(); err != nil || netns.Exists(name) {
		t.Fatalf("closing a new namespace: %v, exists %v; want it gone", err, netns.Exists(name))
	}
	if _, err := netns.Open(name); err == nil {
		t.Fatal("Open of a deleted namespace succeeded")
	}
}

func TestDelete(t *testing.T) {
	fixture.RequireRoot(t)
	name := fmt.Sprintf("l4dt-nsdel-%d", os.Getpid())
	ns, err := netns.New(name)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	if err := netns.Delete(name); err != nil {
		t.Fatal(err)
	}
	if netns.Exists(name) {
		t.Fatal("namespace still exists after Delete")
	}
	if err := netns.Delete(name); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("second Delete = %v, want ErrNotExist", err)
	}
}

func TestNewAddressedVeth(t *testing.T) {
	fixture.RequireRoot(t)
	a, b := fixture.Netns(t, "l4vt-a"), fixture.Netns(t, "l4vt-b")
	mac, _ := net.ParseMAC("02:00:00:00:00:0b")
	ai, bi, err := netns.NewAddressedVeth(
		netns.End{NS: a, Name: "va", MAC: fixture.ClientMAC, IPv4: fixture.ClientIPv4, IPv6: fixture.ClientIPv6},
		netns.End{NS: b, Name: "vb", MAC: mac, IPv4: fixture.ServerIPv4, IPv6: fixture.ServerIPv6},
	)
	if err != nil {
		t.Fatal(err)
	}
	// lo is 1 in every namespace; the veth ends come after it.
	if ai <= 1 || bi <= 1 {
		t.Errorf("ifindexes %d and %d", ai, bi)
	}
	if got := fixture.Ping(t, a, fixture.ServerIPv4, 3); got != 3 {
		t.Errorf("%d of 3 pings answered", got)
	}
	err = b.Do(func() error {
		ifi, err := net.InterfaceByIndex(bi)
		if err != nil {
			return err
		}
		if ifi.Name != "vb" || ifi.HardwareAddr.String() != mac.String() {
			return fmt.Errorf("index %d is %s %s", bi, ifi.Name, ifi.HardwareAddr)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

func TestNewPrivate(t *testing.T) {
	fixture.RequireRoot(t)
	ns, err := netns.NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	const name = "l4dt-priv0"
	if err := ns.IP("link", "add", name, "type", "veth", "peer", "name", "l4dt-priv1"); err != nil {
		t.Fatal(err)
	}
	err = ns.Do(func() error {
		lo, err := net.InterfaceByName("lo")
		if err != nil || lo.Flags&net.FlagUp == 0 {
			return fmt.Errorf("lo: %v, %w; want up", lo, err)
		}
		_, err = net.InterfaceByName(name)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Made inside the namespace, so not here.
	if _, err := net.InterfaceByName(name); err == nil {
		t.Errorf("%s in the caller's namespace", name)
	}
}
