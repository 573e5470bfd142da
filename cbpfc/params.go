package cbpfc

import (
	"regexp"
	"slices"
	"strings"

	"golang.org/x/net/bpf"
)

// cType is a C type name the Params may have: words and pointers.
var cType = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_ ]*\**$`)

// parseParams parses filter for ToC, marking the jumps whose constants are
// parameters before the optimizer runs, so that it folds none of them.
func parseParams(filter []bpf.Instruction, opts COpts) (*program, error) {
	if len(opts.Params) == 0 {
		return parse(filter)
	}
	p, err := decodeAll(filter)
	if err != nil {
		return nil, err
	}
	for i, name := range opts.Params {
		if i < 0 || i >= len(p.insns) {
			return nil, &Error{Index: -1, Err: fmtErr(ErrOptions, "parameter %q: no instruction %d", name, i)}
		}
		if in := p.insns[i]; in.kind != kJcond || in.useX {
			return nil, &Error{Index: i, Err: fmtErr(ErrOptions, "parameter %q: not a conditional jump with a constant", name)}
		}
		if !cIdent.MatchString(name) {
			return nil, &Error{Index: i, Err: fmtErr(ErrOptions, "parameter %q is not a C identifier", name)}
		}
	}
	if opts.ParamType != "" && !cType.MatchString(opts.ParamType) {
		return nil, &Error{Index: -1, Err: fmtErr(ErrOptions, "parameter type %q is not a C type", opts.ParamType)}
	}
	if opts.ParamTest != "" && !cIdent.MatchString(opts.ParamTest) {
		return nil, &Error{Index: -1, Err: fmtErr(ErrOptions, "parameter test %q is not a C identifier", opts.ParamTest)}
	}
	p.params = opts.Params
	optimize(p)
	return p, nil
}

// paramList is the C parameter list the Params add to the function.
func paramList(opts COpts) string {
	typ := opts.ParamType
	if typ == "" {
		typ = "uint32_t"
	}
	var names []string
	for _, n := range opts.Params {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(", " + typ + " const " + n)
	}
	return b.String()
}
