package cbpf

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuoteExpr(t *testing.T) {
	long := strings.Repeat("a", QuoteLen)
	tests := []struct {
		in, want string
	}{
		{"", `""`},
		{"tcp port 80", `"tcp port 80"`},
		{long, `"` + long + `"`},
		{long + "b", `"` + long + `"… (81 bytes)`},
		{"\n" + long, `"\n` + long[1:] + `"… (81 bytes)`},
		// A character across the cut is left out whole.
		{strings.Repeat("a", QuoteLen-1) + "é", `"` + long[1:] + `"… (81 bytes)`},
	}
	for _, tt := range tests {
		if got := QuoteExpr(tt.in); got != tt.want {
			t.Errorf("QuoteExpr(%.20q...) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestHugeInputErrors checks that an error never echoes a huge input
// whole: libpcap's, the bytecode parser's and the link type's.
func TestHugeInputErrors(t *testing.T) {
	huge := strings.Repeat("x", 1<<20)
	for _, tt := range []struct {
		name string
		err  func() error
		want string
	}{
		{"expression", func() error { _, err := Compile("host "+huge+" and", LinkTypeEthernet, 0); return err }, `compile "host xxx`},
		{"negative snaplen", func() error { _, err := Compile(huge, LinkTypeEthernet, -1); return err }, "negative snap length"},
		{"instruction count", func() error { _, err := Parse("9" + huge + ",6 0 0 0"); return err }, "want the instruction count first"},
		{"instruction", func() error { _, err := Parse("1,6 0 0 " + huge); return err }, `k: "xxx`},
		{"fields", func() error { _, err := Parse("1,6 0 0 0 " + huge); return err }, `want "op jt jf k"`},
		{"C form", func() error { _, err := Parse("{ 0x6, 0, 0, 0 }, " + huge + " { 0x6, 0, 0, 0 }"); return err }, `unexpected "xxx`},
		{"link type", func() error { _, err := ParseLinkType(huge); return err }, `link type "xxx`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.err()
			if err == nil {
				t.Fatal("no error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) || len(msg) > 400 || !utf8.ValidString(msg) {
				t.Errorf("error of %d bytes %.400q, want a short one with %q", len(msg), msg, tt.want)
			}
			var ce *CompileError
			if errors.As(err, &ce) && len(ce.Expr) < 1<<20 {
				t.Errorf("CompileError.Expr holds %d bytes, want the whole expression", len(ce.Expr))
			}
		})
	}
}
