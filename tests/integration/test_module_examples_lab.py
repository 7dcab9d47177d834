"""Every module's EXAMPLES, run on the lab as they are written (issue #7).

For each module in plugins/modules/ the EXAMPLES string is parsed (a list of tasks) and
written into a playbook, after the module's setup tasks, if any. Every task of the module
itself that does not run in check mode is followed by the same task again, which must
report no change: the idempotence the modules declare ("run twice in a row with the same
arguments, the second invocation indicates no change"). Repeating each task, rather than
the whole list, lets an example document a sequence (create, grow, delete) whose second
run as a whole would rightly change things again.

A module without a runner below makes its test fail: a new module needs a runner (its
lab host, set-up and tear-down), so that its EXAMPLES are run too.

Everything the examples touch is named for them and nothing else on the lab: tenant
``ex-acme`` (namespaces qdhcp-ex-acme.* and qrouter-ex-acme, owner tags mcm:ex-acme/*),
VNIs 3901-3902 (brq-3901, vxlan-3901, dhb-/dhn-/qrb-/qr-390x; VNIs below 4096 are never
allocated by the spec), domains and volumes ex-*, console files
/var/lib/mcm/console/ex-*. The tear-down of each module runs also when it fails.

What runs for real: every example, on mcm-a2 (tenant_spec on localhost, where it is meant
to run), except one: the first task of vm_migrate's EXAMPLES asks for the plan in check
mode (``check_mode: true`` is what it documents). vm_migrate's examples run for real
between mcm-a1 and mcm-b1 with one small lab guest: live-block there, confirm, cold back,
encrypted (TLS, its default; playbooks/setup_migration_tls.yml is run first when the lab
has no certificates yet).
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from ansible.parsing.plugin_docs import read_docstring

from ansible_collections.multicloud.migration.plugins.module_utils.naming import vm_mac
from conftest import (
    ROOT,
    ansible_json,
    console,
    lab_bridge,
    lab_guest,
    libvirt_cleanup,
    libvirt_probe,
    migration_tls,
)

pytestmark = pytest.mark.lab

MODULE_DIR = ROOT / "plugins" / "modules"
MODULES = sorted(p.stem for p in MODULE_DIR.glob("*.py") if not p.stem.startswith("_"))
FQCN = "multicloud.migration.{}"
HOST = "mcm-a2"
PREFIX = "ex-"  # domains and volumes
TENANT = "ex-acme"
BRIDGE = "brq-3901"
GUEST = "ex-acme-web1"
RUNNING, SHUTOFF = 1, 5


def examples(module: str) -> list[dict]:
    doc = read_docstring(str(MODULE_DIR / f"{module}.py"))
    return yaml.safe_load(doc["plainexamples"])


def args_of(task: dict, module: str) -> dict:
    return task[FQCN.format(module)]


# --- set-up and tear-down on a host (sh -c) --------------------------------------------

# the web network's segment: bridge, DHCP namespace and tenant router, each with its leg
NET_WEB = """
ip netns add qdhcp-ex-acme.web
ip netns add qrouter-ex-acme
ip link add brq-3901 mtu 1450 type bridge
ip link set brq-3901 alias mcm:ex-acme/web up
ip link add dhb-3901 mtu 1450 type veth peer name dhn-3901 netns qdhcp-ex-acme.web
ip link set dhb-3901 master brq-3901 alias mcm:ex-acme/web up
ip -n qdhcp-ex-acme.web link set lo up
ip -n qdhcp-ex-acme.web link set dhn-3901 up
ip link add qrb-3901 mtu 1450 type veth peer name qr-3901 netns qrouter-ex-acme
ip link set qrb-3901 master brq-3901 alias mcm:ex-acme/web up
ip -n qrouter-ex-acme link set qr-3901 up
"""
NET_ADDRESSES = """
ip -n qdhcp-ex-acme.web addr add 10.10.1.2/24 dev dhn-3901
ip -n qrouter-ex-acme addr add 10.10.1.1/24 dev qr-3901
"""
NET_DB = """
ip netns add qdhcp-ex-acme.db
ip link add dhb-3902 mtu 1450 type veth peer name dhn-3902 netns qdhcp-ex-acme.db
ip link set dhb-3902 alias mcm:ex-acme/db up
ip -n qdhcp-ex-acme.db link set lo up
ip -n qdhcp-ex-acme.db link set dhn-3902 up
ip -n qdhcp-ex-acme.db addr add 10.10.2.2/24 dev dhn-3902
"""
VXLAN = """
ip link add vxlan-3901 mtu 1450 type vxlan id 3901 dstport 4789 local 172.30.1.12 nolearning
ip link set vxlan-3901 alias mcm:ex-acme/web up
"""
# dnsmasq instances stopped first (their namespaces go next), then links and namespaces
NET_TEARDOWN = """
for d in /var/lib/mcm/dhcp/qdhcp-ex-acme.*; do
    [ -f "$d/pid" ] && kill "$(cat "$d/pid")" 2>/dev/null
    rm -rf "$d"
