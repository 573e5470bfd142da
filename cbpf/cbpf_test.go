package cbpf

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/net/bpf"

	"github.com/l4drop/l4drop/internal/fixture"
)

func mustCompile(tb testing.TB, expr string, lt LinkType) []bpf.Instruction {
	tb.Helper()
	prog, err := Compile(expr, lt, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return prog
}

func TestParseLinkType(t *testing.T) {
	tests := []struct {
		in   string
		want LinkType
	}{
		{"EN10MB", LinkTypeEthernet},
		{"en10mb", LinkTypeEthernet},
		{"DLT_EN10MB", LinkTypeEthernet},
		{"RAW", LinkTypeRaw},
		{"raw", LinkTypeRaw},
		{"IPV4", LinkTypeIPv4},
		{"ipv6", LinkTypeIPv6},
		{"LINUX_SLL", LinkTypeLinuxSLL},
		{"linux_sll2", LinkTypeLinuxSLL2},
		{"NULL", LinkTypeNull},
		{"1", LinkTypeEthernet},
		{"12", LinkTypeRaw},
		{" 228 ", LinkTypeIPv4},
	}
	for _, tt := range tests {
		got, err := ParseLinkType(tt.in)
		if err != nil {
			t.Errorf("ParseLinkType(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseLinkType(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
	for _, bad := range []string{"", "ETHERNET2", "-1", "DLT_"} {
		if lt, err := ParseLinkType(bad); err == nil {
			t.Errorf("ParseLinkType(%q) = %v, want an error", bad, lt)
		}
	}
	// libpcap's names read back.
	for _, lt := range []LinkType{LinkTypeEthernet, LinkTypeRaw, LinkTypeIPv4, LinkTypeIPv6, LinkTypeLinuxSLL, LinkTypeLinuxSLL2, LinkTypeNull, LinkTypeLoop} {
		back, err := ParseLinkType(lt.String())
		if err != nil || back != lt {
			t.Errorf("ParseLinkType(%q) = %v, %v; want %d", lt.String(), back, err, int(lt))
		}
	}
	if s := LinkType(99999).String(); s != "DLT(99999)" {
		t.Errorf("String of an unknown type = %q", s)
	}
}

func TestLinkTypeFromPcap(t *testing.T) {
	tests := []struct {
		in   uint32
		want LinkType
	}{
		{1, LinkTypeEthernet},
		{101, LinkTypeRaw},
		{228, LinkTypeIPv4},
		{229, LinkTypeIPv6},
		{113, LinkTypeLinuxSLL},
		{276, LinkTypeLinuxSLL2},
		{0x10000001, LinkTypeEthernet}, // FCS bits set
	}
	for _, tt := range tests {
		if got := LinkTypeFromPcap(tt.in); got != tt.want {
			t.Errorf("LinkTypeFromPcap(%d) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestCompileError(t *testing.T) {
	tests := []struct {
		expr string
		lt   LinkType
	}{
		{"tcp port 99999", LinkTypeEthernet},
		{"udp and", LinkTypeEthernet},
		{"ether host 00:11:22:33:44:55", LinkTypeRaw},
	}
	for _, tt := range tests {
		_, err := Compile(tt.expr, tt.lt, 0)
		var ce *CompileError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCompile) {
			t.Errorf("Compile(%q, %v) = %v, want a *CompileError", tt.expr, tt.lt, err)
			continue
		}
		if ce.Msg == "" || !strings.HasPrefix(err.Error(), `compile "`+tt.expr+`": `) {
			t.Errorf("Compile(%q): error %q does not name the expression and libpcap's message", tt.expr, err)
		}
		// libpcap's text is passed on as it is: tcpdump prints the same.
		if msg := tcpdumpError(t, tt.expr, tt.lt); msg != "" && !strings.Contains(msg, ce.Msg) {
			t.Errorf("Compile(%q): message %q, tcpdump says %q", tt.expr, ce.Msg, msg)
		}
	}
	// Without a netmask libpcap refuses "ip broadcast"; tcpdump -r assumes one.
	if _, err := Compile("ip broadcast", LinkTypeEthernet, 0); !errors.Is(err, ErrCompile) || !strings.Contains(err.Error(), "netmask") {
		t.Errorf("Compile(\"ip broadcast\") = %v, want libpcap's complaint about the netmask", err)
	}
	if _, err := Compile("udp", LinkTypeEthernet, -1); err == nil {
		t.Error("Compile with a negative snap length: no error")
	}
}

// tcpdumpError returns tcpdump's complaint about expr, or "" when tcpdump
// cannot be asked.
func tcpdumpError(t *testing.T, expr string, lt LinkType) string {
	t.Helper()
	capture := captureFor(t, lt)
	if capture == "" {
		return ""
	}
	out, err := exec.Command(tcpdumpPath(t), "-r", capture, "-d", expr).CombinedOutput()
	if err == nil {
		t.Errorf("tcpdump accepts %q", expr)
	}
	return string(out)
}

func tcpdumpPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("tcpdump")
	if err != nil {
		if fixture.InCI() {
			t.Fatalf("tcpdump missing (make deps installs it): %v", err)
		}
		t.Skipf("tcpdump missing: %v", err)
	}
	return p
}

// captureFor returns a corpus capture of link type lt, so that tcpdump -r
// compiles for it.
func captureFor(t *testing.T, lt LinkType) string {
	t.Helper()
	names := map[LinkType]string{
		LinkTypeEthernet: "dhcp-rfc3004.pcap",
		LinkTypeIPv4:     "LINKTYPE_IPV4.pcap",
		LinkTypeIPv6:     "LINKTYPE_IPV6.pcap",
		LinkTypeRaw:      "LINKTYPE_RAW_ipv6.pcap",
	}
	name, ok := names[lt]
	if !ok {
		return ""
	}
	path := filepath.Join(fixture.CorpusDir(t), "pcap", name)
	raw, err := os.ReadFile(path)
	if err != nil || len(raw) < 24 {
		t.Fatalf("corpus capture %s: %v", path, err)
	}
	if got := LinkTypeFromPcap(binary.LittleEndian.Uint32(raw[20:])); got != lt {
		t.Fatalf("%s: link type %v, want %v", name, got, lt)
	}
	return path
}

// snaplenOf returns the snap length in a little-endian pcap file's header.
func snaplenOf(t *testing.T, path string) int {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return int(binary.LittleEndian.Uint32(raw[16:]))
}

// TestAgainstTcpdump compares Listing, FormatC and Format with tcpdump's
// -d, -dd and -ddd on the same expressions.
func TestAgainstTcpdump(t *testing.T) {
	tcpdump := tcpdumpPath(t)
	tests := []struct {
		lt   LinkType
		expr string
	}{
		{LinkTypeEthernet, "udp dst port 53"},
		{LinkTypeEthernet, "vlan and tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn"},
		{LinkTypeEthernet, "ip6 protochain 6"},
		{LinkTypeEthernet, "len > 100 and ip[2:2] % 7 == 3"},
		{LinkTypeEthernet, "icmp6 and ip6[40] == 128 or ether broadcast"},
		{LinkTypeIPv4, "udp and ip[8] > 10"},
		{LinkTypeIPv6, "tcp port 80"},
		{LinkTypeRaw, "ip6 and udp or ip and tcp"},
	}
	for _, tt := range tests {
		capture := captureFor(t, tt.lt)
		prog, err := Compile(tt.expr, tt.lt, snaplenOf(t, capture))
		if err != nil {
			t.Errorf("Compile(%q, %v): %v", tt.expr, tt.lt, err)
			continue
		}
		run := func(flag string) string {
			out, err := exec.Command(tcpdump, "-r", capture, flag, tt.expr).Output()
			if err != nil {
				t.Fatalf("tcpdump %s %q: %v", flag, tt.expr, err)
			}
			return string(out)
		}
		if got, want := Listing(prog), run("-d"); got != want {
			t.Errorf("%v %q: Listing:\n%s\ntcpdump -d:\n%s", tt.lt, tt.expr, got, want)
		}
		c, err := FormatC(prog)
		if err != nil {
			t.Fatal(err)
		}
		if want := run("-dd"); c != want {
			t.Errorf("%v %q: FormatC:\n%s\ntcpdump -dd:\n%s", tt.lt, tt.expr, c, want)
		}
		text, err := Format(prog)
		if err != nil {
			t.Fatal(err)
		}
		ddd := run("-ddd")
		if want := strings.ReplaceAll(strings.TrimSpace(ddd), "\n", ","); text != want {
			t.Errorf("%v %q: Format:\n%s\ntcpdump -ddd joined:\n%s", tt.lt, tt.expr, text, want)
		}
		// Parse reads each of tcpdump's forms back to the same program.
		for _, form := range []string{ddd, run("-dd"), text, "'" + text + "'", "\"" + c + "\""} {
			back, err := Parse(form)
			if err != nil {
				t.Errorf("%q: Parse(%q): %v", tt.expr, form, err)
				continue
			}
			if !reflect.DeepEqual(back, prog) {
				t.Errorf("%q: Parse(%q) = %v, want %v", tt.expr, form, back, prog)
			}
		}
	}
}

// TestCorpusRoundTrip compiles every corpus filter and reads each text form
// back.
func TestCorpusRoundTrip(t *testing.T) {
	filters := fixture.CorpusFilters(t)
	for _, f := range filters {
		lt, err := ParseLinkType(f.LinkType)
		if err != nil {
			t.Fatalf("filters.tsv:%d: %v", f.Line, err)
		}
		prog, err := Compile(f.Expr, lt, 0)
		if err != nil {
			t.Errorf("filters.tsv:%d: %v", f.Line, err)
			continue
		}
		if err := Validate(prog); err != nil {
			t.Errorf("filters.tsv:%d %q: Validate: %v", f.Line, f.Expr, err)
		}
		text, err := Format(prog)
		if err != nil {
			t.Errorf("filters.tsv:%d %q: Format: %v", f.Line, f.Expr, err)
			continue
		}
		c, err := FormatC(prog)
		if err != nil {
			t.Errorf("filters.tsv:%d %q: FormatC: %v", f.Line, f.Expr, err)
			continue
		}
		multi := strings.ReplaceAll(text, ",", "\n") + "\n"
		for _, form := range []string{text, c, multi} {
			if !IsBytecode(form) {
				t.Errorf("filters.tsv:%d: IsBytecode(%q) = false", f.Line, form)
			}
			back, err := Parse(form)
			if err != nil {
				t.Errorf("filters.tsv:%d: Parse(%q): %v", f.Line, form, err)
				continue
			}
			if !reflect.DeepEqual(back, prog) {
				t.Errorf("filters.tsv:%d: Parse(%q) = %v, want %v", f.Line, form, back, prog)
			}
		}
		if IsBytecode(f.Expr) {
			t.Errorf("filters.tsv:%d: IsBytecode(%q) = true", f.Line, f.Expr)
		}
		if l := Listing(prog); strings.Count(l, "\n") != len(prog) || !strings.HasPrefix(l, "(000) ") {
			t.Errorf("filters.tsv:%d: Listing:\n%s", f.Line, l)
		}
	}
	t.Logf("%d corpus filters compiled and read back", len(filters))
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		text string
		want string // in the error
	}{
		{"", "empty"},
		{"  ''  ", "empty"},
		{"0", "no instructions"},
		{"2,6 0 0 0", "count says 2 instructions, the text has 1"},
		{"1,6 0 0 0,6 0 0 0", "count says 1 instructions, the text has 2"},
		{"x,6 0 0 0", "instruction count first"},
		{"2,6 0 0 0,6 0 0", "instruction 1: " + ErrSyntax.Error() + `: want "op jt jf k", got "6 0 0"`},
		{"2,6 0 0 0,6 0 256 0", "instruction 1: " + ErrSyntax.Error() + `: jf: "256" does not fit in 8 bits`},
		{"1,6 0 0 4294967296", "instruction 0: " + ErrSyntax.Error() + `: k: "4294967296" does not fit`},
		{"1,6 0 0 -1", `k: "-1" is not a number`},
		{"1,6 0 0 0,", ""}, // a trailing comma is fine
		{"3,6 0 0 0,,6 0 0 0", `instruction 1: ` + ErrSyntax.Error() + `: want "op jt jf k", got ""`},
		{"1,255 0 0 0", "instruction 0: " + ErrSyntax.Error() + ": unknown opcode 0xff"},
		{"1,256 0 0 0", "does not fit in 8 bits"},
		{"1,96 0 0 16", "instruction 0: " + ErrSyntax.Error() + ": unknown opcode 0x60"}, // M[16]
		{"{ 0x6, 0, 0, 0 },\n{ 0x6, 0, 0 },", `instruction 1: ` + ErrSyntax.Error() + `: want "{ op, jt, jf, k }"`},
		{"{ 0x6, 0, 0, 0 }, junk { 0x6, 0, 0, 0 }", `instruction 1: ` + ErrSyntax.Error() + `: unexpected "junk"`},
		{"{ 0x6, 0, 0, 0xg }", `k: "0xg" is not a number`},
		{"{ nothing here", "no \"{ op, jt, jf, k }\" instruction"},
	}
	for _, tt := range tests {
		prog, err := Parse(tt.text)
		if tt.want == "" {
			if err != nil {
				t.Errorf("Parse(%q): %v", tt.text, err)
			}
			continue
		}
		if err == nil {
			t.Errorf("Parse(%q) = %v, want an error with %q", tt.text, prog, tt.want)
			continue
		}
		if !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q): %v does not wrap ErrSyntax", tt.text, err)
		}
		if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Parse(%q) error %q, want it to contain %q", tt.text, err, tt.want)
		}
	}
}

func TestParseForms(t *testing.T) {
	want := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 9, Size: 1},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: 17, SkipTrue: 1},
		bpf.RetConstant{Val: 65535},
		bpf.RetConstant{Val: 0},
	}
	forms := []string{
		"4,48 0 0 9,21 0 1 17,6 0 0 65535,6 0 0 0",
		"  \"4,48 0 0 9,21 0 1 17,6 0 0 65535,6 0 0 0\"\n",
		"4, 48 0 0 9, 21 0 1 17, 6 0 0 65535, 6 0 0 0,",
		"4\n48 0 0 9\n21 0 1 17\n6 0 0 65535\n6 0 0 0\n",
		"4\r\n48 0 0 9\r\n21 0 1 17\r\n6 0 0 65535\r\n6 0 0 0\r\n",
		"4,0x30 0 0 9,0x15 0 1 0x11,6 0 0 0xffff,6 0 0 0",
		"{ 0x30, 0, 0, 0x00000009 },\n{ 0x15, 0, 1, 0x00000011 },\n{ 0x6, 0, 0, 0x0000ffff },\n{ 0x6, 0, 0, 0x00000000 },\n",
		"struct sock_filter code[] = {\n\t{ 0x30, 0, 0, 0x00000009 },\n\t{ 0x15, 0, 1, 0x00000011 },\n\t{ 0x6, 0, 0, 0x0000ffff },\n\t{ 0x6, 0, 0, 0x00000000 },\n};",
		"{0x30,0,0,9},{0x15,0,1,17},{6,0,0,65535u},{6,0,0,0}",
	}
	for _, form := range forms {
		if !IsBytecode(form) {
			t.Errorf("IsBytecode(%q) = false", form)
		}
		got, err := Parse(form)
		if err != nil {
			t.Errorf("Parse(%q): %v", form, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Parse(%q) = %v, want %v", form, got, want)
		}
	}
	for _, expr := range []string{"udp", "port 53", "ip[9] == 17", "len > 1,5", "'udp'"} {
		if IsBytecode(expr) {
			t.Errorf("IsBytecode(%q) = true", expr)
		}
	}
}

