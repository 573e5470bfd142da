package l4drop

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// MetaVersion is the version of the metadata format; the loader refuses
// objects built with another. Version 3 may hold many counters in an
// element of MapCounters (CounterChunk), which loaders of version 2 read
// as one. In version 4, ProgQuiet makes no tail call to the --next
// program, ProgQuietNext does: a loader of version 3 would attach the
// first with --next.
const MetaVersion = 4

// Names of the objects in a built ELF. The loader and the commands find
// them by these names.
const (
	MapCounters = "l4drop_counters"
	MapStats    = "l4drop_stats"
	MapConfig   = ".data.l4cfg" // the section of the l4drop_cfg global
	MapSamples  = "l4drop_samples"
	MapChain    = "l4drop_chain"
	MapHook     = "xdpcap_hook"
	ProgPrefix  = "l4drop_"
	MetaSection = ".l4drop.rules"
	// NoRule is the rule index of packets no rule matched, in samples.
	NoRule = ^uint32(0)
)

// ErrNotL4Drop is returned for ELF files without L4Drop's rules section.
var ErrNotL4Drop = errors.New("not an L4Drop object (no " + MetaSection + " section)")

// Meta describes a built rule set. It travels in the ELF's .l4drop.rules
// section as JSON, so the loader needs nothing but the ELF.
type Meta struct {
	Version    int    `json:"version"`
	Source     string `json:"source,omitempty"`
	SampleRate uint32 `json:"sample_rate"`
	Snaplen    uint32 `json:"snaplen"`
	// Programs are the XDP programs in chain order; the first is attached.
	Programs []string   `json:"programs"`
	Rules    []MetaRule `json:"rules"`
	// DNS is the exact-name table, in rule order.
	DNS []DNSKey `json:"dns,omitempty"`
	// DNSHash is the hash of each DNS name table that is a map, by map.
	DNSHash map[string]HashTable `json:"dns_hash,omitempty"`
	// Sets are the runs of rules tested at once.
	Sets []SetGroup `json:"sets,omitempty"`
	// Fragments is what happens to non-first fragments no rule matched:
	// "pass" or "drop".
	Fragments string `json:"fragments,omitempty"`
	// AutoSlots is the number of auto rule slots (MapAuto) the programs
	// try after the rules; counters and sample rule indexes follow
	// AutoRuleBase. 0 in objects built before auto rules.
	AutoSlots int `json:"auto_slots,omitempty"`
}

// MetaRule describes one rule of a built rule set.
type MetaRule struct {
	Index     int      `json:"index"`
	Name      string   `json:"name"`
	Family    string   `json:"family,omitempty"`
	Action    string   `json:"action"`
	Locations []string `json:"locations,omitempty"`
	Matchers  []string `json:"matchers"`
	// Line of the rule in the rules file.
	Line int `json:"line"`
	// Expires is how long the rule stays once deployed; Until when it
	// goes. The daemon removes due rules; zero values: never.
	Expires time.Duration `json:"expires,omitempty"`
	Until   *time.Time    `json:"until,omitempty"`
	// Program is the index in Programs of the program holding the rule.
	Program int `json:"program"`
	// Symbol is the switch the loader sets (RULE_<n>_ENABLED); empty for
	// rules whose names are all in DNS name maps, which the loader
	// switches by leaving their names out of the maps.
	Symbol string `json:"symbol,omitempty"`
	// CLines are the ranges of lines of the generated C that belong to the
	// rule; verifier messages name lines, this names the rule.
	CLines [][2]int `json:"c_lines"`
}

// Marshal encodes m as the ELF section holds it.
func (m *Meta) Marshal() ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("rules metadata: %w", err)
	}
	return b, nil
}

// ReadMeta reads the rule set description from a built ELF.
func ReadMeta(obj []byte) (*Meta, error) {
	f, err := elf.NewFile(bytes.NewReader(obj))
	if err != nil {
		return nil, fmt.Errorf("read ELF: %w", err)
	}
	defer f.Close()
	sec := f.Section(MetaSection)
	if sec == nil {
		return nil, ErrNotL4Drop
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", MetaSection, err)
	}
	data = bytes.TrimRight(data, "\x00")
	// Large sets' metadata is gzipped and in base64 (which starts
	// "H4sI"): clang prints a long C string slowly (10,000 rules: 1.9 MB
	// of JSON, 10 s).
	if bytes.HasPrefix(data, []byte("H4sI")) {
		z, err := base64.StdEncoding.AppendDecode(nil, data)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", MetaSection, err)
		}
		zr, err := gzip.NewReader(bytes.NewReader(z))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", MetaSection, err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("%s: %w", MetaSection, err)
		}
	}
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", MetaSection, err)
	}
	if m.Version != MetaVersion {
		return nil, fmt.Errorf("%s: version %d, this l4drop reads %d: rebuild the rules", MetaSection, m.Version, MetaVersion)
	}
	if len(m.Programs) == 0 {
		return nil, fmt.Errorf("%s: no programs", MetaSection)
	}
	return &m, nil
}

// RuleAt returns the rule whose generated C holds line, or nil.
func (m *Meta) RuleAt(line int) *MetaRule {
	for i := range m.Rules {
		for _, r := range m.Rules[i].CLines {
			if line >= r[0] && line <= r[1] {
				return &m.Rules[i]
			}
		}
	}
	return nil
}

// EnabledAt reports whether the rule is on at location loc by default:
// rules without locations are on everywhere, the others only where named
// ("" is no location).
func (r *MetaRule) EnabledAt(loc string) bool {
	return EnabledAt(r.Locations, loc)
}

// EnabledAt reports whether a rule with the given locations is on at loc.
func EnabledAt(locations []string, loc string) bool {
	if len(locations) == 0 {
		return true
	}
	for _, l := range locations {
		if l == loc {
			return true
		}
	}
	return false
}
