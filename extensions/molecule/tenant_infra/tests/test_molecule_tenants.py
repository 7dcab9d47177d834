"""Verifier of the molecule scenario tenant_infra (testinfra, podman backend).

After converge: tenants `mla` (cloud_a) and `mlb` (cloud_b), both on 10.0.0.0/24. Each
object is on the hosts of its cloud only, and a client namespace on each tenant bridge
gets a lease from its own tenant's dnsmasq (on mcm-a2 the DHCP crosses the VXLAN to the
network node mcm-a1). The scenario's cleanup.yml removes the clients and both tenants.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest
import testinfra
import yaml

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.multicloud.migration.plugins.module_utils import (  # noqa: E402
    spec as specmod,
)

SPEC = yaml.safe_load((Path(__file__).resolve().parents[1] / "vars" / "spec.yml").read_text())
NETS = {
    t["name"]: t["networks"][0]
    for t in specmod.normalize(SPEC, clouds={"cloud_a", "cloud_b"})["tenants"]
}
CLOUD_HOSTS = {"cloud_a": ("mcm-a1", "mcm-a2"), "cloud_b": ("mcm-b1",)}
NETWORK_NODE = {"mla": "mcm-a1", "mlb": "mcm-b1"}  # the first host of the cloud
CLIENT_HOST = {"mla": "mcm-a2", "mlb": "mcm-b1"}
UDHCPC_SCRIPT = "/tmp/ml-udhcpc.sh"
# busybox udhcpc hands the lease to this script: it records what the client got.
SCRIPT = """#!/bin/sh
case "$1" in
bound|renew)
    echo "ip=$ip mtu=$mtu router=$router dns=$dns domain=$domain" > "$LEASE_FILE" ;;
esac
"""


def host(name: str) -> testinfra.host.Host:
    return testinfra.get_host(f"podman://{name}")


def links(name: str) -> set[str]:
    return set(host(name).check_output("ls /sys/class/net").split())


def namespaces(name: str) -> set[str]:
    return set(re.findall(r"^(\S+)", host(name).check_output("ip netns list"), re.M))


def dnsmasq_namespaces(name: str) -> set[str]:
    out = host(name).check_output("ps -eo args")
    return set(re.findall(r"^/usr/sbin/dnsmasq --conf-file=/var/lib/mcm/dhcp/([^/]+)/", out, re.M))


@pytest.mark.parametrize("tenant", ["mla", "mlb"])
def test_objects_are_on_the_hosts_of_their_cloud_only(tenant: str) -> None:
    net = NETS[tenant]
    assert net["subnet"] == "10.0.0.0/24"
    for cloud, names in CLOUD_HOSTS.items():
        for name in names:
            have = links(name)
            if cloud == net["cloud"]:
                assert {net["bridge"], net["vxlan"]} <= have, name
            else:
                assert not {net["bridge"], net["vxlan"]} & have, name
    node = NETWORK_NODE[tenant]
    assert {net["dhcp"]["namespace"], net["router_namespace"]} <= namespaces(node)
    assert net["dhcp"]["namespace"] in dnsmasq_namespaces(node)
    for name in (n for names in CLOUD_HOSTS.values() for n in names if n != node):
        assert not {net["dhcp"]["namespace"], net["router_namespace"]} & namespaces(name), name
        assert net["dhcp"]["namespace"] not in dnsmasq_namespaces(name)


@pytest.mark.parametrize("tenant", ["mla", "mlb"])
def test_a_client_gets_a_lease_from_its_tenant(tenant: str) -> None:
    net = NETS[tenant]
    h = host(CLIENT_HOST[tenant])
    ns, leg, lease_file = f"mlcl-{tenant}", f"mlc{tenant}", f"/tmp/mlcl-{tenant}.lease"
    h.check_output(f"cat > {UDHCPC_SCRIPT} <<'EOF'\n{SCRIPT}EOF\nchmod +x {UDHCPC_SCRIPT}")
    h.check_output(f"ip netns add {ns}")
    h.check_output(f"ip link add {leg} type veth peer name eth0 netns {ns}")
    h.check_output(f"ip link set {leg} master {net['bridge']} mtu 1450 up")
    h.check_output(f"ip netns exec {ns} ip link set eth0 up")
    got = h.run(
        f"ip netns exec {ns} env LEASE_FILE={lease_file} busybox udhcpc -i eth0 -n -q "
        f"-t 6 -T 3 -O mtu -s {UDHCPC_SCRIPT}"
    )
    assert got.rc == 0, f"no lease in {ns}: {got.stdout}{got.stderr}"
    text = h.check_output(f"cat {lease_file}")
    lease: dict[str, Any] = dict(kv.split("=", 1) for kv in text.split())
    assert lease["mtu"] == "1450"
    assert lease["router"] == net["gateway"] == "10.0.0.1"
    assert lease["dns"] == net["dhcp"]["server"]
    assert lease["domain"] == f"front.{tenant}"
    first, last = (int(a.rsplit(".", 1)[1]) for a in net["dhcp"]["range"])
    assert lease["ip"].startswith("10.0.0.") and first <= int(lease["ip"].rsplit(".", 1)[1]) <= last
