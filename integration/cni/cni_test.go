package cni

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/vmfw/vmfw/integration/labnet"
	"github.com/vmfw/vmfw/integration/labtest"
	"github.com/vmfw/vmfw/integration/testbin"
)

// TestCNI drives one network through ADD, CHECK, GC, STATUS and DEL with
// three containers: web (groups from the plugin configuration), db (groups
// from runtimeConfig, policy from args) and a third one the runtime
// "forgets" (its ADD went through a client whose cache is later lost).
func TestCNI(t *testing.T) {
	t.Parallel()
	const backend = "nft"
	h := newHost(t)
	list := h.conflist("1.1.0", backend, nil)

	web := h.newContainer("web", nil)
	h.add(list, web)
	// args.cni overrides the plugin configuration (policyIn reject, groups
	// web), runtimeConfig overrides args (groups db): db ends up in group db
	// with policy reject.
	db := h.newContainer("db", map[string]any{"vmfw": map[string]any{"groups": []string{"db"}}})
	dbList := h.conflist("1.1.0", backend, map[string]any{
		"args": map[string]any{"cni": map[string]any{"groups": []string{"web"}, "policyIn": "reject"}},
	})
	h.add(dbList, db)
	h.serve(web, 80, 22)
	h.serve(db, 80, 5432)

	h.expect(db, web, 80, labnet.Connected)   // web: group web
	h.expect(db, web, 22, labnet.Timeout)     // web: policy drop
	h.expect(web, db, 5432, labnet.Connected) // db: group db, web is a member of web
	h.expect(web, db, 80, labnet.Refused)     // db: not in web (runtimeConfig won), policy reject (args)

	if got, want := labtest.Records(h.t, h.state), sorted(web.veth, db.veth); !slices.Equal(got, want) {
		t.Errorf("records: got %v, want %v", got, want)
	}
	if status := h.vmfw(backend, "status"); !strings.Contains(status, web.veth) || !strings.Contains(status, "vmfwtest/"+web.id[:12]) {
		t.Errorf("status does not show %s of %s:\n%s", web.veth, web.id, status)
	}
	if sets := h.exec("ipset", "save"); !strings.Contains(sets, "add sg-web-v4 "+web.ip) {
		t.Errorf("web's address is not in group web's set:\n%s", sets)
	}
	for _, c := range []*container{web, db} {
		if err := h.check(dbListFor(c, db, list, dbList), c); err != nil {
			t.Errorf("CHECK %s: %v", c.id, err)
		}
	}

	// STATUS: usable, and unusable when ipset fails.
	if err := h.in(func(ctx context.Context) error { return h.client.GetStatusNetworkList(ctx, list) }); err != nil {
		t.Errorf("STATUS: %v", err)
	}
	fake := t.TempDir()
	if err := os.WriteFile(filepath.Join(fake, "ipset"), []byte("#!/bin/sh\necho 'ipset v7.17: Kernel error received: Operation not permitted' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	broken := libcni.NewCNIConfigWithCacheDir([]string{testbin.Dir}, h.cache, &envExec{env: []string{"PATH=" + fake + ":" + os.Getenv("PATH")}})
	err := h.in(func(ctx context.Context) error { return broken.GetStatusNetworkList(ctx, list) })
	if cniCode(err) != types.ErrPluginNotAvailable || !strings.Contains(err.Error(), "ipset") {
		t.Errorf("STATUS with a failing ipset: %v (code %d), want code 50 naming ipset", err, cniCode(err))
	}

	// A chain deleted by hand: CHECK fails naming it, and traffic the chain
	// dropped passes; apply puts it back.
	h.deleteChain(backend, web.veth+"-in")
	err = h.check(list, web)
	if cniCode(err) != 101 || !strings.Contains(err.Error(), web.veth+"-in: missing") {
		t.Errorf("CHECK after deleting %s-in: %v (code %d), want code 101 naming the chain", web.veth, err, cniCode(err))
	}
	h.expect(db, web, 22, labnet.Connected)
	h.vmfw(backend, "apply")
	if err := h.check(list, web); err != nil {
		t.Errorf("CHECK after apply: %v", err)
	}
	h.expect(db, web, 22, labnet.Timeout)

	// A group member removed from its ipset by hand: CHECK fails naming
	// it, and the member loses access; apply puts it back.
	h.exec("ipset", "del", "sg-web-v4", web.ip)
	err = h.check(list, web)
	if cniCode(err) != 101 || !strings.Contains(err.Error(), "member "+web.ip+" missing") {
		t.Errorf("CHECK after removing %s from sg-web-v4: %v (code %d)", web.ip, err, cniCode(err))
	}
	h.expect(web, db, 5432, labnet.Refused)
	h.vmfw(backend, "apply")
	h.expect(web, db, 5432, labnet.Connected)

	// A leaked attachment: ADD through a client whose cache is then lost,
	// so only vmfw's GC can clean it.
	leaked := h.newContainer("leak", nil)
	lost := libcni.NewCNIConfigWithCacheDir([]string{testbin.Dir}, t.TempDir(), nil)
	saved := h.client
	h.client = lost
	h.add(list, leaked)
	h.client = saved
	h.serve(leaked, 80)
	h.expect(leaked, db, 5432, labnet.Connected) // a member of web
	valid := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: web.id, IfName: "eth0"}, {ContainerID: db.id, IfName: "eth0"},
	}}
	if err := h.in(func(ctx context.Context) error { return h.client.GCNetworkList(ctx, list, valid) }); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got, want := labtest.Records(h.t, h.state), sorted(web.veth, db.veth); !slices.Equal(got, want) {
		t.Errorf("records after GC: got %v, want %v", got, want)
	}
	if save := h.save(backend); strings.Contains(save, leaked.veth) {
		t.Errorf("GC left chains of %s:\n%s", leaked.veth, save)
	}
	if sets := h.exec("ipset", "save"); strings.Contains(sets, leaked.ip) {
		t.Errorf("GC left %s in a set:\n%s", leaked.ip, sets)
	}
	h.expect(leaked, db, 5432, labnet.Refused) // no longer a member
	h.expect(db, web, 80, labnet.Connected)    // the valid ones are untouched
	if err := h.check(list, web); err != nil {
		t.Errorf("CHECK web after GC: %v", err)
	}

	// DEL twice (the second time libcni has no cached prevResult).
	for i := range 2 {
		if err := h.del(dbList, db); err != nil {
			t.Fatalf("DEL %d of db: %v", i+1, err)
		}
	}
	if save := h.save(backend); strings.Contains(save, db.veth) {
		t.Errorf("DEL left chains of %s:\n%s", db.veth, save)
	}
	// DEL when the interface is already gone.
	h.exec("ip", "link", "del", web.veth)
	if err := h.del(list, web); err != nil {
		t.Fatalf("DEL of web without its veth: %v", err)
	}
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
	if sets := h.exec("ipset", "save"); strings.Contains(sets, "sg-") {
		t.Errorf("sets left after every attachment is gone:\n%s", sets)
	}
}

