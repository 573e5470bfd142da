package l4drop

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/l4drop/l4drop/internal/bpffs"
	"github.com/l4drop/l4drop/internal/l4pins"
	"github.com/l4drop/l4drop/xdpcap"
)

// Pin names under the interface's directory (DefaultRoot/l4drop/IF/).
const (
	PinProg     = "prog"
	PinLink     = l4pins.Link
	PinCounters = "counters"
	PinStats    = "stats"
	PinConfig   = "config"
	PinSamples  = "samples"
	PinHook     = "xdpcap_hook"
	PinChain    = "chain"
	PinState    = "state"
)

// ProgBody is the program of a built ELF that the loader puts in the xdpcap
// hook's body slot (xdpcap.BodySlot): the first program without its
// xdpcap_entry call, which an entry capture's filter runs once it has
// recorded the packet. ELFs built before capture at entry lack it.
const ProgBody = ProgPrefix + "body"

// ProgQuiet is the program of a built ELF that the loader attaches while
// nobody captures on the rule set's xdpcap hook: the first program without
// its tail calls into the hook (xdpcap.SetQuiet), about 0.7 ns a packet
// cheaper. The loader puts it and the first program in the hook's quiet
// and loud slots, and xdpcap swaps one for the other while it captures.
const ProgQuiet = ProgPrefix + "quiet"

// ProgQuietNext is ProgQuiet with the tail call to the --next program
// (LoadOptions.Next). The loader keeps one of the two, as ProgQuiet: a
// program with a tail call anywhere, even one switched off, has the JIT
// set up the tail-call counter as it starts: 0.4-1 ns a packet here.
const ProgQuietNext = ProgPrefix + "quiet_next"

// Errors callers branch on.
var (
	// ErrNotLoaded means no rule set is loaded on the interface.
	ErrNotLoaded = errors.New("no L4Drop rule set loaded")
	// ErrUnknownRule means --enable or --disable named a rule the ELF lacks.
	ErrUnknownRule = errors.New("no such rule")
	// ErrUnknownLocation means --location named no rule's location.
	ErrUnknownLocation = errors.New("unknown location")
	// ErrIncompatible means the ELF was built by another l4drop.
	ErrIncompatible = errors.New("rule set built by an incompatible l4drop")
	// ErrVerifier means the kernel refused a program.
	ErrVerifier = errors.New("the verifier refused the program")
)

// LoadOptions say where and how to load a built rule set.
type LoadOptions struct {
	// Iface is the interface to attach to.
	Iface string
	// Netns, if set, names the network namespace (as in `ip netns`) the
	// interface is in. Pins stay on this mount namespace's bpffs.
	Netns string
	// Location selects the rules whose locations include it; rules
	// without locations are on everywhere.
	Location string
	// Enable and Disable switch rules by name, after Location.
	Enable, Disable []string
	// Mode is "native", "generic", or "" to let the kernel choose.
	Mode string
	// Root is the bpffs directory pins go under (l4drop/IF/ below it);
	// "" means /sys/fs/bpf.
	Root string
	// Next is a pinned XDP program passed packets are handed to.
	Next string
	// SampleRate overrides the rule set's sample rate when non-nil.
	SampleRate *uint32
}

// State is what a loaded rule set keeps pinned about itself, so that the
// other commands need no file.
type State struct {
	Meta     Meta      `json:"meta"`
	Enabled  []bool    `json:"enabled"`
	Location string    `json:"location,omitempty"`
	Iface    string    `json:"iface"`
	Netns    string    `json:"netns,omitempty"`
	Mode     string    `json:"mode,omitempty"`
	LoadedAt time.Time `json:"loaded_at"`
	// Sysctls are the values of the namespace's sysctls before a
	// syncookie rule needed them changed; unload puts them back.
	Sysctls map[string]string `json:"sysctls_saved,omitempty"`
}

// Dir returns the pin directory for an interface (and namespace).
func Dir(root, iface, ns string) string { return l4pins.Dir(root, iface, ns) }

