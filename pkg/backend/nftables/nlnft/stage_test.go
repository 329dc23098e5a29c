package nlnft

import (
	"errors"
	"slices"
	"testing"

	"github.com/vmfw/vmfw/pkg/backend/internal/backendtest"
	"github.com/vmfw/vmfw/pkg/backend/nftables/layout"
)

// portRule accepts the ports and port ranges given as [lo, hi] pairs.
func portRule(comment string, ranges ...[2]uint16) layout.Rule {
	a := &layout.Anon{Field: layout.FDport}
	for _, r := range ranges {
		a.Elems = append(a.Elems, layout.Interval{Lo: layout.Port(r[0]), Hi: layout.Port(r[1])})
	}
	return layout.Rule{Exprs: []layout.Expr{a, &layout.Verdict{Kind: layout.Accept}}, Comment: comment}
}

func chainOf(name string, rules ...layout.Rule) *layout.Chain {
	return &layout.Chain{Name: name, Rules: rules}
}

// writeFirst creates table bridge vmfw with chain sg-a-in, whose one
// rule looks up a port and a port range.
func writeFirst(t *testing.T, c Client) {
	t.Helper()
	first := chainOf("sg-a-in", portRule("one", [2]uint16{5001, 5001}, [2]uint16{6000, 6010}))
	if err := c.Write(&Batch{Tables: []*TableChange{{Family: layout.Bridge, Create: true, NewChains: []*layout.Chain{first}, Fill: []*layout.Chain{first}}}}); err != nil {
		t.Fatal(err)
	}
}

// TestStageDecides: only a change whose rules meet an interval set new to
// them is staged, and only what the first transaction can hold.
func TestStageDecides(t *testing.T) {
	ranged := chainOf("sg-a-in", portRule("", [2]uint16{5001, 5001}, [2]uint16{6000, 6010}))
	singles := chainOf("sg-a-in", portRule("", [2]uint16{5001, 5001}, [2]uint16{6000, 6000}))
	newSet := &layout.Set{Name: "as-x-v4", Key: []layout.Type{layout.TypeIPv4}, Interval: true}
	byName := chainOf("sg-b-in", layout.Rule{Exprs: []layout.Expr{&layout.Lookup{Fields: []layout.Field{layout.FIPSrc}, Set: "as-x-v4"}, &layout.Verdict{Kind: layout.Accept}}})
	jumps := chainOf("sg-c-in", portRule("", [2]uint16{1, 2}), layout.Rule{Exprs: []layout.Expr{&layout.Verdict{Kind: layout.Jump, Chain: "fresh"}}})
	for _, c := range []struct {
		name     string
		tc       *TableChange
		appended []string
		created  []string
	}{
		{"rewritten chain with a range", &TableChange{Flush: []string{"sg-a-in"}, Fill: []*layout.Chain{ranged}}, []string{"sg-a-in"}, nil},
		{"rewritten chain of single values", &TableChange{Flush: []string{"sg-a-in"}, Fill: []*layout.Chain{singles}}, nil, nil},
		{"new chain with a range", &TableChange{NewChains: []*layout.Chain{ranged}, Fill: []*layout.Chain{ranged}}, nil, []string{"sg-a-in"}},
		{"table created", &TableChange{Create: true, NewChains: []*layout.Chain{ranged}, Fill: []*layout.Chain{ranged}}, nil, nil},
		{"new named interval set", &TableChange{Flush: []string{"sg-b-in"}, Fill: []*layout.Chain{byName}, NewSets: []*layout.Set{newSet}, Sets: []*layout.Set{newSet}}, []string{"sg-b-in"}, nil},
		{"jump to a new chain", &TableChange{Flush: []string{"sg-c-in"}, NewChains: []*layout.Chain{chainOf("fresh")}, Fill: []*layout.Chain{jumps, chainOf("fresh")}}, nil, nil},
		{"chain recreated without its hook", &TableChange{Flush: []string{"sg-a-in"}, DeleteChains: []string{"sg-a-in"}, NewChains: []*layout.Chain{ranged}, Fill: []*layout.Chain{ranged}}, nil, nil},
		{"base chain", &TableChange{Flush: []string{"sg-a-in"}, Fill: []*layout.Chain{{Name: "sg-a-in", Hook: &layout.Hook{Hook: "forward"}, Rules: ranged.Rules}}}, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			c.tc.Family = layout.Bridge
			b := &Batch{Tables: []*TableChange{c.tc}}
			s := stage(b)[layout.Bridge]
			var appended, created []string
			if s != nil {
				for name := range s.appended {
					appended = append(appended, name)
				}
				for name := range s.create {
					created = append(created, name)
				}
			}
			slices.Sort(appended)
			slices.Sort(created)
			if !slices.Equal(appended, c.appended) || !slices.Equal(created, c.created) {
				t.Errorf("appended %v, created %v; want %v, %v", appended, created, c.appended, c.created)
			}
			want := uint32(1)
			if len(c.appended)+len(c.created) > 0 {
				want = 2
			}
			if got := Commits(b); got != want {
				t.Errorf("Commits = %d, want %d", got, want)
			}
		})
	}
}

