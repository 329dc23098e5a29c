// Package packaging holds no code: its directory holds the Debian package
// (nfpm.yaml and the files only the package ships) and the package's tests
// check that what the package installs says what the README says: the man
// pages' commands, options and keys, the default vmfw.toml, and the bash
// completion's subcommands and options. deb-test.sh installs the built
// package into a throwaway root and purges it again.
package packaging
