package labnet

import (
	"encoding/json"
	"errors"
	"regexp"
	"sort"
	"strings"
)

// NFTSetElements returns the elements of the set that "nft -j list set"
// printed as out, each as nft's JSON writes it: a string, a prefix, a
// concatenation or an element with a counter. Output without a set is an
// error.
func NFTSetElements(out []byte) ([]json.RawMessage, error) {
	var doc struct {
		Nftables []struct {
			Set *struct {
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	for _, o := range doc.Nftables {
		if o.Set != nil {
			return o.Set.Elem, nil
		}
	}
	return nil, errors.New("no set")
}

var elementList = regexp.MustCompile(`(?s)elements = \{(.*?)\}`)

// NFTListedElements returns the elements of the first set in an nft
// listing (nft list set, table or ruleset), in the order nft lists them;
// nil when it lists none.
func NFTListedElements(listing string) []string {
	m := elementList.FindStringSubmatch(listing)
	if m == nil {
		return nil
	}
	var elems []string
	for _, e := range strings.Split(m[1], ",") {
		if e = strings.TrimSpace(e); e != "" {
			elems = append(elems, e)
		}
	}
	return elems
}

// SortNFTElements puts the elements of every set in an nft listing in
// order: nft lists a hash set in its buckets' order, which deleting and
// adding an element changes without changing the set.
func SortNFTElements(listing string) string {
	return elementList.ReplaceAllStringFunc(listing, func(m string) string {
		elems := NFTListedElements(m)
		sort.Strings(elems)
		return "elements = { " + strings.Join(elems, ", ") + " }"
	})
}
