package bpfgen

import (
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/cbpf"
)

// MaxSuffix is the longest suffix, in bytes, a rule may look for.
const MaxSuffix = 1500

// Suffix returns a rule matching packets whose last bytes are the hex
// string, made of the arguments joined with white space removed; "xx" is a
// byte that may have any value. It looks at the packet's end only, so
// [Options.IPv6] and [Options.L3Offset] do not change it.
func Suffix(opts Options, hex ...string) (*Program, error) {
	text := strings.Join(strings.Fields(strings.Join(hex, " ")), "")
	if text == "" {
		return nil, fmt.Errorf("%w: suffix: no hex bytes given", ErrPattern)
	}
	if len(text)%2 != 0 {
		return nil, fmt.Errorf("%w: suffix %s: odd number of hex digits", ErrPattern, cbpf.QuoteExpr(text))
	}
	if len(text)/2 > MaxSuffix {
		return nil, fmt.Errorf("%w: suffix %s: %d bytes, more than %d", ErrPattern, cbpf.QuoteExpr(text), len(text)/2, MaxSuffix)
	}
	bs := make([]pbyte, len(text)/2)
	for i := range bs {
		pair := text[2*i : 2*i+2]
		if pair == "xx" || pair == "XX" {
			continue
		}
		v, err := strconv.ParseUint(pair, 16, 8)
		if err != nil {
			return nil, fmt.Errorf("%w: suffix %s: %q at byte %d is neither hex nor xx", ErrPattern, cbpf.QuoteExpr(text), pair, i)
		}
		bs[i] = pbyte{val: byte(v), care: 0xff}
	}
	match, noMatch := opts.results()
	a := &asm{}
	a.comment("suffix %s", text)
	a.comment("match: ret #%d, no match: ret #%d", match, noMatch)
	a.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jlt(uint32(len(bs)), "nomatch", "shorter than the suffix")
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: uint32(len(bs))})
	a.emit(bpf.TAX{}, "X = start of the suffix")
	compareBytes(a, 0, bs, "nomatch")
	a.ret(match)
	a.label("nomatch")
	a.ret(noMatch)
	return a.resolve()
}
