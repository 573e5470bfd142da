// Package filter turns xdpcap's filter expressions into cBPF and runs a
// filter over the packets of a capture file. It holds what of xdpcap needs
// libpcap (package cbpf, cgo), so that package xdpcap, which L4Drop's
// load-only build imports, links none.
package filter

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/gopacket/gopacket/layers"

	"github.com/l4drop/l4drop/cbpf"
)

// Parse turns a capture's filter expression into cBPF: nil for an
// empty expression (capture everything), bytecode ("N,op jt jf k,...", as
// tcpdump -ddd prints it) as it is, anything else compiled by libpcap for
// link type lt and the snap length. Errors call the expression EXPR, as
// xdpcap's command line does, and quote at most 200 bytes of it.
func Parse(expr string, lt cbpf.LinkType, snapLen int) ([]bpf.Instruction, error) {
	expr = strings.TrimSpace(expr)
	if expr == "" {
		return nil, nil
	}
	if cbpf.IsBytecode(expr) {
		prog, err := cbpf.Parse(expr)
		if err != nil {
			return nil, fmt.Errorf("EXPR (bytecode, %d bytes): %w", len(expr), err)
		}
		return prog, nil
	}
	prog, err := cbpf.Compile(expr, lt, snapLen)
	if ce := (*cbpf.CompileError)(nil); errors.As(err, &ce) {
		// An expression is echoed back only so far: it may be huge.
		short := *ce
		short.Expr, short.Msg = shorten(ce.Expr), shorten(ce.Msg)
		return nil, fmt.Errorf("EXPR (%d bytes): %w", len(expr), &short)
	}
	if err != nil {
		return nil, fmt.Errorf("EXPR: %w", err)
	}
	return prog, nil
}

// shortLen is the most bytes of user input an error message quotes.
const shortLen = 200

// shorten cuts s to shortLen bytes, saying how much it left out.
func shorten(s string) string {
	if len(s) <= shortLen {
		return s
	}
	return fmt.Sprintf("%s... (%d more bytes)", strings.ToValidUTF8(s[:shortLen], ""), len(s)-shortLen)
}

// PcapLinkType returns the LINKTYPE_ value capture files store for a
// link type (a DLT_ value); the two differ for a few.
func PcapLinkType(lt cbpf.LinkType) layers.LinkType {
	for v := uint32(100); v <= 106; v++ {
		if cbpf.LinkTypeFromPcap(v) == lt {
			return layers.LinkType(v)
		}
	}
	return layers.LinkType(lt)
}