// TestCNIVersions runs the shipped conflist (conf/cni) at every supported
// spec version: ADD of two containers, traffic allowed and dropped, CHECK,
// DEL.
func TestCNIVersions(t *testing.T) {
	t.Parallel()
	for i, v := range []string{"0.4.0", "1.0.0", "1.1.0"} {
		backend := []string{"nft", "legacy"}[i%2]
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			h := newHost(t)
			list := h.shipped(v, backend)
			a, b := h.newContainer("a", nil), h.newContainer("b", nil)
			h.add(list, a)
			h.add(list, b)
			h.serve(b, 443, 22)
			h.expect(a, b, 443, labnet.Connected)
			h.expect(a, b, 22, labnet.Timeout)
			for _, c := range []*container{a, b} {
				if err := h.check(list, c); err != nil {
					t.Errorf("CHECK %s: %v", c.id, err)
				}
				if err := h.del(list, c); err != nil {
					t.Errorf("DEL %s: %v", c.id, err)
				}
			}
			if save := h.save(backend); strings.Contains(save, a.veth) || strings.Contains(save, b.veth) {
				t.Errorf("chains left after DEL:\n%s", save)
			}
			if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
				t.Errorf("records after DEL: %v", recs)
			}
		})
	}
}

// TestCNIConfigErrors: vmfw without a previous plugin, an unknown group and
// a bad policy are invalid configuration (code 7), and change nothing.
func TestCNIConfigErrors(t *testing.T) {
	t.Parallel()
	h := newHost(t)
	full := h.conflist("1.1.0", "nft", nil)
	alone := &libcni.NetworkConfigList{Name: full.Name, CNIVersion: full.CNIVersion, Plugins: full.Plugins[1:]}
	c := h.newContainer("x", nil)
	err := h.in(func(ctx context.Context) error { _, err := h.client.AddNetworkList(ctx, alone, c.rt); return err })
	if cniCode(err) != types.ErrInvalidNetworkConfig || !strings.Contains(err.Error(), "prevResult") {
		t.Errorf("ADD without prevResult: %v (code %d), want code 7 naming prevResult", err, cniCode(err))
	}
	for i, extra := range []map[string]any{
		{"groups": []string{"nosuch"}},
		{"policyIn": "allow"},
	} {
		c := h.newContainer("y"+strconv.Itoa(i), nil)
		list := h.conflist("1.1.0", "nft", extra)
		err := h.in(func(ctx context.Context) error { _, err := h.client.AddNetworkList(ctx, list, c.rt); return err })
		if cniCode(err) != types.ErrInvalidNetworkConfig {
			t.Errorf("ADD with %v: %v (code %d), want code 7", extra, err, cniCode(err))
		}
	}
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("records after failed ADDs: %v", recs)
	}
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// dbListFor returns the conflist c was added with.
func dbListFor(c, db *container, list, dbList *libcni.NetworkConfigList) *libcni.NetworkConfigList {
	if c == db {
		return dbList
	}
	return list
}

