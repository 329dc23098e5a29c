package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/vmfw/vmfw/pkg/config"
	"github.com/vmfw/vmfw/pkg/ruleset"
	"github.com/vmfw/vmfw/pkg/state"
)

// Attachments stores the records of attached interfaces that the
// configuration cannot name (CNI veths, libvirt vnetN). *state.Store
// implements it. The engine reads and writes it only under its lock.
type Attachments interface {
	// List returns every record by interface name.
	List() (map[string]*state.Attachment, error)
	// Put writes a record atomically.
	Put(a *state.Attachment) error
	// Delete removes a record; a missing one is not an error.
	Delete(iface string) error
	// Path returns the file that holds (or will hold) iface's record,
	// for messages.
	Path(iface string) string
}

var _ Attachments = (*state.Store)(nil)

// nicSource maps an interface name to its settings, nil for an interface
// vmfw does not manage. *config.Model (taps only) and *resolver (taps, then
// attachment records) implement it.
type nicSource interface {
	NIC(name string) *config.NIC
}

// resolver maps interface names to settings: a configured tap first, then
// an attachment record. Records are resolved against the configuration
// when the resolver is made; a record that no longer resolves (its VM file
// or a group was removed) gets closed settings, every packet dropped, and
// its problem is kept for Check and Status.
type resolver struct {
	model    *config.Model
	recs     map[string]*state.Attachment
	nics     map[string]*config.NIC
	problems map[string]error

	// confirm, until settle calls it, is the check of the files behind a
	// model read from the configuration index unchecked
	// (config.LoadIndexedLater); moved says they changed, and fresh and
	// freshErr are what loading them gave.
	confirm  func() (*config.Model, error)
	moved    bool
	fresh    *config.Model
	freshErr error
}

// resolver reads the attachment records and resolves them against m.
func (e *Engine) resolver(m *config.Model) (*resolver, error) {
	r := &resolver{model: m, recs: map[string]*state.Attachment{}, nics: map[string]*config.NIC{}, problems: map[string]error{}}
	if e.State != nil {
		recs, err := e.State.List()
		if err != nil {
			return nil, fmt.Errorf("reading attachment records: %w", err)
		}
		r.recs = recs
	}
	for iface, a := range r.recs {
		if m.NIC(iface) != nil {
			continue // the configuration wins
		}
		nic, err := recordNIC(m, a, e.recordPath(iface))
		if err != nil {
			nic = closedNIC(iface)
			r.problems[iface] = err
		}
		r.nics[iface] = nic
	}
	return r, nil
}

// NIC returns the settings of the interface called name, or nil.
func (r *resolver) NIC(name string) *config.NIC {
	if n := r.model.NIC(name); n != nil {
		return n
	}
	return r.nics[name]
}

// present returns the configured taps and recorded interfaces that exist.
func (r *resolver) present(links map[string]bool) []*config.NIC {
	var nics []*config.NIC
	for _, vm := range r.model.VMs {
		for _, n := range vm.NICs {
			if links[n.Tap] {
				nics = append(nics, n)
			}
		}
	}
	for iface, n := range r.nics {
		if links[iface] {
			nics = append(nics, n)
		}
	}
	sort.Slice(nics, func(i, j int) bool { return nics[i].Tap < nics[j].Tap })
	return nics
}

// closedNIC is the setting of a recorded interface whose record no longer
// resolves: nothing in or out but link-local housekeeping.
func closedNIC(iface string) *config.NIC {
	vm := &config.VM{Name: "unresolved", Enable: true, PolicyIn: config.Drop, PolicyOut: config.Drop}
	return &config.NIC{VM: vm, Tap: iface, Antispoof: true}
}

// recordPath is the file of iface's record, for messages; "" when there is
// no state directory or iface cannot name a file.
func (e *Engine) recordPath(iface string) string {
	if e.State == nil || !config.ValidIfaceName(iface) {
		return ""
	}
	return e.State.Path(iface)
}

// RecordError is a record that does not resolve against the
// configuration. It names the record's file and, for a bad setting, the
// setting as the record spells it ("spec.groups[1]"); the setting's own
// problem is a *config.FieldError, worded as for VM files and CNI.
type RecordError struct {
	// Path is the record's file, "" when its interface cannot name one.
	Path string
	// Iface is the record's interface.
	Iface string
	// Err is the problem: a *config.FieldError for a bad setting.
	Err error
}

