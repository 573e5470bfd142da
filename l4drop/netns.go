package l4drop

import "github.com/l4drop/l4drop/internal/netns"

// onNetns runs fn on an OS thread inside the named network namespace (as
// `ip netns` names them), or directly when name is empty.
func onNetns(name string, fn func() error) error {
	if name == "" {
		return fn()
	}
	ns, err := netns.Open(name)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(fn)
}
