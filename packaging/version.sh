#!/bin/sh
# Prints the Debian version of the checked-out tree: a release tag vX.Y.Z
# gives X.Y.Z (X.Y.Z+N.gHASH for N commits after it); without a tag,
# 0~YYYYMMDD.HASH from the last commit, which sorts before any release.
# Uncommitted changes add +dirty. Outside git: 0~unknown.
set -e
cd "$(dirname "$0")/.."
if ! git rev-parse --git-dir >/dev/null 2>&1; then
	echo 0~unknown
	exit 0
fi
if desc=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	v=$(echo "$desc" | sed -e 's/^v//' -e 's/-\([0-9]*\)-g\([0-9a-f]*\)$/+\1.g\2/')
else
	v="0~$(git log -1 --format=%cd --date=format:%Y%m%d).$(git rev-parse --short HEAD)"
fi
if ! git diff --quiet HEAD -- 2>/dev/null; then
	v="$v+dirty"
fi
echo "$v"
