package build

import "github.com/l4drop/l4drop/l4drop"

// openProgram starts the C of program p of the chain. The first program,
// the one attached, supports xdpcap's capture at entry and quiet twins:
// its logic is l4_main, which closeProgram wraps in four programs. The
// loud one, attached while a capture runs, starts with xdpcap_entry and
// leaves through the hook; its body (l4drop.ProgBody), the same without
// xdpcap_entry, goes in the hook's body slot. The quiet twins, one of
// which is attached while nobody captures, make no tail call into the
// hook at all: l4drop.ProgQuiet makes none, l4drop.ProgQuietNext only the
// one to the --next program, for the loader to keep when there is one.
// The other programs are reached by tail calls only: packets have
// entered already, and their exits always call the hook.
func openProgram(w *cWriter, p int, name string) {
	if p == 0 {
		w.printf("\n/* The first program's logic: %s (the loud one) runs it after xdpcap_entry, %s (the hook's body) and the quiet twins %s and %s alone. */\n",
			name, l4drop.ProgBody, l4drop.ProgQuiet, l4drop.ProgQuietNext)
		w.printf("static __always_inline int l4_main(struct xdp_md *ctx, const int l4_exits)\n{\n")
		return
	}
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\tconst int l4_exits = L4_EXIT_HOOK | L4_EXIT_NEXT;\n", name)
}

// closeProgram ends what openProgram started: for the first program, the
// four programs around l4_main.
func closeProgram(w *cWriter, p int, name string) {
	if p != 0 {
		return
	}
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\txdpcap_entry(ctx, &xdpcap_hook);\n\treturn l4_main(ctx, L4_EXIT_HOOK | L4_EXIT_NEXT);\n}\n", name)
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\treturn l4_main(ctx, L4_EXIT_HOOK | L4_EXIT_NEXT);\n}\n", l4drop.ProgBody)
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\treturn l4_main(ctx, 0);\n}\n", l4drop.ProgQuiet)
	w.printf("\nSEC(\"xdp\")\nint %s(struct xdp_md *ctx)\n{\n\treturn l4_main(ctx, L4_EXIT_NEXT);\n}\n", l4drop.ProgQuietNext)
}
