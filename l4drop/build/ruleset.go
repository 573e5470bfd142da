package build

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/l4drop/l4drop/l4drop"

	"gopkg.in/yaml.v3"
)

// Family says which IP version a rule applies to.
type Family string

// Families a rule may declare. FamilyAny applies the rule to both; it suits
// tcpdump expressions (compiled for raw IP, they check the version
// themselves) and DNS rules (built once per version).
const (
	FamilyAny  Family = ""
	FamilyIPv4 Family = "ipv4"
	FamilyIPv6 Family = "ipv6"
)

// ErrRuleSet is wrapped by every error about the content of a rule set.
var ErrRuleSet = errors.New("invalid rule set")

// RuleSet is a parsed rules file.
type RuleSet struct {
	// File the rule set was read from, for messages.
	File string `yaml:"-"`
	// SampleRate sends one packet in SampleRate to user space; 0 is off,
	// 1 is every packet.
	SampleRate uint32 `yaml:"sample_rate"`
	// Snaplen is the most bytes of a packet a sample carries; 0 means
	// DefaultSnaplen.
	Snaplen uint32 `yaml:"snaplen"`
	// Fragments is what happens to non-first IPv4 and IPv6 fragments,
	// which carry no ports, that no rule matched: pass (the default) or
	// drop.
	Fragments Action `yaml:"fragments"`
	// FragmentsRate and FragmentsBurst are the limit of fragments:
	// ratelimit (packets a second; one bucket for all of them).
	FragmentsRate  uint64 `yaml:"fragments_rate"`
	FragmentsBurst uint64 `yaml:"fragments_burst"`
	Rules          []Rule `yaml:"rules"`

	fragmentsLimit RateLimit
}

// MaxSnaplen is the largest sample length: a sample is one perf event.
const MaxSnaplen = 65535

// DefaultSnaplen is the sample length when a rule set sets none.
const DefaultSnaplen = 256

// Rule is one rule of a rule set. Its matchers (Bytecode, Expr, DNS) must
// all match for the rule to apply.
type Rule struct {
	Name   string `yaml:"name"`
	Family Family `yaml:"family"`
	// Bytecode is cBPF in the `N,op jt jf k,...` form, seeing the packet
	// from the IP header on.
	Bytecode string `yaml:"bpf"`
	// Expr is a pcap-filter expression, compiled for raw IP.
	Expr string `yaml:"expr"`
	// DNS patterns, OR-ed, matched against the first question name of
	// DNS queries to UDP port 53 (bpfgen's dns generator).
	DNS []string `yaml:"dns"`
	// DNSCaseInsensitive compares the DNS patterns ignoring ASCII case.
	DNSCaseInsensitive bool `yaml:"dns_case_insensitive"`
	// Locations where the rule is on; empty means everywhere.
	Locations []string `yaml:"locations"`
	Action    Action   `yaml:"action"`
	// Expires is how long the rule stays after the rule set is deployed
	// (a Go duration, "90m"); Until when it goes (RFC 3339). The daemon
	// removes due rules; the build only checks and records them.
	Expires string `yaml:"expires"`
	Until   string `yaml:"until"`
	// Rate (packets a second), Burst, Per (rule, source, source/24,
	// source/64) and MaxSources (the sources the per-source table holds) are
	// action ratelimit's: see RateLimit.
	Rate       uint64 `yaml:"rate"`
	Burst      uint64 `yaml:"burst"`
	Per        string `yaml:"per"`
	MaxSources uint32 `yaml:"max_sources"`
	// Line in the file where the rule starts.
	Line int `yaml:"-"`

	expires   time.Duration
	until     time.Time
	ratelimit RateLimit
}

// LoadRuleSet reads and checks the rule set in file.
func LoadRuleSet(file string) (*RuleSet, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read rule set: %w", err)
	}
	return ParseRuleSet(file, data)
}

// ParseRuleSet parses and checks a rule set; file names it in errors.
// Unknown fields are errors, so a typo cannot silently disable a rule.
func ParseRuleSet(file string, data []byte) (*RuleSet, error) {
	rs := &RuleSet{File: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(rs); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%s: %w: empty file", file, ErrRuleSet)
		}
		return nil, yamlError(file, err)
	}
	// A second document would be ignored silently: rules lost.
	var next yaml.Node
	if err := dec.Decode(&next); !errors.Is(err, io.EOF) {
		line := next.Line
		if err != nil {
			return nil, yamlError(file, err)
		}
		return nil, fmt.Errorf("%s:%d: %w: a second YAML document (\"---\"): one rule set per file", file, line, ErrRuleSet)
	}
	rs.File = file
	// The struct decode has no positions; the node tree has them.
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err == nil {
		setLines(rs, &root)
	}
	if err := rs.check(&root); err != nil {
		return nil, err
	}
	return rs, nil
}

