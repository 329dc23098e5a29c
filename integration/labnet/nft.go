package labnet

import (
	"encoding/json"
	"errors"
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
