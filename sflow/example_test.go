package sflow_test

import (
	"encoding/binary"
	"fmt"
	"log"
	"net/netip"

	"github.com/l4drop/l4drop/sflow"
)

// A datagram as L4Drop's exporter sends it: a packet its rules dropped,
// sampled one in 64 on interface 2, and the rule counters it matched.
func ExampleDatagram_MarshalBinary() {
	frame := make([]byte, 60) // the sampled frame's first bytes
	d := sflow.Datagram{
		Agent:      netip.MustParseAddr("192.0.2.1"),
		Sequence:   1,
		Uptime:     60000,
		Enterprise: sflow.DefaultEnterprise,
		Flows: []sflow.FlowSample{{
			Sequence:     1,
			Source:       2,
			SamplingRate: 64,
			SamplePool:   64,
			Input:        sflow.Interface{Format: sflow.InterfaceIndex, Value: 2},
			Output:       sflow.Discarded(sflow.DiscardACL),
			Header:       sflow.RawHeader{Protocol: sflow.HeaderProtocolEthernet, FrameLength: 64, Stripped: 4, Header: frame},
		}},
		Counters: []sflow.CounterSample{{
			Sequence: 1,
			Source:   2,
			Rules: &sflow.RuleCounters{Total: 2, Rules: []sflow.Rule{
				{Index: 0, Action: 1, Packets: 1000, Bytes: 64000, Name: "dns-flood"},
				{Index: sflow.NoRule, Action: 2, Packets: 50, Bytes: 4000},
			}},
		}},
	}
	b, err := d.MarshalBinary()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d bytes: sFlow version %d, %d samples\n", len(b), binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[24:]))

	// What a collector that does not know the rule counter record hands
	// over: its data, after the 28-byte datagram header, the counter
	// sample's 20 bytes and the record's format and length.
	n := binary.BigEndian.Uint32(b[52:])
	rc, err := sflow.ParseRuleCounters(b[56 : 56+n])
	if err != nil {
		log.Fatal(err)
	}
	for _, r := range rc.Rules {
		fmt.Printf("rule %d %q: %d packets, %d bytes\n", int32(r.Index), r.Name, r.Packets, r.Bytes)
	}
	// Output:
	// 256 bytes: sFlow version 5, 2 samples
	// rule 0 "dns-flood": 1000 packets, 64000 bytes
	// rule -1 "": 50 packets, 4000 bytes
}
