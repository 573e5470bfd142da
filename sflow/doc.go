// Package sflow exports L4Drop's packet samples as sFlow version 5, so that
// the collectors operators already run (pmacct's sfacctd, FastNetMon,
// goflow2, Wireshark) read them unmodified, dropped packets included.
//
// An [Exporter] takes sampled packets from [Exporter.Sample], which never
// blocks (a full queue counts a lost sample), and sends them from
// [Exporter.Run] in datagrams of at most 1,400 bytes to one or more
// collectors: a flow sample per packet (enterprise 0, format 1; the expanded
// format 3 when the ifIndex needs more than 24 bits) whose output interface
// is "discarded, reason ACL" (0x40000000|258 compact, {1, 258} expanded) for
// the packets a rule dropped and 0 for passed ones, with a raw packet header
// record (Ethernet, up to 128 bytes). Every 10 s it adds a counter sample:
// the interface's generic counters (if_counters, read with [Link]) and
// L4Drop's rule counters in an enterprise record. [Datagram] is the encoder
// underneath, usable on its own.
//
// # Rule counter record
//
// L4Drop's per-rule counters travel as an enterprise-specific counter
// record in the counter samples of the interface's data source. Until
// L4Drop has an IANA Private Enterprise Number the enterprise is 32473
// ([DefaultEnterprise], reserved for documentation by RFC 5612, so that no
// collector mistakes the record for a vendor's); [Config.Enterprise] sets
// another. The format is 1. In the XDR of the sFlow specification:
//
//	/* L4Drop rule counters */
//	/* opaque = counter_data; enterprise = 32473; format = 1 */
//	struct l4drop_rule {
//	   unsigned int index;     /* position in the rule set;
//	                              0xFFFFFFFF: packets no rule matched */
//	   unsigned int action;    /* XDP action of the rule: 1 drop, 2 pass */
//	   unsigned hyper packets; /* packets matched since the rule set loaded */
//	   unsigned hyper bytes;   /* their bytes, without FCS */
//	   string name<64>;        /* rule name, UTF-8 */
//	}
//	struct l4drop_rule_counters {
//	   unsigned int total;       /* entries of the whole rule set */
//	   l4drop_rule rules<>;      /* some of them */
//	}
//
// A rule set too large for one datagram is spread over several counter
// samples of the same source and interval (consecutive sequence numbers);
// the first also carries if_counters. A collector has the whole set when it
// has seen total entries.
//
// # Fields
//
// sample_pool counts the packets the sampler saw: the exporter adds the
// sampling rate with each sample and, when [Config.Sampler] reports a
// larger count of packets seen, takes that. drops counts the samples lost
// before a datagram: those the kernel could not hand over (reported by
// Config.Sampler) and those Sample found no room for. frame_length is the
// packet's length plus the 4-byte FCS that XDP never sees, which stripped
// counts. The datagram uptime counts from the exporter's creation, when
// its sequence numbers start.
package sflow
