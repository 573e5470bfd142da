package demo

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/l4drop/l4drop/lab"
)

// autoAttack is the auto phase's attack: queries for random names of 8
// letters under the zone users query, from random sources.
const autoAttack = "dns,name=*8.example.org,ipid=rand,randsrc"

// autoPhase replaces the hand-written rules with l4drop run --auto, floods
// the server again with an attack no rule knows, and shows the daemon
// deploy a rule of its own, the users still served, and the rule expire.
func (d *demo) autoPhase(ctx context.Context) (err error) {
	d.step(8, "Auto-mitigation: no rule written by hand")
	d.say("  The hand-written rules go; the daemon runs with --auto: it learns what the traffic looks like from")
	d.say("  its samples, finds an attack in them, and deploys a rule of its own into the running program")
	d.say("  (a map update, no clang), after the file's rules; the rule goes once the attack stops.")
	if _, err := d.cmd("l4drop", append([]string{"unload"}, d.nsFlags()...)...); err != nil {
		return err
	}
	rules := "sample_rate: 8\nrules:\n  - name: our-monitoring\n    expr: \"src host 198.18.0.53\"\n    action: pass\n"
	if err := os.WriteFile(filepath.Join(d.dir, "auto.yaml"), []byte(rules), 0o644); err != nil {
		return err
	}
	expire := 3 * time.Second
	args := append([]string{"run", "auto.yaml"}, d.nsFlags()...)
	args = append(args, "--auto", "--auto-threshold", "20000", "--auto-expire", expire.String(), "--metrics", "")
	d.say("  $ l4drop %s &", strings.Join(args, " "))
	run := exec.Command(d.bins["l4drop"], args...)
	run.Dir = d.dir
	var log lab.Output
	run.Stdout, run.Stderr = &log, &log
	if err := run.Start(); err != nil {
		return err
	}
	defer func() {
		run.Process.Signal(os.Interrupt)
		if werr := run.Wait(); werr != nil && err == nil {
			err = fmt.Errorf("l4drop run: %w: %s", werr, log.String())
		}
	}()
	for deadline := time.Now().Add(60 * time.Second); ; {
		if _, serr := d.status(); serr == nil {
			break
		}
		if time.Now().After(deadline) || run.ProcessState != nil || ctx.Err() != nil {
			return fmt.Errorf("l4drop run did not load: %s", log.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	learn, flood := 5*time.Second, 5*time.Second
	if d.short {
		learn, flood = 4500*time.Millisecond, 3*time.Second
	}
	d.say("  Legitimate traffic alone while the daemon learns it:")
	d.watch(ctx, learn, nil, d.status)

	t, err := lab.ParseTemplate(autoAttack)
	if err != nil {
		return err
	}
	gen, err := lab.NewGenerator(d.l.Inet, d.l.InetIf, []lab.Template{t}, 4)
	if err != nil {
		return err
	}
	defer gen.Close()
	d.say("  A new attack, %.0f packets a second: queries for random 8-letter names under example.org,", d.times.floodRate)
	d.say("  the zone the users query, to the same port. Nobody writes a rule:")
	start := time.Now()
	hit := d.watch(ctx, flood, gen, d.status)
	end := time.Now()
	if ctx.Err() != nil {
		return nil
	}
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "auto: deploy") {
			d.say("    %s", trimLog(line))
		}
	}
	st, err := d.status()
	if err != nil {
		return err
	}
	var deployed time.Time
	var dropped uint64
	for _, a := range st.AutoRules {
		if deployed.IsZero() || a.Since.Before(deployed) {
			deployed = a.Since
		}
		dropped += a.Packets
	}
	d.claim(!deployed.IsZero() && deployed.Sub(start) < 2*time.Second,
		"a rule appeared by itself %.2f s after the attack began; it dropped %d packets", deployed.Sub(start).Seconds(), dropped)
	d.claim(hit.udpIn >= hit.legitSent*d.legitShare()/100 && hit.legitSent > 0,
		"%d of the %d legitimate queries sent during the attack reached the server's DNS socket layer", min(hit.udpIn, hit.legitSent), hit.legitSent)

	d.say("  The attack is over; the rule stays %s after its traffic falls below the threshold:", expire)
	gone := time.Time{}
	for time.Since(end) < expire+5*time.Second && ctx.Err() == nil {
		d.watch(ctx, time.Second, nil, d.status)
		if st, err := d.status(); err == nil && len(st.AutoRules) == 0 {
			gone = time.Now()
			break
		}
	}
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "auto: remove") {
			d.say("    %s", trimLog(line))
		}
	}
	d.claim(!gone.IsZero(), "the rule expired by itself, %.1f s after the attack's end", gone.Sub(end).Seconds())
	if run.ProcessState != nil {
		return errors.New("l4drop run exited early: " + log.String())
	}
	return nil
}

// trimLog keeps a daemon log line short enough to read.
func trimLog(line string) string {
	if i := strings.Index(line, "msg="); i >= 0 {
		line = line[i:]
	}
	if len(line) > 220 {
		line = line[:217] + "..."
	}
	return line
}
