"""Integration tests run on the lab (`make lab` brings it up; `make test` does it first)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import testinfra
import yaml

# The figures test_vm_migrate/test_vm_modules measure, printed in the terminal summary;
# pytest finds a hook by its name in a conftest, hence the otherwise unused import.
from report import pytest_terminal_summary  # noqa: F401  # pylint: disable=unused-import

import lab  # registered by tests/conftest.py

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def lab_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CONTAINERS_CONF", str(ROOT / "lab" / "containers.conf"))
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="session")
def topology() -> lab.Topology:
    topo = lab.load_topology()
    missing = [n for n in topo.host_names if not (lab.container_state(n) or {}).get("State", {})
               .get("Running")]  # fmt: skip
    if missing:
        pytest.fail(f"the lab is not up (hosts {missing} not running): run `make lab` first")
    return topo


@pytest.fixture(scope="session")
def hosts(topology: lab.Topology) -> dict[str, testinfra.host.Host]:
    return {name: testinfra.get_host(f"podman://{name}") for name in topology.host_names}


def run(
    argv: list[str], timeout: float = 600, input_text: str | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd=ROOT, env=lab_env(), capture_output=True, text=True, timeout=timeout,
        check=False, input=input_text,
    )  # fmt: skip


def ansible_json(argv: list[str], timeout: float = 600) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ansible/ansible-playbook with the json callback; return the process and its data."""
    env = lab_env()
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    env["ANSIBLE_LOAD_CALLBACK_PLUGINS"] = "1"
    proc = subprocess.run(
        [str(BIN / argv[0]), *argv[1:]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{argv[0]} printed no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}"
                    f"\n{proc.stderr[-3000:]}")  # fmt: skip
    return proc, data


# --- libvirt objects and lab guests, shared by the tests that run VMs -------------------
# Each test file names its domains and volumes with its own prefix (vmtest-, mgtest-,
# ex-...) and touches only those: the scripts below run on a lab host (python3 -c) and
# take that prefix.

IMAGES = "/var/lib/mcm/images"  # the lab guest: disk.qcow2, vmlinux, initrd.img
# How a lab VM boots the guest (kernel, initrd, cmdline): the inventory's mcm_vm_boot.
GUEST_BOOT = lab.load_topology().vm_boot
CONSOLE_DIR = "/var/lib/mcm/console"

# What libvirt knows about the domains and volumes whose name starts with the prefix.
_PROBE = r"""
import json, libvirt
conn = libvirt.open("qemu:///system")
out = {"domains": {}, "volumes": []}
for dom in conn.listAllDomains(0):
    if dom.name().startswith(@PREFIX@):
        out["domains"][dom.name()] = {
            "state": dom.state()[0], "active": bool(dom.isActive()),
            "persistent": bool(dom.isPersistent()), "uuid": dom.UUIDString(),
            "xml": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
        }
for pool in conn.listAllStoragePools(0):
    if pool.isActive():
        pool.refresh(0)
        out["volumes"] += [v.path() for v in pool.listAllVolumes(0)
                           if v.name().startswith(@PREFIX@)]
print(json.dumps(out))
"""

# Their removal: running jobs aborted, domains destroyed and undefined, volumes deleted.
_CLEANUP = r"""
import libvirt
conn = libvirt.open("qemu:///system")
for dom in conn.listAllDomains(0):
    if dom.name().startswith(@PREFIX@):
        try:
            dom.abortJob()
        except libvirt.libvirtError:
            pass
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
for pool in conn.listAllStoragePools(0):
    if pool.isActive():
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            if vol.name().startswith(@PREFIX@):
                vol.delete(0)
"""


def _with_prefix(script: str, prefix: str) -> str:
    if not prefix.endswith("-") or len(prefix) < 3:
        raise ValueError(f"a test's name prefix looks like 'vmtest-', not {prefix!r}")
    return script.replace("@PREFIX@", json.dumps(prefix))  # a double-quoted literal


def probe_script(prefix: str) -> str:
    """Python run on a host: JSON of the prefix's domains (by name) and volumes (paths)."""
    return _with_prefix(_PROBE, prefix)


def cleanup_script(prefix: str) -> str:
    """Python run on a host: removes every domain and volume whose name starts with prefix."""
    return _with_prefix(_CLEANUP, prefix)


