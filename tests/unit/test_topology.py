"""The topology_dot filter draws every cloud, host, network and VM of a spec, always the
same way, as DOT that Graphviz accepts (CI installs graphviz: `dot` is required)."""

from __future__ import annotations

import html
import shutil
import subprocess
from pathlib import Path

import plan as planmod
import pytest
import spec as specmod
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.multicloud.migration.plugins.filter.topology_dot import (
    FilterModule,
    topology_dot,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lab() -> tuple[dict, dict]:
    """The normalised example spec and the plans of the lab's hosts."""
    inventory = yaml.safe_load((ROOT / "inventories/lab/hosts.yml").read_text())["all"]
    clouds = inventory["vars"]["mcm_clouds"]
    groups = {c: sorted(inventory["children"][c]["hosts"]) for c in clouds}
    hostvars = {h: v for c in clouds for h, v in inventory["children"][c]["hosts"].items()}
    normal = specmod.normalize(
        specmod.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text()), clouds=clouds
    )
    hosts = planmod.hosts_from_inventory(clouds, groups, hostvars)
    return normal, {h: planmod.host_plan(normal, hosts, h) for h in sorted(hosts)}


def _names(normal: dict) -> tuple[set, set, set]:
    clouds = {n["cloud"] for t in normal["tenants"] for n in t["networks"]}
    nets = {
        (t["name"], n["name"], n["subnet"], n["vni"])
        for t in normal["tenants"]
        for n in t["networks"]
    }
    vms = {v["domain_name"] for t in normal["tenants"] for n in t["networks"] for v in n["vms"]}
    return clouds, nets, vms


def test_registered():
    assert FilterModule().filters() == {"topology_dot": topology_dot}


def test_every_cloud_host_network_and_vm_is_drawn(lab):
    normal, plans = lab
    dot = topology_dot(normal, plans)
    clouds, nets, vms = _names(normal)
    assert clouds == {"cloud_a", "cloud_b"} and len(nets) == 3 and len(vms) == 4
    for cloud in clouds:
        assert f'"cluster_cloud_{cloud}"' in dot
    for host in ("mcm-a1", "mcm-a2", "mcm-b1"):
        assert f'"host:{host}" [' in dot
    for tenant, name, subnet, vni in nets:
        assert f'"net:{tenant}/{name}" [' in dot
        assert subnet in dot and f"VNI {vni}" in dot
    for vm in vms:
        assert f'"vm:{vm}" [' in dot
    # networks go to the hosts of their cloud only; VMs to their network
    assert '"net:acme/web" -> "host:mcm-a1"' in dot and '"net:acme/web" -> "host:mcm-a2"' in dot
    assert '"net:acme/web" -> "host:mcm-b1"' not in dot
    assert '"net:globex/app" -> "host:mcm-b1"' in dot
    assert '"vm:acme-web1" -> "net:acme/web"' in dot
    assert "runs on" not in dot


def test_deterministic(lab):
    normal, plans = lab
    first = topology_dot(normal, plans)
    shuffled_plans = dict(reversed(list(plans.items())))
    shuffled = {**normal, "tenants": list(reversed(normal["tenants"]))}
    assert topology_dot(shuffled, shuffled_plans) == first == topology_dot(normal, plans)


def test_live_placement(lab):
    normal, plans = lab
    dot = topology_dot(normal, plans, live={"acme-web1": "mcm-a2", "globex-app1": "elsewhere"})
    assert '"vm:acme-web1" -> "host:mcm-a2"' in dot
    assert '"vm:globex-app1" -> "host:elsewhere"' in dot and "(unknown cloud)" in dot


def test_without_plans_networks_go_to_their_cloud(lab):
    normal, _plans = lab
    dot = topology_dot(normal)
    assert '"net:acme/web" -> "cloud:cloud_a"' in dot
    assert '"net:globex/app" -> "cloud:cloud_b"' in dot
    assert "host:" not in dot


def test_quotes_are_escaped():
    normal = specmod.normalize({"tenants": [{"name": "t", "networks": [
        {"name": "n", "cloud": 'c"x', "subnet": "10.0.0.0/24"}]}]})  # fmt: skip
    assert 'c\\"x' in topology_dot(normal)


def test_bad_input():
    with pytest.raises(AnsibleFilterError):
        topology_dot(["not", "a", "spec"])
    with pytest.raises(AnsibleFilterError):
        topology_dot({"tenants": []}, live=["x"])


def test_graphviz_accepts_it(lab):
    dot_bin = shutil.which("dot")
    assert dot_bin, "Graphviz's dot is required (apt-get install graphviz)"
    normal, plans = lab
    for text in (topology_dot(normal, plans, {"acme-db1": "mcm-a1"}), topology_dot(normal)):
        proc = subprocess.run(
            [dot_bin, "-Tsvg"], input=text, capture_output=True, text=True, check=False, timeout=60
        )
        assert proc.returncode == 0, proc.stderr
        assert "<svg" in proc.stdout and not proc.stderr.strip(), proc.stderr


def test_committed_picture_is_current(lab):
    """docs/topology.svg is what show_topology.yml renders from the example spec."""
    svg = html.unescape((ROOT / "docs/topology.svg").read_text())
    normal, _plans = lab
    _clouds, nets, vms = _names(normal)
    for tenant, name, _subnet, vni in nets:
        assert f"net:{tenant}/{name}" in svg and f"VNI {vni}" in svg
    for vm in vms:
        assert f"vm:{vm}" in svg