// Error names the record's file, then the problem.
func (e *RecordError) Error() string {
	where := e.Path
	if where == "" {
		where = "attachment record for " + strconv.Quote(e.Iface)
	}
	var fe *config.FieldError
	if errors.As(e.Err, &fe) {
		return where + ": " + fe.Render(state.Key(fe.Field, fe.Index))
	}
	return where + ": " + e.Err.Error()
}

// Unwrap returns the problem.
func (e *RecordError) Unwrap() error { return e.Err }

// recordNIC resolves a record, whose file is path, against the
// configuration. A record's own settings are validated by the rules of
// VM files and CNI configurations (config.ValidateIface).
func recordNIC(m *config.Model, a *state.Attachment, path string) (*config.NIC, error) {
	fail := func(err error) error { return &RecordError{Path: path, Iface: a.Iface, Err: err} }
	if a.VM != nil {
		if p := config.IfaceNameProblem(a.Iface); p != "" {
			return nil, fail(&config.FieldError{Field: config.FieldIface, Index: -1, Value: a.Iface, Problem: p})
		}
		vm := m.VMs[a.VM.ID]
		if vm == nil {
			return nil, fail(fmt.Errorf("VM %d has no configuration (vms/%d.toml)", a.VM.ID, a.VM.ID))
		}
		for _, n := range vm.NICs {
			if n.Index == a.VM.Index {
				c := *n
				c.Tap = a.Iface
				return &c, nil
			}
		}
		return nil, fail(fmt.Errorf("%s has no [net%d] table", vm.File, a.VM.Index))
	}
	if a.Spec == nil {
		return nil, fail(errors.New("the record has neither a VM nor settings"))
	}
	nic, fe := config.ValidateIface(a.Spec.Settings(a.Iface), func(g string) bool { return m.Groups[g] != nil })
	if fe != nil {
		return nil, fail(fe)
	}
	return nic, nil
}

// claims checks that no address of nic is already another interface's. A
// record that refers to a VM file's interface (ref) shares its addresses.
func (r *resolver) claims(nic *config.NIC, ref *state.VMRef, pending map[string]*config.NIC) error {
	owner := func(ip netip.Addr) string {
		for _, vm := range r.model.VMs {
			for _, n := range vm.NICs {
				if ref != nil && vm.ID == ref.ID && n.Index == ref.Index {
					continue
				}
				if slices.Contains(n.IPs, ip) {
					return fmt.Sprintf("%s (%s)", n.Tap, vm.File)
				}
			}
		}
		for _, src := range []map[string]*config.NIC{r.nics, pending} {
			for iface, n := range src {
				if iface != nic.Tap && slices.Contains(n.IPs, ip) {
					return iface + " (attachment record)"
				}
			}
		}
		return ""
	}
	for _, ip := range nic.IPs {
		if o := owner(ip); o != "" {
			return fmt.Errorf("%s: address %s is already claimed by %s", nic.Tap, ip, o)
		}
	}
	return nil
}

// AttachRecords stores recs and firewalls their interfaces in one change,
// together with the interfaces already attached. It neither moves the
// interfaces nor sets them up: the caller (a CNI bridge plugin, libvirt)
// has done that. A record that does not resolve against the configuration
// (unknown VM or group, bad address, an address another interface claims)
// is a *ConfigError and nothing changes; when applying fails the previous
// records are put back.
func (e *Engine) AttachRecords(ctx context.Context, recs ...*state.Attachment) error {
	if e.State == nil {
		return errors.New("attaching interfaces: no state directory configured")
	}
	r, release, err := e.begin(ctx)
	if err != nil {
		return err
	}
	defer release()
	m := r.model
	pending := map[string]*config.NIC{}
	for _, a := range recs {
		if n := m.NIC(a.Iface); n != nil {
			return &ConfigError{Err: fmt.Errorf("%s: is a tap configured in %s; use ifup", a.Iface, n.VM.File)}
		}
		if pending[a.Iface] != nil {
			return &ConfigError{Err: fmt.Errorf("%s: attached twice", a.Iface)}
		}
		nic, err := recordNIC(m, a, e.recordPath(a.Iface))
		if err != nil {
			return &ConfigError{Err: err}
		}
		pending[a.Iface] = nic
	}
	for _, a := range recs {
		if err := r.claims(pending[a.Iface], a.VM, pending); err != nil {
			return &ConfigError{Err: err}
		}
	}
	if err := e.refuseConflict(ctx); err != nil {
		return err
	}
	if err := e.kernel.Host.EnableBridgeNetfilter(); err != nil {
		return err
	}
	st, err := e.read(ctx)
	if err != nil {
		return err
	}
	var written []*state.Attachment
	undo := func() error {
		var errs []error
		for _, a := range written {
			var err error
			if old := r.recs[a.Iface]; old != nil {
				err = e.State.Put(old)
			} else {
				err = e.State.Delete(a.Iface)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("restoring the record of %s: %w", a.Iface, err))
			}
		}
		return errors.Join(errs...)
	}
	for _, a := range recs {
		if err := e.State.Put(a); err != nil {
			return errors.Join(err, undo())
		}
		written = append(written, a)
	}
	names := st.Installed()
	for iface, nic := range pending {
		r.nics[iface] = nic
		delete(r.problems, iface)
		names = append(names, iface)
	}
	if _, err := e.converge(ctx, m, nicsFor(r, dedupe(names)), st, false); err != nil {
		return errors.Join(fmt.Errorf("firewalling %s: %w", strings.Join(sortedKeys(pending), ", "), err), undo())
	}
	return nil
}

