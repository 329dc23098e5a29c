package config

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
)

// The index's binary part: the VMs and the identities of the files and
// directories a load read, which grow with the VMs. encoding/json spent
// 35 ms of an ifup at 5000 VMs decoding them (docs/performance.md, "An
// ifup without the agent"); this layout decodes them in a few. Every
// slice is written with its length plus one, 0 for nil, so that the
// Model read back is the one Load returned (an empty list is not a
// missing one), as encoding/json kept it. TestIndexCodecCoversEveryField
// fails when a field of VM or NIC is added here nowhere.

// errIndexCorrupt is a decode that ran past the end or read nonsense: the
// index is then not used.
var errIndexCorrupt = errors.New("corrupt index")

// encoder appends the binary encoding of values to buf.
type encoder struct{ buf []byte }

func (e *encoder) uvarint(v uint64) { e.buf = binary.AppendUvarint(e.buf, v) }
func (e *encoder) varint(v int64)   { e.buf = binary.AppendVarint(e.buf, v) }

func (e *encoder) bool(b bool) {
	if b {
		e.buf = append(e.buf, 1)
	} else {
		e.buf = append(e.buf, 0)
	}
}

func (e *encoder) str(s string) {
	e.uvarint(uint64(len(s)))
	e.buf = append(e.buf, s...)
}

// count writes the length n of a list, keeping nil apart from empty.
func (e *encoder) count(n int, isNil bool) {
	if isNil {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(n) + 1)
}

func (e *encoder) bytes(b []byte) {
	e.count(len(b), b == nil)
	e.buf = append(e.buf, b...)
}

func (e *encoder) strs(list []string) {
	e.count(len(list), list == nil)
	for _, s := range list {
		e.str(s)
	}
}

func (e *encoder) addrs(list []netip.Addr) {
	e.count(len(list), list == nil)
	for _, a := range list {
		b, _ := a.MarshalBinary() // never fails
		e.bytes(b)
	}
}

func (e *encoder) vm(vm *VM) {
	e.varint(int64(vm.ID))
	e.str(vm.File)
	e.str(vm.Name)
	e.bool(vm.Enable)
	e.bool(vm.DropInvalid)
	e.str(string(vm.PolicyIn))
	e.str(string(vm.PolicyOut))
	e.bool(vm.Log)
	e.str(string(vm.LogIn))
	e.str(string(vm.LogOut))
	e.count(len(vm.NICs), vm.NICs == nil)
	for _, n := range vm.NICs {
		e.varint(int64(n.Index))
		e.varint(int64(n.Line))
		e.str(n.Tap)
		e.bytes(n.MAC)
		e.addrs(n.IPs)
		e.str(n.Bridge)
		e.strs(n.Groups)
		e.bool(n.Antispoof)
		e.bool(n.AntispoofMACOnly)
		e.bool(n.DHCP)
		e.bool(n.NoNDP)
		e.strs(n.L2Protocols)
	}
}

func (e *encoder) fileID(id fileID) {
	e.str(id.Path)
	e.bool(id.Missing)
	e.varint(id.Size)
	e.varint(id.ModTime)
	e.varint(id.ChangeNS)
	e.uvarint(id.Dev)
	e.uvarint(id.Ino)
}

// decoder reads what encoder wrote. The first error sticks: every later
// read returns a zero value, and err says the index is not to be used.
//
// It allocates little, because a one-shot vmfw decodes 5000 VMs on every
// ifup: strings are substrings of text, one copy of the whole buffer;
// byte slices alias the buffer, which the caller must not reuse.
type decoder struct {
	buf []byte
	// text is the buffer the decoder started with, as a string, and
	// size its length: the string at buf[0] is text[size-len(buf):].
	text string
	size int
	err  error
	// interned holds the short strings many VMs repeat (group names,
	// policies, bridges).
	interned map[string]string
}

// newDecoder returns a decoder of b.
func newDecoder(b []byte) *decoder {
	return &decoder{buf: b, text: string(b), size: len(b), interned: map[string]string{}}
}

func (d *decoder) fail() { d.err, d.buf = errIndexCorrupt, nil }