// Locate returns the bpffs root and namespace name that pins of this
// process's interfaces go under, mounting bpffs at root if it is missing.
//
// `ip netns exec NAME` runs its command in a private mount namespace with
// a fresh /sys: a bpffs mounted there would vanish, and the attachment
// with it, when the command exits. So inside a named network namespace
// Locate pins on the host's bpffs through /proc/1/root when it can reach
// it, refuses to mount a private one otherwise, and names the namespace, so
// that `ip netns exec NAME l4drop ... --iface IF` and
// `l4drop ... --netns NAME --iface IF` mean the same.
func Locate(root, ns string) (string, string, error) {
	if root == "" {
		root = bpffs.DefaultRoot
	}
	inNamed := ""
	if ns == "" {
		inNamed = currentNetns()
		ns = inNamed
	}
	if !sameNS("mnt") {
		host := filepath.Join("/proc/1/root", root)
		if ok, err := bpffs.IsMounted(host); err == nil && ok && !sameFS(root, host) {
			root = host
		}
	}
	ok, err := bpffs.IsMounted(root)
	if err == nil && ok {
		return root, ns, nil
	}
	if inNamed != "" || !sameNS("mnt") {
		return "", "", fmt.Errorf("%s is not a BPF file system here (inside `ip netns exec`?), and one mounted now would vanish "+
			"with this process: run l4drop from the host with --netns NAME, or pass --bpffs DIR naming a bpffs mount "+
			"shared with the host (mount -t bpf bpf DIR)", root)
	}
	return root, ns, bpffs.Ensure(root)
}

// sameNS reports whether this process shares namespace kind with pid 1,
// true when it cannot tell.
func sameNS(kind string) bool {
	self, err1 := os.Readlink("/proc/self/ns/" + kind)
	init, err2 := os.Readlink("/proc/1/ns/" + kind)
	return err1 != nil || err2 != nil || self == init
}

func sameFS(a, b string) bool {
	sa, err1 := os.Stat(a)
	sb, err2 := os.Stat(b)
	if err1 != nil || err2 != nil {
		return false
	}
	return sa.Sys().(*syscall.Stat_t).Dev == sb.Sys().(*syscall.Stat_t).Dev
}

// currentNetns returns the `ip netns` name of this process's network
// namespace, or "" if it has none.
func currentNetns() string {
	self, err := os.Stat("/proc/self/ns/net")
	if err != nil {
		return ""
	}
	// ip netns exec keeps the host's /run, where the names are.
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		st, err := os.Stat(filepath.Join("/run/netns", e.Name()))
		if err == nil && os.SameFile(self, st) {
			return e.Name()
		}
	}
	return ""
}

// switches returns which rules are on for the options.
func switches(m *Meta, opts LoadOptions) ([]bool, error) {
	on := make([]bool, len(m.Rules))
	byName := make(map[string]int, len(m.Rules))
	known := opts.Location == ""
	for i, r := range m.Rules {
		byName[r.Name] = i
		on[i] = r.EnabledAt(opts.Location)
		known = known || slices.Contains(r.Locations, opts.Location)
	}
	if !known {
		return nil, fmt.Errorf("%w: location %q: no rule names it", ErrUnknownLocation, opts.Location)
	}
	for _, n := range opts.Enable {
		if slices.Contains(opts.Disable, n) {
			return nil, fmt.Errorf("rule %q is both enabled and disabled", n)
		}
	}
	for _, set := range []struct {
		names []string
		val   bool
	}{{opts.Enable, true}, {opts.Disable, false}} {
		for _, n := range set.names {
			i, ok := byName[n]
			if !ok {
				return nil, fmt.Errorf("%w: %q", ErrUnknownRule, n)
			}
			on[i] = set.val
		}
	}
	return on, nil
}

