package build

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

// The held-out check: rule sets as an operator writes them during an
// attack (issue #11), of shapes and constants the property test does not
// draw: 3 to 12 rules per shape, 1 to 3 shapes, shuffled. The seeds are
// held out too: heldOutStream is used nowhere else.
const heldOutStream = 0x4e1d_0017

// heldOutShapes make one rule of a shape with random constants, and
// packets it matches.
var heldOutShapes = []func(r *rand.Rand) (string, [][]byte){
	func(r *rand.Rand) (string, [][]byte) {
		p := uint16(1 + r.IntN(65535))
		return fmt.Sprintf("expr: \"udp dst port %d\"", p), [][]byte{
			fixture.UDP4(heldOutAddr(r), fixture.ServerIPv4, uint16(r.Uint32()), p, nil),
			fixture.UDP6(fixture.ClientIPv6, fixture.ServerIPv6, 53, p, []byte("x")),
		}
	},
	func(r *rand.Rand) (string, [][]byte) {
		p, a := uint16(1+r.IntN(65535)), heldOutAddr(r)
		return fmt.Sprintf("expr: \"tcp dst port %d and src host %s\"", p, a), [][]byte{
			fixture.TCP4SYN(a, fixture.ServerIPv4, uint16(r.Uint32()), p),
			fixture.TCP4SYN(heldOutAddr(r), fixture.ServerIPv4, 7, p),
		}
	},
	func(r *rand.Rand) (string, [][]byte) {
		p, ttl := uint16(1+r.IntN(65535)), 1+r.IntN(255)
		pkt := fixture.UDP4(heldOutAddr(r), fixture.ServerIPv4, 1, p, nil)
		off, _ := fixture.IPOffset(pkt)
		pkt[off+8] = byte(ttl)
		return fmt.Sprintf("expr: \"ip[8] = %d and udp dst port %d\"", ttl, p), [][]byte{pkt}
	},
	func(r *rand.Rand) (string, [][]byte) {
		a, proto := heldOutAddr(r), []int{1, 6, 17, 47, 50}[r.IntN(5)]
		pkt := fixture.UDP4(fixture.ClientIPv4, a, 1, 53, nil)
		off, _ := fixture.IPOffset(pkt)
		pkt[off+9] = byte(proto)
		var d [4]byte
		fmt.Sscanf(a, "%d.%d.%d.%d", &d[0], &d[1], &d[2], &d[3])
		return fmt.Sprintf("expr: \"dst net %d.%d.%d.0/24 and ip proto %d\"", d[0], d[1], d[2], proto), [][]byte{pkt}
	},
	func(r *rand.Rand) (string, [][]byte) {
		n, proto := r.IntN(1400), []int{6, 17}[r.IntN(2)]
		pkt := fixture.UDP4(heldOutAddr(r), fixture.ServerIPv4, 1, 9, make([]byte, n))
		off, _ := fixture.IPOffset(pkt)
		pkt[off+9] = byte(proto)
		return fmt.Sprintf("expr: \"ip[2:2] = %d and ip proto %d\"", 28+n, proto), [][]byte{pkt}
	},
}

func heldOutAddr(r *rand.Rand) string {
	return fmt.Sprintf("%d.%d.%d.%d", 1+r.IntN(223), r.IntN(256), r.IntN(256), 1+r.IntN(254))
}

// heldOutSet makes an operator's set: 1 to 3 shapes, 3 to 12 rules each,
// shuffled, dropped (most) or passed.
func heldOutSet(r *rand.Rand, name string) propSet {
	ps := propSet{name: name}
	var bodies []string
	for _, sh := range r.Perm(len(heldOutShapes))[:1+r.IntN(3)] {
		for range 3 + r.IntN(10) {
			body, pkts := heldOutShapes[sh](r)
			if r.IntN(5) == 0 {
				body += "\n    action: pass"
			}
			bodies = append(bodies, body)
			ps.pkts = append(ps.pkts, pkts...)
		}
	}
	r.Shuffle(len(bodies), func(i, j int) { bodies[i], bodies[j] = bodies[j], bodies[i] })
	ps.rules = bodies
	return ps
}

// TestHeldOut builds 24 operator sets, each alone, and compares their
// verdicts with libpcap's: the acceptance is 24 of 24 built and no
// wrong verdict.
func TestHeldOut(t *testing.T) {
	fixture.RequireRoot(t)
	corpus := corpusIP(t)
	built, judged := 0, 0
	for k := range 24 {
		r := rand.New(rand.NewPCG(uint64(k), heldOutStream))
		s := heldOutSet(r, fmt.Sprintf("h%d", k))
		judged += checkBatch(t, []propSet{s}, false, corpus)
		built++
	}
	t.Logf("%d of 24 sets built and loaded, %d packets judged, 0 wrong", built, judged)
}
