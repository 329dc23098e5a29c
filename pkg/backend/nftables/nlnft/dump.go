package nlnft

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// Reading a large interval set. The kernel keeps a one-field interval set
// in a red-black tree, whose dump starts its walk from the first element
// again for every message it fills, skipping what earlier messages held:
// the cost of a read grows with the square of the elements divided by
// the elements per message. The library reads with buffers of the size
// of each message, which leaves the kernel's messages at about 4 KiB
// (100 elements); receiving into 64 KiB buffers lets it fill 32 KiB ones
// (the most it makes), eight times fewer walks: a set of 100,000
// prefixes (200,000 elements) reads in about a second instead of
// seven (docs/performance.md, "Address sets").

// dumpBuffer is the receive buffer of an interval set's dump: above the
// kernel's largest dump message (32 KiB, netlink_recvmsg's cap).
const dumpBuffer = 64 << 10

// intervalSetElements reads the elements of interval set name of vmfw's
// table of family f, in the calling thread's network namespace.
func intervalSetElements(f layout.Family, name string) ([]nftables.SetElement, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{MessageBufferSize: dumpBuffer})
	if err != nil {
		return nil, fmt.Errorf("opening nf_tables netlink: %w", err)
	}
	defer c.Close()
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, layout.TableName)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, name)
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM), Flags: netlink.Request | netlink.Dump},
		Data:   append([]byte{byte(Family(f)), unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	msgs, err := c.Execute(req)
	if err != nil {
		return nil, err
	}
	var out []nftables.SetElement
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
				continue
			}
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(elem *netlink.AttributeDecoder) error {
						var e nftables.SetElement
						for elem.Next() {
							switch elem.Type() {
							case unix.NFTA_SET_ELEM_KEY:
								elem.Nested(func(key *netlink.AttributeDecoder) error {
									for key.Next() {
										if key.Type() == unix.NFTA_DATA_VALUE {
											e.Key = key.Bytes()
										}
									}
									return nil
								})
							case unix.NFTA_SET_ELEM_FLAGS:
								e.IntervalEnd = elem.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
							}
						}
						out = append(out, e)
						return nil
					})
				}
				return nil
			})
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding set %s's elements: %w", name, err)
		}
	}
	return out, nil
}
