package build

import "github.com/l4drop/l4drop/l4drop"

// openProgram starts the C of program p of the chain. The first program,
// the one attached, supports xdpcap's capture at entry and a quiet twin:
// its logic is l4_main, which closeProgram wraps in three programs. The
// loud one, attached while a capture runs, starts with xdpcap_entry and
// leaves through the hook; its body (l4drop.ProgBody), the same without
// xdpcap_entry, goes in the hook's body slot; the quiet twin
// (l4drop.ProgQuiet), attached while nobody captures, makes no tail call
// into the hook at all. The other programs are reached by tail calls only:
// packets have entered already, and their exits always call the hook.
func openProgram(w *cWriter, p int, name string) {
	if p == 0 {
		w.printf("\n/* The first program's logic: %s (the loud one) runs it after xdpcap_entry, %s (the hook's body) and %s (the quiet twin) alone. */\n", name, l4drop.ProgBody, l4drop.ProgQuiet)
		w.printf("static __always_inline int l4_main(struct xdp_md *ctx, const int l4_hooked)\n{\n")
		return
	}
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\tconst int l4_hooked = 1;\n", name)
}

// closeProgram ends what openProgram started: for the first program, the
// three programs around l4_main.
func closeProgram(w *cWriter, p int, name string) {
	if p != 0 {
		return
	}
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\txdpcap_entry(ctx, &xdpcap_hook);\n\treturn l4_main(ctx, 1);\n}\n", name)
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\treturn l4_main(ctx, 1);\n}\n", l4drop.ProgBody)
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\treturn l4_main(ctx, 0);\n}\n", l4drop.ProgQuiet)
}
