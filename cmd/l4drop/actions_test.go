package main

import (
	"encoding/json"
	"net"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/internal/fixture"
)

const actionRules = `
sample_rate: 0
rules:
  - name: web
    action: syncookie
    expr: "tcp dst port 80"
  - name: dns-limit
    action: ratelimit
    rate: 1
    burst: 1
    per: source
    expr: "udp dst port 53"
  - name: watch
    action: monitor
    expr: "udp"
`

// tcp4 builds an IPv4 TCP frame from the client to the server.
func tcp4(t *testing.T, tcp *layers.TCP) []byte {
	t.Helper()
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP,
		SrcIP: net.ParseIP(fixture.ClientIPv4).To4(), DstIP: net.ParseIP(fixture.ServerIPv4).To4()}
	tcp.SetNetworkLayerForChecksum(ip)
	eth := &layers.Ethernet{SrcMAC: fixture.ClientMAC, DstMAC: fixture.ServerMAC, EthernetType: layers.EthernetTypeIPv4}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip, tcp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// TestActionsTestStatus: l4drop test -r says what each packet of a
// syncookie, ratelimit and monitor rule set would get and why; status
// shows the action counters, as text and JSON.
func TestActionsTestStatus(t *testing.T) {
	fixture.RequireRoot(t)
	rulesFile := writeFile(t, "actions.yaml", actionRules)
	c4, s4 := fixture.ClientIPv4, fixture.ServerIPv4
	frames := [][]byte{
		fixture.TCP4SYN(c4, s4, 40000, 80),
		fixture.TCP4SYN(c4, s4, 40001, 80),
		tcp4(t, &layers.TCP{SrcPort: 40002, DstPort: 80, ACK: true, Seq: 2, Ack: 12345, Window: 500}), // no SYN-ACK had that cookie
		tcp4(t, &layers.TCP{SrcPort: 40003, DstPort: 80, RST: true, Seq: 2}),
		fixture.UDP4(c4, s4, 1, 53, nil),
		fixture.UDP4(c4, s4, 1, 53, nil),
		fixture.UDP4(c4, s4, 1, 53, nil),
		fixture.UDP4(c4, s4, 1, 9999, nil),
	}
	out, code := runCmd(t, "test", rulesFile, "-r", writePcap(t, frames), "-v")
	if code != 0 {
		t.Fatalf("test: exit %d\n%s", code, out)
	}
	// The first SYN to a destination in a second goes to the stack, to keep
	// its cookie check armed; the next is answered.
	for _, want := range []string{"1\tpass (syncookie_armed)\tweb", "2\ttx (syncookie_sent)\tweb", "3\tdrop (syncookie_bad)\tweb",
		"4\tdrop (syncookie_drop)\tweb", "5\tpass\t(no rule)\tmonitored by watch", "6\tdrop (ratelimited)\tdns-limit", "7\tdrop (ratelimited)\tdns-limit",
		"8\tpass\t(no rule)", "cannot be seen offline"} {
		if !strings.Contains(out, want) {
			t.Errorf("test output lacks %q:\n%s", want, out)
		}
	}

	obj := filepath.Join(t.TempDir(), "actions.o")
	if out, code := runCmd(t, "build", rulesFile, "-o", obj); code != 0 {
		t.Fatalf("build: exit %d\n%s", code, out)
	}
	lab := fixture.Lab(t)
	where := []string{"--iface", lab.ServerIf, "--netns", lab.Server.Name, "--bpffs", fixture.BPFFS(t)}
	if out, code := runCmd(t, append([]string{"load", obj}, where...)...); code != 0 || !strings.Contains(out, "unload puts back net.ipv4.tcp_syncookies=1 net.ipv4.tcp_timestamps=1") {
		t.Fatalf("load: exit %d\n%s", code, out)
	}
	defer runCmd(t, append([]string{"unload"}, where...)...)
	sendFrames(t, lab, [][]byte{frames[4], frames[5], frames[7]})
	out, code = runCmd(t, append([]string{"status", "--interval", "0"}, where...)...)
	if code != 0 || !strings.Contains(out, "actions: syncookie_sent 0, syncookie_armed 0") || !strings.Contains(out, "ratelimited 1, monitored 2") {
		t.Errorf("status: exit %d\n%s", code, out)
	}
	out, code = runCmd(t, append([]string{"status", "--json", "--interval", "0"}, where...)...)
	var st struct{ Actions map[string]uint64 }
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil {
		t.Fatalf("status --json: exit %d, %v\n%s", code, err, out)
	}
	if st.Actions["ratelimited"] != 1 || st.Actions["monitored"] != 2 || len(st.Actions) != 9 {
		t.Errorf("status --json actions: %v", st.Actions)
	}
}