func TestValidate(t *testing.T) {
	ret0 := bpf.RetConstant{Val: 0}
	tests := []struct {
		name string
		prog []bpf.Instruction
		want string // in the error; "" = valid
	}{
		{"ok", []bpf.Instruction{bpf.LoadAbsolute{Off: 0, Size: 1}, bpf.RetA{}}, ""},
		{"empty", nil, "empty program"},
		{"nil", []bpf.Instruction{nil}, "instruction 0: "},
		{"no return", []bpf.Instruction{bpf.LoadConstant{Val: 1}}, "instruction 0: " + ErrInvalid.Error() + ": the last instruction must return"},
		{"jump past end", []bpf.Instruction{bpf.JumpIf{Cond: bpf.JumpEqual, SkipTrue: 1}, ret0}, "instruction 0: " + ErrInvalid.Error() + ": jump if true to 2, past the end"},
		{"jump false past end", []bpf.Instruction{bpf.Jump{}, bpf.JumpIf{Cond: bpf.JumpEqual, SkipFalse: 3}, ret0}, "instruction 1: " + ErrInvalid.Error() + ": jump if false to 5"},
		{"ja past end", []bpf.Instruction{bpf.Jump{Skip: 1}, ret0}, "instruction 0: " + ErrInvalid.Error() + ": ja to 2, outside"},
		{"ja before start", []bpf.Instruction{ret0, bpf.Jump{Skip: 0xfffffffc}}, "instruction 1: " + ErrInvalid.Error() + ": ja to -2, outside"},
		{"ja backward", []bpf.Instruction{bpf.LoadConstant{Val: 1}, bpf.JumpIf{Cond: bpf.JumpEqual, Val: 2, SkipTrue: 1}, bpf.RetConstant{Val: 7}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1}, bpf.Jump{Skip: 0xfffffffb}}, "instruction 4: " + ErrInvalid.Error() + ": the last instruction must return"},
		{"ja backward ok", []bpf.Instruction{bpf.LoadConstant{Val: 1}, bpf.JumpIf{Cond: bpf.JumpEqual, Val: 3, SkipFalse: 1}, bpf.RetA{}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1}, bpf.Jump{Skip: 0xfffffffb}, ret0}, ""},
		{"div 0", []bpf.Instruction{bpf.ALUOpConstant{Op: bpf.ALUOpDiv, Val: 0}, ret0}, "instruction 0: " + ErrInvalid.Error() + ": div #0: division or modulo by constant 0"},
		{"mod 0", []bpf.Instruction{ret0, bpf.ALUOpConstant{Op: bpf.ALUOpMod, Val: 0}, ret0}, "instruction 1: "},
		{"shift 32", []bpf.Instruction{bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 32}, ret0}, "shift by constant 32"},
		{"M[16] raw", []bpf.Instruction{bpf.RawInstruction{Op: 0x60, K: 16}, ret0}, "instruction 0: " + ErrInvalid.Error() + ": scratch slot M[16]"},
		{"st M[16] raw", []bpf.Instruction{bpf.RawInstruction{Op: 0x02, K: 16}, ret0}, "scratch slot M[16]"},
		{"ret x raw", []bpf.Instruction{bpf.RawInstruction{Op: 0x0e}}, "instruction 0: " + ErrInvalid.Error() + ": unknown return opcode 0x0e"},
		{"unknown raw", []bpf.Instruction{bpf.RawInstruction{Op: 0xff}, ret0}, "unknown opcode 0xff"},
		{"ldh imm raw", []bpf.Instruction{bpf.RawInstruction{Op: 0x08}, ret0}, "unknown load opcode"},
		{"ldx abs raw", []bpf.Instruction{bpf.RawInstruction{Op: 0x21}, ret0}, "unknown load opcode"},
		{"bad assemble", []bpf.Instruction{bpf.LoadAbsolute{Size: 3}, ret0}, "instruction 0: "},
		{"too long", append(make([]bpf.Instruction, 0, MaxInstructions+1), repeat(ret0, MaxInstructions+1)...), "more than the 4096"},
	}
	for _, tt := range tests {
		err := Validate(tt.prog)
		if tt.want == "" {
			if err != nil {
				t.Errorf("%s: Validate: %v", tt.name, err)
			}
			continue
		}
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: Validate = %v, want an ErrInvalid containing %q", tt.name, err, tt.want)
			continue
		}
		// Interpret refuses rather than runs what Validate refuses.
		if got := Interpret(tt.prog, []byte{1, 2, 3, 4}, 4); got != 0 {
			t.Errorf("%s: Interpret = %d, want 0", tt.name, got)
		}
	}
}