// patchSwitches writes each rule's switch into the 64-bit immediate loads
// that reference its symbol, and drops the reference so nothing else tries
// to resolve it.
func patchSwitches(spec *ebpf.CollectionSpec, m *Meta, on []bool) error {
	val := make(map[string]int64, len(m.Rules))
	for i, r := range m.Rules {
		if r.Symbol == "" {
			continue
		}
		v := int64(0)
		if on[i] {
			v = 1
		}
		val[r.Symbol] = v
	}
	found := make(map[string]bool, len(val))
	for _, ps := range spec.Programs {
		for i := range ps.Instructions {
			ins := &ps.Instructions[i]
			ref := ins.Reference()
			v, ok := val[ref]
			if !ok || !ins.IsLoadFromMap() && !ins.OpCode.IsDWordLoad() {
				continue
			}
			ins.Constant = v
			*ins = ins.WithReference("")
			found[ref] = true
		}
	}
	// A set's rules switch through its table too; clang drops their one
	// by one fallback where it proves the table always decides.
	inSet := map[int]bool{}
	for _, g := range m.Sets {
		for _, mb := range g.Members {
			inSet[mb.Rule] = true
		}
	}
	for i, r := range m.Rules {
		if r.Symbol != "" && !found[r.Symbol] && !inSet[i] {
			return fmt.Errorf("rule %q: switch %s not found in the programs", r.Name, r.Symbol)
		}
	}
	return nil
}

// nextSymbol is the switch of the tail call to LoadOptions.Next. ELFs
// built before it existed lack it: they always make the call.
const nextSymbol = "L4_NEXT_ENABLED"

// patchSymbol sets the 64-bit immediate loads of sym, if any, to on.
func patchSymbol(spec *ebpf.CollectionSpec, sym string, on bool) {
	v := int64(0)
	if on {
		v = 1
	}
	for _, ps := range spec.Programs {
		for i := range ps.Instructions {
			ins := &ps.Instructions[i]
			if ins.Reference() == sym && ins.OpCode.IsDWordLoad() {
				ins.Constant = v
				*ins = ins.WithReference("")
			}
		}
	}
}

// keepQuiet keeps, as ProgQuiet, the quiet twin that calls the --next
// program if next, the one without any tail call otherwise.
func keepQuiet(spec *ebpf.CollectionSpec, next bool) {
	qn := spec.Programs[ProgQuietNext]
	if qn == nil {
		return
	}
	delete(spec.Programs, ProgQuietNext)
	if next {
		// Named as the twin it stands for, in bpftool's listing too.
		qn.Name = ProgQuiet
		spec.Programs[ProgQuiet] = qn
	}
}

// SampleThreshold converts a sample rate (one in rate; 0 off) to the
// program's threshold for 32 random bits.
func SampleThreshold(rate uint32) uint64 {
	if rate == 0 {
		return 0
	}
	return (uint64(1) << 32) / uint64(rate)
}

// config is the program's l4drop_cfg. Pad is always 0: the programs use
// it as a zero the verifier cannot see. Seed keys the sampling hash and
// the per-source ratelimit tables' hash.
type config struct {
	Threshold uint64
	Snaplen   uint32
	Pad       uint32
	Seed      uint64
}

// legacyConfig is l4drop_cfg in rule sets built before the seed: their
// programs draw from bpf_get_prandom_u32.
type legacyConfig struct {
	Threshold uint64
	Snaplen   uint32
	Pad       uint32
}

const legacyConfigSize = 16

// readConfig reads m, an l4drop_cfg map of either layout.
func readConfig(m *ebpf.Map) (config, error) {
	if m.ValueSize() == legacyConfigSize {
		var old legacyConfig
		err := m.Lookup(uint32(0), &old)
		return config{Threshold: old.Threshold, Snaplen: old.Snaplen, Pad: old.Pad}, err
	}
	var cfg config
	err := m.Lookup(uint32(0), &cfg)
	return cfg, err
}

