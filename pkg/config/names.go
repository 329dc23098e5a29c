package config

// maxGroupName keeps "sg-NAME-mac" within ipset's 31 characters and
// "sg-NAME-out" within iptables' 28-character chain names. Set names share
// it, so that their kernel names have the same room.
const maxGroupName = 20

// nameRule words what validGroupName and validSetName accept, for
// messages.
const nameRule = "a letter followed by up to 19 letters, digits, _ or -"

// validGroupName reports whether name matches [A-Za-z][A-Za-z0-9_-]{0,19}.
// '-' is allowed because Proxmox allows it in group and IP set names; no
// name can end a kernel object's name early, since vmfw's suffixes (-in,
// -out, -v4, ...) are read from the end.
func validGroupName(name string) bool {
	if name == "" || len(name) > maxGroupName || !isLetter(name[0]) {
		return false
	}
	for i := 1; i < len(name); i++ {
		if !isAlnum(name[i]) && name[i] != '_' && name[i] != '-' {
			return false
		}
	}
	return true
}

// maxVMID is the largest VM id, nine digits.
const maxVMID = 999999999

// parseVMID parses a VM id: decimal, no sign, no leading zeros, so each id
// has exactly one file name and one tap name.
func parseVMID(s string) (int, bool) {
	if len(s) > 1 && s[0] == '0' {
		return 0, false
	}
	return parseDecimal(s, maxVMID)
}

func isLetter(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}