// TestCNIDelWithBrokenConfig: DEL succeeds while the configuration does
// not load, taking the attachment's record and its group memberships with
// it (a later holder of the address must not inherit them), and the next
// apply after the repair removes the chains it left.
func TestCNIDelWithBrokenConfig(t *testing.T) {
	t.Parallel()
	const backend = "nft"
	h := newHost(t)
	// In group db too, whose rule names group web: web's set exists.
	list := h.conflist("1.1.0", backend, map[string]any{"groups": []string{"web", "db"}})
	web := h.newContainer("web", nil)
	h.add(list, web)
	if sets := h.exec("ipset", "save"); !strings.Contains(sets, "add sg-web-v4 "+web.ip) {
		t.Fatalf("web's address is not in group web's set:\n%s", sets)
	}
	broken := filepath.Join(h.config, "groups", "broken.toml")
	if err := os.WriteFile(broken, []byte("[[in]]\nproto = \"tcpp\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.del(list, web); err != nil {
		t.Fatalf("DEL with a broken configuration: %v", err)
	}
	if recs := labtest.Records(h.t, h.state); len(recs) != 0 {
		t.Errorf("records after DEL: %v", recs)
	}
	if sets := h.exec("ipset", "save"); strings.Contains(sets, " "+web.ip) {
		t.Errorf("%s is still a member after DEL:\n%s", web.ip, sets)
	}
	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	h.vmfw(backend, "apply")
	if save := h.save(backend); strings.Contains(save, web.veth) {
		t.Errorf("chains of %s remain after the repaired apply:\n%s", web.veth, save)
	}
}