// writeConfig writes cfg to m, an l4drop_cfg map of either layout.
func writeConfig(m *ebpf.Map, cfg config) error {
	if m.ValueSize() == legacyConfigSize {
		return m.Put(uint32(0), legacyConfig{Threshold: cfg.Threshold, Snaplen: cfg.Snaplen, Pad: cfg.Pad})
	}
	return m.Put(uint32(0), cfg)
}

// newSeed draws a seed for the programs' keyed hashes.
func newSeed() uint64 {
	var b [8]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return binary.LittleEndian.Uint64(b[:])
}

// Loaded is a rule set loaded by Load.
type Loaded struct {
	Dir      string
	State    State
	Programs []*ebpf.Program
	Replaced bool // an earlier rule set was replaced atomically
}

// prepare reads a built rule set and sets its switches for opts.
func prepare(obj []byte, opts LoadOptions) (*Meta, []bool, *ebpf.CollectionSpec, error) {
	meta, err := ReadMeta(obj)
	if err != nil {
		return nil, nil, nil, err
	}
	on, err := switches(meta, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	spec, err := ebpf.LoadCollectionSpecFromReader(bytes.NewReader(obj))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read ELF: %w", err)
	}
	// An ELF from another l4drop with the same metadata version could
	// still lack a map: say so rather than fail on a nil map later.
	for _, name := range []string{MapCounters, MapStats, MapConfig, MapSamples, MapChain, MapHook} {
		if spec.Maps[name] == nil {
			return nil, nil, nil, fmt.Errorf("%w: map %s missing from the ELF: rebuild the rules with this l4drop", ErrIncompatible, name)
		}
	}
	if err := patchSwitches(spec, meta, on); err != nil {
		return nil, nil, nil, err
	}
	patchSymbol(spec, nextSymbol, opts.Next != "")
	keepQuiet(spec, opts.Next != "")
	if err := patchSyncookie(spec, opts.Iface, opts.Netns); err != nil {
		return nil, nil, nil, err
	}
	if err := fillDNS(spec, meta, on); err != nil {
		return nil, nil, nil, err
	}
	if err := fillSets(spec, meta, on); err != nil {
		return nil, nil, nil, err
	}
	if ms := spec.Maps[MapSamples]; ms != nil && ms.MaxEntries == 0 {
		n, err := ebpf.PossibleCPU()
		if err != nil {
			return nil, nil, nil, err
		}
		ms.MaxEntries = uint32(n)
	}
	return meta, on, spec, nil
}

// chainPrograms fills the chain map with the programs after the first.
func chainPrograms(coll *ebpf.Collection, meta *Meta) ([]*ebpf.Program, error) {
	progs := make([]*ebpf.Program, len(meta.Programs))
	for i, name := range meta.Programs {
		progs[i] = coll.Programs[name]
		if progs[i] == nil {
			return nil, fmt.Errorf("program %s missing from the ELF", name)
		}
	}
	chain := coll.Maps[MapChain]
	for i := 1; i < len(progs); i++ {
		if err := chain.Put(uint32(i), progs[i]); err != nil {
			return nil, fmt.Errorf("chain program %d: %w", i, err)
		}
	}
	return progs, nil
}

