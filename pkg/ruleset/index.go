package ruleset

// index maps keys (interface names, addresses) to attached interfaces.
// A policy derived by With shares its predecessor's index: the few keys
// the change touches go into a layer of its own over the one it derives
// from, instead of a copy of every key (copying the names and addresses of
// 5000 interfaces cost 0.4 ms of every ifup through the agent,
// docs/performance.md). Layers are never changed once derived from, and
// are folded into one map when they grow deep, so a lookup costs at most
// maxLayers map reads and the folding one copy every maxLayers changes.
type index[K comparable] struct {
	// own holds this layer's keys; a nil value deletes the key below.
	own   map[K]*Interface
	below *index[K]
	depth int
}

// maxLayers bounds how many layers a lookup reads.
const maxLayers = 16

func newIndex[K comparable](n int) *index[K] {
	return &index[K]{own: make(map[K]*Interface, n)}
}

// get returns the interface of k, or nil; a nil index holds nothing.
func (x *index[K]) get(k K) *Interface {
	for ; x != nil; x = x.below {
		if v, ok := x.own[k]; ok {
			return v
		}
	}
	return nil
}

// set maps k to n in x's own layer.
func (x *index[K]) set(k K, n *Interface) { x.own[k] = n }

// del deletes k in x's own layer.
func (x *index[K]) del(k K) {
	if x.below == nil {
		delete(x.own, k)
		return
	}
	x.own[k] = nil
}

// derive returns a new, empty layer over x (x folded first when deep),
// for a derived policy to write to.
func (x *index[K]) derive() *index[K] {
	if x == nil {
		return newIndex[K](0)
	}
	if x.depth+1 >= maxLayers {
		return &index[K]{own: map[K]*Interface{}, below: &index[K]{own: x.all()}, depth: 1}
	}
	return &index[K]{own: map[K]*Interface{}, below: x, depth: x.depth + 1}
}

// all returns every key that x maps to an interface, in a new map.
func (x *index[K]) all() map[K]*Interface {
	if x == nil {
		return map[K]*Interface{}
	}
	out := x.below.all()
	for k, v := range x.own {
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
	}
	return out
}