func repeat(in bpf.Instruction, n int) []bpf.Instruction {
	out := make([]bpf.Instruction, n)
	for i := range out {
		out[i] = in
	}
	return out
}

func TestInterpret(t *testing.T) {
	udp53 := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 53, fixture.DNSQuery("example.com", 1))
	tcp80 := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 1234, 80)
	tests := []struct {
		prog    []bpf.Instruction
		pkt     []byte
		wirelen int
		want    uint32
	}{
		{mustCompile(t, "udp dst port 53", LinkTypeEthernet), udp53, len(udp53), DefaultSnaplen},
		{mustCompile(t, "udp dst port 53", LinkTypeEthernet), tcp80, len(tcp80), 0},
		{mustCompile(t, "tcp[tcpflags] == tcp-syn", LinkTypeEthernet), tcp80, len(tcp80), DefaultSnaplen},
		{mustCompile(t, "tcp[tcpflags] == tcp-syn", LinkTypeEthernet), tcp80[:40], len(tcp80), 0}, // truncated
		{mustCompile(t, "udp", LinkTypeRaw), udp53[14:], len(udp53) - 14, DefaultSnaplen},
		{mustCompile(t, "greater 1000", LinkTypeEthernet), udp53, 1000, DefaultSnaplen}, // len is the wire length
		{mustCompile(t, "greater 1000", LinkTypeEthernet), udp53, 999, 0},
		{[]bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtLen}, bpf.RetA{}}, nil, 77, 77},
		{[]bpf.Instruction{bpf.LoadConstant{Val: 5}, bpf.ALUOpX{Op: bpf.ALUOpDiv}, bpf.RetConstant{Val: 1}}, nil, 0, 0}, // A/0
		{[]bpf.Instruction{bpf.LoadExtension{Num: bpf.ExtCPUID}, bpf.RetConstant{Val: 1}}, udp53, len(udp53), 0},
		{[]bpf.Instruction{bpf.LoadAbsolute{Off: 0xffffffff, Size: 4}, bpf.RetConstant{Val: 1}}, udp53, len(udp53), 0},
		{[]bpf.Instruction{bpf.LoadConstant{Dst: bpf.RegX, Val: 0xffffffff}, bpf.LoadIndirect{Off: 2, Size: 2}, bpf.RetConstant{Val: 1}}, udp53, len(udp53), 0},
		// A loop counting to 3 with a backward ja, as protochain does.
		{[]bpf.Instruction{bpf.LoadConstant{Val: 0}, bpf.JumpIf{Cond: bpf.JumpEqual, Val: 3, SkipFalse: 1}, bpf.RetA{}, bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: 1}, bpf.Jump{Skip: 0xfffffffc}, bpf.RetConstant{Val: 0}}, nil, 0, 3},
	}
	for i, tt := range tests {
		if got := Interpret(tt.prog, tt.pkt, tt.wirelen); got != tt.want {
			t.Errorf("%d: Interpret(%v) = %d, want %d", i, tt.prog, got, tt.want)
		}
	}
}