// Load loads the built rule set obj on an interface and pins it under
// Dir(root, iface, netns). A rule set already there is replaced atomically
// (bpf_link update). On any error, what was loaded before stays untouched.
func Load(obj []byte, opts LoadOptions) (*Loaded, error) {
	_ = rlimit.RemoveMemlock()
	meta, on, spec, err := prepare(obj, opts)
	if err != nil {
		return nil, err
	}
	if opts.Iface == "" {
		return nil, errors.New("no interface given")
	}
	flags, err := modeFlags(opts.Mode)
	if err != nil {
		return nil, err
	}
	ifindex, err := ifaceIndex(opts.Iface, opts.Netns)
	if err != nil {
		return nil, err
	}
	if opts.Root, opts.Netns, err = Locate(opts.Root, opts.Netns); err != nil {
		return nil, err
	}
	dir := Dir(opts.Root, opts.Iface, opts.Netns)
	unlock, err := lockDir(dir, opts.Iface)
	if err != nil {
		return nil, err
	}
	defer unlock()
	madeDir := false
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		madeDir = true
	}
	var done bool
	defer func() {
		// A first load that failed leaves no empty pin directory.
		if !done && madeDir {
			os.Remove(dir)
		}
	}()
	old := openPrevious(dir)
	defer old.close()
	if old.state != nil && opts.Mode != "" && normMode(old.state.Mode) != normMode(opts.Mode) {
		was := old.state.Mode
		if was == "" {
			was = "the mode the driver chose"
		}
		return nil, fmt.Errorf("--mode %s: the rule set on %s is attached in %s; a replace keeps the mode (unload first)", opts.Mode, opts.Iface, was)
	}

	// Maps that outlive a reload, so readers and captures keep working:
	// the xdpcap hook, the sample output and the sample config.
	repl := map[string]*ebpf.Map{}
	var newPins []string // reused maps need no new pin
	defer func() {
		for _, m := range repl {
			m.Close()
		}
	}()
	hook, err := reuseHook(filepath.Join(dir, PinHook), spec.Maps[MapHook])
	if err != nil {
		return nil, err
	}
	if hook != nil {
		repl[MapHook] = hook
	} else {
		newPins = append(newPins, PinHook)
	}
	// The sample counters too, so that they only ever grow, as
	// Prometheus counters should.
	// Auto rules deployed at run time survive a reload of the file, as
	// do their counts' table.
	reuses := []struct{ name, pin string }{{MapSamples, PinSamples}, {MapConfig, PinConfig}, {MapStats, PinStats}}
	if spec.Maps[MapAuto] != nil && spec.Maps[MapAutoCount] != nil {
		reuses = append(reuses, struct{ name, pin string }{MapAuto, PinAuto}, struct{ name, pin string }{MapAutoCount, PinAutoCount})
	}
	if spec.Maps[MapActions] != nil {
		reuses = append(reuses, struct{ name, pin string }{MapActions, PinActions})
	}
	for _, reuse := range reuses {
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, reuse.pin), nil)
		if err == nil {
			mmapable(spec.Maps[reuse.name], m)
		}
		if err == nil && spec.Maps[reuse.name].Compatible(m) == nil {
			repl[reuse.name] = m
			continue
		}
		if err == nil {
			m.Close()
		}
		newPins = append(newPins, reuse.pin)
	}
	// When each auto rule was deployed: user space's alone, so not in
	// the ELF.
	var autoSince *ebpf.Map
	if _, reused := repl[MapAuto]; !reused && spec.Maps[MapAuto] != nil {
		if autoSince, err = ebpf.NewMap(&ebpf.MapSpec{Name: "l4drop_auto_t", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: AutoSlots}); err != nil {
			return nil, fmt.Errorf("auto rule times: %w", err)
		}
		defer autoSince.Close()
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: repl})
	if err != nil {
		return nil, verifierError(err, meta)
	}
	defer coll.Close()

	progs, err := chainPrograms(coll, meta)
	if err != nil {
		return nil, err
	}
	// The body goes in the hook before the program that calls
	// xdpcap_entry is attached; a failed load puts back the one before.
	hookMap, quiet := coll.Maps[MapHook], coll.Programs[ProgQuiet]
	slots, err := setSlots(hookMap, coll.Programs[ProgBody], quiet, progs[0])
	if err != nil {
		return nil, err
	}
	defer func() {
		if !done {
			slots.restore()
		}
		slots.close()
	}()
	// The quiet twin runs while nobody captures; xdpcap swaps in the
	// program that calls the hook while a capture runs.
	attach := progs[0]
	if quiet != nil {
		capturing, err := xdpcap.Capturing(hookMap)
		if err != nil {
			return nil, fmt.Errorf("xdpcap hook: %w", err)
		}
		if !capturing {
			attach = quiet
		}
	}
	chain := coll.Maps[MapChain]
	if opts.Next != "" {
		next, err := ebpf.LoadPinnedProgram(opts.Next, nil)
		if err != nil {
			return nil, fmt.Errorf("--next %s: %w", opts.Next, err)
		}
		err = chain.Put(uint32(len(progs)), next)
		next.Close()
		if err != nil {
			return nil, fmt.Errorf("--next %s: %w (tail calls need an XDP program loaded for attach type xdp, without frags)", opts.Next, err)
		}
	}
	rate := meta.SampleRate
	if opts.SampleRate != nil {
		rate = *opts.SampleRate
	}
	cfgMap := coll.Maps[MapConfig]
	var cfg config
	if _, reused := repl[MapConfig]; reused && opts.SampleRate == nil {
		// Keep a rate set at run time, and take the new snaplen.
		var err error
		if cfg, err = readConfig(cfgMap); err != nil {
			return nil, fmt.Errorf("read sample config: %w", err)
		}
	} else {
		cfg.Threshold = SampleThreshold(rate)
	}
	if cfg.Seed == 0 {
		cfg.Seed = newSeed()
	}
	cfg.Snaplen = meta.Snaplen
	if err := writeConfig(cfgMap, cfg); err != nil {
		return nil, fmt.Errorf("set sample config: %w", err)
	}

	mode := opts.Mode
	if mode == "" && old.state != nil {
		mode = old.state.Mode
	}
	carried := old.carry(meta, coll.Maps[MapCounters])
	state := State{Meta: *meta, Enabled: on, Location: opts.Location, Iface: opts.Iface, Netns: opts.Netns, Mode: mode, LoadedAt: time.Now().UTC()}
	// The syncookie action's sysctls: set before the program runs, put
	// back if the load fails; those an earlier set changed stay saved.
	var oldSaved map[string]string
	if old.state != nil {
		oldSaved = old.state.Sysctls
	}
	wantSC := usesSyncookie(meta, on)
	if wantSC {
		keep, undo, err := hostSetup(opts.Netns, true, oldSaved)
		if err != nil {
			return nil, err
		}
		defer func() {
			if !done {
				undo()
			}
		}()
		state.Sysctls = keep
	}
	stateMap, err := newStateMap(&state)
	if err != nil {
		return nil, err
	}
	defer stateMap.Close()

	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pin directory: %w", err)
	}
	pins := []pin{{PinProg, progs[0]}, {PinCounters, coll.Maps[MapCounters]}, {PinChain, chain}, {PinState, stateMap}}
	mapOf := map[string]string{PinHook: MapHook, PinSamples: MapSamples, PinConfig: MapConfig, PinStats: MapStats,
		PinAuto: MapAuto, PinAutoCount: MapAutoCount, PinActions: MapActions}
	for _, n := range newPins {
		pins = append(pins, pin{n, coll.Maps[mapOf[n]]})
	}
	if autoSince != nil {
		pins = append(pins, pin{PinAutoSince, autoSince})
	}
	// Everything is pinned beside the live pins before anything live
	// changes, and renamed over them after the swap; a failure at any
	// step puts back what was there.
	tx, err := stagePins(dir, pins)
	if err != nil {
		return nil, err
	}
	defer tx.close()

	// Attach or swap: the only step that changes what packets meet.
	replaced := false
	linkPath := filepath.Join(dir, PinLink)
	var l link.Link
	oldLink, err := link.LoadPinnedLink(linkPath, nil)
	if err == nil && !AttachedTo(oldLink, ifindex) {
		// The interface went away (its namespace was deleted, say):
		// the pinned link attaches nothing. Start afresh.
		oldLink.Unpin()
		oldLink.Close()
		err = os.ErrNotExist
	}
	var before *ebpf.Program // what the link ran before, for a roll back
	if err == nil {
		if info, err := oldLink.Info(); err == nil {
			before, _ = ebpf.NewProgramFromID(info.Program)
		}
		if before != nil {
			defer before.Close()
		}
		if err := oldLink.Update(attach); err != nil {
			oldLink.Close()
			return nil, fmt.Errorf("replace the loaded rule set: %w", err)
		}
		l, replaced = oldLink, true
		// Counts the old program made since the copy.
		carried.delta()
	} else {
		err := onNetns(opts.Netns, func() error {
			var err error
			l, err = link.AttachXDP(link.XDPOptions{Program: attach, Interface: ifindex, Flags: flags})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("attach to %s: %w", opts.Iface, err)
		}
		if err := l.Pin(linkPath); err != nil {
			l.Close()
			return nil, fmt.Errorf("pin link: %w", err)
		}
	}
	defer l.Close()
	err = nil
	if testHookAfterAttach != nil {
		err = testHookAfterAttach()
	}
	if err == nil {
		err = tx.commit()
	}
	if err != nil {
		// Put back the program that ran, or detach what was attached.
		if replaced {
			if rerr := tx.restoreProgram(l, before); rerr != nil {
				err = errors.Join(err, rerr)
			}
		} else {
			l.Unpin()
			if d, ok := l.(interface{ Detach() error }); ok {
				_ = d.Detach()
			}
		}
		return nil, errors.Join(err, tx.rollback())
	}
	// Committed: nothing below puts back what was loaded before.
	done = true
	if quiet != nil {
		// A capture that started or ended since the choice above swapped
		// the programs the link ran then, not ours.
		if err := xdpcap.SyncLinks(hookMap); err != nil {
			return nil, fmt.Errorf("loaded, but matching the program to the xdpcap hook's captures: %w", err)
		}
	}
	if !wantSC && len(oldSaved) > 0 {
		// The last syncookie rule went: put the namespace back.
		if _, _, err := hostSetup(opts.Netns, false, oldSaved); err != nil {
			return nil, fmt.Errorf("loaded, but restoring the sysctls the syncookie action changed: %w", err)
		}
	}
	if spec.Maps[MapActions] == nil {
		unpin(filepath.Join(dir, PinActions))
	}
	if spec.Maps[MapAuto] == nil {
		// Auto rules of an earlier set would be read as this one's.
		for _, n := range []string{PinAuto, PinAutoCount, PinAutoSince} {
			unpin(filepath.Join(dir, n))
		}
	}
	// The pins hold the objects now; the Collection's Close only drops
	// our descriptors. Programs stay usable for the caller.
	out := &Loaded{Dir: dir, State: state, Replaced: replaced}
	for _, p := range progs {
		c, err := p.Clone()
		if err != nil {
			return nil, err
		}
		out.Programs = append(out.Programs, c)
	}
	return out, nil
}

