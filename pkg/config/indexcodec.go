package config

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"unsafe"
)

// The index's binary part: the VMs and the identities of the files and
// directories a load read, which grow with the VMs. encoding/json spent
// 35 ms of an ifup at 5000 VMs decoding them (docs/performance.md, "An
// ifup without the agent"); this layout decodes them in a few. Every
// slice is written with its length plus one, 0 for nil, so that the
// Model read back is the one Load returned (an empty list is not a
// missing one), as encoding/json kept it. TestIndexCodecCoversEveryField
// fails when a field of VM or NIC is added here nowhere.
//
// The VMs section starts with the strings many VMs repeat (group names,
// bridges, policies), which the VMs then name by number, and with how
// many NICs, addresses and listed strings its VMs hold, which the decoder
// allocates at once: looking each repeated string up in a map, and
// allocating each VM's lists apart, were a third of decoding 5000 VMs
// (BenchmarkReadIndex5000; docs/performance.md, "Policies without
// indexes, and a smaller index").

// errIndexCorrupt is a decode that ran past the end or read nonsense: the
// index is then not used.
var errIndexCorrupt = errors.New("corrupt index")

// coder is one side of the codec: the encoder writes each field it is
// given, the decoder reads each into place (a zero value: a field it fails
// to read stays zero). The records' layouts (vmLayout, nicLayout,
// fileIDLayout) are written once against it, so that what is written and
// what is read back are one list of fields in one order.
type coder interface {
	int(*int)
	int64(*int64)
	uint64(*uint64)
	bool(*bool)
	str(*string)
	// istr is str for strings many records repeat, which the decoder keeps
	// one copy of.
	istr(*string)
	bytes(*[]byte)
	strs(*[]string)
	addrs(*[]netip.Addr)
	// nics is vm's NICs, each in nicLayout.
	nics(vm *VM)
}

// vmLayout is the layout of a VM. The decoder reads into *vm, which the
// caller allocates (decoder.vms: all of them at once).
func vmLayout(c coder, vm *VM) {
	c.int(&vm.ID)
	c.str(&vm.File)
	c.str(&vm.Name)
	c.bool(&vm.Enable)
	c.bool(&vm.DropInvalid)
	c.istr((*string)(&vm.PolicyIn))
	c.istr((*string)(&vm.PolicyOut))
	c.bool(&vm.Log)
	c.istr((*string)(&vm.LogIn))
	c.istr((*string)(&vm.LogOut))
	c.nics(vm)
}

// nicLayout is the layout of a NIC but for NIC.VM, the VM it is written in.
func nicLayout(c coder, n *NIC) {
	c.int(&n.Index)
	c.int(&n.Line)
	c.str(&n.Tap)
	c.bytes((*[]byte)(&n.MAC))
	c.addrs(&n.IPs)
	c.istr(&n.Bridge)
	c.strs(&n.Groups)
	c.bool(&n.Antispoof)
	c.bool(&n.AntispoofMACOnly)
	c.bool(&n.DHCP)
	c.bool(&n.NoNDP)
	c.strs(&n.L2Protocols)
}

func fileIDLayout(c coder, id *fileID) {
	c.str(&id.Path)
	c.bool(&id.Missing)
	c.int64(&id.Size)
	c.int64(&id.ModTime)
	c.int64(&id.ChangeNS)
	c.uint64(&id.Dev)
	c.uint64(&id.Ino)
}

// encoder appends the binary encoding of values to buf.
type encoder struct {
	buf []byte
	// numbers numbers the strings istr writes, from 1 (0 is ""), in the
	// order of strings.
	numbers map[string]uint64
	strings []string
	// totalNICs, totalAddrs and totalListed count the NICs, addresses
	// and strings in lists written.
	totalNICs, totalAddrs, totalListed int
}

// vms appends the VMs section: the strings of the VMs' istr fields, the
// counts the decoder allocates by, then each VM (decoder.vms).
func (e *encoder) vms(list []*VM) {
	body := &encoder{numbers: map[string]uint64{}}
	for _, vm := range list {
		vmLayout(body, vm)
	}
	e.count(len(body.strings), false)
	for i := range body.strings {
		e.str(&body.strings[i])
	}
	e.uvarint(uint64(body.totalNICs))
	e.uvarint(uint64(body.totalAddrs))
	e.uvarint(uint64(body.totalListed))
	e.count(len(list), false)
	e.buf = append(e.buf, body.buf...)
}

func (e *encoder) uvarint(v uint64) { e.buf = binary.AppendUvarint(e.buf, v) }
func (e *encoder) varint(v int64)   { e.buf = binary.AppendVarint(e.buf, v) }

func (e *encoder) int(p *int)       { e.varint(int64(*p)) }
func (e *encoder) int64(p *int64)   { e.varint(*p) }
func (e *encoder) uint64(p *uint64) { e.uvarint(*p) }

func (e *encoder) bool(p *bool) {
	if *p {
		e.buf = append(e.buf, 1)
	} else {
		e.buf = append(e.buf, 0)
	}
}

func (e *encoder) str(p *string) {
	e.uvarint(uint64(len(*p)))
	e.buf = append(e.buf, *p...)
}

func (e *encoder) istr(p *string) {
	if *p == "" {
		e.uvarint(0)
		return
	}
	n, ok := e.numbers[*p]
	if !ok {
		e.strings = append(e.strings, *p)
		n = uint64(len(e.strings))
		e.numbers[*p] = n
	}
	e.uvarint(n)
}

// count writes the length n of a list, keeping nil apart from empty.
func (e *encoder) count(n int, isNil bool) {
	if isNil {
		e.uvarint(0)
		return
	}
	e.uvarint(uint64(n) + 1)
}

