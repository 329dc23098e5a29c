package main

import "testing"

// TestUnstaged: a listing with a staged change's additions (rules behind
// the "vmfw:staged" return, a new chain, a new set) reads as the old one
// without them, and nothing else is forgiven: a changed rule before the
// marker, or a rule missing, still differs.
func TestUnstaged(t *testing.T) {
	old := canonicalNFT(`table bridge vmfw {
	set ports {
		type ifname
	}
	chain sg-web-in {
		tcp dport 80 accept comment "vmfw:1111"
	}
}
`)
	staged := canonicalNFT(`table bridge vmfw {
	set ports {
		type ifname
	}
	set as-x-v4 {
		type ipv4_addr
		flags interval
	}
	chain sg-web-in {
		tcp dport 80 accept comment "vmfw:1111"
		return comment "vmfw:staged"
		tcp dport { 80, 8000-8080 } accept comment "vmfw:2222"
	}
	chain sg-new-in {
		tcp dport { 1-2, 5-6 } accept comment "vmfw:3333"
	}
}
`)
	if !unstagedPart("nftables", staged, old) {
		t.Errorf("a staged change does not read as the old ruleset:\n%s\nwant\n%s", unstaged(staged, old), old)
	}
	for name, bad := range map[string]string{
		"an old rule changed": `table bridge vmfw {
	set ports {
		type ifname
	}
	chain sg-web-in {
		tcp dport 81 accept comment "vmfw:1112"
		return comment "vmfw:staged"
	}
}
`,
		"an old rule gone": `table bridge vmfw {
	set ports {
		type ifname
	}
	chain sg-web-in {
		return comment "vmfw:staged"
		tcp dport 80 accept comment "vmfw:1111"
	}
}
`,
	} {
		if unstagedPart("nftables", canonicalNFT(bad), old) {
			t.Errorf("%s: taken for a staged change", name)
		}
	}
}
