package build

import (
	"errors"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/bpfgen"
	"github.com/l4drop/l4drop/cbpf"
)

// Frontend turns the matchers of a rule into cBPF programs that see the
// packet from the IP header on. The zero value uses the cbpf package for
// bytecode and expressions, and DefaultDNS for DNS patterns.
type Frontend struct {
	// Bytecode parses cBPF text (`N,op jt jf k,...`).
	Bytecode func(text string) ([]bpf.Instruction, error)
	// Expr compiles a pcap-filter expression for raw IP.
	Expr func(expr string) ([]bpf.Instruction, error)
	// DNS builds a matcher for DNS query names (OR of patterns).
	DNS DNSGenerator
}

// DNSGenerator builds a cBPF program matching DNS queries whose first
// question name matches one of patterns, over IPv4 or IPv6 (ipv6), with the
// IP header at offset 0. It checks IP version, UDP and destination port 53.
type DNSGenerator func(patterns []string, ipv6, caseInsensitive bool) ([]bpf.Instruction, error)

// DefaultDNS is the DNS generator a zero Frontend uses: bpfgen's dns
// generator with its layer-4 checks.
var DefaultDNS DNSGenerator = bpfgen.DNSRule

// ErrNoDNS is returned for DNS rules when no DNS generator is available.
var ErrNoDNS = errors.New("no DNS generator available")

func (f *Frontend) bytecode(text string) ([]bpf.Instruction, error) {
	if f != nil && f.Bytecode != nil {
		return f.Bytecode(text)
	}
	return cbpf.Parse(text)
}

func (f *Frontend) expr(expr string) ([]bpf.Instruction, error) {
	if f != nil && f.Expr != nil {
		return f.Expr(expr)
	}
	return cbpf.Compile(expr, cbpf.LinkTypeRaw, 0)
}

func (f *Frontend) dns(patterns []string, ipv6, ci bool) ([]bpf.Instruction, error) {
	gen := DefaultDNS
	if f != nil && f.DNS != nil {
		gen = f.DNS
	}
	if gen == nil {
		return nil, ErrNoDNS
	}
	return gen(patterns, ipv6, ci)
}

// matcher is one compiled matcher of a rule, for one family.
type matcher struct {
	kind   string // bpf, expr, dns
	family Family // FamilyAny when it applies to both
	prog   []bpf.Instruction
	fn     string   // C function, set by Generate
	args   []uint32 // its constant arguments, for shared functions
	// values are a folded matcher's set members (fold.go), where
	// args[0] would be one.
	values []uint32
	// masks are a mask-folded matcher's prefix masks, one a value
	// (fold.go): a value matches under its mask. nil: all 32 bits.
	masks []uint32
	// shape is the shared function's class, nil if the matcher has a
	// function of its own.
	shape *shape
}

// matchers compiles the matchers of rule r. A DNS matcher of a rule for
// both families is built twice, once per family.
func (f *Frontend) matchers(rs *RuleSet, r *Rule) ([]matcher, error) {
	var ms []matcher
	if r.Bytecode != "" {
		p, err := f.bytecode(r.Bytecode)
		if err != nil {
			return nil, rs.errorf(r, "bpf: %w", err)
		}
		ms = append(ms, matcher{kind: "bpf", family: FamilyAny, prog: p})
	}
	if r.Expr != "" {
		p, err := f.expr(r.Expr)
		if err != nil {
			return nil, rs.errorf(r, "expr: %w", err)
		}
		ms = append(ms, matcher{kind: "expr", family: FamilyAny, prog: p})
	}
	if len(r.DNS) > 0 {
		for _, fam := range []Family{FamilyIPv4, FamilyIPv6} {
			if r.Family != FamilyAny && r.Family != fam {
				continue
			}
			p, err := f.dns(r.DNS, fam == FamilyIPv6, r.DNSCaseInsensitive)
			if err != nil {
				return nil, rs.errorf(r, "dns: %w", err)
			}
			ms = append(ms, matcher{kind: "dns", family: fam, prog: p})
		}
	}
	for _, m := range ms {
		if len(m.prog) == 0 {
			return nil, rs.errorf(r, "%s: empty program", m.kind)
		}
	}
	return ms, nil
}

func famNumber(f Family) int {
	switch f {
	case FamilyIPv4:
		return 4
	case FamilyIPv6:
		return 6
	}
	return 0
}