func (e *encoder) bytes(p *[]byte) {
	e.count(len(*p), *p == nil)
	e.buf = append(e.buf, *p...)
}

func (e *encoder) strs(p *[]string) {
	e.count(len(*p), *p == nil)
	e.totalListed += len(*p)
	for i := range *p {
		e.istr(&(*p)[i])
	}
}

func (e *encoder) addrs(p *[]netip.Addr) {
	e.count(len(*p), *p == nil)
	e.totalAddrs += len(*p)
	for _, a := range *p {
		b, _ := a.MarshalBinary() // never fails
		e.bytes(&b)
	}
}

func (e *encoder) nics(vm *VM) {
	e.count(len(vm.NICs), vm.NICs == nil)
	e.totalNICs += len(vm.NICs)
	for _, n := range vm.NICs {
		nicLayout(e, n)
	}
}

// decoder reads what encoder wrote. The first error sticks: every later
// read returns a zero value, and err says the index is not to be used.
//
// It allocates little, because a one-shot vmfw decodes 5000 VMs on every
// ifup: strings are substrings of text, the whole buffer seen as a string
// without a copy (a megabyte at 5000 VMs, which a process that does not
// collect garbage pays for in page faults); byte slices alias the buffer
// too. The caller hands the buffer over: nothing may write to it again.
type decoder struct {
	buf []byte
	// text is the buffer the decoder started with, as a string, and
	// size its length: the string at buf[0] is text[size-len(buf):].
	text string
	size int
	err  error
	// numbered holds the strings istr reads by number (encoder.vms).
	numbered []string
	// The NICs, addresses and listed strings of the VMs section, each
	// allocated once and taken from by the VMs in turn.
	nicSlab  []NIC
	nicPtrs  []*NIC
	addrSlab []netip.Addr
	strSlab  []string
}

// newDecoder returns a decoder of b, which is the decoder's from then on.
func newDecoder(b []byte) *decoder {
	return &decoder{buf: b, text: unsafe.String(unsafe.SliceData(b), len(b)), size: len(b)}
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

func (d *decoder) int(p *int)       { *p = int(d.varint()) }
func (d *decoder) int64(p *int64)   { *p = d.varint() }
func (d *decoder) uint64(p *uint64) { *p = d.uvarint() }

func (d *decoder) bool(p *bool) {
	if len(d.buf) == 0 || d.buf[0] > 1 {
		d.fail()
		return
	}
	*p = d.buf[0] == 1
	d.buf = d.buf[1:]
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

func (d *decoder) str(p *string) {
	n := d.uvarint()
	at := d.size - len(d.buf)
	if d.raw(n); d.err != nil {
		return
	}
	*p = d.text[at : at+int(n)]
}

// istr reads a string by its number in the VMs section's strings.
func (d *decoder) istr(p *string) {
	n := d.uvarint()
	switch {
	case n == 0:
		*p = ""
	case n > uint64(len(d.numbered)):
		d.fail()
	default:
		*p = d.numbered[n-1]
	}
}

// vms reads the VMs section (encoder.vms) into one array.
func (d *decoder) vms() []VM {
	n, _ := d.count()
	d.numbered = make([]string, n)
	for i := range d.numbered {
		d.str(&d.numbered[i])
	}
	// Each NIC, address and listed string takes a byte at least: counts
	// past what is left are corrupt, not something to allocate.
	var totals [3]int
	for i := range totals {
		if t := d.uvarint(); t <= uint64(len(d.buf)) {
			totals[i] = int(t)
		} else {
			d.fail()
		}
	}
	d.nicSlab, d.nicPtrs = make([]NIC, totals[0]), make([]*NIC, totals[0])
	d.addrSlab, d.strSlab = make([]netip.Addr, totals[1]), make([]string, totals[2])
	n, _ = d.count()
	vms := make([]VM, n)
	for i := range vms {
		vmLayout(d, &vms[i])
	}
	return vms
}

// take returns the next n items of *slab, capped at n so that an append
// to them cannot write over the next list's; it fails when fewer are
// left than the section's counts promised.
func take[T any](d *decoder, slab *[]T, n int) []T {
	if n > len(*slab) {
		d.fail()
		return nil
	}
	out := (*slab)[:n:n]
	*slab = (*slab)[n:]
	return out
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

func (d *decoder) bytes(p *[]byte) {
	n, ok := d.count()
	if !ok {
		return
	}
	if b := d.raw(uint64(n)); b != nil {
		*p = b[:n:n] // an append must not write over what follows
	}
}

func (d *decoder) strs(p *[]string) {
	n, ok := d.count()
	if !ok {
		return
	}
	*p = take(d, &d.strSlab, n)
	for i := range *p {
		d.istr(&(*p)[i])
	}
}

func (d *decoder) addrs(p *[]netip.Addr) {
	n, ok := d.count()
	if !ok {
		return
	}
	list := take(d, &d.addrSlab, n)
	for i := range list {
		b, ok := d.count()
		if !ok || list[i].UnmarshalBinary(d.raw(uint64(b))) != nil {
			d.fail()
			return
		}
	}
	*p = list
}

// nics takes the NICs of a VM from the section's.
func (d *decoder) nics(vm *VM) {
	n, ok := d.count()
	if !ok {
		return
	}
	vm.NICs = take(d, &d.nicPtrs, n)
	nics := take(d, &d.nicSlab, n)
	if d.err != nil {
		return
	}
	for i := range vm.NICs {
		nics[i].VM = vm
		nicLayout(d, &nics[i])
		vm.NICs[i] = &nics[i]
	}
}
