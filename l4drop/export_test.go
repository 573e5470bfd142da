package l4drop

// SetTestHookAfterAttach makes Load call f after the swap, before the pins
// are committed; an error from f makes Load roll back. It returns a
// function that removes the hook.
func SetTestHookAfterAttach(f func() error) func() {
	testHookAfterAttach = f
	return func() { testHookAfterAttach = nil }
}
