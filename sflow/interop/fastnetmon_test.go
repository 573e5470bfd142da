package interop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l4drop/l4drop/internal/fixture"
	"github.com/l4drop/l4drop/sflow"
)

// fastnetmon is FastNetMon Community as an sFlow collector on the
// loopback, watching the lab's network. Bans run notify.sh, which writes
// its arguments and the attack details to notify.log.
type fastnetmon struct {
	port   int
	dir    string
	notify string
	log    string
}

// fastnetmonConf sets everything that would reach beyond the test off
// (usage reports, gRPC API, Prometheus, BGP, databases) and a pps threshold
// a test flood crosses.
const fastnetmonConf = `logging_level = info
logging_local_syslog_logging = off
logging_remote_syslog_logging = off
disable_usage_report = on
enable_ban = on
enable_ban_ipv6 = on
process_incoming_traffic = on
process_outgoing_traffic = on
ban_details_records_count = 20
ban_time = 1900
unban_only_if_attack_finished = on
networks_list_path = %[1]s/networks_list
white_list_path = %[1]s/whitelist
check_period = 1
enable_connection_tracking = on
ban_for_pps = on
ban_for_bandwidth = off
ban_for_flows = off
threshold_pps = %[3]d
average_calculation_time = 5
speed_calculation_delay = 1
mirror_afpacket = off
mirror_afxdp = off
pcap = off
netflow = off
sflow = on
sflow_port = %[2]d
sflow_host = 127.0.0.1
notify_script_path = %[1]s/notify.sh
collect_attack_pcap_dumps = off
redis_enabled = off
mongodb_enabled = off
exabgp = off
gobgp = off
influxdb = off
graphite = off
clickhouse_metrics = off
enable_api = off
prometheus = off
pid_path = %[1]s/fastnetmon.pid
cli_stats_file_path = %[1]s/fastnetmon.dat
`

// attackPPS is the threshold FastNetMon bans at in these tests.
const attackPPS = 2000

func startFastnetmon(tb testing.TB, network string) *fastnetmon {
	tb.Helper()
	bin := requireTool(tb, "fastnetmon", "fastnetmon")
	dir := tb.TempDir()
	f := &fastnetmon{port: freeUDPPort(tb), dir: dir, notify: filepath.Join(dir, "notify.log"), log: filepath.Join(dir, "fastnetmon.log")}
	files := map[string]string{
		"networks_list":   network + "\n",
		"whitelist":       "",
		"notify.sh":       fmt.Sprintf("#!/bin/sh\n{ echo \"notify: $*\"; cat; echo --; } >> %s\n", f.notify),
		"fastnetmon.conf": fmt.Sprintf(fastnetmonConf, dir, f.port, attackPPS),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	cmd := exec.Command(bin, "--configuration_file", filepath.Join(dir, "fastnetmon.conf"),
		"--log_file", f.log, "--disable_pid_logic")
	if err := startGroup(tb, cmd, syscall.SIGKILL); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			log, _ := os.ReadFile(f.log)
			stats, _ := os.ReadFile(filepath.Join(dir, "fastnetmon.dat"))
			tb.Logf("fastnetmon log:\n%s\nstats:\n%s", log, stats)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		log, _ := os.ReadFile(f.log)
		if strings.Contains(string(log), fmt.Sprintf("127.0.0.1:%d", f.port)) {
			break
		}
		if time.Now().After(deadline) {
			tb.Fatalf("fastnetmon does not listen on port %d after 20 s; log:\n%s", f.port, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return f
}

func (f *fastnetmon) collector() string { return fmt.Sprintf("127.0.0.1:%d", f.port) }

// banned reports whether FastNetMon has banned victim, with the
// notification it sent.
func (f *fastnetmon) banned(victim string) (string, bool) {
	b, _ := os.ReadFile(f.notify)
	for block := range strings.SplitSeq(string(b), "\n--\n") {
		if strings.HasPrefix(block, "notify: "+victim+" ") && strings.Contains(block, " ban") {
			return block, true
		}
	}
	return string(b), false
}

// TestFastNetMonSynthetic: FastNetMon detects a flood from the samples of
// it alone: 1-in-100 samples of 10,000 packets per second to the lab's
// server for up to 30 s.
func TestFastNetMonSynthetic(t *testing.T) {
	f := startFastnetmon(t, fixture.ServerIPv4+"/32")
	e := newExporter(t, sflow.Config{Collectors: []string{f.collector()}})
	runExporter(t, e)
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; ; i++ {
		if note, ok := f.banned(fixture.ServerIPv4); ok {
			t.Logf("FastNetMon banned the victim after %d samples:\n%s", i, note)
			break
		}
		if time.Now().After(deadline) {
			note, _ := f.banned(fixture.ServerIPv4)
			t.Fatalf("no ban of %s after 30 s of a 10,000 pps flood; notifications:\n%s", fixture.ServerIPv4, note)
		}
		fr := udpFrame(droppedPort, i)
		e.Sample(sflow.Packet{Frame: fr, Length: len(fr), Dropped: true})
		time.Sleep(10 * time.Millisecond) // 100 samples/s at 1 in 100
	}
}

// TestL4DropFastNetMon: during a flood L4Drop drops on a veth, FastNetMon
// fed with L4Drop's samples bans the victim (its notify script names it).
func TestL4DropFastNetMon(t *testing.T) {
	fixture.RequireRoot(t)
	f := startFastnetmon(t, fixture.ServerIPv4+"/32")
	lab, h, rd, link, agent := l4dropLab(t)
	e := newExporter(t, sflow.Config{
		Collectors: []string{f.collector()}, Agent: agent, IfIndex: uint32(lab.ServerIndex),
		Counters: sflowCounters(h, link), Sampler: sflowSampler(h),
	})
	runExporter(t, e)
	pumped := make(chan error, 1)
	go func() { pumped <- pumpSamples(rd, e) }()
	defer func() {
		rd.Close()
		if err := <-pumped; err != nil {
			t.Error(err)
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for sent := 0; ; sent += 10_000 {
		if note, ok := f.banned(fixture.ServerIPv4); ok {
			counts, _ := h.ReadCounters()
			t.Logf("FastNetMon banned the victim after %d packets (L4Drop dropped %d), exporter %+v:\n%s",
				sent, counts[0].Packets, e.Stats(), note)
			return
		}
		if time.Now().After(deadline) {
			note, _ := f.banned(fixture.ServerIPv4)
			t.Fatalf("no ban of %s after 30 s of flood (%d packets); exporter %+v; notifications:\n%s",
				fixture.ServerIPv4, sent, e.Stats(), note)
		}
		sendPaced(t, lab, droppedPort, 10_000)
	}
}