// Close releases the caller's handles; the rule set stays loaded.
func (l *Loaded) Close() error {
	for _, p := range l.Programs {
		p.Close()
	}
	return nil
}

// Running opens the program the rule set pinned in dir runs now: the quiet
// twin (ProgQuiet), or the first program while xdpcap captures on the
// hook. Test runs of it cost what the interface's packets do; repeated
// test runs of an XDP program attached nowhere wait for the kernel's XDP
// dispatcher (tens of ms each).
func Running(dir string) (*ebpf.Program, error) {
	l, err := link.LoadPinnedLink(filepath.Join(dir, PinLink), nil)
	if err != nil {
		return nil, fmt.Errorf("the loaded rule set's link: %w", err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("the loaded rule set's link: %w", err)
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("the program the link in %s runs: %w", dir, err)
	}
	return prog, nil
}

// AttachedTo reports whether an XDP link is attached to ifindex.
func AttachedTo(l link.Link, ifindex int) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	xdp := info.XDP()
	return xdp != nil && int(xdp.Ifindex) == ifindex
}

func modeFlags(mode string) (link.XDPAttachFlags, error) {
	switch mode {
	case "":
		return 0, nil
	case "native", "driver":
		return link.XDPDriverMode, nil
	case "generic", "skb":
		return link.XDPGenericMode, nil
	}
	return 0, fmt.Errorf("mode %q: want native or generic", mode)
}