// TestStagedWriteWithKernel rewrites a chain whose rules look up port
// ranges, as two transactions, and checks what the kernel then holds: the
// new rules alone (no marker, no old rule), the generation moved by
// Commits, and Observed.Apply's model of the change equal to a read. A
// batch planned at an old generation changes nothing.
func TestStagedWriteWithKernel(t *testing.T) {
	backendtest.InNamespace(t, func() {
		c := Client{}
		writeFirst(t, c)
		before, err := c.Read(true)
		if err != nil {
			t.Fatal(err)
		}
		second := chainOf("sg-a-in", portRule("two", [2]uint16{7000, 7010}), portRule("three", [2]uint16{5001, 5001}, [2]uint16{6000, 6020}))
		fresh := chainOf("sg-b-in", portRule("four", [2]uint16{1, 2}, [2]uint16{8, 9}))
		b := &Batch{Gen: before.Gen, Tables: []*TableChange{{Family: layout.Bridge, Flush: []string{"sg-a-in"},
			NewChains: []*layout.Chain{fresh}, Fill: []*layout.Chain{second, fresh}}}}
		if Commits(b) != 2 {
			t.Fatalf("the rewrite is not staged")
		}
		stale := *b
		stale.Gen = before.Gen - 1
		if err := c.Write(&stale); !errors.Is(err, ErrGeneration) {
			t.Fatalf("a batch planned at an old generation: %v, want ErrGeneration", err)
		}
		if err := c.Write(b); err != nil {
			t.Fatal(err)
		}
		after, err := c.Read(true)
		if err != nil {
			t.Fatal(err)
		}
		if after.Gen != before.Gen+2 {
			t.Errorf("generation %d after the write at %d, want it moved by 2", after.Gen, before.Gen)
		}
		want := map[string][]string{
			"sg-a-in": {second.Rules[0].Hash("sg-a-in"), second.Rules[1].Hash("sg-a-in")},
			"sg-b-in": {fresh.Rules[0].Hash("sg-b-in")},
		}
		for name, hashes := range want {
			if got := after.Tables[layout.Bridge].Chains[name].Hashes; !slices.Equal(got, hashes) {
				t.Errorf("chain %s holds %v, want %v", name, got, hashes)
			}
		}
		if err := before.Apply(b); err != nil {
			t.Fatal(err)
		}
		if before.Gen != after.Gen {
			t.Errorf("Observed.Apply leaves generation %d, the kernel %d", before.Gen, after.Gen)
		}
		for name := range want {
			if got, read := before.Tables[layout.Bridge].Chains[name].Hashes, after.Tables[layout.Bridge].Chains[name].Hashes; !slices.Equal(got, read) {
				t.Errorf("Observed.Apply: chain %s holds %v, a read %v", name, got, read)
			}
		}
	})
}

// TestStagedRecoveryWithKernel: a process killed between the two
// transactions leaves a rewritten chain with its old rules, the marker and
// the new rules; the next write of the change, planned from a read of
// that chain, leaves the new rules alone.
func TestStagedRecoveryWithKernel(t *testing.T) {
	backendtest.InNamespace(t, func() {
		c := Client{}
		writeFirst(t, c)
		second := chainOf("sg-a-in", portRule("two", [2]uint16{7000, 7010}), portRule("three", [2]uint16{5001, 5001}, [2]uint16{6000, 6020}))
		tc := &TableChange{Family: layout.Bridge, Flush: []string{"sg-a-in"}, Fill: []*layout.Chain{second}}
		conn, done, err := c.conn()
		if err != nil {
			t.Fatal(err)
		}
		err = addStaged(conn, tc, stageTable(tc))
		if err == nil {
			err = commit(conn, 0)
		}
		done(err)
		if err != nil {
			t.Fatal(err)
		}
		killed, err := c.Read(false)
		if err != nil {
			t.Fatal(err)
		}
		if got := killed.Tables[layout.Bridge].Chains["sg-a-in"].Hashes; len(got) != 4 || got[1] != "staged" {
			t.Fatalf("after the first transaction alone the chain holds %v", got)
		}
		if err := c.Write(&Batch{Gen: killed.Gen, Tables: []*TableChange{tc}}); err != nil {
			t.Fatal(err)
		}
		after, err := c.Read(false)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{second.Rules[0].Hash("sg-a-in"), second.Rules[1].Hash("sg-a-in")}
		if got := after.Tables[layout.Bridge].Chains["sg-a-in"].Hashes; !slices.Equal(got, want) {
			t.Errorf("the write after a kill between the transactions left %v, want %v", got, want)
		}
	})
}
