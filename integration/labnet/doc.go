// Package labnet builds throw-away network labs out of Linux network
// namespaces and probes them with real packets. It backs vmfw's integration
// tests and demo, runs as root, and does not depend on package testing:
// everything returns errors.
//
// A Lab models one hypervisor (see docs/design.md): a "hypervisor" namespace with
// a Linux bridge, VM namespaces joined to it by veth pairs whose hypervisor
// end is named like a tap (tap101i0), and external hosts behind an uplink
// port. All names carry a random per-lab id so that parallel labs do not
// collide, only documentation addresses are assigned or probed
// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), and
// nothing ever runs in, or changes, the namespace of the calling process.
// Lab.Close deletes every namespace the lab created.
//
// Probes classify what came back instead of reporting success or failure:
//
//   - TCPConnect: Connected, Refused (RST), Unreachable (ICMP error) or
//     Timeout (dropped);
//   - UDPProbe against ServeUDP, Ping (raw ICMP/ICMPv6 echo): Connected,
//     Unreachable or Timeout;
//   - ProbeAll: many probes at once, so that the blocked ones wait for
//     their timeouts together;
//   - StartStream: a long-lived TCP flow against ServeTCP that counts echoes;
//   - SendFrame and StartCapture: raw Ethernet frames (built by UDP4Frame,
//     RouterAdvertFrame, DHCPDiscoverFrame, ARPRequestFrame and friends) and
//     the check that one arrived, matched by a unique marker (NewMarker,
//     HasMarker).
//
// What the nft command lists of vmfw's sets is read in one place for the
// tests, the bench and the crash harness: NFTSetElements (nft -j),
// NFTListedElements and SortNFTElements (nft's text listing).
//
// A typical test:
//
//	lab, err := labnet.New(labnet.Options{})
//	if err != nil { ... }
//	defer lab.Close()
//	vm1, err := lab.AddVM("tap101i0", "1e:0b:85:27:8d:65", "192.0.2.101/24", "2001:db8::101/64")
//	vm2, err := lab.AddVM("tap102i0", "", "192.0.2.102/24", "2001:db8::102/64")
//	// ... vmfw ifup tap101i0, tap102i0, or lab.AttachToBridge ...
//	stop, err := labnet.ServeTCP(vm2, "192.0.2.102:80")
//	defer stop()
//	res, err := labnet.TCPConnect(ctx, vm1, "192.0.2.102:80", time.Second)
//	// res == labnet.Connected, labnet.Timeout, ...
package labnet
