package xdpcap

import _ "embed"

// Header is xdpcap.h, the C header that lets XDP programs expose a hook
// (XDPCAP_HOOK and xdpcap_exit). Programs built elsewhere can write it out
// next to their sources; `xdpcap -header` prints it.
//
//go:embed xdpcap.h
var Header []byte