// uvarint and varint read a number; binary's functions return 0 with a
// count of 0 or less for a buffer too short or a number too long.
func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.buf)
	d.skip(n)
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.buf)
	d.skip(n)
	return v
}

// skip consumes the n bytes of a number just read, or fails for n <= 0.
func (d *decoder) skip(n int) {
	if n <= 0 {
		d.fail()
		return
	}
	d.buf = d.buf[n:]
}

func (d *decoder) bool() bool {
	if len(d.buf) == 0 || d.buf[0] > 1 {
		d.fail()
		return false
	}
	b := d.buf[0] == 1
	d.buf = d.buf[1:]
	return b
}

// raw returns the next n bytes, aliasing the buffer.
func (d *decoder) raw(n uint64) []byte {
	if n > uint64(len(d.buf)) {
		d.fail()
		return nil
	}
	b := d.buf[:n]
	d.buf = d.buf[n:]
	return b
}

func (d *decoder) str() string {
	n := d.uvarint()
	at := d.size - len(d.buf)
	if d.raw(n); d.err != nil {
		return ""
	}
	return d.text[at : at+int(n)]
}

// istr is str for strings many records repeat: the first of each is
// kept, so that the model holds one copy however many VMs repeat it.
func (d *decoder) istr() string {
	s := d.str()
	if in, ok := d.interned[s]; ok {
		return in
	}
	d.interned[s] = s
	return s
}

// count reads a length written with nil apart from empty: n is the
// length, ok false for nil. A length longer than what is left is corrupt.
func (d *decoder) count() (n int, ok bool) {
	v := d.uvarint()
	if v == 0 {
		return 0, false
	}
	if v-1 > uint64(len(d.buf)) {
		d.fail()
		return 0, false
	}
	return int(v - 1), true
}

func (d *decoder) bytes() []byte {
	n, ok := d.count()
	if !ok {
		return nil
	}
	b := d.raw(uint64(n))
	if b == nil {
		return nil
	}
	return b[:n:n] // an append must not write over what follows
}

func (d *decoder) strs() []string {
	n, ok := d.count()
	if !ok {
		return nil
	}
	list := make([]string, n)
	for i := range list {
		list[i] = d.istr()
	}
	return list
}

func (d *decoder) addrs() []netip.Addr {
	n, ok := d.count()
	if !ok {
		return nil
	}
	list := make([]netip.Addr, n)
	for i := range list {
		b, ok := d.count()
		if !ok || list[i].UnmarshalBinary(d.raw(uint64(b))) != nil {
			d.fail()
			return nil
		}
	}
	return list
}

// vm reads a VM into *vm, which the caller allocates (readIndex: all of
// them at once).
func (d *decoder) vm(vm *VM) {
	*vm = VM{
		ID:          int(d.varint()),
		File:        d.str(),
		Name:        d.str(),
		Enable:      d.bool(),
		DropInvalid: d.bool(),
		PolicyIn:    Action(d.istr()),
		PolicyOut:   Action(d.istr()),
		Log:         d.bool(),
		LogIn:       LogLevel(d.istr()),
		LogOut:      LogLevel(d.istr()),
	}
	n, ok := d.count()
	if !ok {
		return
	}
	vm.NICs = make([]*NIC, n)
	nics := make([]NIC, n)
	for i := range vm.NICs {
		nic := &nics[i]
		*nic = NIC{VM: vm, Index: int(d.varint()), Line: int(d.varint()), Tap: d.str()}
		if mac := d.bytes(); mac != nil {
			nic.MAC = net.HardwareAddr(mac)
		}
		nic.IPs = d.addrs()
		nic.Bridge = d.istr()
		nic.Groups = d.strs()
		nic.Antispoof = d.bool()
		nic.AntispoofMACOnly = d.bool()
		nic.DHCP = d.bool()
		nic.NoNDP = d.bool()
		nic.L2Protocols = d.strs()
		vm.NICs[i] = nic
	}
}

func (d *decoder) fileID() fileID {
	return fileID{Path: d.str(), Missing: d.bool(), Size: d.varint(), ModTime: d.varint(),
		ChangeNS: d.varint(), Dev: d.uvarint(), Ino: d.uvarint()}
}
