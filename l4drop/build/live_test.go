package build

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l4drop/l4drop/l4drop"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/xdpcap"
)

func openLoaded(tb testing.TB, l *l4drop.Loaded) *l4drop.Handle {
	tb.Helper()
	h, err := l4drop.Open(l.Dir)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { h.Close() })
	return h
}

// TestSamplingAll: at rate 1 every packet arrives in user space, with its
// rule, action, length and bytes.
func TestSamplingAll(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	l := loadOnServer(t, lab, fixture.BPFFS(t), obj, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	h := openLoaded(t, l)
	rd, err := h.NewSampleReader(1<<20, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// Only now: a sample with no reader yet counts as lost.
	if err := h.SetSampleRate(1); err != nil {
		t.Fatal(err)
	}
	d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	want := map[string]int{} // rule/action/frame -> count
	var frames [][]byte
	for _, p := range testPackets() {
		v, err := d.Run(p.frame)
		if err != nil {
			t.Fatal(err)
		}
		want[fmt.Sprintf("%s/%s/%x", v.Name, v.Action, p.frame)]++
		frames = append(frames, p.frame)
	}
	sendFrames(t, lab.Client, lab.ClientIf, frames)
	rd.SetDeadline(time.Now().Add(5 * time.Second))
	got := 0
	for got < len(frames) {
		s, err := rd.Read()
		if err != nil {
			t.Fatalf("after %d of %d samples: %v", got, len(frames), err)
		}
		if s.Len != len(s.Data) {
			t.Errorf("sample of %d bytes holds %d", s.Len, len(s.Data))
		}
		key := fmt.Sprintf("%s/%s/%x", s.Name, s.Action, s.Data)
		if want[key] == 0 {
			// The kernel's own packets (IPv6 MLD and the like) pass too.
			if s.Name == "" && s.Action == "pass" && !bytes.Contains(s.Data, []byte("legitimate")) {
				continue
			}
			t.Errorf("unexpected sample %s", key)
			continue
		}
		want[key]--
		got++
	}
	samples, lost, err := h.SampleStats()
	if err != nil {
		t.Fatal(err)
	}
	if lost != 0 || samples < uint64(len(frames)) {
		t.Errorf("stats: %d samples, %d lost; sent %d", samples, lost, len(frames))
	}
}

// TestSamplingRate: at rate N about one packet in N is sampled, and a
// reader that does not keep up makes the program count lost samples; every
// sampled packet is either written or lost.
func TestSamplingRate(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	// Rate 1 must count every run exactly: no packet of the client's
	// kernel may reach the program meanwhile.
	lab.Quiet(t)
	l := loadOnServer(t, lab, fixture.BPFFS(t), obj, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	h := openLoaded(t, l)
	frame := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 1, 80)

	// A reader of one page per CPU that reads nothing: it fills up.
	rd, err := h.NewSampleReader(os.Getpagesize(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// The runs are counted by the program's own counters, not taken
	// from the test run's repeat: a signal (the Go runtime's preemption)
	// interrupts a test run, and the library runs it again from the
	// start, so a few more packets than asked for can be run.
	stats := func() (samples, lost, packets uint64) {
		t.Helper()
		s, l, err := h.SampleStats()
		if err != nil {
			t.Fatal(err)
		}
		cs, err := h.ReadCounters()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range cs {
			packets += c.Packets
		}
		return s, l, packets
	}
	for _, tt := range []struct{ rate, runs int }{{16, 32000}, {1000, 400000}, {1, 5000}} {
		if err := h.SetSampleRate(uint32(tt.rate)); err != nil {
			t.Fatal(err)
		}
		if st, err := h.Status(0); err != nil || st.SampleRate != uint32(tt.rate) {
			t.Fatalf("status after SetSampleRate(%d): %+v, %v", tt.rate, st, err)
		}
		s0, l0, p0 := stats()
		// Runs on the program attached to the server: fast test runs.
		if _, _, err := l.Programs[0].Benchmark(frame, tt.runs, nil); err != nil {
			t.Fatal(err)
		}
		s1, l1, p1 := stats()
		n, runs := float64((s1-s0)+(l1-l0)), float64(p1-p0)
		if runs < float64(tt.runs) {
			t.Fatalf("rate %d: the program counted %v packets of %d runs", tt.rate, runs, tt.runs)
		}
		// Binomial: mean runs/rate; allow six standard deviations.
		p := 1 / float64(tt.rate)
		mean, sd := runs*p, math.Sqrt(runs*p*(1-p))
		if math.Abs(n-mean) > 6*sd+0.5 {
			t.Errorf("rate %d: %v of %v packets sampled, want %.0f ± %.0f", tt.rate, n, runs, mean, 6*sd)
		}
		if tt.rate == 1 && l1-l0 == 0 {
			t.Errorf("rate 1, %d packets, a one-page reader that never reads: no sample lost", tt.runs)
		}
	}
	// Packet by packet: the draws are independent, no pattern (a
	// counter-driven sampler with a poor mix would take every Nth).
	const rate, runs = 4, 4000
	if err := h.SetSampleRate(rate); err != nil {
		t.Fatal(err)
	}
	var sampled, pairs, both int
	prev := false
	for i := range runs {
		s0, l0, _ := stats()
		if _, err := l.Programs[0].Run(&ebpf.RunOptions{Data: frame}); err != nil {
			t.Fatal(err)
		}
		s1, l1, _ := stats()
		cur := s1+l1 > s0+l0
		if cur {
			sampled++
		}
		if i > 0 && prev {
			pairs++
			if cur {
				both++
			}
		}
		prev = cur
	}
	p := 1.0 / rate
	if sd := math.Sqrt(runs * p * (1 - p)); math.Abs(float64(sampled)-runs*p) > 6*sd {
		t.Errorf("rate %d, packet by packet: %d of %d sampled, want %.0f ± %.0f", rate, sampled, runs, runs*p, 6*sd)
	}
	// After a sampled packet the next is sampled one time in rate too.
	if sd := math.Sqrt(float64(pairs) * p * (1 - p)); math.Abs(float64(both)-float64(pairs)*p) > 6*sd {
		t.Errorf("rate %d: %d of the %d packets after a sampled one sampled, want %.0f ± %.0f", rate, both, pairs, float64(pairs)*p, 6*sd)
	}
}

// TestReloadUnderFlood: replacing the rule set while attack and legitimate
// traffic flow lets no attack packet through and loses no legitimate one.
func TestReloadUnderFlood(t *testing.T) {
	fixture.RequireRoot(t)
	rulesA := `
rules:
  - name: attack
    expr: "udp dst port 7777"
  - name: other-a
    expr: "udp dst port 6000"
`
	rulesB := `
rules:
  - name: other-b
    expr: "tcp dst port 6001"
  - name: attack
    family: ipv4
    bpf: "` + bytecode(t, "udp dst port 7777") + `"
`
	objs := [][]byte{buildYAML(t, rulesA), buildYAML(t, rulesB)}
	lab := fixture.Lab(t)
	root := fixture.BPFFS(t)
	l := loadOnServer(t, lab, root, objs[0], l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	legit := listenUDP(t, lab.Server, 9999)
	attack := listenUDP(t, lab.Server, 7777)

	attackFrame := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 7777, []byte("attack"))
	legitFrame := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 9999, []byte("legitimate"))
	var (
		stop       atomic.Bool
		sentLegit  int
		wg         sync.WaitGroup
		reloads    atomic.Int64
		reloadErrs []error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; !stop.Load() && i < 200; i++ {
			l, err := l4drop.Load(objs[i%2], l4drop.LoadOptions{Iface: lab.ServerIf, Netns: lab.Server.Name, Root: root})
			if err != nil {
				reloadErrs = append(reloadErrs, err)
				return
			}
			if !l.Replaced {
				reloadErrs = append(reloadErrs, errors.New("load did not replace"))
			}
			l.Close()
			reloads.Add(1)
		}
	}()
	// Bursts of 20 attack and 1 legitimate frame, paced so the server's
	// socket keeps up: a loss must be L4Drop's. At least 100 bursts, and
	// more (up to 1,000) until 5 reloads happened: a busy machine loads
	// slower.
	for round := 0; round < 100 || (reloads.Load() < 5 && round < 1000); round++ {
		frames := make([][]byte, 0, 21)
		for i := 0; i < 20; i++ {
			frames = append(frames, attackFrame)
		}
		frames = append(frames, legitFrame)
		sendFrames(t, lab.Client, lab.ClientIf, frames)
		sentLegit++
		time.Sleep(2 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	for _, err := range reloadErrs {
		t.Error(err)
	}
	if n := reloads.Load(); n < 5 {
		t.Errorf("only %d reloads during the flood", n)
	}
	if got := legit.wait(); got != sentLegit {
		t.Errorf("%d of %d legitimate datagrams arrived", got, sentLegit)
	}
	if got := attack.wait(); got != 0 {
		t.Errorf("%d attack datagrams passed", got)
	}
	t.Logf("%d reloads during %d attack and %d legitimate frames", reloads.Load(), 20*sentLegit, sentLegit)
}

// TestXdpcapSeesDrops: a capture on the pinned xdpcap hook sees the
// dropped packets with action DROP.
func TestXdpcapSeesDrops(t *testing.T) {
	fixture.RequireRoot(t)
	obj := buildYAML(t, testRules(t))
	lab := fixture.Lab(t)
	l := loadOnServer(t, lab, fixture.BPFFS(t), obj, l4drop.LoadOptions{})
	defer l4drop.Unload(l.Dir)
	hook, err := xdpcap.OpenHook(l.Dir + "/" + l4drop.PinHook)
	if err != nil {
		t.Fatal(err)
	}
	defer hook.Close()
	c, err := xdpcap.Start([]*ebpf.Map{hook}, xdpcap.Options{Actions: []xdpcap.Action{xdpcap.Drop}, PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	syn := fixture.TCP4SYN(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 80)
	legit := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 40000, 9999, []byte("legitimate"))
	sendFrames(t, lab.Client, lab.ClientIf, [][]byte{syn, legit, syn, legit, syn})
	got := 0
	deadline := time.After(5 * time.Second)
	for got < 3 {
		pc := make(chan xdpcap.Packet, 1)
		ec := make(chan error, 1)
		go func() {
			p, err := c.Read()
			if err != nil {
				ec <- err
				return
			}
			pc <- p
		}()
		select {
		case p := <-pc:
			if p.Action != xdpcap.Drop || !bytes.Equal(p.Data, syn) {
				t.Errorf("captured %v %x, want the SYN dropped", p.Action, p.Data)
			}
			got++
		case err := <-ec:
			t.Fatal(err)
		case <-deadline:
			t.Fatalf("captured %d of 3 drops", got)
		}
	}
}

// TestSplitAndNext: a rule set split over chained programs matches rules in
// every program, and --next gets the packets the rule set passes, from the
// program attached while nobody captures (the quiet twin that keeps the
// tail call to --next) as from the first program, split or not.
func TestSplitAndNext(t *testing.T) {
	fixture.RequireRoot(t)
	var b bytes.Buffer
	b.WriteString("rules:\n")
	const n = 40
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - name: port-%d\n    expr: \"udp dst port %d\"\n", 2000+i, 2000+i)
	}
	b.WriteString("  - name: allow-3000\n    expr: \"udp dst port 3000\"\n    action: pass\n")
	rs, err := ParseRuleSet("split.yaml", b.Bytes())
	if err != nil {
		t.Fatal(err)
	}

	// The next program answers XDP_TX, which nothing else here does.
	next, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.XDP, AttachType: ebpf.AttachXDP, License: "MIT",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	root := fixture.BPFFS(t)
	if err := next.Pin(root + "/next"); err != nil {
		t.Fatal(err)
	}
	lab := fixture.Lab(t)
	for _, tc := range []struct {
		name string
		opts BuildOptions
	}{
		// One by one: as a set, the rules would be one table. Rules of
		// one shape call a shared function: a few instructions each.
		{"split", BuildOptions{MaxProgramInsns: 30, NoSets: true}},
		{"whole", BuildOptions{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj, gen, err := Build(rs, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			progs := len(gen.Meta.Programs)
			if split := tc.opts.MaxProgramInsns != 0; split && progs < 5 || !split && progs != 1 {
				t.Fatalf("%d programs", progs)
			}
			if last := gen.Meta.Rules[n-1].Program; last != progs-1 {
				t.Errorf("last rule in program %d of %d", last, progs)
			}
			l := loadOnServer(t, lab, root, obj, l4drop.LoadOptions{Next: root + "/next"})
			defer l4drop.Unload(l.Dir)
			running, err := l4drop.Running(l.Dir)
			if err != nil {
				t.Fatal(err)
			}
			defer running.Close()
			for _, prog := range []struct {
				name string
				p    *ebpf.Program
			}{{"first program", l.Programs[0]}, {"attached program", running}} {
				for _, tt := range []struct {
					port uint16
					want uint32
				}{{2000, 1}, {2000 + n/2, 1}, {2000 + n - 1, 1}, {3000, 3}, {4000, 3}} {
					frame := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, tt.port, nil)
					ret, _, err := prog.p.Test(frame)
					if err != nil {
						t.Fatal(err)
					}
					if ret != tt.want {
						t.Errorf("%s, port %d: action %d, want %d", prog.name, tt.port, ret, tt.want)
					}
				}
			}
			h := openLoaded(t, l)
			st, err := h.Status(0)
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range map[int]uint64{0: 2, n / 2: 2, n - 1: 2, n: 2, 1: 0} {
				if got := st.Rules[i].Packets; got != want {
					t.Errorf("rule %s: %d packets, want %d", st.Rules[i].Name, got, want)
				}
			}
		})
	}
}

// TestManyRules: 2,000 rules, more than the verifier takes in one program
// when they run one by one, are split, load, and the first and the last
// rule match; tested at once, as a set whose table decides, they fit in
// one program.
func TestManyRules(t *testing.T) {
	fixture.RequireRoot(t)
	text, last := benchRules("port", 2000)
	rs, err := ParseRuleSet("many.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, noSets := range []bool{true, false} {
		t.Run(fmt.Sprintf("NoSets=%v", noSets), func(t *testing.T) {
			obj, gen, err := Build(rs, BuildOptions{NoSets: noSets})
			if err != nil {
				t.Fatal(err)
			}
			// One by one, rules of one shape call a shared function,
			// which the verifier checks once: no split needed either way.
			if len(gen.Meta.Programs) != 1 {
				t.Errorf("%d rules in %d programs", len(rs.Rules), len(gen.Meta.Programs))
			}
			d, err := l4drop.NewDryRun(obj, l4drop.LoadOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			first := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 1000, nil)
			other := fixture.UDP4(fixture.ClientIPv4, fixture.ServerIPv4, 1, 999, nil)
			for _, tt := range []struct {
				pkt  []byte
				want uint32
			}{{first, 0}, {last, 1999}, {other, l4drop.NoRule}} {
				v, err := d.Run(tt.pkt)
				if err != nil {
					t.Fatal(err)
				}
				if v.Rule != tt.want {
					t.Errorf("rule %d (%s), want %d", v.Rule, v.Action, tt.want)
				}
			}
		})
	}
}