// vmApplies reports whether x/net/bpf's VM runs prog as libpcap does: it has
// no negation, only the len extension (as the captured length) and no
// backward jumps.
func vmApplies(prog []bpf.Instruction) bool {
	for _, in := range prog {
		switch in := in.(type) {
		case bpf.NegateA, bpf.RawInstruction: // ldh [type], say
			return false
		case bpf.LoadExtension:
			if in.Num != bpf.ExtLen {
				return false
			}
		case bpf.Jump:
			if int32(in.Skip) < 0 {
				return false
			}
		}
	}
	return true
}

// TestInterpretAgreesWithVM runs every corpus filter on every corpus packet
// of a fitting link type in libpcap's interpreter and x/net/bpf's VM.
func TestInterpretAgreesWithVM(t *testing.T) {
	filters := fixture.CorpusFilters(t)
	captures := fixture.CorpusCaptures(t)
	byType := map[LinkType][][]byte{}
	for _, c := range captures {
		lt := LinkTypeFromPcap(uint32(c.LinkType))
		for _, p := range c.Packets {
			if len(p.Data) == 0 {
				continue
			}
			byType[lt] = append(byType[lt], p.Data)
			// Raw-IP filters also run on Ethernet frames from the IP header.
			if lt == LinkTypeEthernet {
				if off, ok := fixture.IPOffset(p.Data); ok && off < len(p.Data) {
					byType[LinkTypeRaw] = append(byType[LinkTypeRaw], p.Data[off:])
				}
			}
		}
	}
	var compared, matched, skipped int
	for _, f := range filters {
		lt, err := ParseLinkType(f.LinkType)
		if err != nil {
			t.Fatal(err)
		}
		prog := mustCompile(t, f.Expr, lt)
		if !vmApplies(prog) {
			skipped++
			continue
		}
		vm, err := bpf.NewVM(prog)
		if err != nil {
			t.Errorf("filters.tsv:%d: x/net/bpf refuses %q: %v", f.Line, f.Expr, err)
			continue
		}
		filter, err := NewFilter(prog)
		if err != nil {
			t.Fatalf("filters.tsv:%d: %v", f.Line, err)
		}
		for _, pkt := range byType[lt] {
			want, err := vm.Run(pkt)
			if err != nil {
				t.Fatalf("filters.tsv:%d: VM: %v", f.Line, err)
			}
			got := filter.Run(pkt, len(pkt))
			if uint32(want) != got {
				t.Errorf("filters.tsv:%d %q on % x: libpcap %d, VM %d", f.Line, f.Expr, pkt, got, want)
			}
			compared++
			if got != 0 {
				matched++
			}
		}
	}
	if compared == 0 || matched == 0 {
		t.Fatalf("%d comparisons, %d matches: the corpus did not exercise anything", compared, matched)
	}
	t.Logf("%d filter/packet pairs agree (%d matches); %d filters the VM cannot run", compared, matched, skipped)
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"4,48 0 0 9,21 0 1 17,6 0 0 65535,6 0 0 0",
		"{ 0x30, 0, 0, 0x00000009 },\n{ 0x6, 0, 0, 0x0000ffff },\n",
		"1\n6 0 0 0\n", "2,6 0 0 0", "{ 0x6, 0, 0 }", "'", "0,", ",",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		prog, err := Parse(s)
		if err != nil {
			return
		}
		text, err := Format(prog)
		if err != nil {
			t.Fatalf("Format(Parse(%q)): %v", s, err)
		}
		back, err := Parse(text)
		if err != nil || !reflect.DeepEqual(back, prog) {
			t.Fatalf("Parse(Format(Parse(%q))) = %v, %v; want %v", s, back, err, prog)
		}
		_ = Listing(prog)
	})
}

