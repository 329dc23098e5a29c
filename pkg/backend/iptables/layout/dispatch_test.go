package layout

import (
	"fmt"
	"math/rand"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// scaleNames returns n tap names of the kind the benchmark installs:
// tap<id>i0 for even ids from 1000.
func scaleNames(n int) []string {
	out := make([]string, n)
	for k := range out {
		out[k] = fmt.Sprintf("tap%di0", 1000+2*k)
	}
	return out
}

var testManaged = []string{"tap+", "vnet+"}

const testClear = "-j MARK --set-xmark 0x0/0x1000"

// chainMap indexes chains by name.
func chainMap(chains []*ChainRules) map[Chain]*ChainRules {
	m := map[Chain]*ChainRules{}
	for _, c := range chains {
		m[c.Name] = c
	}
	return m
}

var ruleShape = regexp.MustCompile(`^(?:-m physdev --physdev-(?:in|out)|-i) (\S+) (-g|-j) (\S+)$`)

// ifaceMatches is the kernel's interface match: the exact name, or a
// prefix when the pattern ends with "+".
func ifaceMatches(pattern, name string) bool {
	if stem, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, stem)
	}
	return pattern == name
}

// walk follows a packet from root through a tree of chains, as the
// kernel would. follow reads a rule: the chain it sends the packet to, ""
// when it does not match, and whether it is one of the tree's matches
// (not a head's handling of the mark); the walk ends at a chain leaf
// reports. It returns that chain ("" when the packet falls off the tree)
// and the number of matches evaluated; a tree deeper than limit chains
// fails t, naming what.
func walk(t *testing.T, chains map[Chain]*ChainRules, root Chain, what string, limit int, follow func(spec string) (to Chain, counted bool), leaf func(Chain) bool) (Chain, int) {
	t.Helper()
	c, evaluated := chains[root], 0
	for depth := 0; ; depth++ {
		if depth > limit {
			t.Fatalf("%s deeper than %d chains", what, limit)
		}
		next := Chain("")
		for _, r := range c.Rules {
			to, counted := follow(r.Spec)
			if counted {
				evaluated++
			}
			if to != "" {
				next = to
				break
			}
		}
		if next == "" {
			return "", evaluated
		}
		if leaf(next) {
			return next, evaluated
		}
		c = chains[next]
	}
}

// trace runs a packet from port through the dispatch chains starting at
// root: it returns the tap chain the packet reaches ("DROP" for a
// fail-closed drop, "" when it falls off the tree) and the number of
// interface matches evaluated.
func trace(t *testing.T, chains map[Chain]*ChainRules, root Chain, port string) (string, int) {
	t.Helper()
	to, evaluated := walk(t, chains, root, port+": dispatch", 20, func(spec string) (Chain, bool) {
		m := ruleShape.FindStringSubmatch(spec)
		if m == nil {
			return "", false // the root's mark reset
		}
		if !ifaceMatches(m[1], port) {
			return "", true
		}
		return Chain(m[3]), true
	}, func(c Chain) bool { return chains[c] == nil }) // DROP, or a tap's own chain
	return string(to), evaluated
}

// TestDispatchReachesEveryTap checks that every installed tap reaches its
// own chain in both directions, a managed tap without chains is dropped
// wherever it falls off the tree, and other ports return untouched.
func TestDispatchReachesEveryTap(t *testing.T) {
	names := append(scaleNames(600), "tap100i1", "tap100i10", "tap100i11", "tap100i12", "tap1", "vnet7", "x")
	chains := chainMap(dispatchChains(names, testManaged, testClear))
	for _, root := range []Chain{ChainOut, ChainIn} {
		dir := strings.TrimPrefix(string(root), "vmfw-")
		for _, n := range names {
			if got, _ := trace(t, chains, root, n); got != n+"-"+dir {
				t.Errorf("%s: port %s reaches %q, want %s-%s", root, n, got, n, dir)
			}
		}
		for _, n := range []string{"tap1001i0", "tap1234i9", "tap100i13", "tap10", "tap2", "tap", "vnet70", "tap99999i0"} {
			if got, _ := trace(t, chains, root, n); got != "DROP" {
				t.Errorf("%s: managed port %s without chains reaches %q, want DROP", root, n, got)
			}
		}
		for _, n := range []string{"eth0", "uplink", "ta", "xy", "vne"} {
			if got, _ := trace(t, chains, root, n); got != "" {
				t.Errorf("%s: unmanaged port %s reaches %q, want to fall through", root, n, got)
			}
		}
	}
}

// TestDispatchCostLogarithmic checks the per-packet cost: the interface
// matches a packet of an installed tap evaluates grow by a bounded step per
// tenfold growth of the tap count, and stay far below a flat list's.
func TestDispatchCostLogarithmic(t *testing.T) {
	var prevAvg float64
	for _, n := range []int{50, 500, 5000, 50000} {
		names := scaleNames(n)
		chains := chainMap(dispatchChains(names, testManaged, testClear))
		total, worst := 0, 0
		for _, name := range names {
			_, cost := trace(t, chains, ChainOut, name)
			total += cost
			worst = max(worst, cost)
		}
		avg := float64(total) / float64(n)
		t.Logf("%6d taps: %.1f matches on average, %d at worst, %d chains", n, avg, worst, len(chains))
		if worst > 12*digits(n) {
			t.Errorf("%d taps: worst case %d matches, want at most %d (12 per decimal digit)", n, worst, 12*digits(n))
		}
		if prevAvg > 0 && avg-prevAvg > 7 {
			t.Errorf("%d taps: average grew from %.1f to %.1f for ten times the taps, want at most 7 more", n, prevAvg, avg)
		}
		prevAvg = avg
	}
}

