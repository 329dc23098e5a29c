package pvefw

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Tree is a Proxmox VE configuration tree laid out like /etc/pve.
type Tree struct {
	// Root is the directory read.
	Root string
	// Cluster is firewall/cluster.fw, nil if the file does not exist.
	Cluster *FwFile
	// Hosts maps a node to its nodes/NODE/host.fw.
	Hosts map[string]*FwFile
	// Guests are the guests read, by VMID.
	Guests []*Guest
	// GuestFw maps a VMID to its firewall/VMID.fw.
	GuestFw map[int]*FwFile
	// Nodes are the nodes found under nodes/, sorted.
	Nodes []string
	// Problems are lines pve-firewall would skip, outside the .fw files'
	// own lists (guest configuration lines).
	Problems []Problem
}

// maxFile bounds what is read per file: a guest or firewall file is a few
// kilobytes, IP sets may hold many thousands of entries.
const maxFile = 64 << 20

// Load reads the tree at root. With node set, only that node's guests are
// read (nodes/NODE/qemu-server and lxc); otherwise every node's, and the
// top-level qemu-server/ and lxc/ directories (a copy of /etc/pve, where
// they are the local node's) for guests no node directory holds.
func Load(root, node string) (*Tree, error) {
	t := &Tree{Root: root, Hosts: map[string]*FwFile{}, GuestFw: map[int]*FwFile{}}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s: not a directory", root)
	}
	if text, ok, err := readOptional(root, "firewall/cluster.fw"); err != nil {
		return nil, err
	} else if ok {
		t.Cluster = ParseFw("firewall/cluster.fw", Cluster, text)
	}
	nodes, err := subdirs(filepath.Join(root, "nodes"))
	if err != nil {
		return nil, err
	}
	t.Nodes = nodes
	if node != "" && !slices.Contains(nodes, node) {
		return nil, fmt.Errorf("%s: no node %q (nodes: %s)", filepath.Join(root, "nodes"), node, strings.Join(nodes, ", "))
	}
	byID := map[int]*Guest{}
	for _, n := range nodes {
		if node != "" && n != node {
			continue
		}
		rel := "nodes/" + n + "/host.fw"
		if text, ok, err := readOptional(root, rel); err != nil {
			return nil, err
		} else if ok {
			t.Hosts[n] = ParseFw(rel, Host, text)
		}
		for _, kind := range []GuestKind{VM, Container} {
			if err := t.readGuests(byID, "nodes/"+n+"/"+confDir(kind), kind, n); err != nil {
				return nil, err
			}
		}
	}
	if node == "" {
		for _, kind := range []GuestKind{VM, Container} {
			if err := t.readGuests(byID, confDir(kind), kind, ""); err != nil {
				return nil, err
			}
		}
	}
	ids := make([]int, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		g := byID[id]
		t.Guests = append(t.Guests, g)
		rel := "firewall/" + strconv.Itoa(id) + ".fw"
		if text, ok, err := readOptional(root, rel); err != nil {
			return nil, err
		} else if ok {
			t.GuestFw[id] = ParseFw(rel, GuestFile, text)
		}
	}
	return t, nil
}

func confDir(k GuestKind) string {
	if k == Container {
		return "lxc"
	}
	return "qemu-server"
}

// readGuests reads the VMID.conf files of dir into byID. A VMID already
// read from a node directory and read again from a top-level directory
// with the same text is the same guest (the top-level directories of
// /etc/pve are the local node's); with other text it is an error, as a
// VMID is unique in a cluster.
func (t *Tree) readGuests(byID map[int]*Guest, dir string, kind GuestKind, node string) error {
	des, err := os.ReadDir(filepath.Join(t.Root, dir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, de := range des {
		stem, ok := strings.CutSuffix(de.Name(), ".conf")
		id, err := strconv.Atoi(stem)
		if !ok || err != nil || id <= 0 || strconv.Itoa(id) != stem {
			continue
		}
		rel := dir + "/" + de.Name()
		text, _, err := readOptional(t.Root, rel)
		if err != nil {
			return err
		}
		g, problems := ParseGuest(rel, kind, id, node, text)
		if old, dup := byID[id]; dup {
			oldText, _, _ := readOptional(t.Root, old.Path)
			if node == "" && old.Kind == kind && oldText == text {
				continue
			}
			return fmt.Errorf("%s: VMID %d is also configured in %s", rel, id, old.Path)
		}
		byID[id] = g
		t.Problems = append(t.Problems, problems...)
	}
	return nil
}

// readOptional reads root/rel; ok is false when it does not exist.
func readOptional(root, rel string) (string, bool, error) {
	path := filepath.Join(root, rel)
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	if !fi.Mode().IsRegular() {
		return "", false, fmt.Errorf("%s: not a regular file", path)
	}
	if fi.Size() > maxFile {
		return "", false, fmt.Errorf("%s: larger than %d MiB", path, maxFile>>20)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return "", false, err
	}
	return string(data), true, nil
}

func subdirs(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, de := range des {
		if de.IsDir() || de.Type()&fs.ModeSymlink != 0 {
			out = append(out, de.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

// HostOptions returns the host.fw that applies to guest g: its node's, or
// for a guest of the top-level directories the only node's when the tree
// has exactly one.
func (t *Tree) HostOptions(g *Guest) *FwFile {
	if g.Node != "" {
		return t.Hosts[g.Node]
	}
	if len(t.Nodes) == 1 {
		return t.Hosts[t.Nodes[0]]
	}
	return nil
}
