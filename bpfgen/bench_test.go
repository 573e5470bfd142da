package bpfgen

import (
	"strings"
	"testing"
)

// BenchmarkGenerate measures generation and reports the rules' sizes in
// cBPF instructions.
func BenchmarkGenerate(b *testing.B) {
	name255 := strings.Join([]string{strings.Repeat("a", 63), strings.Repeat("b", 63), strings.Repeat("c", 63), strings.Repeat("d", 61)}, ".")
	cases := []struct {
		name string
		gen  func() (*Program, error)
	}{
		{"dns/exact", func() (*Program, error) { return DNS(Options{}, DNSOptions{}, "example.com") }},
		{"dns/exact-no-l4-check", func() (*Program, error) { return DNS(Options{}, DNSOptions{NoL4Check: true}, "example.com") }},
		{"dns/i-star", func() (*Program, error) { return DNS(Options{}, DNSOptions{CaseInsensitive: true}, "*.example.com") }},
		{"dns/4-patterns", func() (*Program, error) {
			return DNS(Options{}, DNSOptions{}, "foo.com", "bar.net", "*.baz.org", "x?.**")
		}},
		{"dns/i-255-bytes", func() (*Program, error) { return DNS(Options{}, DNSOptions{CaseInsensitive: true}, name255) }},
		{"dns_validate", func() (*Program, error) { return DNSValidate(Options{}, DNSValidateOptions{}) }},
		{"suffix/8", func() (*Program, error) { return Suffix(Options{}, "deadbeefxx00ff11") }},
		{"p0f/linux", func() (*Program, error) {
			return P0f(Options{}, "*:64:0:*:mss*20,10:mss,sok,ts,nop,ws:df,id+:0")
		}},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			var n int
			for b.Loop() {
				p, err := c.gen()
				if err != nil {
					b.Fatal(err)
				}
				n = len(p.Insns)
			}
			b.ReportMetric(float64(n), "insns")
		})
	}
}