def host_python(host: testinfra.host.Host, script: str) -> str:
    """Run a Python script on a lab host (python3 -c); its stdout."""
    result = host.run("python3 -c %s", script)
    assert result.rc == 0, result.stderr
    return result.stdout


def libvirt_probe(host: testinfra.host.Host, prefix: str) -> dict:
    """{"domains": {name: {state, active, persistent, uuid, xml}}, "volumes": [path]}."""
    return json.loads(host_python(host, probe_script(prefix)))


def libvirt_cleanup(host: testinfra.host.Host, prefix: str) -> None:
    host_python(host, cleanup_script(prefix))


# a lab host's TLS material for libvirt and qemu (setup_migration_tls.yml writes it)
TLS_FILES = ("/etc/pki/CA/cacert.pem", "/etc/pki/qemu/client-key.pem",
             "/etc/pki/qemu/server-key.pem", "/etc/pki/libvirt/servercert.pem")  # fmt: skip


def migration_tls(hosts: dict, names: tuple[str, ...] = ("mcm-a1", "mcm-b1")) -> None:
    """vm_migrate encrypts by default: the lab's CA and certificates, when not there yet
    (playbooks/setup_migration_tls.yml; about 8 s when it has nothing to do)."""
    if all(hosts[h].file(f).exists for h in names for f in TLS_FILES):
        return
    playbook = ROOT / "playbooks" / "setup_migration_tls.yml"
    proc = run([str(BIN / "ansible-playbook"), str(playbook)])
    assert proc.returncode == 0, f"{playbook.name}: {proc.stdout[-3000:]}{proc.stderr[-2000:]}"


def lab_bridge(host: testinfra.host.Host, name: str, mtu: int = 1450) -> None:
    """A fresh, empty Linux bridge on a lab host (any old one of that name is removed)."""
    host.run("ip link del %s", name)
    assert host.run("ip link add %s type bridge", name).rc == 0
    assert host.run("ip link set %s mtu %s up", name, str(mtu)).rc == 0


def lab_guest(name: str, tenant: str, bridge: str, console_dir: str = CONSOLE_DIR, /,
              **overrides: object) -> dict:  # fmt: skip
    """A VM of multicloud.migration.vm booting the lab guest (128 MiB, 64 MiB overlay disk).

    Its metadata names ``tenant`` and, as the VM, ``name`` without the ``<tenant>-`` prefix;
    its console is the log and socket ``<console_dir>/<name>.{log,console}``.
    """
    vm = {
        "name": name,
        "memory_mib": 128,
        "vcpus": 1,
        "bridge": bridge,
        "disk_mib": 64,
        "image": f"{IMAGES}/disk.qcow2",
        "boot": {**GUEST_BOOT, "cmdline": f"{GUEST_BOOT['cmdline']} mcm.hostname={name}"},
        "console_log": f"{console_dir}/{name}.log",
        "metadata": {"tenant": tenant, "network": "net", "vm": name.removeprefix(f"{tenant}-")},
        "shutdown_timeout": 5,
    }
    vm.update(overrides)
    return vm


def console(host: str, name: str, *cmds: str, timeout: float = 180,
            console_dir: str = CONSOLE_DIR) -> list[dict]:  # fmt: skip
    """Commands on a guest's serial console (lab/guest_console.py run on the host), once its
    shell answers; [{"cmd", "rc", "out"}]."""
    script = (ROOT / "lab" / "guest_console.py").read_text()
    proc = run(["podman", "exec", "-i", host, "python3", "-", f"{console_dir}/{name}.console",
                *cmds], timeout=timeout, input_text=script)  # fmt: skip
    assert proc.returncode == 0, f"console of {name} on {host}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def call(tmp_path: Path, host: str, module: str, args: dict, *flags: str,
         expect_failure: bool = False) -> dict:  # fmt: skip
    """One task of multicloud.migration.<module> on a lab host; its result."""
    play = [{"hosts": host, "gather_facts": False,
             "tasks": [{"name": module, f"multicloud.migration.{module}": args}]}]  # fmt: skip
    path = tmp_path / f"{module}-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    proc, data = ansible_json(["ansible-playbook", str(path), *flags])
    result = data["plays"][0]["tasks"][0]["hosts"][host]
    if expect_failure:
        assert result.get("failed"), result
    else:
        assert proc.returncode == 0 and not result.get("failed"), result.get("msg", result)
    return result
