package build

import "github.com/l4drop/l4drop/l4drop"

// openProgram starts the C of program p of the chain. The first program,
// the one attached, supports xdpcap's capture at entry: its logic is
// l4_main, which closeProgram wraps in the program to attach (xdpcap_entry
// first) and in its body (l4drop.ProgBody), the same logic without it,
// which the loader puts in the hook's body slot. The other programs are
// reached by tail calls only: packets have entered already.
func openProgram(w *cWriter, p int, name string) {
	if p == 0 {
		w.printf("\n/* The first program's logic, run by %s after xdpcap_entry and by %s (the hook's body). */\n", name, l4drop.ProgBody)
		w.printf("static __always_inline int l4_main(struct xdp_md *ctx)\n{\n")
		return
	}
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n", name)
}

// closeProgram ends what openProgram started: for the first program, the
// two programs around l4_main.
func closeProgram(w *cWriter, p int, name string) {
	if p != 0 {
		return
	}
	// While nobody captures at entry, xdpcap_entry is one tail call into
	// an empty slot (a constant index: a patched jump, next to free).
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\txdpcap_entry(ctx, &xdpcap_hook);\n\treturn l4_main(ctx);\n}\n", name)
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\treturn l4_main(ctx);\n}\n", l4drop.ProgBody)
}