// AttachVM firewalls every existing interface of VM vmid named
// tap<vmid>i<N> (a Proxmox hookscript's post-start: Proxmox has created
// the taps and put them on their bridges). It returns the taps it
// firewalled, none when the VM has no tap. A tap without a [netN] table,
// or taps of a VM without a file, are a *ConfigError and nothing changes.
func (e *Engine) AttachVM(ctx context.Context, vmid int) ([]string, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	m := r.model
	links, err := e.kernel.Host.Links()
	if err != nil {
		return nil, err
	}
	var taps []string
	for name := range links {
		if id, _, ok := config.ParseTapName(name); ok && id == vmid {
			if _, err := lookupNIC(m, name); err != nil {
				return nil, err
			}
			taps = append(taps, name)
		}
	}
	if len(taps) == 0 {
		return nil, nil
	}
	sort.Strings(taps)
	if err := e.refuseConflict(ctx); err != nil {
		return nil, err
	}
	if err := e.kernel.Host.EnableBridgeNetfilter(); err != nil {
		return nil, err
	}
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := e.converge(ctx, m, nicsFor(r, dedupe(append(st.Installed(), taps...))), st, false); err != nil {
		return nil, fmt.Errorf("firewalling %s: %w", strings.Join(taps, ", "), err)
	}
	return taps, nil
}

// Selector picks the interfaces DetachWhere removes.
type Selector struct {
	// Iface selects installed interfaces by name; nil selects none.
	Iface func(name string) bool
	// Record selects attachment records; their interfaces' chains and the
	// records themselves are removed. nil selects none.
	Record func(a *state.Attachment) bool
}

// DetachWhere removes, in one change, the chains and group memberships of
// every selected interface and the selected records. It succeeds when
// nothing is selected or the chains are already gone, so DEL, GC and stop
// hooks can run any number of times. It returns the interfaces it removed
// chains or records of, sorted.
func (e *Engine) DetachWhere(ctx context.Context, sel Selector) ([]string, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	m := r.model
	drop := map[string]bool{}
	var records []string
	if sel.Record != nil {
		for iface, a := range r.recs {
			if sel.Record(a) {
				drop[iface] = true
				records = append(records, iface)
			}
		}
	}
	if sel.Iface == nil && len(records) == 0 {
		return nil, nil // nothing selected, nothing to read or change
	}
	if err := e.refuseConflict(ctx); err != nil {
		return nil, err
	}
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	installed := st.Installed()
	var keep []string
	for _, t := range installed {
		if sel.Iface != nil && sel.Iface(t) {
			drop[t] = true
		}
		if !drop[t] {
			keep = append(keep, t)
		}
	}
	if _, err := e.converge(ctx, m, nicsFor(r, keep), st, false); err != nil {
		return nil, fmt.Errorf("removing %s: %w", strings.Join(sortedKeys(drop), ", "), err)
	}
	// Records go only once their chains are gone: a record without chains
	// is harmless (the next apply reinstalls them if its interface still
	// exists), chains without a record would be removed as unconfigured.
	var errs []error
	for _, iface := range records {
		if err := e.State.Delete(iface); err != nil {
			errs = append(errs, err)
		}
	}
	return sortedKeys(drop), errors.Join(errs...)
}

