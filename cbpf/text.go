package cbpf

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/cbpfinsn"
)

// ErrSyntax is wrapped by every error Parse returns for text that is not
// bytecode in one of the forms it knows.
var ErrSyntax = errors.New("bad cBPF bytecode")

// Parse reads a cBPF program in one of the text forms people paste around,
// telling them apart by themselves:
//
//   - "N,op jt jf k,op jt jf k,...": an instruction count N, then each
//     instruction as four decimal numbers, joined by commas, as iptables
//     --bytecode and bpftools take it and tcpdump -ddd prints it once its
//     lines are joined with commas;
//   - tcpdump -ddd output as printed: the count on the first line, then one
//     "op jt jf k" line per instruction;
//   - tcpdump -dd output: "{ 0x28, 0, 0, 0x0000000c }," per instruction,
//     possibly inside a C array declaration.
//
// Surrounding white space and one pair of surrounding quotes are ignored.
// Errors name the instruction ("instruction 3: ...", from 0), wrap
// [ErrSyntax] and, for a form with a count, check that it matches. Opcodes
// the x/net/bpf package cannot represent are refused; the program is not
// otherwise checked (see [Validate]).
func Parse(text string) ([]bpf.Instruction, error) {
	s := unquote(text)
	if s == "" {
		return nil, fmt.Errorf("%w: empty text", ErrSyntax)
	}
	var raw []bpf.RawInstruction
	var err error
	if strings.Contains(s, "{") {
		raw, err = parseC(s)
	} else {
		raw, err = parseCounted(s)
	}
	if err != nil {
		return nil, err
	}
	prog := make([]bpf.Instruction, len(raw))
	for i, r := range raw {
		if prog[i], err = disassemble(r); err != nil {
			return nil, &InstructionError{Index: i, Err: fmt.Errorf("%w: %w", ErrSyntax, err)}
		}
	}
	return prog, nil
}

// disassemble decodes r into the x/net/bpf instruction it stands for,
// refusing opcodes the kernel does not know. jt and jf of instructions
// that do not use them are dropped. What x/net/bpf has no type for stays
// a [bpf.RawInstruction]: "ldh [type]", which tcpdump -ddd prints for
// inbound, would come back from x/net/bpf as "ld [type]".
func disassemble(r bpf.RawInstruction) (bpf.Instruction, error) {
	if r.Op > 0xff {
		return nil, fmt.Errorf("opcode %#x does not fit in 8 bits", r.Op)
	}
	in := r.Disassemble()
	if _, ok := in.(bpf.RawInstruction); ok {
		return nil, fmt.Errorf("unknown opcode %#02x (k=%d)", r.Op, r.K)
	}
	back, err := in.Assemble()
	if err != nil {
		return nil, fmt.Errorf("opcode %#02x: %w", r.Op, err)
	}
	switch in.(type) {
	case bpf.JumpIf, bpf.JumpIfX:
	default:
		r.Jt, r.Jf = 0, 0
	}
	if back != r {
		if cbpfinsn.IsExtension(r) {
			return r, nil
		}
		if back.Op == r.Op && back.Jt == r.Jt && back.Jf == r.Jf && ignoresK(in) {
			// The kernel ignores k here, as libpcap does; tools leave
			// anything in it.
			return in, nil
		}
		return nil, fmt.Errorf("opcode %#02x with k=%d is not supported", r.Op, r.K)
	}
	return in, nil
}

// ignoresK reports whether in's k field means nothing to the interpreters.
func ignoresK(in bpf.Instruction) bool {
	switch in.(type) {
	case bpf.TAX, bpf.TXA, bpf.RetA, bpf.ALUOpX, bpf.NegateA:
		return true
	}
	return false
}

func unquote(text string) string {
	s := strings.TrimSpace(text)
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	return s
}

// parseCounted reads "N,op jt jf k,..." and the multi-line tcpdump -ddd form.
func parseCounted(s string) ([]bpf.RawInstruction, error) {
	s = strings.ReplaceAll(s, "\r", "")
	s = strings.ReplaceAll(s, "\n", ",")
	items := strings.Split(s, ",")
	// A trailing separator (a final newline or comma) ends nothing.
	for len(items) > 0 && strings.TrimSpace(items[len(items)-1]) == "" {
		items = items[:len(items)-1]
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: no instruction count", ErrSyntax)
	}
	count, err := parseNumber(strings.TrimSpace(items[0]), 10, 32)
	if err != nil {
		return nil, fmt.Errorf("%w: want the instruction count first, got %s", ErrSyntax, QuoteExpr(strings.TrimSpace(items[0])))
	}
	items = items[1:]
	if int(count) != len(items) {
		return nil, fmt.Errorf("%w: the count says %d instructions, the text has %d", ErrSyntax, count, len(items))
	}
	if count == 0 {
		return nil, fmt.Errorf("%w: no instructions", ErrSyntax)
	}
	raw := make([]bpf.RawInstruction, len(items))
	for i, item := range items {
		fields := strings.Fields(item)
		if len(fields) != 4 {
			return nil, syntaxErr(i, "want \"op jt jf k\", got %s", QuoteExpr(strings.TrimSpace(item)))
		}
		if raw[i], err = rawFrom(fields, 10); err != nil {
			return nil, syntaxErr(i, "%w in %s", err, QuoteExpr(strings.TrimSpace(item)))
		}
	}
	return raw, nil
}

var (
	cGroup = regexp.MustCompile(`\{([^{}]*)\}`)
	// cBetween is what may stand between two instructions of a C array.
	cBetween = regexp.MustCompile(`^[\s,]*$`)
)

