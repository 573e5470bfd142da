package bpfgen

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestGenerate(t *testing.T) {
	o := Options{IPv6: true}
	direct := func(p *Program, err error) func() (*Program, error) {
		return func() (*Program, error) { return p, err }
	}
	for _, tc := range []struct {
		name string
		gen  string
		args []string
		want func() (*Program, error) // nil: an error is wanted
		err  string
	}{
		{"dns", "dns", []string{"-i", "*.example.com", "--no-l4-check"},
			direct(DNS(o, DNSOptions{CaseInsensitive: true, NoL4Check: true}, "*.example.com")), ""},
		{"dns after --", "dns", []string{"--ignorecase", "--", "-x.example.com"},
			direct(DNS(o, DNSOptions{CaseInsensitive: true}, "-x.example.com")), ""},
		{"dns bad flag", "dns", []string{"-x", "example.com"}, nil, `dns: unknown flag "-x"`},
		{"dns_validate", "dns_validate", []string{"--strict"}, direct(DNSValidate(o, DNSValidateOptions{Strict: true})), ""},
		{"dns_validate bad", "dns_validate", []string{"example.com"}, nil, "dns_validate: unknown argument"},
		{"suffix", "suffix", []string{"de ad", "xx ef"}, direct(Suffix(o, "de ad", "xx ef")), ""},
		{"p0f two", "p0f", []string{"a", "b"}, nil, "p0f: want one signature, got 2 arguments"},
		{"tcpdump", "tcpdump", []string{"udp", "and", "dst port 53"}, direct(Tcpdump(o, "udp and dst port 53")), ""},
		{"unknown", "smurf", nil, nil, `unknown generator "smurf"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Generate(o, tc.gen, tc.args)
			if tc.want == nil {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one with %q", err, tc.err)
				}
				return
			}
			want, werr := tc.want()
			if werr != nil {
				t.Fatal(werr)
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got.Insns, want.Insns) {
				t.Errorf("Generate gave\n%v\nthe generator itself\n%v", got.Insns, want.Insns)
			}
		})
	}
}

func TestGeneratorHelp(t *testing.T) {
	for _, g := range Generators {
		help := GeneratorHelp(g)
		if !strings.HasPrefix(help, "Usage: bpfgen [OPTIONS] "+g+" --") {
			t.Errorf("help of %s starts %q", g, help[:min(len(help), 40)])
		}
		for _, args := range [][]string{{"-h"}, {"--help"}} {
			if _, err := Generate(Options{}, g, args); !errors.Is(err, ErrHelp) {
				t.Errorf("Generate(%s, %q) = %v, want ErrHelp", g, args, err)
			}
		}
	}
	if h := GeneratorHelp("smurf"); h != "" {
		t.Errorf("help of no generator: %q", h)
	}
}
