#!/usr/bin/env bash
# deb-test.sh VMFW.deb: install the package into a throwaway root, use it,
# remove and purge it, and check that nothing is left.
#
# The throwaway root is this machine's own root filesystem under an
# overlay whose writable layer is a tmpfs, in new mount, PID and network
# namespaces: dpkg, the package's scripts and vmfw run for real on a real
# Debian system, while every file they write goes to the tmpfs, every
# firewall rule they could touch is in the empty network namespace, and all
# of it disappears when the namespaces end. (A debootstrap chroot would
# need minutes and the Debian mirror; this takes seconds and no network.)
# The checks read the overlay's writable layer: after the purge it must
# hold nothing but dpkg's own records.
#
# Needs root, dpkg, unshare and overlayfs. Prints one line per check and
# "deb-test: N passed, M failed"; exits non-zero when a check failed.
set -euo pipefail

if [[ ${1:-} != --inside ]]; then
	deb=${1:?usage: deb-test.sh VMFW.deb}
	[[ -f $deb ]] || { echo "deb-test: no package $deb" >&2; exit 2; }
	[[ $(id -u) == 0 ]] || { echo "deb-test: needs root (namespaces, overlay, dpkg)" >&2; exit 2; }
	for tool in dpkg dpkg-deb unshare chroot mount; do
		command -v "$tool" >/dev/null || { echo "deb-test: $tool is missing" >&2; exit 2; }
	done
	scratch=$(mktemp -d /tmp/vmfw-deb-test.XXXXXX)
	trap 'rmdir "$scratch"' EXIT
	unshare --mount --pid --net --fork --mount-proc --propagation private \
		"$0" --inside "$(realpath "$deb")" "$scratch"
	exit
fi

# Inside the namespaces from here on.
deb=$2
scratch=$3
mount -t tmpfs -o mode=0755 vmfw-deb-test "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
root=$scratch/root
upper=$scratch/upper
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
# A fresh /run: no systemd runs there, so the maintainer scripts' systemd
# branches stay off, as in a container; a fresh /tmp for the package file.
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
cp "$deb" "$root/tmp/vmfw.deb"

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
# check DESCRIPTION COMMAND...: the command must succeed.
check() {
	local what=$1 out
	shift
	if out=$("$@" 2>&1); then
		pass "$what"
	else
		fail "$what"
		printf '%s\n' "$out" | sed 's/^/     /'
	fi
}
# in_root COMMAND...: run in the throwaway root with a clean environment.
in_root() {
	chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"
}
# firewall prints every rule and set of the test's network namespace.
firewall() {
	{
		iptables-save 2>/dev/null
		ip6tables-save 2>/dev/null
		ipset list -n 2>/dev/null
		ebtables-save 2>/dev/null
	} | grep -v '^#' || true
}

# The checks below run in child shells.
export root
export -f in_root firewall
pkgversion=$(dpkg-deb --field "$deb" Version)

# The package itself.
check "only postinst, prerm and postrm scripts, no preinst" \
	bash -c "dpkg-deb --ctrl-tarfile '$deb' | tar -t | sed 's|^\./||' | grep -vxE '|control|md5sums|conffiles|postinst|prerm|postrm' | (! grep .)"
check "/etc/vmfw/vmfw.toml is the only conffile" \
	bash -c "[[ \$(dpkg-deb --info '$deb' conffiles) == /etc/vmfw/vmfw.toml ]]"
if command -v go >/dev/null; then
	extract=$(mktemp -d "$scratch/extract.XXXXXX")
	dpkg-deb -x "$deb" "$extract"
	check "the binary is static and built with -trimpath" \
		bash -c "go version -m '$extract/usr/sbin/vmfw' | grep -q 'CGO_ENABLED=0' && go version -m '$extract/usr/sbin/vmfw' | grep -q -- '-trimpath=true'"
fi

firewall > "$scratch/firewall.before"

# Install.
check "dpkg -i" in_root dpkg -i /tmp/vmfw.deb
check "dpkg --verify: installed files match the package" in_root dpkg --verify vmfw
check "vmfw version" bash -c "in_root vmfw version | grep -q '^vmfw '"
check "vmfw check accepts the default configuration" in_root vmfw check
check "vmfw-ifup is vmfw ifup (usage error, exit 2)" bash -c "in_root vmfw-ifup; [[ \$? == 2 ]]"
check "vmfw-ifdown runs vmfw ifdown (usage error names it)" bash -c "in_root vmfw-ifdown 2>&1 | grep -q 'ifdown takes exactly one argument'"
check "vmfw-ifup is a program of its own, vmfw-ifdown a link to it" \
	bash -c "[[ -f '$root'/usr/sbin/vmfw-ifup && ! -L '$root'/usr/sbin/vmfw-ifup && \$(readlink '$root'/usr/sbin/vmfw-ifdown) == vmfw-ifup ]]"
