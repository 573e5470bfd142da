package xdpcap

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// LockDir holds one lock file per hook in use, named after the hook's map
// ID. A capture holds the lock (flock) of every hook it fills; the kernel
// drops it when the process dies, however it dies. A filter found in a hook
// whose lock nobody holds is therefore a leftover, and is removed.
var LockDir = "/run/xdpcap"

// ErrHookBusy is returned when another running xdpcap captures on the hook.
var ErrHookBusy = errors.New("hook in use by another xdpcap")

// hookLock is a held lock on a hook.
type hookLock struct {
	f    *os.File
	path string
}

// lockWait is how long a capture or Clear waits for a hook lock another
// process holds: l4drop run holds it for a moment when it checks for
// filters a killed capture left (ClearStale).
const lockWait = 200 * time.Millisecond

// lockHook locks hook, waiting up to wait for a lock another process holds.
func lockHook(hook *ebpf.Map, wait time.Duration) (*hookLock, error) {
	info, err := hook.Info()
	if err != nil {
		return nil, fmt.Errorf("hook info: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return nil, errors.New("hook info: kernel gives no map ID")
	}
	if err := os.MkdirAll(LockDir, 0o755); err != nil {
		return nil, fmt.Errorf("lock directory: %w", err)
	}
	path := filepath.Join(LockDir, fmt.Sprintf("hook-%d.lock", id))
	// The holder removes the file when it lets go, so a locker may end up
	// holding a file no longer at path; it then tries again.
	deadline := time.Now().Add(wait)
	for changes := 0; changes < 10; {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("lock hook: %w", err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			owner, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) && time.Now().Before(deadline) {
				time.Sleep(wait / 10)
				continue
			}
			if errors.Is(err, unix.EWOULDBLOCK) {
				if pid := strings.TrimSpace(string(owner)); pid != "" {
					return nil, fmt.Errorf("%w (pid %s)", ErrHookBusy, pid)
				}
				return nil, ErrHookBusy
			}
			return nil, fmt.Errorf("lock hook: %w", err)
		}
		var held, atPath unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) != nil || unix.Stat(path, &atPath) != nil || held.Ino != atPath.Ino || held.Dev != atPath.Dev {
			f.Close()
			changes++
			continue
		}
		// Who holds it, for the message above; the lock itself is the flock.
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(fmt.Sprintf("%d\n", os.Getpid())), 0)
		return &hookLock{f: f, path: path}, nil
	}
	return nil, fmt.Errorf("lock hook: %s keeps changing", path)
}

func (l *hookLock) unlock() {
	if l == nil || l.f == nil {
		return
	}
	// Removed while still locked: whoever opened it meanwhile notices and
	// tries again with a new file.
	_ = os.Remove(l.path)
	l.f.Close()
	l.f = nil
}

// slotProgram returns the ID and name of the program in hook[slot]; id 0
// means the slot is empty.
func slotProgram(hook *ebpf.Map, slot uint32) (id ebpf.ProgramID, name string, err error) {
	var v uint32
	if err := hook.Lookup(slot, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, "", nil
		}
		return 0, "", fmt.Errorf("look up slot %d: %w", slot, err)
	}
	id = ebpf.ProgramID(v)
	prog, err := ebpf.NewProgramFromID(id)
	if err != nil {
		// Gone between the lookup and now.
		return id, "", nil
	}
	defer prog.Close()
	info, err := prog.Info()
	if err != nil {
		return id, "", fmt.Errorf("program %d in slot %d: %w", id, slot, err)
	}
	return id, info.Name, nil
}

// clearStale removes every xdpcap filter from hook, whose lock the caller
// holds, and returns how many it removed. Other programs are left alone.
func clearStale(hook *ebpf.Map) (int, error) {
	n := 0
	// The slots after the entry's are the program's own, whatever their
	// names.
	for slot := range min(hook.MaxEntries(), EntrySlot+1) {
		id, name, err := slotProgram(hook, slot)
		if err != nil {
			return n, err
		}
		if id == 0 || !strings.HasPrefix(name, progNamePrefix) {
			continue
		}
		if err := hook.Delete(slot); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return n, fmt.Errorf("remove stale filter from slot %d: %w", slot, err)
		}
		n++
	}
	return n, nil
}

// Clear removes the filters that captures killed without cleaning up (kill
// -9, a crash) left in hook, and returns how many it removed. It fails with
// ErrHookBusy while a capture runs on the hook. Starting a capture clears
// the hook the same way.
func Clear(hook *ebpf.Map) (int, error) {
	return clearHook(hook, lockWait)
}

// ClearStale is Clear for a process that watches the hook, such as l4drop
// run: with no filter in the hook it takes no lock, it does not wait for
// the lock, and while a capture runs it removes nothing and returns 0, not
// ErrHookBusy.
func ClearStale(hook *ebpf.Map) (int, error) {
	if busy, err := Capturing(hook); err != nil || !busy {
		return 0, err
	}
	n, err := clearHook(hook, 0)
	if errors.Is(err, ErrHookBusy) {
		return 0, nil
	}
	return n, err
}

func clearHook(hook *ebpf.Map, wait time.Duration) (int, error) {
	l, err := lockHook(hook, wait)
	if err != nil {
		return 0, err
	}
	defer l.unlock()
	n, err := clearStale(hook)
	if err != nil {
		return n, err
	}
	return n, quieten(hook)
}
