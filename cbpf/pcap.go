package cbpf

/*
#cgo LDFLAGS: -lpcap
#include <stdlib.h>
#include <pcap/pcap.h>

// compile runs pcap_compile on a dead handle. On success it returns 0 and the
// program in *prog (free it with pcap_freecode); on failure it returns -1
// and libpcap's message in errbuf.
static int compile(int linktype, int snaplen, const char *expr, struct bpf_program *prog, char *errbuf, size_t errlen) {
	pcap_t *p = pcap_open_dead(linktype, snaplen);
	if (p == NULL) {
		snprintf(errbuf, errlen, "pcap_open_dead failed");
		return -1;
	}
	int rc = pcap_compile(p, prog, expr, 1, PCAP_NETMASK_UNKNOWN);
	if (rc != 0) {
		snprintf(errbuf, errlen, "%s", pcap_geterr(p));
	}
	pcap_close(p);
	return rc;
}
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/net/bpf"
)

// DefaultSnaplen is the snap length Compile uses when given 0; it is what
// "ret #k" returns on a match in programs libpcap compiles.
const DefaultSnaplen = 262144

// pcapMu serializes the libpcap calls that use global state: the expression
// parser (not reentrant in every libpcap version) and bpf_image's static
// buffer.
var pcapMu sync.Mutex

// ErrCompile is wrapped by every error Compile returns for an expression
// libpcap refuses.
var ErrCompile = errors.New("libpcap cannot compile the expression")

// CompileError is an expression libpcap refused, with libpcap's message.
type CompileError struct {
	Expr     string
	LinkType LinkType
	Msg      string // libpcap's own message, from pcap_geterr
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("compile %s: %s", QuoteExpr(e.Expr), e.Msg)
}

// Unwrap makes errors.Is(err, ErrCompile) hold.
func (e *CompileError) Unwrap() error { return ErrCompile }

// Compile compiles a pcap-filter expression (see pcap-filter(7)) for a link
// type through libpcap, optimized, with an unknown netmask (so "ip broadcast"
// is refused, as tcpdump does without an interface). snaplen is the value a
// match returns; 0 means [DefaultSnaplen]. Expressions libpcap refuses give a
// [*CompileError] carrying libpcap's message.
func Compile(expr string, lt LinkType, snaplen int) ([]bpf.Instruction, error) {
	if snaplen == 0 {
		snaplen = DefaultSnaplen
	}
	if snaplen < 0 {
		return nil, fmt.Errorf("compile %s: negative snap length %d", QuoteExpr(expr), snaplen)
	}
	cexpr := C.CString(expr)
	defer C.free(unsafe.Pointer(cexpr))
	var errbuf [C.PCAP_ERRBUF_SIZE + 64]C.char
	var prog C.struct_bpf_program

	pcapMu.Lock()
	rc := C.compile(C.int(lt), C.int(snaplen), cexpr, &prog, &errbuf[0], C.size_t(len(errbuf)))
	pcapMu.Unlock()
	if rc != 0 {
		return nil, &CompileError{Expr: expr, LinkType: lt, Msg: C.GoString(&errbuf[0])}
	}
	defer C.pcap_freecode(&prog)

	insns := unsafe.Slice(prog.bf_insns, int(prog.bf_len))
	out := make([]bpf.Instruction, len(insns))
	var err error
	for i, in := range insns {
		r := bpf.RawInstruction{Op: uint16(in.code), Jt: uint8(in.jt), Jf: uint8(in.jf), K: uint32(in.k)}
		if out[i], err = disassemble(r); err != nil {
			// Not an opcode libpcap emits; Validate names it.
			out[i] = r
		}
	}
	return out, nil
}

// Filter is a program ready to run in libpcap's interpreter, for running one
// program on many packets without checking and converting it each time.
type Filter struct {
	insns []C.struct_bpf_insn
}

// NewFilter checks prog with [Validate] and prepares it for libpcap's
// interpreter.
func NewFilter(prog []bpf.Instruction) (*Filter, error) {
	raw, err := assemble(prog)
	if err != nil {
		return nil, err
	}
	insns := toC(raw)
	if err := validate(raw); err != nil {
		return nil, err
	}
	if C.bpf_validate(&insns[0], C.int(len(insns))) == 0 {
		return nil, fmt.Errorf("%w: libpcap's bpf_validate refuses the program", ErrInvalid)
	}
	return &Filter{insns: insns}, nil
}

// Run runs the filter on pkt, the captured bytes of a packet whose length on
// the wire was wirelen (what the len extension loads), in libpcap's
// bpf_filter. It returns the program's result: 0 is no match.
func (f *Filter) Run(pkt []byte, wirelen int) uint32 {
	var p *C.u_char
	if len(pkt) > 0 {
		p = (*C.u_char)(unsafe.Pointer(&pkt[0]))
	} else {
		// bpf_filter never reads a zero-length buffer, but wants a pointer.
		var b C.u_char
		p = &b
	}
	if wirelen < 0 {
		wirelen = 0
	}
	return uint32(C.bpf_filter(&f.insns[0], p, C.u_int(uint32(wirelen)), C.u_int(len(pkt))))
}

// Interpret runs prog on pkt (the captured bytes; wirelen is the length on
// the wire) in libpcap's own interpreter, bpf_filter, the project's
// correctness oracle. A program that [Validate] refuses returns 0 without
// being run, so no program can make the interpreter read outside its buffers.
//
// libpcap's interpreter has no step limit: a program whose backward jumps
// (as libpcap emits for protochain) loop forever never returns. Filters
// libpcap compiles always end. For many packets, use [NewFilter] once.
func Interpret(prog []bpf.Instruction, pkt []byte, wirelen int) uint32 {
	f, err := NewFilter(prog)
	if err != nil {
		return 0
	}
	return f.Run(pkt, wirelen)
}

func toC(raw []bpf.RawInstruction) []C.struct_bpf_insn {
	insns := make([]C.struct_bpf_insn, len(raw))
	for i, r := range raw {
		insns[i] = C.struct_bpf_insn{code: C.u_short(r.Op), jt: C.u_char(r.Jt), jf: C.u_char(r.Jf), k: C.bpf_u_int32(r.K)}
	}
	return insns
}

// pcapValidate is libpcap's bpf_validate on an assembled program.
func pcapValidate(raw []bpf.RawInstruction) bool {
	if len(raw) == 0 {
		return false
	}
	insns := toC(raw)
	return C.bpf_validate(&insns[0], C.int(len(insns))) != 0
}

// image is libpcap's bpf_image: instruction i as tcpdump -d prints it.
func image(r bpf.RawInstruction, i int) string {
	in := C.struct_bpf_insn{code: C.u_short(r.Op), jt: C.u_char(r.Jt), jf: C.u_char(r.Jf), k: C.bpf_u_int32(r.K)}
	pcapMu.Lock()
	defer pcapMu.Unlock()
	return C.GoString(C.bpf_image(&in, C.int(i)))
}

func datalinkName(v int) (string, bool) {
	s := C.pcap_datalink_val_to_name(C.int(v))
	if s == nil {
		return "", false
	}
	return C.GoString(s), true
}

func datalinkValue(name string) (int, bool) {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	v := C.pcap_datalink_name_to_val(cname)
	return int(v), v >= 0
}
