package layout

import (
	"fmt"
	"math/bits"

	"github.com/vmfw/vmfw/pkg/config"
)

// DefaultMask is the packet-mark bits the nftables backend uses unless
// vmfw.toml says otherwise: 0x20c6 (bits 1, 2, 6, 7 and 13). They are
// clear of the bits other software on a hypervisor sets or tests
// (docs/nftables.md, "The mark"): kube-proxy 0x4000 and 0x8000, Calico
// 0xffff0000, Cilium 0x0f00 and the upper half, Tailscale 0xff0000,
// Istio 0x539 (1337), Docker's swarm 0x100, and the iptables backend's
// 0x1000, so that both backends can be installed during a switch.
const DefaultMask = config.DefaultMarkMask

// markBits is how many bits the backend needs.
const markBits = 5

// Marks are the bits of the mask and what each one means on a packet.
// vmfw clears all of them where a packet enters its chains and sets them
// as it decides (docs/nftables.md, "The mark").
type Marks struct {
	// Mask is every bit vmfw owns.
	Mask uint32
	// Est: connection tracking saw the packet as established or related
	// (set by the inet table, read by the bridge table, which has no ct).
	Est uint32
	// Inv: invalid, or a TCP segment conntrack sees as new that does not
	// open a connection (docs/design.md, "midstream").
	Inv uint32
	// Acc: vmfw lets the packet through so far: the sender's out rules
	// allowed it, or an in rule saw it. The hook rule in a foreign
	// FORWARD or OUTPUT chain accepts what carries it.
	Acc uint32
	// Seen: the receiver's in rules decided the packet on the bridge's
	// forward path, so the postrouting check leaves it alone.
	Seen uint32
	// Rej: a rule decided reject; the inet table's forward or input
	// chain sends the reset or unreachable, and the bridge postrouting
	// guard drops whatever still carries it.
	Rej uint32
}

// NewMarks assigns the meanings to the lowest bits of mask, which must
// have at least five.
func NewMarks(mask uint32) (Marks, error) {
	if bits.OnesCount32(mask) < markBits {
		return Marks{}, fmt.Errorf("mark 0x%x: the nftables backend needs a mask of at least %d bits", mask, markBits)
	}
	var list []uint32
	for m := mask; len(list) < markBits; m &= m - 1 {
		list = append(list, m&-m)
	}
	return Marks{Mask: mask, Est: list[0], Inv: list[1], Acc: list[2], Seen: list[3], Rej: list[4]}, nil
}