func digits(n int) int { return len(fmt.Sprint(n)) }

// TestDispatchBalancedNodes checks that no node lists more entries than
// one per possible next character plus the small groups it keeps inline.
func TestDispatchBalancedNodes(t *testing.T) {
	tree := newDispatchTree(scaleNames(5000))
	tree.walk(func(n *dispatchNode) {
		if len(n.entries) > 11*leafMax {
			t.Errorf("node %q has %d entries", n.prefix, len(n.entries))
		}
		for _, e := range n.entries {
			if e.node != nil && len(e.node.entries) < 2 {
				t.Errorf("node %q has a single entry", e.node.prefix)
			}
		}
	})
}

// TestDispatchIndependentOfOrder checks that the tree depends on the set of
// names only, which is what lets an incremental change and a full apply
// agree chain for chain.
func TestDispatchIndependentOfOrder(t *testing.T) {
	names := scaleNames(300)
	want := dispatchChains(names, testManaged, testClear)
	r := rand.New(rand.NewSource(1))
	for range 5 {
		shuffled := slices.Clone(names)
		r.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		shuffled = append(shuffled, shuffled[:10]...) // duplicates too
		got := dispatchChains(shuffled, testManaged, testClear)
		if !sameChains(want, got) {
			t.Fatal("dispatch chains depend on the order of the names")
		}
	}
}

func sameChains(a, b []*ChainRules) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || !slices.Equal(a[i].Rules, b[i].Rules) {
			return false
		}
	}
	return true
}

