package main

import (
	"fmt"
	"reflect"
	"slices"
	"time"

	iptlayout "github.com/vmfw/vmfw/pkg/backend/iptables/layout"
	nftlayout "github.com/vmfw/vmfw/pkg/backend/nftables/layout"
	"github.com/vmfw/vmfw/pkg/backend/nftables/nlnft"
)

// The agent rows on the nftables backend wait for an edit in the kernel
// as they do on iptables-nft: by the generation, then by what vmfw wrote.
// A group edit rewrites the group's chain in table bridge vmfw, whose
// fingerprints change; a VM edit that adds a group changes no group chain,
// only the tap's element of the gl-out map, which then jumps to the chain
// of its new group list (docs/nftables.md).
//
// The polls keep one netlink socket (nlnft.Kept): the kernel makes the
// release of an nf_tables socket wait for the destruction of the rules a
// commit replaced, an RCU grace period, so a poll on a socket of its own
// after the agent's commit saw the new rules about 10 ms after they were
// in force, a wait of the bench's and not of the rules'.

// nftState is what the rows compare for a state key: the group chain's
// fingerprints, or what the edited VM's tap's element of gl-out holds.
type nftState struct {
	hashes []string
	list   string
}

// readNFT reads what key's kind is about, inside the lab's namespace.
func (a *agentLab) readNFT(cl nlnft.Client, chain iptlayout.Chain, key string) (nftState, error) {
	if kind(key) == "vm" {
		obs, err := cl.Read(false, nftlayout.MapListsOut)
		if err != nil {
			return nftState{}, err
		}
		id, _, _ := a.editedVM()
		var list string
		if t := obs.Tables[nftlayout.Bridge]; t != nil && t.Sets[nftlayout.MapListsOut] != nil {
			list = t.Sets[nftlayout.MapListsOut].Data[string(nftlayout.Ifname(tapName(id)).Bytes)]
		}
		return nftState{list: list}, nil
	}
	// The one chain, not the table: a read of every chain is a request
	// per chain, and an edit committed while it runs is seen only after.
	obs, err := cl.ReadChains(map[nftlayout.Family][]string{nftlayout.Bridge: {string(chain)}})
	if err != nil {
		return nftState{}, err
	}
	var hashes []string
	if t := obs.Tables[nftlayout.Bridge]; t != nil && t.Chains[string(chain)] != nil {
		hashes = t.Chains[string(chain)].Hashes
	}
	return nftState{hashes: hashes}, nil
}

// learnNFT records key's state (group chains: their fingerprints as vmfw
// wrote them; VM edits: the membership the edit gives).
func (a *agentLab) learnNFT(key string, chain iptlayout.Chain) error {
	if a.nftStates == nil {
		a.nftStates = map[string]nftState{}
	}
	var st nftState
	err := a.hv.do(func() error {
		var err error
		st, err = a.readNFT(nlnft.Client{}, chain, key)
		return err
	})
	if err != nil {
		return err
	}
	for other, o := range a.nftStates {
		if other != key && kind(other) == kind(key) && reflect.DeepEqual(o, st) {
			return fmt.Errorf("%s reads the same in states %s and %s: the edit changes nothing", chain, other, key)
		}
	}
	a.nftStates[key] = st
	return nil
}

// waitNFT is waitChain on the nftables backend: it reads the generation
// every pollEvery and, when it moved, the state of key's kind; the time is
// that of the first read of the generation the state was then found in,
// provided it had not moved again by the end of the read.
func (a *agentLab) waitNFT(start time.Time, chain iptlayout.Chain, key string) (time.Duration, error) {
	want, ok := a.nftStates[key]
	if !ok {
		return 0, fmt.Errorf("no state learnt for %s", key)
	}
	var took time.Duration
	err := a.hv.do(func() error {
		cl := nlnft.Kept()
		defer cl.Close()
		deadline := start.Add(opTimeout)
		var last uint32
		have := false
		for {
			if time.Now().After(deadline) {
				return fmt.Errorf("%s did not reach state %s within %s", chain, key, opTimeout)
			}
			gen, err := cl.Generation()
			if err != nil {
				return err
			}
			if have && gen == last {
				time.Sleep(pollEvery)
				continue
			}
			seen := time.Now()
			st, err := a.readNFT(cl, chain, key)
			if err != nil {
				return err
			}
			if slices.Equal(st.hashes, want.hashes) && st.list == want.list {
				now, err := cl.Generation()
				if err != nil {
					return err
				}
				if now == gen {
					took = seen.Sub(start)
					return nil
				}
			}
			last, have = gen, true
		}
	})
	return took, err
}