// FuzzInterpret runs arbitrary programs: Interpret must never crash, and
// what Validate accepts libpcap's bpf_validate accepts too.
func FuzzInterpret(f *testing.F) {
	f.Add([]byte{0x06, 0, 0, 0, 0, 0, 0, 1}, []byte{1, 2, 3})
	f.Add([]byte{0x60, 0, 0, 0, 0, 0, 0, 16, 0x06, 0, 0, 0, 0, 0, 0, 1}, []byte{})
	f.Add([]byte{0x0e, 0, 0, 0, 0, 0, 0, 0}, []byte{0})
	f.Add([]byte{0x34, 0, 0, 0, 0, 0, 0, 0, 0x16, 0, 0, 0, 0, 0, 0, 0}, []byte{0})
	f.Fuzz(func(t *testing.T, code, pkt []byte) {
		var prog []bpf.Instruction
		for i := 0; i+8 <= len(code) && len(prog) < 64; i += 8 {
			r := bpf.RawInstruction{Op: uint16(code[i]), Jt: code[i+2], Jf: code[i+3], K: binary.BigEndian.Uint32(code[i+4:])}
			// Backward jumps may loop forever, in libpcap as anywhere.
			if r.Op == 0x05 /* ja */ && int32(r.K) < 0 {
				r.K = 0
			}
			prog = append(prog, r)
		}
		raw, err := assemble(prog)
		if err == nil && validate(raw) == nil && !pcapValidate(raw) {
			t.Fatalf("our checks accept what libpcap's bpf_validate refuses: %v", raw)
		}
		Interpret(prog, pkt, len(pkt))
	})
}

// TestPacketTypeLoad: tcpdump prints "ldh [type]" for inbound and outbound;
// Parse and Compile keep it as it is (x/net/bpf would make it "ld [type]"),
// Format gives it back, and Validate takes it as the kernel does.
func TestPacketTypeLoad(t *testing.T) {
	const inbound = "4,40 0 0 4294963204,21 0 1 4,6 0 0 0,6 0 0 262144"
	parsed, err := Parse(inbound)
	if err != nil {
		t.Fatal(err)
	}
	compiled, err := Compile("inbound", LinkTypeEthernet, 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, prog := range map[string][]bpf.Instruction{"Parse": parsed, "Compile": compiled} {
		if s, err := Format(prog); err != nil || s != inbound {
			t.Errorf("Format(%s) = %q, %v; want %q", name, s, err, inbound)
		}
		if l := Listing(prog); !strings.Contains(l, "ldh      [type]") {
			t.Errorf("Listing(%s) lacks ldh [type]:\n%s", name, l)
		}
		if err := Validate(prog); err != nil {
			t.Errorf("Validate(%s): %v", name, err)
		}
	}
}
