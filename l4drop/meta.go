package l4drop

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
)

const metaVersion = 1

// ErrNotL4Drop is returned for ELF files without L4Drop's rules section.
var ErrNotL4Drop = errors.New("not an L4Drop object (no " + metaSection + " section)")

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

func (m *Meta) marshal() ([]byte, error) {
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
	sec := f.Section(metaSection)
	if sec == nil {
		return nil, ErrNotL4Drop
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", metaSection, err)
	}
	data = bytes.TrimRight(data, "\x00")
	var m Meta
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", metaSection, err)
	}
	if m.Version != metaVersion {
		return nil, fmt.Errorf("%s: version %d, this l4drop reads %d: rebuild the rules", metaSection, m.Version, metaVersion)
	}
	if len(m.Programs) == 0 {
		return nil, fmt.Errorf("%s: no programs", metaSection)
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