func ifaceIndex(iface, ns string) (int, error) {
	var idx int
	err := onNetns(ns, func() error {
		ifi, err := net.InterfaceByName(iface)
		if err != nil {
			return fmt.Errorf("interface %s: %w", iface, err)
		}
		idx = ifi.Index
		return nil
	})
	return idx, err
}

var verifierLine = regexp.MustCompile(`@ [^:\s]+:(\d+)`)

// verifierError names the rule a verifier message is about: the log names
// lines of the generated C, and the metadata maps lines to rules.
func verifierError(err error, m *Meta) error {
	var ve *ebpf.VerifierError
	if !errors.As(err, &ve) {
		return fmt.Errorf("load: %w", err)
	}
	log := strings.Join(ve.Log, "\n")
	var rule *MetaRule
	for _, match := range verifierLine.FindAllStringSubmatch(log, -1) {
		if n, err := strconv.Atoi(match[1]); err == nil {
			if r := m.RuleAt(n); r != nil {
				rule = r
			}
		}
	}
	// The end of the log says why; keep it readable.
	tail := ve.Log
	if len(tail) > 30 {
		tail = tail[len(tail)-30:]
	}
	where := "outside any rule"
	if rule != nil {
		where = fmt.Sprintf("rule %q (line %d of %s)", rule.Name, rule.Line, m.Source)
	}
	return fmt.Errorf("%w: %s: %v\n%s", ErrVerifier, where, ve.Cause, strings.Join(tail, "\n"))
}