// parseC reads tcpdump -dd output, "{ 0x28, 0, 0, 0x0000000c },".
func parseC(s string) ([]bpf.RawInstruction, error) {
	locs := cGroup.FindAllStringSubmatchIndex(s, -1)
	if len(locs) == 0 {
		return nil, fmt.Errorf("%w: no \"{ op, jt, jf, k }\" instruction found", ErrSyntax)
	}
	raw := make([]bpf.RawInstruction, len(locs))
	for i, loc := range locs {
		if i > 0 && !cBetween.MatchString(s[locs[i-1][1]:loc[0]]) {
			return nil, syntaxErr(i, "unexpected %s before it", QuoteExpr(strings.Trim(s[locs[i-1][1]:loc[0]], " \t\r\n,")))
		}
		body := s[loc[2]:loc[3]]
		fields := strings.Split(body, ",")
		for j := range fields {
			fields[j] = strings.TrimSpace(fields[j])
		}
		if len(fields) != 4 {
			return nil, syntaxErr(i, "want \"{ op, jt, jf, k }\", got %s", QuoteExpr(s[loc[0]:loc[1]]))
		}
		var err error
		if raw[i], err = rawFrom(fields, 0); err != nil {
			return nil, syntaxErr(i, "%w in %s", err, QuoteExpr(s[loc[0]:loc[1]]))
		}
	}
	return raw, nil
}

func syntaxErr(i int, format string, args ...any) error {
	return &InstructionError{Index: i, Err: fmt.Errorf("%w: "+format, append([]any{ErrSyntax}, args...)...)}
}

// rawFrom reads the four fields op, jt, jf, k. base 0 reads C literals.
func rawFrom(f []string, base int) (bpf.RawInstruction, error) {
	op, err := parseNumber(f[0], base, 16)
	if err != nil {
		return bpf.RawInstruction{}, fmt.Errorf("opcode: %w", err)
	}
	jt, err := parseNumber(f[1], base, 8)
	if err != nil {
		return bpf.RawInstruction{}, fmt.Errorf("jt: %w", err)
	}
	jf, err := parseNumber(f[2], base, 8)
	if err != nil {
		return bpf.RawInstruction{}, fmt.Errorf("jf: %w", err)
	}
	k, err := parseNumber(f[3], base, 32)
	if err != nil {
		return bpf.RawInstruction{}, fmt.Errorf("k: %w", err)
	}
	return bpf.RawInstruction{Op: uint16(op), Jt: uint8(jt), Jf: uint8(jf), K: uint32(k)}, nil
}

// parseNumber reads an unsigned number; with base 10 a 0x prefix still
// means hexadecimal, since people mix the forms.
func parseNumber(s string, base, bits int) (uint64, error) {
	if base == 10 && len(s) > 2 && (s[:2] == "0x" || s[:2] == "0X") {
		base = 0
	}
	if base == 0 {
		// C literals may carry an unsigned suffix.
		s = strings.TrimRight(s, "uUlL")
	}
	v, err := strconv.ParseUint(s, base, bits)
	if err != nil {
		var ne *strconv.NumError
		if errors.As(err, &ne) && errors.Is(ne.Err, strconv.ErrRange) {
			return 0, fmt.Errorf("%s does not fit in %d bits", QuoteExpr(s), bits)
		}
		return 0, fmt.Errorf("%s is not a number", QuoteExpr(s))
	}
	return v, nil
}

// Format returns prog as "N,op jt jf k,op jt jf k,...", the form of
// iptables --bytecode, bpftools and (joined by commas) tcpdump -ddd.
func Format(prog []bpf.Instruction) (string, error) {
	raw, err := assemble(prog)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString(strconv.Itoa(len(raw)))
	for _, r := range raw {
		fmt.Fprintf(&b, ",%d %d %d %d", r.Op, r.Jt, r.Jf, r.K)
	}
	return b.String(), nil
}

// FormatC returns prog as tcpdump -dd prints it, one C initializer
// "{ 0x28, 0, 0, 0x0000000c }," per line.
func FormatC(prog []bpf.Instruction) (string, error) {
	raw, err := assemble(prog)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, r := range raw {
		fmt.Fprintf(&b, "{ 0x%x, %d, %d, 0x%08x },\n", r.Op, r.Jt, r.Jf, r.K)
	}
	return b.String(), nil
}

// Listing returns prog as tcpdump -d prints it, one "(000) ldh      [12]"
// line per instruction, made by libpcap's own bpf_image. An instruction that
// cannot be assembled is shown with the reason.
func Listing(prog []bpf.Instruction) string {
	var b strings.Builder
	for i, in := range prog {
		var r bpf.RawInstruction
		var err error
		if in == nil {
			err = errors.New("nil instruction")
		} else {
			r, err = in.Assemble()
		}
		if err != nil {
			fmt.Fprintf(&b, "(%03d) invalid: %v\n", i, err)
			continue
		}
		b.WriteString(image(r, i))
		b.WriteByte('\n')
	}
	return b.String()
}

var bytecodeStart = regexp.MustCompile(`^[0-9]+[ \t]*(,|\r?\n)`)

// IsBytecode reports whether s looks like bytecode in a form [Parse] reads
// rather than a pcap-filter expression: a count followed by a comma or a
// line break, or a C initializer. No expression looks like that, so a
// command can send bytecode with a typo to Parse, whose error says more
// than libpcap's would.
func IsBytecode(s string) bool {
	s = unquote(s)
	return bytecodeStart.MatchString(s) || strings.HasPrefix(s, "{") ||
		strings.HasPrefix(s, "struct sock_filter")
}
