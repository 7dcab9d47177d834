# multicloud.migration: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
export CONTAINERS_CONF := $(CURDIR)/lab/containers.conf
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

# What the lab and the tests need on the machine (Debian 12).
APT_PACKAGES := podman runc containernetworking-plugins iptables uidmap debootstrap \
	qemu-utils qemu-system-x86 cpio kmod iproute2 dnsmasq-base libvirt-dev pkg-config gcc \
	python3-dev python3-venv ca-certificates graphviz

.PHONY: help deps apt-deps venv lab lab-down lab-clean lab-status demo test unit integration lint bench faults

help:
	@echo "make demo       install, build the lab, run the main job, print a summary"
	@echo "make test       install, lint, unit tests, lab + integration tests"
	@echo "make lab        build (cached) and start the lab; lab-down / lab-clean remove it"
	@echo "make faults     the fault and soak matrix (outside make test; docs/lab.md)"
	@echo "make bench      the benchmarks (outside make test; docs/performance.md)"

deps: apt-deps venv

apt-deps:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "deps: installing" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "deps: Debian packages present"; fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	@touch $@

lab: deps
	$(PY) lab/lab.py up

lab-status: venv
	$(PY) lab/lab.py status

lab-down: venv
	$(PY) lab/lab.py down

lab-clean: venv
	$(PY) lab/lab.py clean

demo: lab
	$(VENV)/bin/ansible-playbook playbooks/demo.yml

# make lint: every step fails the target. On 2 cores about 45 s when ansible-test's sanity
# virtualenvs are cached (~/.ansible/test/venv), about 1.5 min on a machine without them.
# - ruff check and ruff format --check;
# - vermin and .ci/runtime_unions.py, 3.9 target, on plugins/modules and plugins/module_utils:
#   what runs on the managed hosts must run on their python3 (RHEL 9's is 3.9). vermin
#   finds `X | Y` type unions only with a heuristic that also flags every annotation, so
#   runtime_unions.py looks for those outside annotations. The controller-side plugins
#   (action, filter, connection, plugin_utils) follow the controller's floor: ansible-core
#   2.19 needs Python 3.11 there;
# - antsibull-changelog lint (changelogs/; tests/unit/test_changelog.py builds the release
#   changelog in a copy, because a release here would consume the fragments);
# - ansible-lint, production profile (.ansible-lint);
# - ansible-test sanity, every test, on the .venv's Python only (--local: no docker here).
#   It needs the collection under ansible_collections/multicloud/migration and resolves
#   symlinks, so it runs on a copy of the files git tracks or would track, without the
#   collections/ symlink back to the checkout. Its linters run in virtualenvs it creates
#   under ~/.ansible/test/venv from the package index; it bootstraps their pip with a
#   get-pip.py downloaded from a host that is not reachable here, and takes a copy in its
#   cache instead when there is one: .ci/get-pip.py (ensurepip, then pip from the index),
#   put there unless a real get-pip.py already is.
#   Nothing is skipped: no test needs docker or a network other than the package index.
# - galaxy-importer on the tarball `ansible-galaxy collection build` makes of that copy, with
#   .ci/galaxy-importer.cfg (no ansible-test in a container, no second ansible-lint).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/vermin --no-config-file -t=3.9- --violations --no-tips --no-make-paths-absolute \
		plugins/modules plugins/module_utils
	$(PY) .ci/runtime_unions.py plugins/modules plugins/module_utils
	$(VENV)/bin/antsibull-changelog lint
	$(VENV)/bin/ansible-lint
	@set -euo pipefail; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	tree=$$tmp/ansible_collections/multicloud/migration; mkdir -p "$$tree" "$$tmp/dist"; \
	git ls-files -z --cached --others --exclude-standard | grep -zv '^collections/' \
		| tar --null --ignore-failed-read -T - -cf - | tar -xf - -C "$$tree"; \
	pip_version=$$($(PY) -c 'import types; from ansible_test._internal.python_requirements import get_venv_packages as p; print(p(types.SimpleNamespace(version="3"))["pip"])'); \
	get_pip=$$HOME/.ansible/test/cache/get_pip_$${pip_version//./_}.py; \
	if [ ! -e "$$get_pip" ] || grep -q '^"""Offline stand-in' "$$get_pip"; then \
		install -D -m 0644 .ci/get-pip.py "$$get_pip"; fi; \
	python_version=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	echo "lint: ansible-test sanity --local --python $$python_version"; \
	(cd "$$tree" && $(CURDIR)/$(VENV)/bin/ansible-test sanity --local --python "$$python_version" --color no); \
	echo "lint: galaxy-importer"; \
	$(VENV)/bin/ansible-galaxy collection build --output-path "$$tmp/dist" "$$tree"; \
	GALAXY_IMPORTER_CONFIG=$(CURDIR)/.ci/galaxy-importer.cfg $(PY) -m galaxy_importer.main "$$tmp"/dist/*.tar.gz

unit: venv
	$(PY) -m pytest tests/unit

integration: lab
	$(PY) -m pytest tests/integration

# One pytest run, so its closing line counts everything.
test: deps lint lab
	$(PY) -m pytest --durations=30 tests/unit tests/integration

# The fault and soak matrix (not part of make test, which runs the representative case of
# each fault): the fault tests and the cases marked matrix (tests/integration/
# test_fault_matrix_lab.py; MCM_SOAK_ROUNDS=N for a longer soak). About 15 min on an idle
# 2-core lab; docs/lab.md records the last results with their date.
faults: lab
	$(PY) -m pytest --matrix --durations=0 -p no:cacheprovider \
		tests/integration/test_migration_faults_lab.py tests/integration/test_fault_matrix_lab.py

# Benchmarks (not part of make test; docs/performance.md): each prints our figure next to a
# baseline measured in the same run, checks both reached the same end state and writes
# bench/results/*.json. About 25 min on an idle 2-core lab; `make bench BENCH_QUICK=1` runs
# each with the fewest runs (a few minutes, figures only indicative).
BENCH_QUICK ?=
bench: lab
	$(PY) bench/bringup.py $(if $(BENCH_QUICK),--sizes 10)
	$(PY) bench/migration_downtime.py $(if $(BENCH_QUICK),--runs 2)
	$(PY) bench/cold_copy.py $(if $(BENCH_QUICK),--runs 1)
	$(PY) bench/subnet_migration.py --runs 1