const stateChunk = 65536

// newStateMap stores the state as JSON in an array map: the length in the
// first 8 bytes, then the text, in chunks of stateChunk bytes.
func newStateMap(s *State) (*ebpf.Map, error) {
	js, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, 8+len(js))
	binary.LittleEndian.PutUint64(buf, uint64(len(js)))
	copy(buf[8:], js)
	n := (len(buf) + stateChunk - 1) / stateChunk
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "l4drop_state", Type: ebpf.Array, KeySize: 4, ValueSize: stateChunk, MaxEntries: uint32(n)})
	if err != nil {
		return nil, fmt.Errorf("state map: %w", err)
	}
	for i := 0; i < n; i++ {
		chunk := make([]byte, stateChunk)
		copy(chunk, buf[i*stateChunk:])
		if err := m.Put(uint32(i), chunk); err != nil {
			m.Close()
			return nil, fmt.Errorf("state map: %w", err)
		}
	}
	return m, nil
}

func readStateMap(m *ebpf.Map) (*State, error) {
	var all []byte
	for i := uint32(0); i < m.MaxEntries(); i++ {
		chunk := make([]byte, m.ValueSize())
		if err := m.Lookup(i, &chunk); err != nil {
			return nil, fmt.Errorf("read state: %w", err)
		}
		all = append(all, chunk...)
	}
	if len(all) < 8 {
		return nil, errors.New("read state: too short")
	}
	n := binary.LittleEndian.Uint64(all)
	if n > uint64(len(all)-8) {
		return nil, errors.New("read state: bad length")
	}
	var s State
	if err := json.Unmarshal(all[8:8+n], &s); err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	return &s, nil
}

// mmapable gives spec the BPF_F_MMAPABLE flag the pinned m has: the
// library creates global data maps (.data.l4auto, the auto rule count)
// with it where the kernel allows, while their spec in the ELF has no
// flags, so without this the pinned map never looks compatible and a
// reload would drop the auto rules.
func mmapable(spec *ebpf.MapSpec, m *ebpf.Map) {
	if m.Flags()&unix.BPF_F_MMAPABLE != 0 && strings.HasPrefix(spec.Name, ".") {
		spec.Flags |= unix.BPF_F_MMAPABLE
	}
}
