package layout

import (
	"strconv"
	"testing"
)

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

// TestDataTextQuotesAsStrconv: the quoting by hand of plain comments
// renders what strconv.Quote does, for comments plain and not, so that a
// read of the kernel and a layout compare equal whichever path quoted.
func TestDataTextQuotesAsStrconv(t *testing.T) {
	for _, comment := range []string{"vmfw:settings 21b5f00f88f9153f", "a b", " ", "~", "say \"hi\"", `back\slash`, "tab\there", "é", "\x7f", "\x00", "line\n"} {
		for _, verdict := range []string{"", "jump gl-web-in"} {
			want := "comment " + strconv.Quote(comment)
			if verdict != "" {
				want = verdict + " " + want
			}
			if got := DataText(verdict, comment); got != want {
				t.Errorf("DataText(%q, %q) = %s, want %s", verdict, comment, got, want)
			}
		}
	}
	if got := DataText("accept", ""); got != "accept" {
		t.Errorf("DataText without a comment = %q", got)
	}
}
