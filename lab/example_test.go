package lab_test

import (
	"context"
	"fmt"
	"log"

	"github.com/l4drop/l4drop/lab"
)

func ExampleParseTemplate() {
	t, err := lab.ParseTemplate("dns,name=*.attack.example,vlan=100,weight=95")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%d-byte frame, weight %d\n", len(t.Frame), t.Weight)
	for _, f := range t.Fields {
		fmt.Printf("random bytes %d-%d\n", f.Off, f.Off+f.Len-1)
	}
	// Output:
	// 91-byte frame, weight 95
	// random bytes 46-47
	// random bytes 59-70
	// random bytes 38-39
}

// A lab with a flood of DNS queries for random names, 95%, and legitimate
// queries, 5%: ten million packets at full speed.
func ExampleGenerator() {
	err := lab.Run(context.Background(), func(ctx context.Context, l *lab.Lab) error {
		var ts []lab.Template
		for _, spec := range []string{"dns,name=*.attack.example,weight=95", "dns,name=www.example.org,weight=5"} {
			t, err := lab.ParseTemplate(spec)
			if err != nil {
				return err
			}
			ts = append(ts, t)
		}
		g, err := lab.NewGenerator(l.Inet, l.InetIf, ts, 1)
		if err != nil {
			return err
		}
		defer g.Close()
		res, err := g.Run(ctx, lab.RunOptions{Count: 10_000_000})
		if err != nil {
			return err
		}
		c, err := l.ServerCounters()
		if err != nil {
			return err
		}
		fmt.Printf("sent %d at %.1f Mpps; the server's stack received %d\n", res.Sent, res.PPS/1e6, c.IPIn)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}
