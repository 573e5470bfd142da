// Package splitmix is SplitMix64's output function, the one 64-bit mixer
// the project uses where it needs well-spread bits from a counter or a
// seed: the lab's generator seeds and the DNS tables' bucket hash.
package splitmix

// Mix returns x advanced by the golden-ratio increment and mixed: equal
// inputs give equal outputs, and a one-bit change in x changes about half
// the bits of the result.
func Mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}