// Records returns the attachment records, sorted by interface name. It
// reads them under the lock, so it never sees a half-done change.
func (e *Engine) Records(ctx context.Context) ([]*state.Attachment, error) {
	recs, release, err := e.lockedRecords(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	return state.Sorted(recs), nil
}

// lockedRecords takes the lock and reads the attachment records under it;
// the caller must call release. Without a state directory there are none.
func (e *Engine) lockedRecords(ctx context.Context) (recs map[string]*state.Attachment, release func(), err error) {
	if e.State == nil {
		return nil, func() {}, nil
	}
	if release, err = e.lock(ctx); err != nil {
		return nil, nil, err
	}
	if recs, err = e.State.List(); err != nil {
		release()
		return nil, nil, fmt.Errorf("reading attachment records: %w", err)
	}
	return recs, release, nil
}

// DriftError lists what Check found missing or different; nothing was
// changed.
type DriftError struct {
	// Iface is the interface checked.
	Iface string
	// Problems are one-line descriptions, e.g. "ipv4/veth1234-in: missing".
	Problems []string
}

// Error lists the problems on one line.
func (e *DriftError) Error() string {
	return fmt.Sprintf("%s is not firewalled as configured: %s", e.Iface, strings.Join(e.Problems, "; "))
}

// Check verifies, changing nothing, that iface is firewalled as its
// settings say: its chains and its groups' chains in both families, vmfw's
// base chains and jumps, and its addresses in its groups' ipsets. It
// returns iface's record (nil for a configured tap) and a *DriftError
// listing every difference, or a *ConfigError when iface is not managed.
func (e *Engine) Check(ctx context.Context, iface string) (*state.Attachment, error) {
	r, release, err := e.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	m := r.model
	rec := r.recs[iface]
	nic := r.NIC(iface)
	if nic == nil {
		return nil, &DriftError{Iface: iface, Problems: []string{"not managed by vmfw (no configured tap and no attachment record)"}}
	}
	st, err := e.read(ctx)
	if err != nil {
		return nil, err
	}
	d := &DriftError{Iface: iface}
	if p := r.problems[iface]; p != nil {
		d.Problems = append(d.Problems, "record does not resolve, all traffic dropped: "+p.Error())
	}
	want, err := ruleset.Compile(m, nicsFor(r, dedupe(append(st.Installed(), iface))))
	if err != nil {
		return nil, err
	}
	bs, err := e.kernel.Backend.Status(ctx, st, want)
	if err != nil {
		return nil, err
	}
	drifts := slices.Clone(bs.BaseDrifted)
	if is := bs.Interfaces[iface]; is != nil {
		drifts = append(drifts, is.Drifted...)
	}
	for _, dr := range drifts {
		d.Problems = append(d.Problems, dr.String())
	}
	if len(d.Problems) > 0 {
		return rec, d
	}
	return rec, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Config loads and validates the configuration; an invalid one is a
// *ConfigError.
func (e *Engine) Config() (*config.Model, error) { return e.load() }

// prune deletes the records of interfaces that no longer exist: the
// attachment ended without its DEL or stop hook (a crash, a reboot), and a
// later interface of the same name (libvirt reuses vnetN) must not inherit
// its settings.
func (e *Engine) prune(r *resolver, links map[string]bool) error {
	var errs []error
	for iface := range r.recs {
		if !links[iface] {
			if err := e.State.Delete(iface); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// ForgetWhere is the part of DetachWhere that needs no configuration, for
// when it cannot be loaded and the caller must still finish (a CNI DEL
// that fails is retried until someone repairs the configuration, and the
// container cannot go away meanwhile). It deletes the selected records and
// removes the addresses they list from every vmfw ipset, so that whoever
// gets an address next does not inherit the old holder's groups. The
// interfaces' chains stay: they are gone with their interfaces from every
// packet's path, and the next apply, which sees no record for them,
// removes them. It returns the interfaces whose records it deleted.
func (e *Engine) ForgetWhere(ctx context.Context, sel func(a *state.Attachment) bool) ([]string, error) {
	recs, release, err := e.lockedRecords(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	var forgotten []string
	var addrs []netip.Addr
	for iface, a := range recs {
		if !sel(a) {
			continue
		}
		forgotten = append(forgotten, iface)
		if a.Spec != nil {
			for _, ip := range a.Spec.IPs {
				if p, err := netip.ParseAddr(ip); err == nil {
					addrs = append(addrs, p)
				}
			}
		}
	}
	sort.Strings(forgotten)
	if err := e.kernel.Backend.ForgetAddresses(ctx, addrs); err != nil {
		return nil, err
	}
	var errs []error
	for _, iface := range forgotten {
		if err := e.State.Delete(iface); err != nil {
			errs = append(errs, err)
		}
	}
	return forgotten, errors.Join(errs...)
}
