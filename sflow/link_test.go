package sflow

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestLinkLoopback reads the loopback's counters, which any user may.
func TestLinkLoopback(t *testing.T) {
	l, err := OpenLink(1)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := l.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Index != 1 || c.Type != 24 || c.Status&1 == 0 || c.InBroadcast != ^uint32(0) {
		t.Errorf("loopback counters %+v: want index 1, softwareLoopback, admin up, broadcast unknown", c)
	}
	a, err := l.AgentAddress()
	if err != nil || a != netip.MustParseAddr("127.0.0.1") {
		t.Errorf("agent address %s, %v; want 127.0.0.1", a, err)
	}
	if _, err := OpenLink(0); err == nil {
		t.Error("OpenLink(0) succeeded")
	}
	if _, err := OpenLink(1 << 30); err == nil {
		t.Error("OpenLink of a missing interface succeeded")
	}
	l.Close()
	if _, err := l.Counters(); err == nil {
		t.Error("Counters after Close succeeded")
	}
}

// TestLinkVeth opens a veth end inside its namespace, reads its counters
// and address from outside it, and sees the traffic sent to it.
func TestLinkVeth(t *testing.T) {
	fixture.RequireRoot(t)
	lab := fixture.Lab(t)
	var l *Link
	err := lab.Server.Do(func() (err error) {
		l, err = OpenLink(lab.ServerIndex)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	before, err := l.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if before.Index != uint32(lab.ServerIndex) || before.Type != 6 || before.Status != 3 ||
		before.Speed != 10e9 || before.Direction != 1 || before.Promiscuous != 2 {
		t.Errorf("veth counters %+v: want ethernetCsmacd, up, 10 Gb/s full duplex", before)
	}
	fixture.ListenUDP(t, lab.Server, fixture.ServerIPv4, 9999)
	fixture.SendUDP(t, lab.Client, fixture.ServerIPv4, 9999, 100)
	after, err := l.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if d := after.InUcast - before.InUcast; d < 100 || after.InOctets-before.InOctets < 100*60 {
		t.Errorf("after 100 datagrams: %d more unicast packets, %d more octets", d, after.InOctets-before.InOctets)
	}
	a, err := l.AgentAddress()
	if err != nil || a != netip.MustParseAddr(fixture.ServerIPv4) {
		t.Errorf("agent address %s, %v; want %s", a, err, fixture.ServerIPv4)
	}
	// A link without any address: the loopback of a fresh namespace has
	// 127.0.0.1, so take the veth's address away.
	if err := lab.Server.IP("addr", "flush", "dev", lab.ServerIf); err != nil {
		t.Fatal(err)
	}
	if a, err := l.AgentAddress(); !errors.Is(err, ErrNoAddress) {
		t.Errorf("agent address without addresses: %s, %v; want ErrNoAddress", a, err)
	}
}
