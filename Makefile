# Two entry points for people: `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

HOSTS ?= 2
# User-mode Linux hosts with a kernel of their own (tests/lab/kernel_host.py); the first serves storage.
KERNEL_HOSTS ?= 2
VIRTNODE_LAB_ID ?= 0
export VIRTNODE_LAB_ID
LAB_DIR := $(if $(filter 0,$(VIRTNODE_LAB_ID)),.lab,.lab$(VIRTNODE_LAB_ID))
PYTHON ?= python3
VENV := .venv
BUILD ?= .build
COLLECTION := $(BUILD)/ansible_collections/virtnode/kvm
export ANSIBLE_COLLECTIONS_PATH := $(CURDIR)/$(BUILD)
export ANSIBLE_CONFIG := $(CURDIR)/tests/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help deps venv collection lab-up lab-down lab-status demo test units sanity lint changelog-lint docs docs-test integration clean

help:
	@echo "make demo       install, bring up a $(HOSTS)-host lab, run playbooks/demo.yml"
	@echo "make test       install, run every test (unit, sanity, lint, integration on the lab)"
	@echo "make lab-up HOSTS=N KERNEL_HOSTS=K / make lab-down / make lab-status"
	@echo "make units | sanity | lint | integration   one part of the suite"
	@echo "make docs       HTML documentation in $(DOCS_HTML) (docs-test: build and check it)"

