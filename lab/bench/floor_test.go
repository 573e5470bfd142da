package bench

import (
	"context"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestFloors: floorC's rules match what the rows they stand under match,
// and nothing else: a floor that passed the flood would measure the stack.
func TestFloors(t *testing.T) {
	fixture.RequireRoot(t)
	coll, err := newFloor(context.Background(), 53, "attack.example")
	if err != nil {
		t.Fatal(err)
	}
	defer coll.Close()
	short := dnsPacket("x7f3k2.attack.example")
	short = short[:len(short)-6] // the name's last byte and the question's type and class cut off
	for _, tt := range []struct {
		prog  string
		frame []byte
		want  uint32
	}{
		{"floor_name", dnsPacket("x7f3k2.attack.example"), 1},
		{"floor_name", dnsPacket("a.attack.example"), 1},
		{"floor_name", dnsPacket("attack.example"), 2},
		{"floor_name", dnsPacket("a.b.attack.example"), 2},
		{"floor_name", dnsPacket("x7f3k2.attack.examplf"), 2},
		{"floor_name", legitPacket(), 2},
		{"floor_name", short, 2},
		{"floor_name", fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 54, fixture.DNSQuery("x.attack.example", 1)), 2},
		{"floor_port", legitPacket(), 1},
		{"floor_port", fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 54, nil), 2},
	} {
		ret, _, err := coll.Programs[tt.prog].Test(tt.frame)
		if err != nil {
			t.Fatal(err)
		}
		if ret != tt.want {
			t.Errorf("%s, %x: %d, want %d", tt.prog, tt.frame, ret, tt.want)
		}
	}
}

func TestFloorSource(t *testing.T) {
	for _, tt := range []struct {
		zone string
		ok   bool
	}{{"attack.example", true}, {"zone0000.example", true}, {"a.b", false}, {"ab.cdef", true}} {
		if _, err := floorSource(53, tt.zone); (err == nil) != tt.ok {
			t.Errorf("zone %q: error %v, want ok %v", tt.zone, err, tt.ok)
		}
	}
}
