// Package l4drop loads and runs built L4Drop rule sets: the run side, which
// needs nothing but the ELF that package build made (no cgo, no clang).
//
// A built ELF carries its description (Meta, in the .l4drop.rules section).
// Load patches each rule's RULE_<n>_ENABLED relocation for the location
// (so one ELF serves every location), fills the lookup tables with the
// enabled rules, verifies and attaches the program, and pins it under
// /sys/fs/bpf/l4drop/IF/: program, bpf_link (replaced atomically on
// reload), per-rule per-CPU counters, the sample output and the xdpcap
// hook. [Open] reads a loaded set's counters and samples; [NewDryRun] runs
// a built set over packets with BPF_PROG_TEST_RUN.
//
// Package build turns rule sets (YAML) into that ELF; the l4drop command
// wraps both.
package l4drop
