package layout

import "testing"

// TestHashCoversEncoding: the same rule text hashes differently under
// another encoding version, so raising Encoding after a fix in package
// nlnft that leaves the text alone still makes every chain compare
// different and be rewritten.
func TestHashCoversEncoding(t *testing.T) {
	r := Rule{Exprs: []Expr{eq(FL4Proto, Proto(6)), verdict(Accept)}, Comment: "c"}
	if r.Hash("in") != r.hashAt("in", Encoding) {
		t.Fatal("Hash is not the hash at the current encoding")
	}
	if r.hashAt("in", Encoding) == r.hashAt("in", Encoding+1) {
		t.Error("the fingerprint does not change with the encoding version")
	}
	if r.Hash("in") == r.Hash("out") {
		t.Error("the fingerprint does not cover the chain")
	}
}
