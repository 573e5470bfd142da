// Package bpffs makes sure a BPF file system is mounted where pins go.
package bpffs

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// DefaultRoot is where Linux distributions mount the BPF file system.
const DefaultRoot = "/sys/fs/bpf"

// ErrNotBPFFS is returned when a path exists but is not on a BPF file system.
var ErrNotBPFFS = errors.New("not on a BPF file system (bpffs)")

// IsMounted reports whether dir is on a BPF file system.
func IsMounted(dir string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return uint32(st.Type) == unix.BPF_FS_MAGIC, nil
}

// Ensure mounts a BPF file system on dir unless one is there already. It
// refuses a directory that is neither a bpffs nor empty.
// `ip netns exec` gives its command a fresh /sys without the host's bpffs, so
// commands that pin call this instead of failing with an obscure EPERM.
func Ensure(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	ok, err := IsMounted(dir)
	if err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	if ok {
		return nil
	}
	// Mounting over a directory that holds something would hide it: only
	// an empty directory becomes a mount point.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("bpffs: %w", err)
	}
	if len(entries) > 0 {
		return fmt.Errorf("bpffs: %s: %w, and not empty: refusing to mount one over it", dir, ErrNotBPFFS)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("bpffs: mount bpf on %s: %w", dir, err)
	}
	return nil
}
