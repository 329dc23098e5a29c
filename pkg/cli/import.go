package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmfw/vmfw/pkg/pveimport"
)

// importError is an import that found lines it cannot translate: exit
// status 2, like an invalid configuration, since nothing was written.
type importError struct{ err *pveimport.Error }

func (e *importError) Error() string { return e.err.Error() }

// importCmd runs "vmfw import proxmox SRC DEST": it translates the
// Proxmox VE tree SRC into the new configuration directory DEST and
// prints what each source line became. DEST is written only when every
// line could be imported, into a temporary directory renamed into place,
// so a failed import leaves nothing behind.
func importCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "proxmox" {
		return &usageError{"import: the only source is proxmox: vmfw import proxmox SRC DEST"}
	}
	fs := flag.NewFlagSet("import proxmox", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	node := fs.String("node", "", "import only this node's guests")
	skip := fs.Bool("skip-untranslatable", false, "leave out lines that cannot be translated when that cannot let more traffic through")
	format := fs.String("o", "text", "output format: text or json")
	// Flags may come before or after SRC and DEST.
	var pos []string
	rest := args[1:]
	for {
		if err := fs.Parse(rest); err != nil {
			return &usageError{"import proxmox: " + err.Error()}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		rest = fs.Args()[1:]
	}
	if len(pos) != 2 {
		return &usageError{"import proxmox takes SRC and DEST"}
	}
	if *format != "text" && *format != "json" {
		return &usageError{fmt.Sprintf("import proxmox: unknown output format %q (want text or json)", *format)}
	}
	src, dest := pos[0], pos[1]
	if err := checkNewDir(dest); err != nil {
		return &usageError{"import proxmox: " + err.Error()}
	}
	res, err := pveimport.Import(src, pveimport.Options{Node: *node, SkipUntranslatable: *skip})
	var ie *pveimport.Error
	if errors.As(err, &ie) {
		ie.Report.Dest = dest
		if *format == "json" {
			if jerr := writeJSON(stdout, importJSON{Report: &ie.Report, Written: false, Problems: ie.Problems}); jerr != nil {
				return jerr
			}
		}
		return &importError{ie}
	}
	if err != nil {
		return &usageError{"import proxmox: " + err.Error()}
	}
	res.Report.Dest = dest
	if err := writeTree(dest, res.Files); err != nil {
		return err
	}
	if *format == "json" {
		return writeJSON(stdout, importJSON{Report: &res.Report, Written: true, Problems: []pveimport.Problem{}})
	}
	return res.Report.WriteText(stdout)
}

// importJSON is what import -o json prints.
type importJSON struct {
	*pveimport.Report
	// Written says whether DEST was written.
	Written bool `json:"written"`
	// Problems are the lines that failed the import.
	Problems []pveimport.Problem `json:"problems"`
}

// checkNewDir refuses a DEST that exists and is not an empty directory:
// an import never mixes its files with others.
func checkNewDir(dir string) error {
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(des) > 0 {
		return fmt.Errorf("%s exists and is not empty; DEST must be a new configuration directory", dir)
	}
	return nil
}

// writeTree writes files into a temporary directory beside dir and renames
// it to dir.
func writeTree(dir string, files []pveimport.File) error {
	parent := filepath.Dir(filepath.Clean(dir))
	tmp, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	for _, sub := range []string{"groups", "vms", "sets"} {
		if err := os.MkdirAll(filepath.Join(tmp, sub), 0o755); err != nil {
			return err
		}
	}
	for _, f := range files {
		if strings.Contains(f.Path, "..") {
			return fmt.Errorf("import: refusing to write %q", f.Path)
		}
		if err := os.WriteFile(filepath.Join(tmp, f.Path), f.Data, 0o644); err != nil {
			return err
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	// An empty DEST (checked before) is replaced; rename cannot replace a
	// directory that has entries, so a DEST filled meanwhile is kept.
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.Rename(tmp, dir)
}
