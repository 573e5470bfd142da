// Package interop holds the tests that run real sFlow collectors (pmacct's
// sfacctd, tshark, FastNetMon) on the samples package sflow exports,
// synthetic ones and L4Drop's own from real traffic on a veth pair.
package interop
