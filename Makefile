# vmfw — two commands for a fresh Debian machine:
#   make demo   install what is missing, build, run the reference scenario in throwaway namespaces
#   make test   install what is missing, run every test (unit, golden, fuzz seeds, integration as root)

GO      ?= go
PREFIX  ?= /usr/local
BIN     := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/vmfw/vmfw/pkg/cli.Version=$(VERSION)
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)

# Debian packages the tests and the demo run: the firewall tools in both
# backends, network namespaces, real clients (QEMU) and probes.
DEB_PACKAGES := iptables ipset iproute2 ebtables arptables conntrack qemu-system-x86 iperf3 arping iputils-ping procps kmod
DEB_COMMANDS := iptables-legacy iptables-nft ipset ip ebtables conntrack qemu-system-x86_64 iperf3 arping ping sysctl

.PHONY: all build deps demo test unit integration lint fuzz clean

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
	@ln -sf vmfw $(BIN)/vmfw-ifup
	@ln -sf vmfw $(BIN)/vmfw-ifdown

demo: deps build
	$(GO) run ./cmd/vmfw-demo --vmfw $(CURDIR)/$(BIN)/vmfw --config conf/examples/reference

unit:
	$(GO) vet ./...
	$(GO) test -count=1 ./pkg/... ./plugins/...

integration: build
	VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 20m ./integration/...

test: deps unit integration

lint:
	@test -z "$$(gofmt -l .)" || { gofmt -l .; exit 1; }
	$(GO) vet ./...
	@command -v staticcheck >/dev/null || GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@latest
	staticcheck ./...

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

# make limits: the resource-limit test with 10,000 interfaces in one group
# (docs/limits.md; root; throwaway namespaces only; up to 40 minutes).
.PHONY: limits
limits: build
	VMFW_LARGE=1 VMFW_BIN=$(CURDIR)/$(BIN)/vmfw $(GO) test -count=1 -timeout 120m -run 'TestGroupWithTenThousandMembers' -v ./integration/

# make bench: the scale table of docs/performance.md (root; throwaway
# namespaces only; under 15 minutes). BENCHFLAGS=--quick for a short run.
.PHONY: bench
bench: deps build
	$(GO) run ./cmd/vmfw-bench --vmfw $(CURDIR)/$(BIN)/vmfw $(BENCHFLAGS)

clean:
	rm -rf $(BIN)

# make install: the binary, its ifup/ifdown links, the CNI plugin link and
# the systemd unit. PREFIX and DESTDIR are honoured; CNI_BIN_DIR is where
# CNI runtimes look for plugins; the unit's paths follow SBINDIR.
SBINDIR          ?= $(PREFIX)/sbin
DOCDIR           ?= $(PREFIX)/share/doc/vmfw
CNI_BIN_DIR      ?= /opt/cni/bin
SYSTEMD_UNIT_DIR ?= /etc/systemd/system

.PHONY: install uninstall

install: build
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(CNI_BIN_DIR) $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(DOCDIR)
	install -m 0755 $(BIN)/vmfw $(DESTDIR)$(SBINDIR)/vmfw
	ln -sf vmfw $(DESTDIR)$(SBINDIR)/vmfw-ifup
	ln -sf vmfw $(DESTDIR)$(SBINDIR)/vmfw-ifdown
	ln -sf $(SBINDIR)/vmfw $(DESTDIR)$(CNI_BIN_DIR)/vmfw
	sed 's#/usr/local/sbin/#$(SBINDIR)/#g; s#/usr/local/share/doc/vmfw/#$(DOCDIR)/#g' conf/systemd/vmfw.service > $(DESTDIR)$(SYSTEMD_UNIT_DIR)/vmfw.service
	chmod 0644 $(DESTDIR)$(SYSTEMD_UNIT_DIR)/vmfw.service
	install -m 0644 README.md $(DESTDIR)$(DOCDIR)/README.md
	@echo "installed; enable the boot-time restore with: systemctl daemon-reload && systemctl enable vmfw"

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/vmfw $(DESTDIR)$(SBINDIR)/vmfw-ifup $(DESTDIR)$(SBINDIR)/vmfw-ifdown
	rm -f $(DESTDIR)$(CNI_BIN_DIR)/vmfw
	rm -f $(DESTDIR)$(SYSTEMD_UNIT_DIR)/vmfw.service
	rm -f $(DESTDIR)$(DOCDIR)/README.md
	-rmdir $(DESTDIR)$(DOCDIR) 2>/dev/null