done
for link in brq-3901 vxlan-3901 dhb-3901 qrb-3901 dhb-3902; do
    ip link del "$link" 2>/dev/null
done
for ns in $(ip netns list | awk '/^(qdhcp|qrouter)-ex-acme/ {print $1}'); do
    ip netns del "$ns"
done
true
"""
# what NET_TEARDOWN must leave: none of the above
LEFT_OVER = """
ip -o link show | grep -E ': (brq|vxlan|dhb|qrb)-390[12][@:]'
ip netns list | grep -E '^(qdhcp|qrouter)-ex-acme'
ls -d /var/lib/mcm/dhcp/qdhcp-ex-acme.* 2>/dev/null
ls /var/lib/mcm/console/ex-* 2>/dev/null
true
"""


def sh(host, script: str) -> str:
    result = host.run("sh -c %s", script)
    assert result.rc == 0, f"{script}\n{result.stdout}{result.stderr}"
    return result.stdout


def set_up(host, script: str) -> None:
    sh(host, f"set -e\n{script}")


def guest_teardown(host) -> None:
    libvirt_cleanup(host, PREFIX)
    host.run("sh -c %s", "rm -f /var/lib/mcm/console/ex-*")


# --- runners: where and with what each module's examples run ---------------------------


@dataclass(frozen=True)
class Runner:
    """How the EXAMPLES of one module run on the lab.

    hosts: the play's hosts; setup: shell per lab host before the play (after the
    tear-down, which also runs first, for what a killed earlier run left); setup_tasks:
    tasks run in the play before the examples; before(hosts): a prerequisite of the lab
    that stays; play_vars(examples): the variables the examples refer to;
    verify(results by example task name, hosts): checks of the outcome; cleanup: shell run
    on each tear-down host by the tear-down (before the set-up and after the play).
    """

    hosts: str = HOST
    setup: dict[str, str] = field(default_factory=dict)
    teardown: tuple[str, ...] = (HOST,)
    bridges: tuple[str, ...] = ()  # hosts that get a fresh BRIDGE (lab_bridge) for the VMs
    guests: bool = False  # the tear-down also removes ex-* domains, volumes, console files
    changes: bool = True  # some example changes something (False for a module that only reads)
    setup_tasks: Callable[[], list[dict]] = list
    before: Callable[[dict], None] | None = None  # a prerequisite of the lab (hosts)
    play_vars: Callable[[list[dict]], dict] = lambda _examples: {}
    verify: Callable[[dict[str, dict], dict], None] | None = None
    flags: tuple[str, ...] = ()
    cleanup: str = ""


def link_vars(tasks: list[dict]) -> dict:
    # the segment of the first example without its DHCP leg: overridden removes the leg
    links = args_of(tasks[0], "link")["config"]
    return {"ex_acme_links": [li for li in links if li["kind"] in ("bridge", "vxlan")]}


def verify_link(results: dict[str, dict], _hosts: dict) -> None:
    overridden = results["Tenant ex-acme has exactly these links, whatever else it had is removed"]
    removed = [c for c in overridden["changes"] if c["action"] == "delete"]
    assert [c["name"] for c in removed] == ["dhb-3901"], removed


def dnsmasq_vars(tasks: list[dict]) -> dict:
    first, second = (args_of(t, "dnsmasq")["config"][0] for t in tasks[:2])
    return {"ex_acme_dhcp_instances": [first, second]}


def verify_dnsmasq(results: dict[str, dict], _hosts: dict) -> None:
    gathered = results["Leases and state of every instance of tenant ex-acme"]["gathered"]
    assert sorted(i["name"] for i in gathered) == ["qdhcp-ex-acme.db", "qdhcp-ex-acme.web"]
    assert all(i["running"] for i in gathered), gathered


def vm_vars(tasks: list[dict]) -> dict:
    web1 = args_of(tasks[0], "vm")["config"][0]
    return {"ex_acme_web1": web1, "ex_acme_vms": [dict(web1, memory_mib=256)]}


def verify_vm(results: dict[str, dict], hosts: dict) -> None:
    grown = results["More memory (applied to the definition; restart_needed lists running VMs)"]
    assert grown["restart_needed"] == {GUEST: ["memory_mib"]}
    [vm] = results["The VMs of tenant ex-acme, as vm_info returns them"]["gathered"]
    assert vm["name"] == GUEST and vm["state"] == "shutoff"
    assert libvirt_probe(hosts[HOST], PREFIX) == {"domains": {}, "volumes": []}


def vm_info_setup() -> list[dict]:
    """A shut-off VM of ex-acme (defined, never started: no guest boots)."""
    vm = lab_guest(
        GUEST, TENANT, BRIDGE, state="shutoff", image=None, disk_mib=16, console_log=None
    )
    return [{"name": "setup: a shut-off VM", FQCN.format("vm"): {"config": [vm]}}]


# ... and a lease of it in the lease file of its network's dnsmasq
LEASE = f"""
mkdir -p /var/lib/mcm/dhcp/qdhcp-ex-acme.web
echo '{int(time.time()) + 7200} {vm_mac(TENANT, "web1")} 10.10.1.10 web1 *' \\
    > /var/lib/mcm/dhcp/qdhcp-ex-acme.web/leases