# Services of packages installed for their tools only (prometheus: promtool checks the agent's metrics).
# Masked before apt runs: installing them starts and enables nothing on this machine, nor on the lab
# hosts that boot systemd over its files; their SysV links are disabled too.
DEPS_MASKED_SERVICES := prometheus
# Debian packages: apt runs only when something is missing.
deps:
	@mkdir -p /etc/systemd/system; for s in $(DEPS_MASKED_SERVICES); do \
	  [ -e /etc/systemd/system/$$s.service ] || [ -L /etc/systemd/system/$$s.service ] || \
	  ln -s /dev/null /etc/systemd/system/$$s.service; done
	@missing=$$(for p in $$(grep -v '^#' tests/lab/debian-packages.txt); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  for s in $(DEPS_MASKED_SERVICES); do [ ! -x /etc/init.d/$$s ] || update-rc.d $$s disable >/dev/null 2>&1 || true; done; \
	fi
	@$(MAKE) --no-print-directory venv

$(VENV)/.installed: requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Playbooks and ansible-test see exactly the working tree: a fresh copy every time.
collection:
	@rm -rf $(COLLECTION) && mkdir -p $(COLLECTION)
	@git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C $(COLLECTION)
	@# ansible-test lists files with git; the copy is its own repository so it sees them.
	@cd $(COLLECTION) && git init -q && git add -A

lab-up: deps
	$(PYTHON) tests/lab/lab.py up --hosts $(HOSTS) --kernel-hosts $(KERNEL_HOSTS)

lab-down:
	$(PYTHON) tests/lab/lab.py down

lab-status:
	$(PYTHON) tests/lab/lab.py status

demo: lab-up collection
	ansible-playbook -i $(LAB_DIR)/inventory.yml playbooks/demo.yml

test: deps
	tests/run_suite.sh

units: venv collection
	cd $(COLLECTION) && PYTHONPATH=$(CURDIR)/$(BUILD) $(CURDIR)/$(VENV)/bin/python -m pytest -q -rs tests/unit

# ansible-test's venvs bootstrap pip from a script it downloads from outside the
# package registries; the project's own stand-in takes its place in the cache.
ANSIBLE_TEST_PIP = $(HOME)/.ansible/test/cache/get_pip_$(shell $(VENV)/bin/python -c "import re,ansible_test,pathlib;print(re.search(r\"pip='([0-9.]+)'\",(pathlib.Path(ansible_test.__file__).parent/'_internal/python_requirements.py').read_text()).group(1).replace('.','_'))" 2>/dev/null).py

sanity: venv collection
	@mkdir -p $(dir $(ANSIBLE_TEST_PIP)) && cp tests/sanity/pip_bootstrap.py $(ANSIBLE_TEST_PIP)
	cd $(COLLECTION) && ansible-test sanity --venv --python 3.11 --color no

changelog-lint: venv
	antsibull-changelog lint

lint: venv collection
	cd $(COLLECTION) && ansible-lint --offline --nocolor --profile production $$(ls -d roles/* playbooks 2>/dev/null)

# HTML documentation as the Ansible community builds a collection's: antsibull-docs writes the module
# and role pages from the copy in $(COLLECTION), the Markdown pages of docs/ are copied beside them
# (myst-parser reads them), Sphinx builds the site with docs/docsite/conf.py. Warnings are errors,
# so a broken internal link, anchor or reference fails it; external links are not fetched.
DOCS := $(BUILD)/docs-site
DOCS_SRC := $(DOCS)/src
DOCS_HTML := $(DOCS)/html
docs: venv collection
	@rm -rf $(DOCS) && mkdir -p $(DOCS_SRC)/docs && chmod og-w $(DOCS_SRC)
	antsibull-docs lint-collection-docs --plugin-docs $(COLLECTION)
	antsibull-docs collection --use-current --fail-on-error --cleanup everything --dest-dir $(DOCS_SRC) virtnode.kvm
	cp $(COLLECTION)/docs/*.md $(DOCS_SRC)/docs/ && cp $(COLLECTION)/docs/docsite/index.rst $(DOCS_SRC)/
	sphinx-build -q -W --keep-going -n -b html -c $(COLLECTION)/docs/docsite $(DOCS_SRC) $(DOCS_HTML)
	@echo "docs: $(DOCS_HTML)/index.html"

# Every module's page shows its examples and return values, every role's its options.
docs-test: docs
	cd $(COLLECTION) && VIRTNODE_DOCS_HTML=$(CURDIR)/$(DOCS_HTML) $(CURDIR)/$(VENV)/bin/python -m pytest -q -rs tests/docs

# Kernel hosts' tests and namespace hosts' tests run side by side (tests/run_integration.sh).
integration: lab-up collection
	VENV_PYTHON=$(VENV)/bin/python tests/run_integration.sh

clean: lab-down
	rm -rf $(BUILD) $(VENV)

# Benchmark of the node agent's sampler and cache (1000 domains on libvirt's test driver); not a test.
.PHONY: bench-agent
bench-agent: collection
	BUILD=$(BUILD) /usr/bin/python3 tests/bench/agent_bench.py --collections $(CURDIR)/$(BUILD) $(BENCH_AGENT_ARGS)

# virtnode.kvm.vm against community.libvirt.virt (from PyPI's `ansible`, cached in .cache/): 20 guests
# defined and started, then the no-op re-run, 3 rounds on the lab's first host; not a test.
# BENCH_ARGS="--guests 2 --rounds 1" for a quick look.
.PHONY: bench-vm
bench-vm: lab-up collection
	/usr/bin/python3 tests/bench/bench_vm_vs_community_libvirt.py --collections $(CURDIR)/$(BUILD) $(BENCH_ARGS)

# Module run time on a kernel host (User-mode Linux) against a namespace host; not a test.
.PHONY: bench-kernel
bench-kernel: lab-up collection
	$(VENV)/bin/python tests/bench/bench_kernel_hosts.py $(BENCH_KERNEL_ARGS)

# Thin provisioning in the node agent: extension latency (local and mailbox paths) and the guest's
# write rate with and without the agent, on a 2-host lab; not a test. BENCH_THIN_ARGS="--chunk-mib 128".
.PHONY: bench-thin
bench-thin: collection $(VENV)/.bench-installed
	$(VENV)/bin/python tests/bench/bench_thin.py $(BENCH_THIN_ARGS)

# Disk image import, export, template and thin clone on a local file domain (a 256 MiB image); not a test.
.PHONY: bench-transfer
bench-transfer: collection
	/usr/bin/python3 tests/bench/bench_transfer.py --collections $(CURDIR)/$(BUILD) $(BENCH_TRANSFER_ARGS)

# What only the benchmarks need (matplotlib for bench-thin's plot), kept out of `make test`.
$(VENV)/.bench-installed: $(VENV)/.installed requirements-bench.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements-bench.txt
	touch $@

# Every benchmark, then one table of their figures against the peer or the limit; not a test.
BENCH_OUT ?= .cache/bench
.PHONY: bench
bench: lab-up collection $(VENV)/.bench-installed
	@rm -rf $(BENCH_OUT) && mkdir -p $(BENCH_OUT)
	-/usr/bin/python3 tests/bench/agent_bench.py --collections $(CURDIR)/$(BUILD) --through vnhost1 --summary $(BENCH_OUT)/agent.json
	-/usr/bin/python3 tests/bench/bench_vm_vs_community_libvirt.py --collections $(CURDIR)/$(BUILD) --summary $(BENCH_OUT)/vm.json $(BENCH_ARGS)
	-$(VENV)/bin/python tests/bench/bench_thin.py --summary $(BENCH_OUT)/thin.json $(BENCH_THIN_ARGS)
	@echo; echo "=== every benchmark"; /usr/bin/python3 tests/bench/bench_table.py $(BENCH_OUT)
