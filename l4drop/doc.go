// Package l4drop compiles DDoS mitigation rule sets into one XDP program and
// runs it: it parses rule sets (YAML), generates C (cbpfc's C backend per
// rule, bpfgen for DNS patterns, name tables for exact and "*.rest" DNS
// names and constant tables for rules that differ only in a constant, both
// compared inline or hashed by the program itself), builds it with clang
// into one eBPF ELF, and loads that ELF on interfaces with each rule
// switched on or off per location by patching the ELF's RULE_<n>_ENABLED
// relocations and filling the tables with the enabled rules. Loaded rule sets are pinned under
// /sys/fs/bpf/l4drop/IF/: program, bpf_link (replaced atomically on
// reload), per-rule per-CPU counters, the sample output and the xdpcap hook.
//
// The flow is [LoadRuleSet], [Build], then [Load] on each machine; [Open]
// reads a loaded set's counters and samples; [NewDryRun] runs a built set
// over packets with BPF_PROG_TEST_RUN. The l4drop command wraps them.
package l4drop
