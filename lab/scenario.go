package lab

import (
	"errors"
	"fmt"
	"strings"
)

// Scenario is an attack and the legitimate traffic it hides in: both go to
// the same address, protocol and port, so a port rule would hurt users.
type Scenario struct {
	// Name names the scenario, with "-v6" for its IPv6 variant.
	Name string
	// About says what the attack is.
	About string
	// Attack and Legit are template specifications (see TemplateHelp);
	// Legit is a mix of what real clients send.
	Attack, Legit []string
}

// ErrScenario is returned for unknown scenarios.
var ErrScenario = errors.New("unknown scenario")

// scenarios are the IPv4 variants; an IPv6 variant adds v6 to every
// template (and so loses the IPv4 identification).
var scenarios = []Scenario{{
	Name:  "dns-random-subdomain",
	About: "queries for random labels of 8 to 16 letters under the zone real users query too, from resolvers' TTLs with EDNS",
	Attack: func() []string {
		var s []string
		for n := 8; n <= 16; n++ {
			s = append(s, fmt.Sprintf("dns,name=*%d.example.com,qtype=1,edns,ttl=57,ipid=rand,randsrc", n))
		}
		return s
	}(),
	Legit: []string{
		"dns,name=www.example.com,edns,ttl=57,ipid=rand,randsrc,weight=30",
		"dns,name=www.example.com,qtype=28,edns,ttl=64,ipid=rand,randsrc,weight=20",
		"dns,name=mail.example.com,qtype=15,flags=0,edns,ttl=118,ipid=rand,randsrc,weight=10",
		"dns,name=api.example.com,ttl=64,ipid=rand,randsrc,weight=15",
		"dns,name=static.example.com,edns,ttl=57,ipid=rand,randsrc,weight=10",
		"dns,name=example.com,qtype=2,flags=0,ttl=250,ipid=rand,randsrc,weight=5",
		"dns,name=login.example.com,qtype=28,edns,ttl=120,ipid=rand,randsrc,weight=10",
	},
}, {
	Name:  "dns-reflection",
	About: "large ANY answers from open resolvers (source port 53) to the server's random ports, where its own lookups' answers arrive",
	Attack: []string{
		"dns,response,name=anyabuse.example.net,qtype=255,answers=20,edns,len=1200,ttl=49,ipid=rand,randsrc",
		"dns,response,name=anyabuse.example.net,qtype=255,answers=20,edns,len=1200,ttl=113,ipid=rand,randsrc",
	},
	Legit: []string{
		"dns,response,name=www.example.org,answers=2,ttl=57,ipid=rand,randsrc,weight=30",
		"dns,response,name=cdn.example.net,qtype=28,answers=1,edns,ttl=49,ipid=rand,randsrc,weight=20",
		"dns,response,name=mx.example.org,qtype=15,answers=3,edns,ttl=113,ipid=rand,randsrc,weight=10",
		"dns,response,name=api.example.net,answers=4,edns,ttl=64,ipid=rand,randsrc,weight=20",
	},
}, {
	Name:  "ntp-reflection",
	About: "mode 7 monlist replies from NTP servers (source port 123) to random ports, where the server's own time replies arrive",
	Attack: []string{
		"ntp,monlist,ttl=52,ipid=rand,randsrc",
		"ntp,monlist,ttl=116,ipid=rand,randsrc",
	},
	Legit: []string{
		"ntp,response,ttl=52,ipid=rand,randsrc,weight=60",
		"ntp,response,ttl=116,ipid=rand,randsrc,weight=40",
	},
}, {
	Name:  "udp-payload",
	About: "a flood to a game server's port with a tool's fixed 4-byte payload header and length, random after it",
	Attack: []string{
		"udp,port=27015,payload=deadbeef,size=32,randpayload,ttl=64,ipid=rand,randsrc",
	},
	Legit: []string{
		"udp,port=27015,payload=ffffffff54536f7572636520456e67696e6520517565727900,size=25,ttl=64,ipid=rand,randsrc,weight=10",
		"udp,port=27015,size=32,randpayload,ttl=64,ipid=rand,randsrc,weight=30",
		"udp,port=27015,size=48,randpayload,ttl=118,ipid=rand,randsrc,weight=30",
		"udp,port=27015,size=120,randpayload,ttl=57,ipid=rand,randsrc,weight=30",
	},
}, {
	Name:  "syn-flood",
	About: "SYNs from a flood tool: no options, a fixed window and IP identification, to the port users connect to",
	Attack: []string{
		"syn,port=443,tcpopts=none,window=1024,ipid=54321,ttl=64,randsrc",
	},
	Legit: []string{
		"syn,port=443,tcpopts=linux,window=64240,ttl=64,ipid=rand,randsrc,weight=40",
		"syn,port=443,tcpopts=linux,window=65535,ttl=57,ipid=rand,randsrc,weight=20",
		"syn,port=443,tcpopts=windows,window=64240,ttl=128,ipid=rand,randsrc,weight=30",
		"syn,port=443,tcpopts=windows,window=8192,ttl=117,ipid=rand,randsrc,weight=10",
	},
}}

// Scenarios returns every scenario, IPv4 and IPv6.
func Scenarios() []Scenario {
	var out []Scenario
	for _, s := range scenarios {
		out = append(out, s, s.v6())
	}
	return out
}

// ScenarioNames returns the names Scenario accepts.
func ScenarioNames() []string {
	var out []string
	for _, s := range Scenarios() {
		out = append(out, s.Name)
	}
	return out
}

// LookupScenario returns the scenario called name.
func LookupScenario(name string) (Scenario, error) {
	for _, s := range Scenarios() {
		if s.Name == name {
			return s, nil
		}
	}
	return Scenario{}, fmt.Errorf("%w %q (want one of %s)", ErrScenario, name, strings.Join(ScenarioNames(), ", "))
}

func (s Scenario) v6() Scenario {
	o := Scenario{Name: s.Name + "-v6", About: s.About + ", over IPv6"}
	for _, t := range s.Attack {
		o.Attack = append(o.Attack, t+",v6")
	}
	for _, t := range s.Legit {
		o.Legit = append(o.Legit, t+",v6")
	}
	return o
}

// Templates parses the scenario's templates.
func (s Scenario) Templates() (attack, legit []Template, err error) {
	parse := func(specs []string) ([]Template, error) {
		var ts []Template
		for _, spec := range specs {
			t, err := ParseTemplate(spec)
			if err != nil {
				return nil, fmt.Errorf("scenario %s: %w", s.Name, err)
			}
			ts = append(ts, t)
		}
		return ts, nil
	}
	if attack, err = parse(s.Attack); err != nil {
		return nil, nil, err
	}
	if legit, err = parse(s.Legit); err != nil {
		return nil, nil, err
	}
	return attack, legit, nil
}
