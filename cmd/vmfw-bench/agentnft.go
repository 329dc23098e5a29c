package main

import (
	"fmt"
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
	return recordState(a.nftStates, key, chain, st)
}

// waitNFT is waitChain on the nftables backend: waitGeneration, reading
// the state of key's kind when the generation moved.
func (a *agentLab) waitNFT(start time.Time, chain iptlayout.Chain, key string) (time.Duration, error) {
	want, ok := a.nftStates[key]
	if !ok {
		return 0, fmt.Errorf("no state learnt for %s", key)
	}
	var took time.Duration
	err := a.hv.do(func() error {
		cl := nlnft.Kept()
		defer cl.Close()
		var err error
		took, err = waitGeneration(start, chain, key, cl.Generation, func() (bool, error) {
			st, err := a.readNFT(cl, chain, key)
			if err != nil {
				return false, err
			}
			return slices.Equal(st.hashes, want.hashes) && st.list == want.list, nil
		})
		return err
	})
	return took, err
}
