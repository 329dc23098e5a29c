package interp

import (
	"errors"
	"fmt"

	"github.com/vmfw/vmfw/pkg/backend/iptables/layout"
)

// The chain walk both interpreters share. iptables and ebtables follow
// their chains alike: the rules in order, the first verdict ends the
// walk, a jump enters another chain and comes back when that one returns
// or falls off its end. What differs is in the rules (what they match,
// which targets are verdicts, whether a jump can be a goto, which never
// comes back) and in the words of the errors, so each rule language is a
// chainRule and the walk is written once.

// outcome is how a chain ends for a packet.
type outcome int

const (
	fallThrough outcome = iota // RETURN or the end of the chain
	accepted
	dropped
	rejected
)

func (o outcome) String() string {
	switch o {
	case accepted:
		return "accept"
	case dropped:
		return "drop"
	case rejected:
		return "reject"
	}
	return "continue"
}

// errOpaque is wrapped by every error about a rule the interpreter cannot
// evaluate.
var errOpaque = errors.New("cannot evaluate")

// chainRule is a rule of one rule language, P the packet its matches
// read.
type chainRule[P any] interface {
	// fault says why the rule cannot be evaluated, in an error naming
	// the rule; nil when it can be.
	fault() error
	// matches reports whether p passes every match of the rule.
	matches(p P) bool
	// apply does what the rule's target does to a packet it matched, and
	// says where the walk goes next.
	apply(p P) step
}

// ruleBase is what a rule of either language has besides its target:
// where it stands, as its errors and the traces name it, its matches of
// packets P, and why it cannot be evaluated.
type ruleBase[P any] struct {
	chain layout.Chain
	// index is the rule's position in its chain, from 1.
	index int
	// text is the rule as read (without "-A CHAIN").
	text  string
	conds []func(P) bool
	// err says why the rule cannot be evaluated.
	err error
}

// faultAs is chainRule's fault for a rule that errors call what.
func (r *ruleBase[P]) faultAs(what string) error {
	if r.err == nil {
		return nil
	}
	return fmt.Errorf("%w: %s %d of %s (%s): %v", errOpaque, what, r.index, r.chain, r.text, r.err)
}

// matches is chainRule's matches.
func (r *ruleBase[P]) matches(p P) bool {
	for _, c := range r.conds {
		if !c(p) {
			return false
		}
	}
	return true
}

// step is where the walk goes after a rule matched.
type step struct {
	// verdict, when not fallThrough, ends the walk.
	verdict outcome
	// ret leaves the chain, as if the walk fell off its end.
	ret bool
	// jump is the chain to enter, "" for none: the walk goes on with the
	// next rule when that chain falls through, unless goTo.
	jump layout.Chain
	goTo bool
}

// walker runs packets of type P through chains of rules of type R.
type walker[P any, R chainRule[P]] struct {
	chains map[layout.Chain][]R
	// maxDepth is how deep chains may nest before the walk gives up on a
	// loop; tooDeep and missing are the errors for a walk that nests
	// deeper and for a jump to a chain that does not exist, each naming
	// the chain.
	maxDepth         int
	tooDeep, missing func(layout.Chain) error
	// hits and entered record the last run: the rules that matched, and
	// the chains entered, in order. lost is the chain the run could not
	// enter because it does not exist, "" when it entered every chain it
	// went to: drift compares it, as it compares the chains entered.
	hits    []R
	entered []layout.Chain
	lost    layout.Chain
}

// run runs p through chain; it returns how the chain ended and the rule
// that decided: the verdict's, or the one that could not be evaluated
// (the zero R when none did). A walk starts in one of vmfw's chains, not
// a built-in one, so its end is fallThrough and never a chain's policy:
// the caller knows what comes after vmfw's rules.
func (w *walker[P, R]) run(chain layout.Chain, p P) (outcome, R, error) {
	w.hits, w.entered, w.lost = nil, nil, ""
	return w.exec(chain, p, 0)
}

func (w *walker[P, R]) exec(chain layout.Chain, p P, depth int) (outcome, R, error) {
	var none R
	if depth > w.maxDepth {
		return fallThrough, none, w.tooDeep(chain)
	}
	rules, ok := w.chains[chain]
	if !ok {
		w.lost = chain
		return fallThrough, none, w.missing(chain)
	}
	w.entered = append(w.entered, chain)
	for _, r := range rules {
		if err := r.fault(); err != nil {
			return fallThrough, r, err
		}
		if !r.matches(p) {
			continue
		}
		w.hits = append(w.hits, r)
		s := r.apply(p)
		switch {
		case s.verdict != fallThrough:
			return s.verdict, r, nil
		case s.ret:
			return fallThrough, none, nil
		case s.jump != "":
			o, by, err := w.exec(s.jump, p, depth+1)
			if err != nil || s.goTo || o != fallThrough {
				return o, by, err
			}
		}
	}
	return fallThrough, none, nil
}