// yamlLine splits the "line N: " prefix off yaml's messages.
func yamlLine(msg string) (line, rest string, ok bool) {
	after, found := strings.CutPrefix(msg, "line ")
	if !found {
		return "", msg, false
	}
	line, rest, found = strings.Cut(after, ": ")
	if !found || line == "" || strings.Trim(line, "0123456789") != "" {
		return "", msg, false
	}
	return line, rest, true
}

// yamlError turns a YAML error into one naming file:line.
func yamlError(file string, err error) error {
	var te *yaml.TypeError
	if errors.As(err, &te) && len(te.Errors) > 0 {
		if line, rest, ok := yamlLine(te.Errors[0]); ok {
			return fmt.Errorf("%s:%s: %w: %s", file, line, ErrRuleSet, rest)
		}
		return fmt.Errorf("%s: %w: %s", file, ErrRuleSet, te.Errors[0])
	}
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if line, rest, ok := yamlLine(msg); ok {
		return fmt.Errorf("%s:%s: %w: %s", file, line, ErrRuleSet, rest)
	}
	return fmt.Errorf("%s: %w: %s", file, ErrRuleSet, msg)
}

// keyLine is the line of top-level key in the document root, or 0.
func keyLine(root *yaml.Node, key string) int {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return 0
	}
	top := root.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == key {
			return top.Content[i].Line
		}
	}
	return 0
}

func setLines(rs *RuleSet, root *yaml.Node) {
	if root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return
	}
	top := root.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value != "rules" || top.Content[i+1].Kind != yaml.SequenceNode {
			continue
		}
		for j, n := range top.Content[i+1].Content {
			if j < len(rs.Rules) {
				rs.Rules[j].Line = n.Line
			}
		}
	}
}

// errorf returns an error about rule r of the set, naming file, line and rule.
func (rs *RuleSet) errorf(r *Rule, format string, args ...any) error {
	return fmt.Errorf("%s:%d: rule %q: %w: "+format, append([]any{rs.File, r.Line, r.Name, ErrRuleSet}, args...)...)
}

func (rs *RuleSet) check(root *yaml.Node) error {
	if rs.Snaplen > MaxSnaplen {
		return fmt.Errorf("%s:%d: %w: snaplen %d: at most %d", rs.File, keyLine(root, "snaplen"), ErrRuleSet, rs.Snaplen, MaxSnaplen)
	}
	if err := rs.checkFragments(root); err != nil {
		return err
	}
	if len(rs.Rules) == 0 {
		return fmt.Errorf("%s: %w: no rules", rs.File, ErrRuleSet)
	}
	seen := make(map[string]int)
	for i := range rs.Rules {
		r := &rs.Rules[i]
		if r.Name == "" {
			return fmt.Errorf("%s:%d: rule %d: %w: missing name", rs.File, r.Line, i, ErrRuleSet)
		}
		if strings.ContainsAny(r.Name, " \t\n\"\\,") {
			return rs.errorf(r, "name may not contain blanks, quotes, backslashes or commas")
		}
		if prev, ok := seen[r.Name]; ok {
			return rs.errorf(r, "name used before, by the rule on line %d", prev)
		}
		seen[r.Name] = r.Line
		switch r.Family {
		case FamilyAny, FamilyIPv4, FamilyIPv6:
		default:
			return rs.errorf(r, "family %q: want ipv4 or ipv6 (or none for both)", r.Family)
		}
		if r.Action == "" {
			r.Action = ActionDrop
		}
		if r.Action.kind() == nil {
			return rs.errorf(r, "action %q: want one of %s", r.Action, actionNames())
		}
		if err := rs.checkAction(r); err != nil {
			return err
		}
		if r.Expires != "" {
			d, err := time.ParseDuration(r.Expires)
			if err != nil || d <= 0 {
				return rs.errorf(r, "expires %q: want a positive duration such as 90m or 2h", r.Expires)
			}
			r.expires = d
		}
		if r.Until != "" {
			t, err := time.Parse(time.RFC3339, r.Until)
			if err != nil {
				return rs.errorf(r, "until %q: want a time as 2026-12-31T23:00:00Z (RFC 3339)", r.Until)
			}
			r.until = t
		}
		if r.Bytecode == "" && r.Expr == "" && len(r.DNS) == 0 {
			return rs.errorf(r, "no matcher: give bpf, expr or dns")
		}
		for _, p := range r.DNS {
			if strings.TrimSpace(p) == "" {
				return rs.errorf(r, "empty dns pattern")
			}
		}
		for _, l := range r.Locations {
			if l == "" || strings.ContainsAny(l, " \t\n,") {
				return rs.errorf(r, "location %q: want a word", l)
			}
		}
	}
	return nil
}

// EnabledAt reports whether the rule is on at location loc ("" = no
// location: only rules without locations are on).
func (r *Rule) EnabledAt(loc string) bool { return l4drop.EnabledAt(r.Locations, loc) }