// changedChains returns the chains that differ between two dispatches:
// created, removed or with other rules.
func changedChains(before, after []*ChainRules) []Chain {
	b, a := chainMap(before), chainMap(after)
	var out []Chain
	for name, c := range a {
		if old := b[name]; old == nil || !slices.Equal(old.Rules, c.Rules) {
			out = append(out, name)
		}
	}
	for name := range b {
		if a[name] == nil {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// onPath returns the chains a packet of port passes in chains, from root.
func onPath(t *testing.T, chains map[Chain]*ChainRules, root Chain, port string) map[Chain]bool {
	t.Helper()
	path := map[Chain]bool{root: true}
	c := chains[root]
	for c != nil {
		var next *ChainRules
		for _, r := range c.Rules {
			m := ruleShape.FindStringSubmatch(r.Spec)
			if m != nil && m[3] != "DROP" && ifaceMatches(m[1], port) {
				next = chains[Chain(m[3])]
				break
			}
		}
		if next != nil {
			path[next.Name] = true
		}
		c = next
	}
	return path
}

// TestDispatchMinimalRewrite checks that adding or removing one tap changes
// only the chains on that tap's path, in either tree, plus at most the one
// chain that takes over the root's entries when the names' common prefix
// changes; at 5000 taps that is a handful of the ~2200 chains.
func TestDispatchMinimalRewrite(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	base := scaleNames(5000)
	cases := []string{"tap1001i0", "tap5555i0", "tap10998i0", "tap20000i0", "tap1000i1", "vnet0", "tap1i0"}
	for range 20 {
		cases = append(cases, fmt.Sprintf("tap%di0", 1000+r.Intn(12000)))
	}
	for _, tap := range cases {
		without := slices.DeleteFunc(slices.Clone(base), func(s string) bool { return s == tap })
		with := append(slices.Clone(without), tap)
		before := dispatchChains(without, testManaged, testClear)
		after := dispatchChains(with, testManaged, testClear)
		changed := changedChains(before, after)
		path := onPath(t, chainMap(after), ChainOut, tap)
		for c := range onPath(t, chainMap(after), ChainIn, tap) {
			path[c] = true
		}
		var off []Chain
		for _, c := range changed {
			if !path[c] {
				off = append(off, c)
			}
		}
		// Off the path only the chains taking over a root's entries (one
		// per direction) may change.
		if len(off) > 2 {
			t.Errorf("adding %s changes %v off its path", tap, off)
		}
		if len(changed) > 12 {
			t.Errorf("adding %s changes %d chains: %v", tap, len(changed), changed)
		}
		// Removing is the same change backwards.
		if back := changedChains(after, before); !slices.Equal(back, changed) {
			t.Errorf("removing %s changes %v, adding changed %v", tap, back, changed)
		}
	}
}

// TestDispatchChainNames checks that node chains are named the way the
// rest of vmfw recognises as its own, uniquely, and within the limits.
func TestDispatchChainNames(t *testing.T) {
	names := append(scaleNames(2000), "tap999999990i0", "tap999999991i0", "tap999999992i0", "tap999999993i0",
		"tap999999994i10", "tap999999994i11", "tap999999994i12", "tap999999994i13", "a.b-c_d")
	chains := dispatchChains(names, testManaged, testClear)
	seen := map[Chain]bool{}
	hashed := 0
	for _, c := range chains {
		if seen[c.Name] {
			t.Errorf("chain %s written twice", c.Name)
		}
		seen[c.Name] = true
		if !IsOwnedName(string(c.Name)) {
			t.Errorf("chain %s is not named like a vmfw chain", c.Name)
		}
		if !strings.HasPrefix(string(c.Name), "vmfw-") {
			t.Errorf("chain %s does not start with vmfw- (it would be taken for a tap's chain)", c.Name)
		}
		if strings.HasPrefix(string(c.Name), "vmfw-h") && len(c.Name) == len("vmfw-h123456789-out") {
			hashed++
		}
	}
	if hashed == 0 {
		t.Error("no node of a long prefix was named by hash")
	}
	for _, c := range l2Dispatch(names) {
		if !IsOwnedName(string(c.Name)) || !strings.HasSuffix(string(c.Name), "-l2") {
			t.Errorf("L2 chain %s is not named like a vmfw L2 chain", c.Name)
		}
	}
	for _, c := range l2DestDispatch(names) {
		if !IsOwnedName(string(c.Name)) || !strings.HasSuffix(string(c.Name), "-l2d") || !isDispatchChain(c.Name) {
			t.Errorf("L2 destination chain %s is not named like a vmfw L2 destination dispatch chain", c.Name)
		}
		if _, _, ok := ParseTapChain(c.Name); ok {
			t.Errorf("L2 destination dispatch chain %s parses as a tap's chain", c.Name)
		}
	}
}

// TestDispatchFailClosedInNodes checks that every node chain under the
// managed prefix ends with its drop, and no node carries a pattern that
// cannot match its names.
func TestDispatchFailClosedInNodes(t *testing.T) {
	for _, c := range dispatchChains(scaleNames(800), testManaged, testClear) {
		last := c.Rules[len(c.Rules)-1]
		root := c.Name == ChainOut || c.Name == ChainIn
		if !strings.Contains(last.Spec, "-j DROP") || last.Comment != "fail-closed" {
			t.Errorf("%s does not end with a fail-closed drop: %q", c.Name, last.Spec)
		}
		for _, r := range c.Rules {
			if strings.Contains(r.Spec, "vnet+") && !root {
				t.Errorf("node %s carries the vnet+ drop, which cannot match its names", c.Name)
			}
		}
	}
}

// TestL2DispatchVisitsOwnChainOnce runs frames through the ebtables tree:
// without goto, a frame returning from its tap's chain continues in the
// node that jumped there, so the test follows jumps and returns and checks
// that each port's frames enter exactly its own chain, once.
func TestL2DispatchVisitsOwnChainOnce(t *testing.T) {
	names := append(scaleNames(400), "tap100i1", "tap100i10", "tap100i11", "tap100i12")
	chains := chainMap(l2Dispatch(names))
	var visit func(c *ChainRules, port string, entered *[]string, depth int)
	visit = func(c *ChainRules, port string, entered *[]string, depth int) {
		if depth > 20 {
			t.Fatalf("%s: jumps deeper than 20", port)
		}
		for _, r := range c.Rules {
			m := ruleShape.FindStringSubmatch(r.Spec)
			if m == nil || m[2] != "-j" {
				t.Fatalf("unexpected L2 rule %q", r.Spec)
			}
			if !ifaceMatches(m[1], port) {
				continue
			}
			if next := chains[Chain(m[3])]; next != nil {
				visit(next, port, entered, depth+1)
			} else {
				*entered = append(*entered, m[3])
			}
		}
	}
	for _, n := range append(names, "tap1001i0", "eth0") {
		var entered []string
		visit(chains[ChainL2], n, &entered, 0)
		want := []string{n + "-l2"}
		if n == "tap1001i0" || n == "eth0" {
			want = nil
		}
		if !slices.Equal(entered, want) {
			t.Errorf("frame from %s enters %v, want %v", n, entered, want)
		}
	}

	// vmfw-l2d is the same tree on the output port, after its head.
	chains = chainMap(l2DestDispatch(names))
	root := chains[ChainL2Dest]
	if len(root.Rules) == 0 || root.Rules[0].Spec != "-d Multicast -j RETURN" {
		t.Fatalf("vmfw-l2d does not start with the multicast return: %v", root.Rules)
	}
	root = &ChainRules{Name: root.Name, Rules: root.Rules[1:]}
	for _, c := range chains {
		for i, r := range c.Rules {
			c.Rules[i].Spec = strings.Replace(r.Spec, "-o ", "-i ", 1)
		}
	}
	for _, n := range append(names, "tap1001i0", "eth0") {
		var entered []string
		visit(root, n, &entered, 0)
		want := []string{n + "-l2d"}
		if n == "tap1001i0" || n == "eth0" {
			want = nil
		}
		if !slices.Equal(entered, want) {
			t.Errorf("frame to %s enters %v, want %v", n, entered, want)
		}
	}
}
