// Package build compiles L4Drop rule sets into one eBPF ELF: it parses rule
// sets (YAML), compiles each matcher to cBPF (libpcap for expressions,
// bpfgen for DNS patterns), generates C (cbpfc's C backend per rule, name
// tables for exact and "*.rest" DNS names, constant tables for rules that
// differ only in a constant) and builds it with clang. It is the only part
// of L4Drop that needs cgo and clang; package l4drop loads what it makes.
//
// The flow is [LoadRuleSet], [Build], then l4drop.Load on each machine.
package build
