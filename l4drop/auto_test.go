package l4drop_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/l4drop/l4drop/cbpf"
	"github.com/l4drop/l4drop/l4drop"
)

func TestAutoRuleBinary(t *testing.T) {
	rules := []l4drop.AutoRule{
		{State: l4drop.AutoDrop, Family: 4, Proto: 17, Conds: []l4drop.AutoCond{
			{Base: l4drop.BaseIP, Size: 1, Off: 8, Mask: 0xff, Min: 64, Max: 64},
			{Base: l4drop.BaseL4, Size: 2, Off: 2, Mask: 0xffff, Min: 53, Max: 53},
			{Base: l4drop.BasePayload, Size: 2, Off: 2, Mask: 0x8000, Min: 0, Max: 0},
			{Base: l4drop.BaseLen, Min: 60, Max: 90},
		}},
		{State: l4drop.AutoMonitor, Family: 6, Proto: 6, Conds: []l4drop.AutoCond{
			{Base: l4drop.BaseL4, Size: 1, Off: 13, Mask: 0x12, Min: 2, Max: 2},
			{Base: l4drop.BasePayload, Size: 4, Off: 0, Mask: 0xffffffff, Min: 0xdeadbeef, Max: 0xdeadbeef},
		}},
		{State: l4drop.AutoDrop, Family: 4},
	}
	for _, r := range rules {
		b, err := r.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var got l4drop.AutoRule
		if err := got.UnmarshalBinary(b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) && !(len(r.Conds) == 0 && got.Conds == nil) {
			t.Errorf("round trip: got %+v, want %+v", got, r)
		}
		// The expression an operator pastes into a rules file compiles.
		lt := cbpf.LinkTypeIPv4
		if r.Family == 6 {
			lt = cbpf.LinkTypeIPv6
		}
		if _, err := cbpf.Compile(r.Expr(), lt, 0); err != nil {
			t.Errorf("%s: %v", r.Expr(), err)
		}
	}
}

func TestAutoRuleInvalid(t *testing.T) {
	bad := []l4drop.AutoRule{
		{State: 7, Family: 4},
		{State: l4drop.AutoDrop, Family: 5},
		{State: l4drop.AutoDrop, Family: 4, Conds: make([]l4drop.AutoCond, l4drop.AutoConds+1)},
		{State: l4drop.AutoDrop, Family: 4, Conds: []l4drop.AutoCond{{Base: l4drop.BaseIP, Size: 3}}},
		{State: l4drop.AutoDrop, Family: 4, Proto: 1, Conds: []l4drop.AutoCond{{Base: l4drop.BasePayload, Size: 1}}},
		{State: l4drop.AutoDrop, Family: 4, Conds: []l4drop.AutoCond{{Base: l4drop.BaseIP, Size: 1, Min: 2, Max: 1}}},
	}
	for _, r := range bad {
		if _, err := r.MarshalBinary(); !errors.Is(err, l4drop.ErrAutoRule) {
			t.Errorf("%+v: err %v, want ErrAutoRule", r, err)
		}
	}
}
