package config

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/vmfw/vmfw/pkg/config/configtest"
)

// TestCacheMatchesLoad edits a configuration directory at random —
// valid and invalid set, group and VM files, files added, removed and
// replaced by symlinks, group and set names appearing and disappearing
// (groups refer to both), addresses claimed
// twice — and after every edit compares a load through a Cache, told only
// the files the edit touched, with a full Load: the models and the errors
// must be the same.
func TestCacheMatchesLoad(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	groupNames := []string{"web", "ssh", "db", "mon"}
	// Invalid content is rare and repaired often, so that most steps
	// compare models and some compare errors.
	bad := func() int {
		if rng.Intn(4) == 0 {
			return rng.Intn(3)
		}
		return 3
	}
	setNames := []string{"bl", "office"}
	setText := func() string {
		if bad() == 0 {
			return "except = [\"192.0.2.0/24\"]\n" // invalid
		}
		return fmt.Sprintf("entries = [\"198.51.100.0/24\", \"2001:db8::%x\"]\n", rng.Intn(1000))
	}
	groupText := func() string {
		switch bad() {
		case 0:
			return "[[in]]\nproto = \"tcp\"\ndport = \"not a port\"\n" // invalid
		case 1:
			if rng.Intn(2) == 0 {
				return fmt.Sprintf("[[out]]\ndest_set = %q\n", setNames[rng.Intn(len(setNames))]) // names a set that may be missing
			}
			return fmt.Sprintf("[[in]]\nsource_group = %q\n", groupNames[rng.Intn(len(groupNames))]) // names a group that may be missing
		case 2:
			return "[[in]\n" // syntax error
		default:
			text := fmt.Sprintf("[[in]]\nproto = \"tcp\"\ndport = \"%d\"\n\n[[out]]\nproto = \"udp\"\ndport = \"53\"\n", 1+rng.Intn(65535))
			if rng.Intn(2) == 0 {
				text += fmt.Sprintf("\n[[in]]\nsource_set = %q\n", setNames[rng.Intn(len(setNames))]) // a set that may be removed
			}
			return text
		}
	}
	vmText := func(id int) string {
		ip := id
		switch bad() {
		case 0:
			ip = 1 + rng.Intn(20) // may be claimed twice
		case 1:
			return "[net0]\nips = [\"192.0.2.300\"]\n" // invalid
		}
		return fmt.Sprintf("policy_in = %q\n\n[net0]\nips = [\"198.51.100.%d\", \"2001:db8::%x\"]\ngroups = [%q]\n",
			[]string{"drop", "accept", "reject"}[rng.Intn(3)], ip, ip, groupNames[rng.Intn(len(groupNames))])
	}
	files := map[string]string{"vmfw.toml": "", "groups/web.toml": "", "groups/ssh.toml": "", "groups/db.toml": "", "groups/mon.toml": "", "sets/bl.toml": "", "sets/office.toml": ""}
	for id := 1; id <= 20; id++ {
		files[fmt.Sprintf("vms/%d.toml", id)] = fmt.Sprintf("[net0]\nips = [\"198.51.100.%d\"]\ngroups = [\"web\"]\n", id)
	}
	dir := configtest.Dir(t, files)
	outside := filepath.Join(dir, "shared")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(rel, text string) {
		path := filepath.Join(dir, rel)
		os.Remove(path)
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// change removes rel one time in oneIn, else writes it anew.
	change := func(rel string, oneIn int, text func() string) {
		if rng.Intn(oneIn) == 0 {
			os.Remove(filepath.Join(dir, rel))
		} else {
			write(rel, text())
		}
	}
	var c Cache
	valid, invalid := 0, 0
	compare := func(step int, changed []string) {
		t.Helper()
		got, gotErr := c.Load(dir, changed)
		want, wantErr := Load(dir)
		if wantErr == nil {
			valid++
		} else {
			invalid++
		}
		if fmt.Sprint(gotErr) != fmt.Sprint(wantErr) {
			t.Fatalf("step %d (changed %v): cached load error %v, full load error %v", step, changed, gotErr, wantErr)
		}
		if !sameModel(got, want) {
			t.Fatalf("step %d (changed %v): the cached load's model differs from the full load's", step, changed)
		}
		// The agent rewrites the file name of the error it gets; the
		// cache must not see that.
		var fe *Error
		if errors.As(gotErr, &fe) {
			fe.File = "/rewritten/" + fe.File
		}
	}
	compare(0, nil)
	for step := 1; step <= 600; step++ {
		var changed []string
		for range 1 + rng.Intn(3) {
			var rel string
			switch k := rng.Intn(11); {
			case k == 10:
				s := setNames[rng.Intn(len(setNames))]
				rel = "sets/" + s + ".toml"
				change(rel, 4, setText)
			case k < 5:
				id := 1 + rng.Intn(25)
				rel = fmt.Sprintf("vms/%d.toml", id)
				change(rel, 8, func() string { return vmText(id) })
			case k < 8:
				g := groupNames[rng.Intn(len(groupNames))]
				rel = "groups/" + g + ".toml"
				change(rel, 6, groupText)
			case k == 8:
				// A symlink to a file that changes later without an event
				// naming the link.
				id := 1 + rng.Intn(25)
				rel = fmt.Sprintf("vms/%d.toml", id)
				target := filepath.Join(outside, fmt.Sprintf("%d.toml", id))
				if err := os.WriteFile(target, []byte(vmText(id)), 0o644); err != nil {
					t.Fatal(err)
				}
				os.Remove(filepath.Join(dir, rel))
				if err := os.Symlink(target, filepath.Join(dir, rel)); err != nil {
					t.Fatal(err)
				}
			default:
				// Edit every symlink target: no event names the links.
				entries, _ := os.ReadDir(outside)
				for _, e := range entries {
					var id int
					fmt.Sscanf(e.Name(), "%d.toml", &id)
					if err := os.WriteFile(filepath.Join(outside, e.Name()), []byte(vmText(id)), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				continue
			}
			changed = append(changed, rel)
		}
		if rng.Intn(3) == 0 {
			// Repair: every file valid again, every group and set present.
			for _, s := range setNames {
				rel := "sets/" + s + ".toml"
				write(rel, "entries = [\"203.0.113.0/24\"]\n")
				changed = append(changed, rel)
			}
			for _, g := range groupNames {
				rel := "groups/" + g + ".toml"
				write(rel, "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n")
				changed = append(changed, rel)
			}
			for id := 1; id <= 25; id++ {
				rel := fmt.Sprintf("vms/%d.toml", id)
				if _, err := os.Lstat(filepath.Join(dir, rel)); err == nil {
					write(rel, fmt.Sprintf("[net0]\nips = [\"198.51.100.%d\"]\ngroups = [%q]\n", id, groupNames[id%len(groupNames)]))
					changed = append(changed, rel)
				}
			}
		}
		compare(step, changed)
	}
	if valid < 100 || invalid < 100 {
		t.Errorf("%d steps compared models and %d errors: the edits do not exercise both", valid, invalid)
	}
}

// TestCacheParsesOnlyChangedFiles checks that a load through a Cache takes
// files nobody said changed from the previous load: a file rewritten
// behind its back (which inotify would have reported) keeps its old
// content until it is named.
func TestCacheParsesOnlyChangedFiles(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
		"vms/1.toml":      "[net0]\ngroups = [\"web\"]\n",
	})
	var c Cache
	if _, err := c.Load(dir, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "groups/web.toml"), []byte("[[in]]\nproto = \"tcp\"\ndport = \"81\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err := c.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Groups["web"].In[0].DPort[0].Lo; got != 80 {
		t.Fatalf("unnamed file parsed again: port %d", got)
	}
	m, err = c.Load(dir, []string{"groups/web.toml"})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Groups["web"].In[0].DPort[0].Lo; got != 81 {
		t.Fatalf("named file not parsed again: port %d", got)
	}
}

// TestCacheKeepsSets: a set file is parsed once and reused until it is
// named as changed, whatever else changes; a set added, removed or
// broken is seen as a full load sees it.
func TestCacheKeepsSets(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"sets/bl.toml":    "entries = [\"192.0.2.0/24\"]\n",
		"groups/web.toml": "[[in]]\n",
	})
	var c Cache
	first, err := c.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	write := func(rel, text string) {
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("sets/bl.toml", "entries = [\"198.51.100.0/24\"]\n")
	write("groups/web.toml", "[[out]]\n")
	m, err := c.Load(dir, []string{"groups/web.toml"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Sets["bl"] != first.Sets["bl"] || len(m.Groups["web"].Out) != 1 {
		t.Fatalf("the unnamed set was parsed again, or the named group was not")
	}
	m, err = c.Load(dir, []string{"sets/bl.toml"})
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Sets["bl"].Entries[0].Prefix.String(); got != "198.51.100.0/24" {
		t.Fatalf("named set not parsed again: %s", got)
	}
	write("sets/new.toml", "except = [\"192.0.2.1\"]\n")
	_, err = c.Load(dir, []string{"sets/new.toml"})
	_, want := Load(dir)
	if err == nil || fmt.Sprint(err) != fmt.Sprint(want) {
		t.Fatalf("a broken set: cached load %v, full load %v", err, want)
	}
	if err := os.Remove(filepath.Join(dir, "sets/new.toml")); err != nil {
		t.Fatal(err)
	}
	m, err = c.Load(dir, []string{"sets/new.toml"})
	if err != nil || len(m.Sets) != 1 {
		t.Fatalf("after removing the broken set: %v, %d sets", err, len(m.Sets))
	}
}

// TestCacheReloadsGroupsAlone: an edit of existing group files alone
// reads those files and shares the rest of the last model (its VMs are
// the same map); a broken group is the full load's error, and the load
// after it is full; a new group file, a file named that is not a group,
// and a last load that met a symlink each make the load a full one.
func TestCacheReloadsGroupsAlone(t *testing.T) {
	dir := configtest.Dir(t, map[string]string{
		"groups/web.toml": "[[in]]\nproto = \"tcp\"\ndport = \"80\"\n",
		"groups/ssh.toml": "[[in]]\nproto = \"tcp\"\ndport = \"22\"\n",
		"vms/1.toml":      "[net0]\nips = [\"192.0.2.1\"]\ngroups = [\"web\"]\n",
	})
	var c Cache
	load := func(changed ...string) *Model {
		t.Helper()
		m, err := c.Load(dir, changed)
		want, wantErr := Load(dir)
		if fmt.Sprint(err) != fmt.Sprint(wantErr) || !sameModel(m, want) {
			t.Fatalf("changed %v: cached load %v, %v; full load %v", changed, m, err, wantErr)
		}
		return m
	}
	shared := func(a, b *Model) bool {
		return reflect.ValueOf(a.VMs).UnsafePointer() == reflect.ValueOf(b.VMs).UnsafePointer()
	}
	write := func(rel, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, rel), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	first := load()
	write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"8080\"\n")
	edited := load("groups/web.toml", "groups/.web.toml.swp", "groups/web.toml~", ".vmfw.toml.swp")
	if !shared(first, edited) || edited.Groups["ssh"] != first.Groups["ssh"] {
		t.Error("a group edit (with an editor's temporary files) listed and parsed the rest again")
	}
	write("vmfw.toml", "repair_interval = \"5s\"\n")
	write("groups/ssh.toml", "[[in]]\nproto = \"tcp\"\ndport = \"2200\"\n")
	if withHost := load("groups/ssh.toml", "vmfw.toml"); shared(edited, withHost) {
		t.Error("a group edit named with vmfw.toml was loaded from the last model")
	}
	write("groups/web.toml", "[[in]]\ndport = \"x\"\n")
	load("groups/web.toml")
	write("groups/web.toml", "[[in]]\nproto = \"tcp\"\ndport = \"443\"\n")
	if shared(edited, load("groups/web.toml")) {
		t.Error("the load after a failed group edit was not a full one")
	}
	again := load()
	write("groups/db.toml", "[[in]]\nproto = \"tcp\"\ndport = \"5432\"\n")
	if shared(again, load("groups/db.toml")) {
		t.Error("a new group file was loaded from the last model")
	}
	again = load()
	write("vms/1.toml", "[net0]\nips = [\"192.0.2.2\"]\ngroups = [\"db\"]\n")
	if shared(again, load("vms/1.toml", "groups/db.toml")) {
		t.Error("a VM edit was loaded from the last model")
	}
	if err := os.MkdirAll(filepath.Join(dir, "shared"), 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "shared", "2.toml")
	if err := os.WriteFile(target, []byte("[net0]\nips = [\"192.0.2.3\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "vms/2.toml")); err != nil {
		t.Fatal(err)
	}
	linked := load("vms/2.toml")
	if err := os.WriteFile(target, []byte("[net0]\nips = [\"192.0.2.4\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	write("groups/ssh.toml", "[[in]]\nproto = \"tcp\"\ndport = \"2222\"\n")
	if shared(linked, load("groups/ssh.toml")) {
		t.Error("a group edit was loaded from a last model with a symlinked file")
	}
}
