package l4drop

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// testHookAfterAttach, when set (by tests), runs after the swap and before
// the pins are committed; an error makes Load roll back.
var testHookAfterAttach func() error

type pin struct {
	name string
	obj  interface{ Pin(string) error }
}

// pinTx replaces a set of pins all or nothing: the new objects are pinned
// at NAME_new, the objects pinned at NAME are held open, commit renames
// NAME_new over NAME, and rollback puts the held objects back.
type pinTx struct {
	dir     string
	names   []string
	old     map[string]interface{ Pin(string) error } // what NAME held
	oldProg *ebpf.Program
	renamed []string
}

func stagePins(dir string, pins []pin) (*pinTx, error) {
	tx := &pinTx{dir: dir, old: map[string]interface{ Pin(string) error }{}}
	for _, p := range pins {
		path := filepath.Join(dir, p.name)
		if _, err := os.Stat(path); err == nil {
			var held interface{ Pin(string) error }
			if p.name == PinProg {
				prog, err := ebpf.LoadPinnedProgram(path, nil)
				if err != nil {
					tx.close()
					return nil, fmt.Errorf("open the loaded %s: %w", p.name, err)
				}
				tx.oldProg, held = prog, prog
			} else {
				m, err := ebpf.LoadPinnedMap(path, nil)
				if err != nil {
					tx.close()
					return nil, fmt.Errorf("open the loaded %s: %w", p.name, err)
				}
				held = m
			}
			tx.old[p.name] = held
		}
		staged := path + "_new"
		if err := unpin(staged); err != nil {
			tx.close()
			return nil, fmt.Errorf("pin %s: %w", p.name, err)
		}
		if err := p.obj.Pin(staged); err != nil {
			tx.close()
			return nil, fmt.Errorf("pin %s: %w", p.name, err)
		}
		tx.names = append(tx.names, p.name)
	}
	return tx, nil
}

// commit renames every staged pin over the live one; each rename is atomic.
func (tx *pinTx) commit() error {
	for _, n := range tx.names {
		path := filepath.Join(tx.dir, n)
		if err := os.Rename(path+"_new", path); err != nil {
			return fmt.Errorf("pin %s: %w", n, err)
		}
		tx.renamed = append(tx.renamed, n)
	}
	tx.names = nil
	return nil
}

// restoreProgram makes l run the program that ran before the load: before,
// what the link ran (the quiet twin, or the loud program during a
// capture), or else the pinned program.
func (tx *pinTx) restoreProgram(l link.Link, before *ebpf.Program) error {
	if before == nil {
		before = tx.oldProg
	}
	if before == nil {
		return errors.New("roll back: the program loaded before is not pinned")
	}
	if err := l.Update(before); err != nil {
		return fmt.Errorf("roll back to the rule set loaded before: %w", err)
	}
	return nil
}

// rollback puts back the pins commit replaced.
func (tx *pinTx) rollback() error {
	var errs []error
	for _, n := range tx.renamed {
		path := filepath.Join(tx.dir, n)
		if err := unpin(path); err != nil {
			errs = append(errs, fmt.Errorf("roll back %s: %w", n, err))
			continue
		}
		if old := tx.old[n]; old != nil {
			if err := repin(old, path); err != nil {
				errs = append(errs, fmt.Errorf("roll back %s: %w", n, err))
			}
		}
	}
	tx.renamed = nil
	return errors.Join(errs...)
}

// close drops staged pins not committed and the held objects.
func (tx *pinTx) close() {
	for _, n := range tx.names {
		unpin(filepath.Join(tx.dir, n+"_new"))
	}
	for _, o := range tx.old {
		if c, ok := o.(interface{ Close() error }); ok {
			c.Close()
		}
	}
}

// repin pins obj at path again. An object opened from a pin remembers its
// path, and Pin to the same path does nothing: pin a duplicate of its
// descriptor, which remembers none.
func repin(obj interface{ Pin(string) error }, path string) error {
	var fd int
	switch o := obj.(type) {
	case *ebpf.Map:
		fd = o.FD()
	case *ebpf.Program:
		fd = o.FD()
	default:
		return fmt.Errorf("repin %T", obj)
	}
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("dup: %w", err)
	}
	var fresh interface {
		Pin(string) error
		Close() error
	}
	if _, ok := obj.(*ebpf.Program); ok {
		fresh, err = ebpf.NewProgramFromFD(dup)
	} else {
		fresh, err = ebpf.NewMapFromFD(dup)
	}
	if err != nil {
		unix.Close(dup)
		return err
	}
	defer fresh.Close()
	return fresh.Pin(path)
}

// unpin removes a pin; a missing one is no error. (os.Remove would try
// rmdir after unlink, which bpffs answers with EPERM.)
func unpin(path string) error {
	if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}