"""


def verify_vm_info(results: dict[str, dict], _hosts: dict) -> None:
    assert GUEST in [v["name"] for v in results["Every domain on the host"]["vms"]]
    [vm] = results["The VMs of tenant ex-acme with their addresses"]["vms"]
    assert vm["name"] == GUEST and vm["ip"] == "10.10.1.10"
    [one] = results["One VM, leases from a given file"]["vms"]
    assert one["interfaces"][0]["leases"][0]["hostname"] == "web1"


def verify_vm_volume(results: dict[str, dict], hosts: dict) -> None:
    pool = "/var/lib/mcm/vms"
    assert libvirt_probe(hosts[HOST], PREFIX)["volumes"] == [f"{pool}/ex-acme-web1.qcow2"]
    grown = results["Grow a disk"]
    assert grown["changes"][0]["details"] == {"capacity_mib": {"from": 64, "to": 256}}


MIGRATE_SRC, MIGRATE_DST = "mcm-a1", "mcm-b1"


# vm_migrate's cold example converts the disk into this pool of mcm-a1, made from the path
EX_POOL, EX_POOL_DIR = "ex-fast", "/var/lib/mcm/ex-fast"
EX_POOL_CLEANUP = f"""
virsh pool-destroy {EX_POOL} >/dev/null 2>&1
virsh pool-undefine {EX_POOL} >/dev/null 2>&1
rm -rf {EX_POOL_DIR}
true
"""


def vm_migrate_setup() -> list[dict]:
    """ex-acme-web1 running on mcm-a1, its disk in the local mcm pool."""
    vm = lab_guest(GUEST, TENANT, BRIDGE)
    return [
        {
            "name": "setup: the VM to move",
            FQCN.format("vm"): {"config": [vm]},
            "delegate_to": MIGRATE_SRC,
        }
    ]


def verify_vm_migrate(results: dict[str, dict], hosts: dict) -> None:
    plan = results[
        "What a migration of ex-acme-web1 to mcm-b1 would do (mode, bytes, estimated time)"
    ]
    assert plan["mode"] == "live-block" and plan["plan"]["estimated_seconds"] > 0
    moved = results["Move ex-acme-web1 from mcm-a1 to mcm-b1, mode chosen by the module"]
    assert moved["mode"] == "live-block" and moved["destination_state"] == "running"
    back = results["Cold migration back to mcm-a1, converted to raw into another pool, with "
                   "the checksum of every disk"]  # fmt: skip
    assert back["mode"] == "cold" and all(c["match"] for c in back["checksum"])
    [disk] = back["checksum"]
    assert (disk["source_format"], disk["destination_format"], disk["content"]) == (
        "qcow2", "raw", "guest"), disk  # fmt: skip
    assert disk["destination_path"] == f"{EX_POOL_DIR}/{GUEST}.raw", disk
    src = libvirt_probe(hosts[MIGRATE_SRC], PREFIX)["domains"]
    assert f"<source file='{EX_POOL_DIR}/{GUEST}.raw'" in src[GUEST]["xml"]
    assert "type='raw'" in src[GUEST]["xml"]
    dst = libvirt_probe(hosts[MIGRATE_DST], PREFIX)["domains"]
    assert src[GUEST]["state"] == RUNNING
    assert dst[GUEST]["state"] == SHUTOFF and dst[GUEST]["persistent"]  # kept for a revert
    # the guest that went there and back answers on its console
    [out] = console(MIGRATE_SRC, GUEST, "echo $((6 * 7))")
    assert out["out"] == "42", out


TLS_EXAMPLE_DIR = "/etc/mcm-example"


def verify_tls_files(results: dict[str, dict], hosts: dict) -> None:
    done = results["A certificate, and a private key in a directory of its own"]
    assert done["changed_files"] == [f"{TLS_EXAMPLE_DIR}/cert.pem",
                                     f"{TLS_EXAMPLE_DIR}/private/key.pem"]  # fmt: skip
    modes = sh(hosts[HOST], f"stat -c '%n %a' {TLS_EXAMPLE_DIR}/private "
                            f"{TLS_EXAMPLE_DIR}/private/key.pem")  # fmt: skip
    assert modes.split() == [f"{TLS_EXAMPLE_DIR}/private", "700",
                             f"{TLS_EXAMPLE_DIR}/private/key.pem", "600"]  # fmt: skip
    sh(hosts[HOST], f"rm -rf {TLS_EXAMPLE_DIR}")


# The lab's CA on its state host (setup_migration_tls.yml made it; the role reads it there).
LAB_STATE_HOST, LAB_PKI_DIR = "mcm-a1", "/var/lib/mcm/state/pki"
MISSING_QEMU_CERT = "/etc/pki/qemu/client-cert.pem"


def host_certificate_setup() -> list[dict]:
    return [
        {"name": "The CA certificate of the state host",
         "ansible.builtin.slurp": {"src": f"{LAB_PKI_DIR}/ca-cert.pem"},
         "delegate_to": LAB_STATE_HOST, "register": "ex_ca"},
        {"name": "ca_pem",
         "ansible.builtin.set_fact": {"ca_pem": "{{ ex_ca.content | b64decode }}"}},
    ]  # fmt: skip


def verify_host_certificate(results: dict[str, dict], hosts: dict) -> None:
    """One copy missing: the check names it, no reissue; installed puts it back only."""
    check = results["Is this host's TLS material in place and valid"]
    assert check["problems"] == [f"{MISSING_QEMU_CERT}: missing"], check["problems"]
    assert not check["reissue"] and not check["ok"] and not check["changed"]
    installed = results["Certificate, CA certificate and the key's copies for libvirt and qemu"]
    assert installed["changed_files"] == [MISSING_QEMU_CERT]
    assert not installed["libvirtd_restart"]
    request = results["Key (kept when valid) and certificate signing request, made on the host"]
    assert "skip_reason" in request
    same = sh(hosts[HOST], f"cmp {MISSING_QEMU_CERT} /etc/pki/libvirt/clientcert.pem && echo same")
    assert same.strip() == "same"


def verify_migration_record(results: dict[str, dict], _hosts: dict) -> None:
    row = results["Close it and record where the VM lives now"]["row"]
    assert row["status"] == "completed" and row["downtime_ms"] == 42 and row["ended"]
    record = results["Read the ledger and the placement"]
    assert record["placement"]["vms"] == {"acme/web1": "mcm-b1"}
    assert [r["id"] for r in record["rows"]] == [1]


def verify_tenant_spec(results: dict[str, dict], _hosts: dict) -> None:
    spec = results["Validate the spec against the inventory's clouds"]
    assert spec["problems"] == [] and spec["summary"]["networks"] > 0


def host_network_setup() -> list[dict]:
    """The plan load_spec would compute: the hand-written plan of the first example."""
    plan = args_of(examples("host_network")[0], "host_network")["plan"]
    return [
        {
            "name": "setup: mcm_plans on the controller",
            "ansible.builtin.set_fact": {"mcm_plans": {HOST: plan}},
            "delegate_to": "localhost",
            "delegate_facts": True,
        }
    ]


def verify_host_network(results: dict[str, dict], hosts: dict) -> None:
    made = results["A small plan written by hand - one network of tenant ex-acme, DHCP only"]
    assert made["changed"]
    same = results["Converge this host's tenant networks to the plan load_spec computed"]
    assert not same["changed"], same
    gone = results["Remove everything tenant ex-acme has on this host"]
    assert gone["changed"]
    assert sh(hosts[HOST], LEFT_OVER).strip() == ""


def verify_infra_facts(results: dict[str, dict], _hosts: dict) -> None:
    facts = results["Read what the host carries"]
    root = {link["name"] for link in facts["links"] if link["namespace"] is None}
    assert {"lo", "eth0"} <= root, root
    assert isinstance(facts["vms"], list) and isinstance(facts["dnsmasq"], list)


def verify_nft_ruleset(results: dict[str, dict], hosts: dict) -> None:
    first = results[
        "Web network of tenant ex-acme - tcp/8080 from the db subnet, ping from anywhere, "
        "the rest dropped"
    ]
    assert [c["action"] for c in first["changes"]] == ["create"], first["changes"]
    fip = results["The same, and floating address 192.0.2.10 DNATed to web1 (10.10.1.10)"]
    assert [c["action"] for c in fip["changes"]] == ["replace"], fip["changes"]
    assert "dnat ip to 10.10.1.10" in fip["after"][0]["ruleset"]
    gone = results["Remove the table"]
    assert [c["action"] for c in gone["changes"]] == ["delete"], gone["changes"]
    tables = sh(hosts[HOST], "ip netns exec qrouter-ex-acme nft list tables")
    assert "mcm-ex-acme" not in tables, tables


# ovs_bridge: Open vSwitch is not running in the lab hosts until setup_ovs.yml starts it.
# The set-up starts its daemons as the ovs role does (userspace datapath) and gives the host
# the eth2 its second example attaches (one end of a veth pair: no dummy driver here); the
# tear-down removes the bridge and eth2 and, when the set-up started them (marker file),
# stops the daemons and deletes their database, as tests/integration/test_overlay_lab.py does.
OVS_HOST = "mcm-a1"  # the examples' tunnel goes to 172.30.1.12, mcm-a2's underlay address
OVS_MARK = "/run/mcm-example-ovs"
OVS_SETUP = f"""
ip link add eth2 type veth peer name ex-eth2p
if ! pgrep -x ovsdb-server >/dev/null; then
    touch {OVS_MARK}
    mkdir -p /var/run/openvswitch /var/log/openvswitch
    db=$(readlink -f /etc/openvswitch/conf.db)
    mkdir -p "$(dirname "$db")"
    [ -s "$db" ] || ovsdb-tool create "$db" /usr/share/openvswitch/vswitch.ovsschema
    ovsdb-server /etc/openvswitch/conf.db --remote=punix:/var/run/openvswitch/db.sock \
        --pidfile=/var/run/openvswitch/ovsdb-server.pid --no-chdir --detach \
        --log-file=/var/log/openvswitch/ovsdb-server.log
    ovs-vsctl --timeout=30 --no-wait init
    ovs-vswitchd unix:/var/run/openvswitch/db.sock --pidfile=/var/run/openvswitch/ovs-vswitchd.pid \
        --no-chdir --detach --log-file=/var/log/openvswitch/ovs-vswitchd.log
