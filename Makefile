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
	python3-dev python3-venv ca-certificates

.PHONY: help deps apt-deps venv lab lab-down lab-clean lab-status demo test unit integration lint

help:
	@echo "make demo       install, build the lab, run the main job, print a summary"
	@echo "make test       install, lint, unit tests, lab + integration tests"
	@echo "make lab        build (cached) and start the lab; lab-down / lab-clean remove it"

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

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

unit: venv
	$(PY) -m pytest tests/unit

integration: lab
	$(PY) -m pytest tests/integration

# One pytest run, so its closing line counts everything.
test: deps lint lab
	$(PY) -m pytest tests/unit tests/integration
