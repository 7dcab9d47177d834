"""host_network: the steps a plan needs, check-mode relaxations, results (no root, no netlink)."""

from __future__ import annotations

import errno
import importlib

import pytest

UTILS = "ansible_collections.multicloud.migration.plugins.module_utils"
hn = importlib.import_module(f"{UTILS}.host_network")
dhcp = importlib.import_module(f"{UTILS}.dnsmasq")
netlink = importlib.import_module(f"{UTILS}.netlink")
rtnl = importlib.import_module(f"{UTILS}.rtnl")

MODULES = "ansible_collections.multicloud.migration.plugins.modules"

PLAN = {
    "host": "a1",
    "tenants": ["acme"],
    "scopes": ["mcm:acme/"],
    "namespace_scopes": ["qdhcp-acme.", "qrouter-acme"],
    "dhcp_scopes": ["qdhcp-acme."],
    "netns": [{"name": "qdhcp-acme.web", "forwarding": None, "state": "present"}],
    "links": [
        {"name": "brq-1", "kind": "bridge", "namespace": None, "owner": "mcm:acme/web"},
        {
            "name": "dhb-1",
            "kind": "veth",
            "namespace": None,
            "master": "brq-1",
            "owner": "mcm:acme/web",
            "peer": {"name": "dhn-1", "namespace": "qdhcp-acme.web"},
        },
        {"name": "lo", "kind": "device", "namespace": "qdhcp-acme.web", "state": "up"},
    ],
    "addresses": [
        {"namespace": "qdhcp-acme.web", "interface": "dhn-1", "addresses": ["10.1.0.2/24"]}
    ],
    "routes": [],
    "fdb": [],
    "dnsmasq": [
        {
            "name": "qdhcp-acme.web",
            "namespace": "qdhcp-acme.web",
            "interface": "dhn-1",
            "server": "10.1.0.2",
            "subnet": "10.1.0.0/24",
        }
    ],
    "dhcp_clients": [],
}


def test_steps_are_the_roles_six_calls_in_order():
    steps = hn.steps(PLAN)
    assert [r for r, _args in steps] == ["netns", "link", "address", "fdb", "dnsmasq"]
    args = dict(steps)
    assert args["netns"] == {
        "config": PLAN["netns"], "state": "overridden",
        "scope_namespaces": PLAN["namespace_scopes"],
    }  # fmt: skip
    assert args["link"]["state"] == "overridden"
    assert args["link"]["scope"] == ["mcm:acme/"]
    assert args["address"] == {"config": PLAN["addresses"], "state": "replaced"}
    assert args["fdb"] == {"config": [], "state": "overridden", "scope": ["mcm:acme/"]}
    assert args["dnsmasq"]["scope"] == ["qdhcp-acme."]
    with_routes = {**PLAN, "routes": [{"namespace": "qdhcp-acme.web", "routes": []}]}
    assert [r for r, _args in hn.steps(with_routes)][3] == "route"


def test_a_plan_without_tenants_removes_nothing():
    plan = {**PLAN, "tenants": []}
    assert [r for r, _args in hn.steps(plan)] == ["address"]
    assert hn.steps({"tenants": []}) == []


def test_tenants_without_a_scope_are_refused():
    with pytest.raises(hn.HostNetworkError, match="empty dhcp_scopes"):
        hn.steps({**PLAN, "dhcp_scopes": []})


def test_planned_networks_need_namespace_interface_and_address():
    assert hn.planned_networks(PLAN) == {("qdhcp-acme.web", "dhn-1", "10.1.0.2")}
    no_ns = {**PLAN, "netns": []}
    assert hn.planned_networks(no_ns) == set()


class FakeProcesses:
    def __init__(self, missing: bool) -> None:
        self.missing = missing

    def running_pid(self, directory):
        return None

    def check_network(self, instance):
        if self.missing:
            raise dhcp.DnsmasqError(instance["name"], "network namespace does not exist")

    def in_namespace(self, pid, namespace):
        return True

    def start(self, instance, directory):
        raise AssertionError("check mode must not start")

    def stop(self, pid, directory):
        raise AssertionError("check mode must not stop")

    def reload(self, pid, directory):
        raise AssertionError("check mode must not reload")


def fake_netlink(calls, changed=("netns",)):
    def run(resource, params, check_mode, diff_mode):
        calls.append((resource, params, check_mode))
        changes = [{"action": "create", "object": resource, "name": "qdhcp-acme.web"}]
        is_changed = resource in changed
        result = {
            "changed": is_changed,
            "changes": changes if is_changed else [],
            "before": [],
            "after": [{"x": 1}],
            "warnings": [f"{resource} warning", "same"],
        }
        if diff_mode:
            result["diff"] = {"before": "", "after": resource}
        return result

    return run


def test_check_mode_leaves_out_lo_of_new_namespaces_and_predicts_dnsmasq(tmp_path):
    calls = []
    result = hn.converge_host(
        PLAN, FakeProcesses(missing=True), check_mode=True, diff_mode=True,
        run_netlink=fake_netlink(calls),
        converge_dhcp=lambda *a, **k: dhcp.converge(*a, **k, root=str(tmp_path)),
    )  # fmt: skip
    link_args = next(p for r, p, _check in calls if r == "link")
    assert [i["name"] for i in link_args["config"]] == ["brq-1", "dhb-1"]
    assert all(call[2] for call in calls)
    assert result["changed"]
    dnsmasq = result["resources"]["dnsmasq"]
    assert [c["action"] for c in dnsmasq["changes"]] == ["write", "start"]
    assert not (tmp_path / "qdhcp-acme.web").exists()
    assert result["warnings"].count("same") == 1
    assert any("check mode predicts" in w for w in result["warnings"])
    # diff: one part per netlink resource that changed, then the dnsmasq files
    assert result["diff"][0] == {"before": "", "after": "netns"}
    assert any("dnsmasq.conf" in d["after_header"] for d in result["diff"][1:])