fi
"""
OVS_CLEANUP = f"""
if [ -S /var/run/openvswitch/db.sock ]; then
    timeout 20 ovs-vsctl --timeout=15 --if-exists del-br xenbr0
fi
ip link del eth2 2>/dev/null
if [ -e {OVS_MARK} ]; then
    for d in ovs-vswitchd ovsdb-server; do
        pid=$(cat /var/run/openvswitch/$d.pid 2>/dev/null) && kill "$pid"
        for i in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$pid" 2>/dev/null || break; sleep 0.3; done
        kill -9 "$pid" 2>/dev/null
        rm -f /var/run/openvswitch/$d.pid /var/run/openvswitch/$d.*.ctl
    done
    rm -f /var/run/openvswitch/db.sock "$(readlink -f /etc/openvswitch/conf.db)" \
        /var/lib/openvswitch/.conf.db.~lock~
    rm -f {OVS_MARK}
    rmdir /var/run/openvswitch 2>/dev/null
fi
true
"""


RUNNERS: dict[str, Runner] = {
    "netns": Runner(),
    "ovs_bridge": Runner(
        hosts=OVS_HOST,
        teardown=(OVS_HOST,),
        setup={OVS_HOST: OVS_SETUP},
        cleanup=OVS_CLEANUP,
    ),
    # the router namespace qrouter-ex-acme with its leg on the web segment
    "nft_ruleset": Runner(setup={HOST: NET_WEB + NET_ADDRESSES}, verify=verify_nft_ruleset),
    "host_network": Runner(setup_tasks=host_network_setup, verify=verify_host_network),
    "link": Runner(
        setup={HOST: "ip netns add qdhcp-ex-acme.web"}, play_vars=link_vars, verify=verify_link
    ),
    "address": Runner(setup={HOST: NET_WEB}),
    "route": Runner(setup={HOST: NET_WEB + NET_ADDRESSES}),
    "fdb": Runner(setup={HOST: VXLAN}),
    "dnsmasq": Runner(
        setup={HOST: NET_WEB + NET_ADDRESSES + NET_DB},
        play_vars=dnsmasq_vars,
        verify=verify_dnsmasq,
    ),
    # one lab guest: created running, grown, stopped (the guest has no ACPI daemon: the
    # stop waits its 10 s, then destroys), removed
    "vm": Runner(bridges=(HOST,), guests=True, play_vars=vm_vars, verify=verify_vm),
    "vm_info": Runner(
        changes=False,
        setup={HOST: LEASE},
        guests=True,
        setup_tasks=vm_info_setup,
        verify=verify_vm_info,
    ),
    "vm_volume": Runner(guests=True, verify=verify_vm_volume),
    # Needs two hosts and a running VM: the play runs on the source, the examples delegate
    # to the host each migration runs on. Real, with one lab guest; only the plan (first
    # task) is in check mode, as its example says.
    "vm_migrate": Runner(
        hosts=MIGRATE_SRC,
        setup={MIGRATE_DST: "mkdir -p /var/lib/mcm/console"},
        teardown=(MIGRATE_SRC, MIGRATE_DST),
        bridges=(MIGRATE_SRC, MIGRATE_DST),
        guests=True,
        setup_tasks=vm_migrate_setup,
        before=migration_tls,
        verify=verify_vm_migrate,
        cleanup=EX_POOL_CLEANUP,
    ),
    # files in /etc/mcm-example on mcm-a2 (removed by the set-up and after the check)
    "tls_files": Runner(setup={HOST: f"rm -rf {TLS_EXAMPLE_DIR}"}, verify=verify_tls_files),
    # one copy of mcm-a2's certificate removed: the check names it, installed puts it back
    # (no new key, no signing); the CA is the lab's, on its state host
    "host_certificate": Runner(
        setup={HOST: f"rm -f {MISSING_QEMU_CERT}"},
        before=lambda hosts: migration_tls(hosts, (HOST,)),
        setup_tasks=host_certificate_setup,
        play_vars=lambda _examples: {"state_host": LAB_STATE_HOST, "pki_dir": LAB_PKI_DIR},
        verify=verify_host_certificate,
    ),
    # the controller-side ledger and placement record, in a temporary state directory
    "migration_record": Runner(
        hosts="localhost",
        teardown=(),
        play_vars=lambda _examples: {"mcm_state_dir": tempfile.mkdtemp(prefix="mcm-state-")},
        verify=verify_migration_record,
    ),
    # reads / aborts the job of a domain: none of ex-* runs a job here, so nothing changes
    "vm_job": Runner(changes=False),
    # reads everything on the host, changes nothing
    "infra_facts": Runner(changes=False, verify=verify_infra_facts),
    # the controller-side validator: on localhost, on the documented example spec
    "tenant_spec": Runner(
        hosts="localhost",
        teardown=(),
        changes=False,
        play_vars=lambda _examples: {"spec_file": str(ROOT / "docs" / "examples" / "tenants.yml")},
        verify=verify_tenant_spec,
    ),
}


def playbook(module: str, runner: Runner) -> tuple[list[dict], list[tuple[str, str]]]:
    """The play, and (kind, name) of each of its tasks: setup, example or again."""
    fqcn = FQCN.format(module)
    tasks: list[dict] = []
    kinds: list[tuple[str, str]] = []
    for task in runner.setup_tasks():
        tasks.append(task)
        kinds.append(("setup", task["name"]))
    example_tasks = examples(module)
    for task in example_tasks:
        tasks.append(task)
        kinds.append(("example", task["name"]))
        # a new ledger row (migration_record action=start) is a change by design
        args = task.get(fqcn) or {}
        if fqcn in task and not task.get("check_mode") and args.get("action") != "start":
            again = {k: copy.deepcopy(v) for k, v in task.items() if k != "register"}
            again["name"] = f"{task['name']} (again)"
            tasks.append(again)
            kinds.append(("again", task["name"]))
    play = {
        "name": f"EXAMPLES of {fqcn}",
        "hosts": runner.hosts,
        "gather_facts": False,
        "vars": runner.play_vars(example_tasks),
        "tasks": tasks,
    }
    if runner.hosts == "localhost":
        play["connection"] = "local"
    return [play], kinds


def tear_down(runner: Runner, hosts: dict) -> None:
    for name in runner.teardown:
        node = hosts[name]
        if runner.guests:
            guest_teardown(node)
        node.run("sh -c %s", NET_TEARDOWN)
        if runner.cleanup:
            node.run("sh -c %s", runner.cleanup)


TIMINGS: dict[str, float] = {}


def test_no_runner_without_a_module():
    assert not set(RUNNERS) - set(MODULES), "runners of modules that are gone"


@pytest.mark.parametrize("module", MODULES)
def test_examples_run_and_are_idempotent(module, hosts, tmp_path):
    runner = RUNNERS.get(module)
    if runner is None:
        pytest.fail(
            f"plugins/modules/{module}.py has no runner in {Path(__file__).name}: add one "
            f"(lab host, set-up, tear-down) to RUNNERS so that its EXAMPLES run"
        )
    started = time.monotonic()
    play, kinds = playbook(module, runner)
    path = tmp_path / f"examples-{module}.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    if runner.before is not None:
        runner.before(hosts)
    tear_down(runner, hosts)  # what an interrupted earlier run may have left
    try:
        for name, script in runner.setup.items():
            set_up(hosts[name], script)
        for name in runner.bridges:
            lab_bridge(hosts[name], BRIDGE)
        proc, data = ansible_json(["ansible-playbook", str(path), *runner.flags])
        ran = data["plays"][0]["tasks"]
        results: dict[str, dict] = {}
        for (kind, name), task in zip(kinds, ran, strict=False):
            result = next(iter(task["hosts"].values()))
            where = f"{module}: {kind} task {name!r}"
            assert not result.get("failed"), f"{where} failed: {result.get('msg', result)}"
            if kind == "example":
                results[name] = result
            elif kind == "again":
                assert not result.get("changed"), (
                    f"{where} run twice in a row changed again: {result.get('changes', result)}"
                )
        assert len(ran) == len(kinds), f"{module}: only {len(ran)} of {len(kinds)} tasks ran"
        changed = any(r.get("changed") for r in results.values())
        assert changed == runner.changes, f"{module}: examples changed something: {changed}"
        assert proc.returncode == 0, proc.stderr[-2000:]
        if runner.verify is not None:
            runner.verify(results, hosts)
    finally:
        tear_down(runner, hosts)
        TIMINGS[module] = round(time.monotonic() - started, 1)
        print(f"\n{module} examples: {TIMINGS[module]} s")
    for name in runner.teardown:
        left = sh(hosts[name], LEFT_OVER).strip()
        assert not left, f"the tear-down of {module} left on {name}:\n{left}"
        if runner.guests:
            assert libvirt_probe(hosts[name], PREFIX) == {"domains": {}, "volumes": []}
