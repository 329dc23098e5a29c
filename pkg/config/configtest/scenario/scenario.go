// Package scenario loads test scenarios: a configuration directory and
// the interfaces it configures, all attached, as when every VM runs. It
// is apart from package configtest, which package config's own tests use
// and which therefore must not import config.
package scenario

import (
	"sort"
	"testing"

	"github.com/vmfw/vmfw/pkg/config"
)

// Load loads the configuration in dir, failing t on error, and returns it
// with every interface it configures, sorted by name.
func Load(t testing.TB, dir string) (*config.Model, []*config.NIC) {
	t.Helper()
	m, err := config.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var nics []*config.NIC
	for _, vm := range m.VMs {
		nics = append(nics, vm.NICs...)
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Tap < nics[j].Tap })
	return m, nics
}
