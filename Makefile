# vmfw — two commands for a fresh Debian machine:
#   make demo   install what is missing, build, run the reference scenario in throwaway namespaces
#   make test   install what is missing, run every test (unit, golden, fuzz seeds, the Debian
#               package's install and purge, integration as root)

GO      ?= go
PREFIX  ?= /usr/local
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/vmfw/vmfw/pkg/cli.Version=$(VERSION)
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

# Debian packages the tests and the demo run: the firewall tools in both
# backends and nft (the nftables backend's bench, crash harness and
# operators' view), network namespaces, real clients (QEMU) and probes, and etcd
# (server and etcdctl) for cluster mode.
DEB_PACKAGES := iptables nftables ipset iproute2 ebtables arptables conntrack qemu-system-x86 iperf3 arping iputils-ping procps kmod etcd-server etcd-client
DEB_COMMANDS := iptables-legacy iptables-nft nft ipset ip ebtables conntrack qemu-system-x86_64 iperf3 arping ping sysctl etcd etcdctl

.PHONY: all build deps demo test unit integration lint tidy-check fuzz clean

all: build

deps:
	@missing=""; for c in $(DEB_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages (missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
	fi
	@command -v $(GO) >/dev/null || { echo "Go is required (https://go.dev/doc/install or Debian's golang package)"; exit 1; }

build:
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/vmfw ./plugins/vmfw
	$(GO) build -o $(BIN)/vmfw-ifup ./plugins/vmfw-ifup
	@ln -sf vmfw-ifup $(BIN)/vmfw-ifdown

# make demo BACKEND=nftables runs it on the nftables backend.
BACKEND ?=
demo: deps build
	$(GO) run ./cmd/vmfw-demo --vmfw $(CURDIR)/$(BIN)/vmfw --config conf/examples/reference $(if $(BACKEND),--backend $(BACKEND))

# make demo-cluster: cluster mode on three throwaway hypervisors sharing one
# L2 segment, etcd in a management namespace, an agent per host, the
# configuration pushed with vmfw cluster push; real connections across
# hosts (root; throwaway namespaces only; about half a minute).
.PHONY: demo-cluster
demo-cluster: deps build
	$(GO) run ./cmd/vmfw-demo-cluster --vmfw $(CURDIR)/$(BIN)/vmfw

unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./pkg/... ./plugins/... ./packaging/...

integration: build
	VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 20m ./integration/...

test: deps unit deb-test integration

# staticcheck's release, pinned so that every machine reports the same.
STATICCHECK_VERSION := v0.8.2

lint:
	@test -z "$$(gofmt -l .)" || { echo "not gofmt-ed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...
	@staticcheck -version 2>/dev/null | grep -qF '($(STATICCHECK_VERSION:v%=%))' || GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	staticcheck ./...

# go.mod and go.sum are what "go mod tidy" makes of the code.
tidy-check:
	$(GO) mod tidy -diff

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzLoad -fuzztime 60s ./pkg/config/
	$(GO) test -run '^$$' -fuzz FuzzBuild -fuzztime 60s ./pkg/ruleset/

# make crashtest: kill -9 "vmfw apply" at random moments, 100 times per
# backend, and check the host holds the old or the new ruleset and the next
# apply converges (root; throwaway namespaces only; a few minutes).
# CRASHFLAGS=--trials 500 for a longer run.
.PHONY: crashtest
crashtest: deps build
	$(GO) run ./cmd/vmfw-crashtest --vmfw $(CURDIR)/$(BIN)/vmfw $(CRASHFLAGS)

# make proptest: the scoped path's property test (integration/property_test.go),
# long: random ifup, ifdown, edits and applies from an empty kernel, STEPS
# steps per backend (root; throwaway namespaces only; about 10 minutes for
# 2000). The test logs its seed: SEED=N replays that run (STEPS=200 for
# one of make test's).
STEPS     ?= 2000
SEED      ?=
.PHONY: proptest
proptest: build
	VMFW_STEPS=$(STEPS) VMFW_SEED=$(SEED) VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 120m -run 'TestScopedPathMatchesApply' -v ./integration/

# make limits: the resource-limit test with 10,000 interfaces in one group
# (docs/limits.md; root; throwaway namespaces only; up to 40 minutes).
.PHONY: limits
limits: build
	VMFW_LARGE=1 VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 120m -run 'TestGroupWithTenThousandMembers' -v ./integration/

# make difftest: vmfw trace's differential test, long version (10 random
# configurations x 400 flows per backend; root; throwaway namespaces only).
.PHONY: difftest
difftest: build
	VMFW_LONG=1 VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 60m -run 'TestTraceMatchesPackets' -v ./integration/

# make crossbackend: the cross-backend differential test, long version (8
# random configurations x 400 flows, the same in an iptables-nft lab and an
# nftables lab; root; throwaway namespaces only). SEED=N replays one
# configuration.
.PHONY: crossbackend
crossbackend: build
	VMFW_LONG=1 VMFW_SEED=$(SEED) VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 60m -run 'TestCrossBackend' -v ./integration/

# make bench: the scale table of docs/performance.md, and cluster mode's
# fan-out at 100 hosts on a real etcd (root; throwaway namespaces only;
# about 20 minutes). BENCHFLAGS=--quick for a short run.
.PHONY: bench
bench: deps build
	$(GO) run ./cmd/vmfw-bench --vmfw $(CURDIR)/$(BIN)/vmfw $(BENCHFLAGS)

clean:
	rm -rf $(BIN) $(BUILD)

# make install: the binary, its ifup/ifdown links, the CNI plugin link,
# the systemd units, the man pages and the bash completion. PREFIX and
# DESTDIR are honoured; CNI_BIN_DIR is where CNI runtimes look for plugins;
# the units' paths follow SBINDIR.
SBINDIR             ?= $(PREFIX)/sbin
DOCDIR              ?= $(PREFIX)/share/doc/vmfw
MANDIR              ?= $(PREFIX)/share/man
BASH_COMPLETION_DIR ?= $(PREFIX)/share/bash-completion/completions
CNI_BIN_DIR         ?= /opt/cni/bin
SYSTEMD_UNIT_DIR    ?= /etc/systemd/system

# UNITS are the systemd units of conf/systemd (vmfw.service, and
# vmfw-agent.service for the agent).
UNITS := $(notdir $(wildcard conf/systemd/*.service))

# unit_paths rewrites a unit or hook script of conf/ for programs in $(1)
# and documentation in $(2).
unit_paths = sed 's\#/usr/local/sbin/\#$(1)/\#g; s\#/usr/local/share/doc/vmfw/\#$(2)/\#g; s\#^Documentation=\#Documentation=man:vmfw(8) \#'

.PHONY: install uninstall

install: build man
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(DOCDIR)
	install -d $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(BASH_COMPLETION_DIR)
	install -m 0755 $(BIN)/vmfw $(DESTDIR)$(SBINDIR)/vmfw
	install -m 0755 $(BIN)/vmfw-ifup $(DESTDIR)$(SBINDIR)/vmfw-ifup
	ln -sf vmfw-ifup $(DESTDIR)$(SBINDIR)/vmfw-ifdown
	ln -sf $(SBINDIR)/vmfw $(DESTDIR)$(CNI_BIN_DIR)/vmfw
	for unit in $(UNITS); do \
		$(call unit_paths,$(SBINDIR),$(DOCDIR)) conf/systemd/$$unit > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit && \
		chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/$$unit || exit 1; \
	done
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	install -m 0644 $(BUILD)/man/vmfw.8 $(DESTDIR)$(MANDIR)/man8/vmfw.8
	install -m 0644 $(BUILD)/man/vmfw.toml.5 $(DESTDIR)$(MANDIR)/man5/vmfw.toml.5
	install -m 0644 conf/bash-completion/vmfw $(DESTDIR)$(BASH_COMPLETION_DIR)/vmfw
	ln -sf vmfw $(DESTDIR)$(BASH_COMPLETION_DIR)/vmfw-ifup
	ln -sf vmfw $(DESTDIR)$(BASH_COMPLETION_DIR)/vmfw-ifdown
	@echo "installed; enable the boot-time restore with: systemctl daemon-reload && systemctl enable vmfw"

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/vmfw $(DESTDIR)$(SBINDIR)/vmfw-ifup $(DESTDIR)$(SBINDIR)/vmfw-ifdown
	rm -f $(DESTDIR)$(CNI_BIN_DIR)/vmfw
	rm -f $(addprefix $(DESTDIR)$(SYSTEMD_UNIT_DIR)/,$(UNITS))
	rm -f $(DESTDIR)$(DOCDIR)/README.md
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
	rm -f $(DESTDIR)$(MANDIR)/man8/vmfw.8 $(DESTDIR)$(MANDIR)/man5/vmfw.toml.5
	rm -f $(DESTDIR)$(BASH_COMPLETION_DIR)/vmfw $(DESTDIR)$(BASH_COMPLETION_DIR)/vmfw-ifup $(DESTDIR)$(BASH_COMPLETION_DIR)/vmfw-ifdown

# Man pages and the Debian package ------------------------------------------
#
# make man: vmfw(8) and vmfw.toml(5) from docs/man/*.md, in build/man.
# make deb: build/vmfw_VERSION_ARCH.deb, built by nfpm (go.mod's tool) from
#   packaging/nfpm.yaml, with a static binary. DEB_GOARCH=arm64 cross-builds.
# make deb-test: install that package into a throwaway copy of this
#   machine's root (overlay, own mount, PID and network namespaces), run
#   vmfw version and vmfw check there, purge it, and check nothing is left.
BUILD             := build
DEB_GOARCH        ?= $(shell $(GO) env GOARCH)
DEB_VERSION       ?= $(shell packaging/version.sh)
DEB_MAINTAINER    ?= vmfw maintainers <vmfw@users.noreply.github.com>
# Dates in the package and the man pages are the last commit's, so that
# building the same commit twice gives the same files.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || date +%s)
MAN_DATE          := $(shell date -u -d @$(SOURCE_DATE_EPOCH) +%Y-%m-%d)
MAN_PAGES         := vmfw.8 vmfw.toml.5

.PHONY: man deb deb-test

man:
	@mkdir -p $(BUILD)/man
	for page in $(MAN_PAGES); do \
		sed 's/@DATE@/$(MAN_DATE)/; s/@VERSION@/$(VERSION)/' docs/man/$$page.md | $(GO) tool go-md2man > $(BUILD)/man/$$page.tmp && \
		mv $(BUILD)/man/$$page.tmp $(BUILD)/man/$$page || exit 1; \
	done

deb: man
	rm -rf $(BUILD)/deb $(BUILD)/vmfw_*.deb
	mkdir -p $(BUILD)/deb/man $(BUILD)/deb/systemd $(BUILD)/deb/share/libvirt $(BUILD)/deb/share/proxmox $(BUILD)/deb/share/qemu
	CGO_ENABLED=0 GOOS=linux GOARCH=$(DEB_GOARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' -o $(BUILD)/deb/vmfw ./plugins/vmfw
	CGO_ENABLED=0 GOOS=linux GOARCH=$(DEB_GOARCH) $(GO) build -trimpath -ldflags '-s -w' -o $(BUILD)/deb/vmfw-ifup ./plugins/vmfw-ifup
	for page in $(MAN_PAGES); do gzip -9n < $(BUILD)/man/$$page > $(BUILD)/deb/man/$$page.gz || exit 1; done
	for unit in $(UNITS); do \
		$(call unit_paths,/usr/sbin,/usr/share/doc/vmfw) conf/systemd/$$unit > $(BUILD)/deb/systemd/$$unit || exit 1; \
	done
	$(call unit_paths,/usr/sbin,/usr/share/doc/vmfw) conf/libvirt/qemu > $(BUILD)/deb/share/libvirt/qemu
	$(call unit_paths,/usr/sbin,/usr/share/doc/vmfw) conf/proxmox/vmfw-hook.sh > $(BUILD)/deb/share/proxmox/vmfw-hook.sh
	$(call unit_paths,/usr/sbin,/usr/share/doc/vmfw) conf/qemu/README.md > $(BUILD)/deb/share/qemu/README.md
	VMFW_DEB_VERSION='$(DEB_VERSION)' VMFW_DEB_ARCH='$(DEB_GOARCH)' VMFW_DEB_MAINTAINER='$(DEB_MAINTAINER)' \
		SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) tool nfpm package --config packaging/nfpm.yaml --packager deb --target $(BUILD)/
	@ls $(BUILD)/vmfw_*.deb

deb-test: deb
	packaging/deb-test.sh $(BUILD)/vmfw_*.deb