def test_check_mode_still_refuses_a_network_the_plan_does_not_create(tmp_path):
    plan = {**PLAN, "addresses": []}
    with pytest.raises(hn.HostNetworkError) as info:
        hn.converge_host(
            plan, FakeProcesses(missing=True), check_mode=True,
            run_netlink=fake_netlink([]),
            converge_dhcp=lambda *a, **k: dhcp.converge(*a, **k, root=str(tmp_path)),
        )  # fmt: skip
    assert info.value.resource == "dnsmasq"
    assert "qdhcp-acme.web" in str(info.value)
    assert set(info.value.done) == {"netns", "link", "fdb"}


def test_unchanged_steps_return_no_state_unless_diffing(tmp_path):
    calls = []
    result = hn.converge_host(
        {**PLAN, "dnsmasq": []}, FakeProcesses(missing=False), run_netlink=fake_netlink(calls),
        converge_dhcp=lambda *a, **k: dhcp.converge(*a, **k, root=str(tmp_path)),
    )  # fmt: skip
    assert "before" in result["resources"]["netns"]
    assert "before" not in result["resources"]["link"]
    assert "diff" not in result
    assert result["leases"] == {}
    # outside check mode the link step gets every item, lo included
    assert len(next(p for r, p, _check in calls if r == "link")["config"]) == 3


def test_a_netlink_error_names_the_step_and_keeps_what_was_done():
    def failing(resource, params, check_mode, diff_mode):
        if resource == "address":
            raise netlink.NetlinkStateError("address: interface dhn-1 does not exist")
        return {"changed": True, "changes": [{"action": "create"}], "warnings": []}

    with pytest.raises(hn.HostNetworkError) as info:
        hn.converge_host(PLAN, FakeProcesses(missing=False), run_netlink=failing)
    assert info.value.resource == "address"
    assert "dhn-1" in str(info.value)
    assert list(info.value.done) == ["netns", "link"]


@pytest.mark.parametrize(
    ("key", "module"),
    [
        ("netns", "netns"),
        ("links", "link"),
        ("addresses", "address"),
        ("routes", "route"),
        ("fdb", "fdb"),
        ("dnsmasq", "dnsmasq"),
        ("firewall", "nft_ruleset"),
    ],
)
def test_plan_items_are_exactly_the_modules_config_items(key, module):
    ours = importlib.import_module(f"{MODULES}.host_network").PLAN_SPEC[key]
    theirs = importlib.import_module(f"{MODULES}.{module}")
    spec = getattr(theirs, "ITEM_SPEC", None) or theirs.INSTANCE_SPEC
    assert ours["options"] == spec


def test_link_step_is_re_run_when_removed_namespaces_take_their_legs_late(monkeypatch):
    monkeypatch.setattr(hn.time, "sleep", lambda _s: None)
    calls = []

    def flaky(resource, params, check_mode, diff_mode):
        calls.append(resource)
        if resource == "netns":
            return {"changed": True, "changes": [{"action": "delete", "name": "qrouter-acme"}]}
        if resource == "link" and calls.count("link") == 1:
            raise netlink.NetlinkStateError(
                "link: delete 2 links in root: No such device (errno 19)",
                [{"action": "delete", "name": "brq-1"}],
            )
        return {"changed": resource == "link", "changes": [{"action": "delete", "name": "x"}]
                if resource == "link" else []}  # fmt: skip

    removal = {**PLAN, "netns": [], "links": [], "addresses": [], "dnsmasq": []}
    result = hn.converge_host(
        removal, FakeProcesses(missing=False), run_netlink=flaky,
        converge_dhcp=lambda *a, **k: dhcp.Result(),
    )  # fmt: skip
    assert calls.count("link") == 2
    assert [c["name"] for c in result["resources"]["link"]["changes"]] == ["brq-1", "x"]

    # without removed namespaces there is no second attempt
    def always_failing(resource, params, check_mode, diff_mode):
        calls.append(resource)
        if resource == "link":
            raise netlink.NetlinkStateError("link: delete 2 links in root: No such device")
        return {"changed": False, "changes": []}

    calls.clear()
    with pytest.raises(hn.HostNetworkError):
        hn.converge_host(removal, FakeProcesses(missing=False), run_netlink=always_failing)
    assert calls.count("link") == 1


def _pyroute2_interrupted():
    from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

    return NetlinkDumpInterrupted()


@pytest.mark.parametrize(
    "interruption",
    [lambda: rtnl.DumpInterrupted(errno.EAGAIN, "interrupted"), _pyroute2_interrupted],
    ids=["rtnl", "pyroute2"],
)
def test_an_interrupted_dump_is_read_again(interruption):
    calls = []

    def interrupted_once(resource, params, check_mode, diff_mode):
        calls.append(resource)
        if resource == "address" and calls.count("address") == 1:
            raise interruption()
        return {"changed": False, "changes": []}

    result = hn.converge_host(
        {**PLAN, "dnsmasq": []}, FakeProcesses(missing=False), run_netlink=interrupted_once,
        converge_dhcp=lambda *a, **k: dhcp.Result(),
    )  # fmt: skip
    assert calls.count("address") == 2
    assert not result["changed"]