check "the CNI plugin answers VERSION" bash -c "in_root env CNI_COMMAND=VERSION /usr/lib/cni/vmfw </dev/null | grep -q supportedVersions"
check "units run /usr/sbin/vmfw" \
	bash -c "grep -h '^Exec' '$root'/usr/lib/systemd/system/vmfw*.service | grep -v /usr/local | grep -q /usr/sbin/vmfw"
check "hook scripts exec /usr/sbin/vmfw" \
	bash -c "grep -q '^exec /usr/sbin/vmfw hook libvirt' '$root/usr/share/vmfw/libvirt/qemu' && grep -q '^exec /usr/sbin/vmfw hook proxmox' '$root/usr/share/vmfw/proxmox/vmfw-hook.sh'"
check "no unit is enabled" bash -c "! ls '$root'/etc/systemd/system/*.wants/vmfw* 2>/dev/null | grep -q ."
check "no firewall rule or set changed" bash -c "firewall | diff -u '$scratch/firewall.before' -"
if in_root sh -c 'command -v man' >/dev/null; then
	check "man pages render without warnings" \
		bash -c "for p in vmfw vmfw.toml vmfw-ifup; do out=\$(in_root env MANWIDTH=80 man --warnings \$p 2>&1 >/dev/null) || exit 1; [[ -z \$out ]] || { echo \"\$p: \$out\"; exit 1; }; done"
fi
check "bash completion loads and registers vmfw" \
	in_root bash --norc -c 'source /usr/share/bash-completion/completions/vmfw-ifup && complete -p vmfw-ifup | grep -q _vmfw'

# Remove keeps the edited conffile; purge takes it and what vmfw wrote at
# run time (state, an enabled unit's link).
in_root sh -c 'echo "managed = [\"tap+\"]" >> /etc/vmfw/vmfw.toml'
check "an edited configuration is still valid" in_root vmfw check
check "dpkg -r" in_root dpkg -r vmfw
check "remove keeps the edited /etc/vmfw/vmfw.toml" bash -c "grep -q '^managed' '$root/etc/vmfw/vmfw.toml'"
check "remove takes the program" bash -c "[[ ! -e '$root/usr/sbin/vmfw' ]]"
check "reinstall over the removed package" in_root dpkg -i /tmp/vmfw.deb
check "reinstall keeps the edited /etc/vmfw/vmfw.toml" bash -c "grep -q '^managed' '$root/etc/vmfw/vmfw.toml'"
wants=/etc/systemd/system/multi-user.target.wants
[[ -d $root$wants ]] || made_wants=1
mkdir -p "$root/var/lib/vmfw/attachments" "$root$wants"
echo '{}' > "$root/var/lib/vmfw/attachments/veth0.json"
ln -s /usr/lib/systemd/system/vmfw.service "$root$wants/vmfw.service"
check "dpkg -P" in_root dpkg -P vmfw
check "purged: dpkg forgot vmfw" bash -c "! in_root dpkg-query -W vmfw >/dev/null 2>&1 && ! ls '$root'/var/lib/dpkg/info/vmfw.* 2>/dev/null | grep -q ."
if [[ -n ${made_wants:-} ]]; then
	rmdir "$root$wants" # made above for the link, not by the package
fi

# Nothing of the package, nor of what vmfw wrote, is left: the writable
# layer holds only directories that exist below it (parents that dpkg
# wrote in) and dpkg's records. A whiteout would be a file of the machine
# that the package deleted.
leftovers=$(
	cd "$upper"
	find . -mindepth 1 \( -path ./var/lib/dpkg -o -path ./var/log/dpkg.log -o -path ./var/cache/man \
		-o -path ./var/cache/debconf -o -path ./tmp -o -path ./run -o -path ./proc -o -path ./dev \) -prune -o -print |
		while read -r p; do
			p=${p#.}
			if [[ -d $upper$p && ! -L $upper$p && -d $p ]]; then
				continue # a directory of the machine that dpkg wrote in
			fi
			if [[ -c $upper$p ]]; then
				echo "deleted: $p"
			else
				echo "left: $p"
			fi
		done
)
if [[ -z $leftovers ]]; then
	pass "purge left nothing behind"
else
	fail "purge left something behind:"
	printf '%s\n' "$leftovers" | sed 's/^/     /'
fi
check "no firewall rule or set changed, after all" bash -c "firewall | diff -u '$scratch/firewall.before' -"

echo "deb-test: vmfw $pkgversion"
echo "deb-test: $passed passed, $failed failed"
[[ $failed == 0 ]]
