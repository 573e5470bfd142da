package build

import (
	"path/filepath"
	"testing"

	"github.com/l4drop/l4drop/l4drop"

	"github.com/l4drop/l4drop/internal/fixture"
)

// TestExampleRules: the example rule set of the README builds, and each of
// its rules does what its comment says.
func TestExampleRules(t *testing.T) {
	fixture.RequireRoot(t)
	rs, err := LoadRuleSet(filepath.Join("..", "examples", "rules.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := Build(rs, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{Location: "ams"})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	c4, s4, c6, s6 := fixture.ClientIPv4, fixture.ServerIPv4, fixture.ClientIPv6, fixture.ServerIPv6
	q := func(name string) []byte { return fixture.DNSQuery(name, 1) }
	big := append(q("big.example.org"), make([]byte, 600)...)
	ntp := make([]byte, 480)
	for _, tt := range []struct {
		name string
		pkt  []byte
		want string
	}{
		{"resolver", fixture.UDP4("192.0.2.53", s4, 53, 53, big), "our-resolvers"},
		{"big dns", fixture.UDP4(c4, s4, 1, 53, big), "dns-flood-example"},
		{"small dns", fixture.UDP4(c4, s4, 1, 53, q("big.example.org")), ""},
		{"syn 80", fixture.TCP4SYN(c4, s4, 1, 80), "syn-flood-80"},
		{"ntp big", fixture.UDP4(c4, s4, 123, 4000, ntp), "ntp-reflection"},
		{"ntp small", fixture.UDP4(c4, s4, 123, 4000, ntp[:48]), ""},
		{"wildcard", fixture.UDP6(c6, s6, 1, 53, q("www.example.com")), "bad-names"},
		{"wildcard deeper", fixture.UDP4(c4, s4, 1, 53, q("a.www.example.com")), ""},
		{"one byte", fixture.UDP4(c4, s4, 1, 53, q("xyz.example.net")), "bad-names"},
		{"exact, any case", fixture.UDP4(c4, s4, 1, 53, q("A.Attack.Example")), "flood-names"},
		{"legit", fixture.UDP4(c4, s4, 1, 9999, nil), ""},
	} {
		v, err := d.Run(tt.pkt)
		if err != nil {
			t.Fatal(err)
		}
		if v.Name != tt.want {
			t.Errorf("%s: %s by %q, want %q", tt.name, v.Action, v.Name, tt.want)
		}
	}
}
