package l4drop

import (
	"errors"
	"fmt"
	"math/bits"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
)

// Constants of the syncookie action the loader writes into the programs,
// as it writes the rules' switches: the MSS the SYN-ACK announces over IPv4
// and IPv6, and the window scale the kernel will give a connection it
// accepts from a cookie.
const (
	SymSyncookieMSS4   = "L4_SC_MSS4_V"
	SymSyncookieMSS6   = "L4_SC_MSS6_V"
	SymSyncookieWScale = "L4_SC_WSCALE_V"
)

// ActionSyncookie is the action name of syncookie rules in Meta.
const ActionSyncookie = "syncookie"

// ErrHostSetup is wrapped by errors about the host settings the syncookie
// action needs.
var ErrHostSetup = errors.New("host setup for action syncookie")

// SyncookieWScale returns the window scale the kernel gives a connection it
// accepts from a cookie: enough to announce the largest receive buffer,
// max(net.ipv4.tcp_rmem[2], net.core.rmem_max), as tcp_select_initial_window
// does.
func SyncookieWScale(tcpRmemMax, coreRmemMax uint32) uint8 {
	space := max(tcpRmemMax, coreRmemMax, 1)
	ws := bits.Len32(space) - 1 - 15
	return uint8(min(max(ws, 0), 14))
}

// syncookieSysctls are what the loader sets in the interface's namespace
// while a syncookie rule is on, and the values it sets: the stack then
// accepts the cookies the program made (see build.SyncookieOptions).
var syncookieSysctls = []struct{ name, value string }{
	{"net.ipv4.tcp_syncookies", "2"},
	{"net.ipv4.tcp_timestamps", "2"},
}

// syncookieRequired are sysctls that must keep their default: the kernel
// refuses cookies that encode an option it has off.
var syncookieRequired = []struct{ name, value string }{
	{"net.ipv4.tcp_sack", "1"},
	{"net.ipv4.tcp_window_scaling", "1"},
}

func sysctlPath(name string) string {
	return "/proc/sys/" + strings.ReplaceAll(name, ".", "/")
}

// readSysctl reads a sysctl of the calling thread's network namespace.
func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(sysctlPath(name), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// usesSyncookie reports whether a rule with action syncookie is on.
func usesSyncookie(m *Meta, on []bool) bool {
	for i, r := range m.Rules {
		if r.Action == ActionSyncookie && i < len(on) && on[i] {
			return true
		}
	}
	return false
}

// hasSyncookie reports whether the programs have the syncookie action.
func hasSyncookie(spec *ebpf.CollectionSpec) bool {
	for _, ps := range spec.Programs {
		for _, ins := range ps.Instructions {
			if ins.Reference() == SymSyncookieWScale {
				return true
			}
		}
	}
	return false
}

// patchSyncookie writes the syncookie constants for the interface iface in
// namespace ns ("" iface: the defaults of a 1500-byte MTU) into the
// programs.
func patchSyncookie(spec *ebpf.CollectionSpec, iface, ns string) error {
	if !hasSyncookie(spec) {
		return nil
	}
	mtu := 1500
	var ws uint8
	err := onNetns(ns, func() error {
		if iface != "" {
			ifi, err := net.InterfaceByName(iface)
			if err != nil {
				return fmt.Errorf("interface %s: %w", iface, err)
			}
			mtu = ifi.MTU
		}
		rmem, err := readSysctl("net.ipv4.tcp_rmem")
		if err != nil {
			return err
		}
		core, err := readSysctl("net.core.rmem_max")
		if err != nil {
			return err
		}
		f := strings.Fields(rmem)
		if len(f) != 3 {
			f = []string{"", "", ""}
		}
		tcpMax, err1 := strconv.ParseUint(f[2], 10, 32)
		coreMax, err2 := strconv.ParseUint(core, 10, 32)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("%w: cannot read net.ipv4.tcp_rmem %q or net.core.rmem_max %q", ErrHostSetup, rmem, core)
		}
		ws = SyncookieWScale(uint32(tcpMax), uint32(coreMax))
		return nil
	})
	if err != nil {
		return err
	}
	mss4 := min(max(mtu-40, 536), 65535)
	mss6 := min(max(mtu-60, 1220), 65535)
	for sym, v := range map[string]int64{SymSyncookieMSS4: int64(mss4), SymSyncookieMSS6: int64(mss6), SymSyncookieWScale: int64(ws)} {
		patchConst(spec, sym, v)
	}
	return nil
}

// patchConst sets the 64-bit immediate loads of sym to v.
func patchConst(spec *ebpf.CollectionSpec, sym string, v int64) {
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

// hostSetup makes namespace ns ready for the syncookie action (want) or
// puts back what an earlier load changed (!want). saved are the values an
// earlier load replaced (from its State); it returns those the new State
// keeps, and undo, which puts back what this call changed.
//
// It refuses, with the commands to run, when a required sysctl is off or
// the sysctls cannot be written.
func hostSetup(ns string, want bool, saved map[string]string) (keep map[string]string, undo func(), err error) {
	undo = func() {}
	if !want {
		if len(saved) == 0 {
			return nil, undo, nil
		}
		err := restoreSysctls(ns, saved)
		return nil, undo, err
	}
	keep = make(map[string]string)
	changed := make(map[string]string)
	err = onNetns(ns, func() error {
		var off []string
		for _, s := range syncookieRequired {
			v, err := readSysctl(s.name)
			if err != nil {
				return err
			}
			if v != s.value {
				off = append(off, s.name+"="+s.value)
			}
		}
		if len(off) > 0 {
			return fmt.Errorf("%w: the kernel refuses cookies while %s is off: run %s", ErrHostSetup,
				strings.Join(off, ", "), sysctlCommand(ns, off))
		}
		for _, s := range syncookieSysctls {
			v, err := readSysctl(s.name)
			if err != nil {
				return err
			}
			if old, ok := saved[s.name]; ok {
				keep[s.name] = old
			} else if v != s.value {
				keep[s.name] = v
			}
			if v == s.value {
				continue
			}
			if err := writeSysctl(s.name, s.value); err != nil {
				var all []string
				for _, s := range syncookieSysctls {
					all = append(all, s.name+"="+s.value)
				}
				return fmt.Errorf("%w: %w: set them yourself: %s", ErrHostSetup, err, sysctlCommand(ns, all))
			}
			changed[s.name] = v
		}
		return nil
	})
	if err != nil {
		_ = restoreSysctls(ns, changed)
		return nil, undo, err
	}
	return keep, func() { _ = restoreSysctls(ns, changed) }, nil
}

// restoreSysctls writes the saved values back in namespace ns.
func restoreSysctls(ns string, saved map[string]string) error {
	if len(saved) == 0 {
		return nil
	}
	names := make([]string, 0, len(saved))
	for n := range saved {
		names = append(names, n)
	}
	slices.Sort(names)
	return onNetns(ns, func() error {
		var errs []error
		for _, n := range names {
			errs = append(errs, writeSysctl(n, saved[n]))
		}
		return errors.Join(errs...)
	})
}

// sysctlCommand is the shell command that sets settings (name=value) in
// namespace ns.
func sysctlCommand(ns string, settings []string) string {
	cmd := "sysctl -w " + strings.Join(settings, " ")
	if ns != "" {
		cmd = "ip netns exec " + ns + " " + cmd
	}
	return cmd
}
