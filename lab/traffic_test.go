package lab

import (
	"bytes"
	"testing"

	"github.com/l4drop/l4drop/internal/fixture"
)

func TestParseTemplatesAndFrames(t *testing.T) {
	ts, err := ParseTemplates([]string{"udp,port=9,weight=2", "syn,port=80"})
	if err != nil {
		t.Fatal(err)
	}
	frames := TemplateFrames(ts)
	if len(ts) != 2 || len(frames) != 3 {
		t.Fatalf("%d templates, %d frames; want 2, 3 (weights 2 and 1)", len(ts), len(frames))
	}
	for i, want := range [][]byte{ts[0].Frame, ts[0].Frame, ts[1].Frame} {
		if !bytes.Equal(frames[i], want) {
			t.Errorf("frame %d is not its template's", i)
		}
	}
	for _, bad := range [][]string{{"icmp"}, {"udp,port=9", "udp,port=x"}} {
		if ts, err := ParseTemplates(bad); err == nil {
			t.Errorf("ParseTemplates(%q) = %d templates, no error", bad, len(ts))
		}
	}
}

// TestSendInLab sends fixed frames into a lab with a packet socket and
// finds them at the server's interface.
func TestSendInLab(t *testing.T) {
	fixture.RequireRoot(t)
	ts, err := ParseTemplates([]string{"udp,port=9"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := Traffic{Frames: TemplateFrames(ts)}.SendInLab(RunOptions{Count: 200, Rate: 20000})
	if err != nil {
		t.Fatal(err)
	}
	if res.Result.Sent != 200 || res.ServerIf == "" {
		t.Fatalf("sent %d into %q, want 200 into the server's interface", res.Result.Sent, res.ServerIf)
	}
	// The server may also see a stray IPv6 neighbour message.
	if got := res.Server.RxPackets + res.Server.RxDropped; got < 200 || got > 210 {
		t.Errorf("server interface saw %d frames, want 200", got)
	}
}
