package fingerprint_test

import (
	"fmt"
	"log"

	"github.com/l4drop/l4drop/fingerprint"
	"github.com/l4drop/l4drop/lab"
)

// packets makes n IP packets of a lab traffic template, as a capture of
// them would hold.
func packets(spec string, seed uint64, n int) []fingerprint.Packet {
	t, err := lab.ParseTemplate(spec)
	if err != nil {
		log.Fatal(err)
	}
	return fingerprint.FromFrames(lab.Frames([]lab.Template{t}, seed, n))
}

// An NTP monlist reflection (replies from source port 123, from many
// servers) against a server whose own NTP client gets time replies from
// the same port: the rule keeps to what only the flood has.
func ExampleFingerprint() {
	attack := packets("ntp,monlist,ttl=52,ipid=rand,randsrc", 1, 2000)
	baseline := packets("ntp,ttl=57,ipid=rand,randsrc", 2, 2000)
	rules, err := fingerprint.Fingerprint(attack, baseline, fingerprint.Options{})
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range rules {
		fmt.Printf("%s\nmatches %d of %d attack samples\n", r.Expr(), r.Matched, r.Samples)
		legit := 0
		for _, p := range baseline {
			if fingerprint.Match(&r.AutoRule, p) {
				legit++
			}
		}
		fmt.Printf("matches %d of %d baseline samples\n", legit, len(baseline))
	}
	// Output:
	// ip and ip proto 17 and ip[8:1] = 52 and len = 468 and udp[0:2] = 123 and (udp[8:4] & 0xff00ffff) = 3607102250 and (udp[13:2] & 0xff00) = 1536 and udp[15:1] = 72 and udp[19:1] = 10 and (udp[32:4] & 0xffff00ff) = 3325231105
	// matches 2000 of 2000 attack samples
	// matches 0 of 2000 baseline samples
}
