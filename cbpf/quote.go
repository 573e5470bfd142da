package cbpf

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// QuoteLen is the most bytes of user input [QuoteExpr] quotes.
const QuoteLen = 80

// QuoteExpr returns s (an expression, bytecode, a pattern: any user input)
// quoted as %q does, for an error message. Input longer than [QuoteLen]
// bytes is cut there and followed by its length, as in
// "host aaaa…" (1000005 bytes): an error must not echo a megabyte back.
func QuoteExpr(s string) string {
	if len(s) <= QuoteLen {
		return strconv.Quote(s)
	}
	// Cut on a rune boundary, so that the quote shows no broken character.
	cut := QuoteLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%s… (%d bytes)", strconv.Quote(strings.ToValidUTF8(s[:cut], "")), len(s))
}
