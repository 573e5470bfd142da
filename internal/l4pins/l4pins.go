// Package l4pins is where L4Drop pins a loaded rule set on the BPF file
// system, for the l4drop package, which loads and unloads it, and for the
// lab, which removes what its interfaces were left with.
package l4pins

import (
	"fmt"
	"path/filepath"

	"github.com/cilium/ebpf/link"

	"github.com/l4drop/l4drop/internal/bpffs"
)

// Link is the name of the pinned BPF link that attaches the rule set.
const Link = "link"

// Root returns the directory that holds the pin directories of every
// interface, under the bpffs root (bpffs.DefaultRoot if "").
func Root(root string) string {
	if root == "" {
		root = bpffs.DefaultRoot
	}
	return filepath.Join(root, "l4drop")
}

// Dir returns the pin directory of a rule set loaded on an interface (in
// a namespace, if ns is not ""), in Root(root).
func Dir(root, iface, ns string) string {
	name := iface
	if ns != "" {
		name = iface + "@" + ns
	}
	return filepath.Join(Root(root), name)
}

// Detach unpins the BPF link pinned in dir and detaches it: the program
// would stay attached while any other reference to the link lives (a
// running reader may hold one). The link's interface may be gone.
func Detach(dir string) error {
	l, err := link.LoadPinnedLink(filepath.Join(dir, Link), nil)
	if err != nil {
		return fmt.Errorf("open link: %w", err)
	}
	defer l.Close()
	if err := l.Unpin(); err != nil {
		return fmt.Errorf("unpin link: %w", err)
	}
	if d, ok := l.(interface{ Detach() error }); ok {
		_ = d.Detach() // fails where the interface is gone: nothing to detach
	}
	return nil
}
