"""dnsmasq files, lease parsing and decisions, with the process side faked (no root)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

MODULE_UTILS = Path(__file__).resolve().parents[2] / "plugins" / "module_utils"


def _load(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, MODULE_UTILS / f"{name}.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


dnsmasq = _load("dnsmasq")

BASE = {
    "name": "qdhcp-acme.web",
    "namespace": "qdhcp-acme.web",
    "interface": "dhn-4242",
    "server": "10.10.1.2",
    "subnet": "10.10.1.0/24",
    "range": ["10.10.1.100", "10.10.1.200"],
    "gateway": "10.10.1.1",
    "domain": "web.acme",
    "hosts": [
        {"mac": "52:54:00:00:00:0B", "ip": "10.10.1.11", "name": "web2"},
        {"mac": "52:54:00:00:00:0a", "ip": "10.10.1.10", "name": "web1"},
        {"mac": "52:54:00:00:00:0c", "ip": "10.10.1.9", "name": "web0"},
    ],
}


def rendered(root: str = "/srv/dhcp", **changes):
    return dnsmasq.render(dnsmasq.normalize_instance({**BASE, **changes}), root)


def conf_lines(files) -> list[str]:
    return files.conf.splitlines()


# --------------------------------------------------------------------------- rendering


def test_managed_range_renders_the_whole_config():
    lines = conf_lines(rendered())
    assert lines[0].startswith(dnsmasq.SETTINGS_HEADER)
    assert [line for line in lines if not line.startswith("#")] == [
        "no-resolv",
        "no-hosts",
        "domain-needed",
        "bogus-priv",
        "port=53",
        "bind-interfaces",
        "interface=dhn-4242",
        "except-interface=lo",
        "dhcp-authoritative",
        "no-ping",
        "dhcp-range=10.10.1.100,10.10.1.200,255.255.255.0,1h",
        "dhcp-option=option:router,10.10.1.1",
        "dhcp-option=option:dns-server,10.10.1.2",
        "dhcp-option=option:mtu,1450",
        "domain=web.acme",
        "local=/web.acme/",
        "dhcp-leasefile=/srv/dhcp/qdhcp-acme.web/leases",
        "dhcp-hostsfile=/srv/dhcp/qdhcp-acme.web/hosts",
        "addn-hosts=/srv/dhcp/qdhcp-acme.web/addn_hosts",
        "pid-file=/srv/dhcp/qdhcp-acme.web/pid",
        "log-facility=/srv/dhcp/qdhcp-acme.web/log",
        "log-dhcp",
    ]


def test_never_forwards_dns():
    for files in (rendered(), rendered(domain=None), rendered(dns=False)):
        lines = conf_lines(files)
        assert "no-resolv" in lines
        assert not [line for line in lines if line.startswith(("server=", "resolv-file"))]


def test_static_mode_serves_only_reservations():
    lines = conf_lines(rendered(range=None, lease_time="12h", subnet="10.10.0.0/16"))
    assert "dhcp-range=10.10.0.0,static,255.255.0.0,12h" in lines
    assert len([line for line in lines if line.startswith("dhcp-range=")]) == 1


def test_no_gateway_sends_no_router():
    lines = conf_lines(rendered(gateway=None))
    # an empty option: otherwise dnsmasq would offer its own address as router
    assert "dhcp-option=option:router" in lines
    assert not [line for line in lines if line.startswith("dhcp-option=option:router,")]


def test_dns_off():
    lines = conf_lines(rendered(dns=False))
    assert "port=0" in lines and "dhcp-option=option:dns-server" in lines


def test_domain_and_addn_hosts():
    files = rendered()
    assert files.addn_hosts == (
        "10.10.1.9 web0.web.acme web0\n10.10.1.10 web1.web.acme web1\n"
        "10.10.1.11 web2.web.acme web2\n"
    )
    plain = rendered(domain=None)
    assert not [line for line in conf_lines(plain) if line.startswith(("domain=", "local="))]
    assert plain.addn_hosts.splitlines()[0] == "10.10.1.9 web0"


def test_mtu_default_and_explicit():
    assert "dhcp-option=option:mtu,1450" in conf_lines(rendered())
    assert "dhcp-option=option:mtu,9000" in conf_lines(rendered(mtu=9000))


def test_hosts_are_sorted_by_address_and_lower_case():
    assert rendered().hosts == (
        "52:54:00:00:00:0c,10.10.1.9,web0\n"
        "52:54:00:00:00:0a,10.10.1.10,web1\n"
        "52:54:00:00:00:0b,10.10.1.11,web2\n"
    )


def test_rendering_is_deterministic():
    first = rendered()
    shuffled = rendered(hosts=list(reversed(BASE["hosts"])))
    assert first == shuffled == rendered()
    # reservations live outside dnsmasq.conf: changing them does not touch it
    assert rendered(hosts=BASE["hosts"][:1]).conf == first.conf
    assert rendered(mtu=1400).hosts == first.hosts


def test_settings_read_back():
    instance = dnsmasq.normalize_instance(BASE)
    files = dnsmasq.render(instance).as_dict()
    assert dnsmasq.read_instance(files) == instance
    assert dnsmasq.parse_conf_settings("no-resolv\n") is None
    assert dnsmasq.read_instance({"dnsmasq.conf": None}) is None


def test_defaults():
    instance = dnsmasq.normalize_instance(
        {k: BASE[k] for k in ("name", "namespace", "interface", "server", "subnet")}
    )
    assert instance["lease_time"] == "1h" and instance["mtu"] == 1450 and instance["dns"] is True
    assert instance["range"] is None and instance["gateway"] is None and instance["hosts"] == []


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"subnet": "10.10.1.1/24"}, "subnet"),
        ({"subnet": "10.10.1.0/31"}, "too small"),
        ({"server": "10.10.2.2"}, "server: 10.10.2.2 is outside"),
        ({"server": "10.10.1.255"}, "broadcast"),
        ({"range": ["10.10.1.200", "10.10.1.100"]}, "after"),
        ({"range": ["10.10.1.1"]}, "range"),
        ({"range": ["10.10.1.1", "10.10.1.5"]}, "contains the server"),
        ({"gateway": "10.10.1.2"}, "server's own"),
        ({"mtu": 67}, "mtu"),
        ({"mtu": True}, "mtu"),
        ({"lease_time": "1x"}, "lease_time"),
        ({"lease_time": "60"}, "minimum"),
        ({"domain": "bad_domain"}, "domain"),
        ({"interface": "an-interface-name-too-long"}, "interface"),
        ({"namespace": "../etc"}, "namespace"),
        ({"namespace": None}, "namespace: is required"),
        ({"hosts": [{"mac": "52:54:00:00:00:0z", "ip": "10.10.1.9", "name": "a"}]}, "mac"),
        ({"hosts": [{"mac": "01:00:5e:00:00:01", "ip": "10.10.1.9", "name": "a"}]}, "multicast"),
        ({"hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.10.2.9", "name": "a"}]}, "outside"),
        ({"hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.10.1.1", "name": "a"}]}, "gateway"),
        ({"hosts": [{"mac": "52:54:00:00:00:01", "ip": "10.10.1.9", "name": "a.b"}]}, "name"),
        (
            {
                "hosts": [
                    {"mac": "52:54:00:00:00:01", "ip": "10.10.1.9", "name": "a"},
                    {"mac": "52:54:00:00:00:02", "ip": "10.10.1.9", "name": "b"},
                ]
            },
            r"hosts\[1\].ip: 10.10.1.9 is also used by hosts\[0\]",
        ),
    ],
)
def test_bad_settings_name_the_instance_and_the_key(changes, match):
    with pytest.raises(dnsmasq.DnsmasqError, match=match) as caught:
        dnsmasq.normalize_instance({**BASE, **changes})
    assert "'qdhcp-acme.web'" in str(caught.value)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "-x", None])
def test_bad_names(name):
    with pytest.raises(dnsmasq.DnsmasqError, match="name"):
        dnsmasq.normalize_instance({**BASE, "name": name})


def test_merge_keeps_unset_settings_and_merges_hosts_by_mac():
    have = dnsmasq.normalize_instance(BASE)
    given = {
        "name": BASE["name"],
        "mtu": 1400,
        "gateway": None,
        "hosts": [
            {"mac": "52:54:00:00:00:0A", "ip": "10.10.1.20", "name": "web1"},
            {"mac": "52:54:00:00:00:0d", "ip": "10.10.1.21", "name": "web3"},
        ],
    }
    merged = dnsmasq.merge_instance(have, given)
    assert merged["mtu"] == 1400 and merged["gateway"] == "10.10.1.1"
    assert [(h["mac"][-2:], h["ip"]) for h in merged["hosts"]] == [
        ("0c", "10.10.1.9"),
        ("0b", "10.10.1.11"),
        ("0a", "10.10.1.20"),
        ("0d", "10.10.1.21"),
    ]


# --------------------------------------------------------------------------- leases

LEASES = """\
1767225600 52:54:00:00:00:0a 10.10.1.10 web1 01:52:54:00:00:00:0a
0 52:54:00:00:00:99 10.10.1.150 * *
duid 00:01:00:01:2c:aa:bb:cc:dd:ee:ff:00
1767225600 12345 fd00::10 host6 00:02:00:00
garbage line
1767225700 52:54:00:00:00:0B 10.10.1.11 web2 *
"""


def test_parse_leases():
    assert dnsmasq.parse_leases(LEASES) == [
        {
            "expiry": 1767225600,
            "mac": "52:54:00:00:00:0a",
            "ip": "10.10.1.10",
            "hostname": "web1",
            "client_id": "01:52:54:00:00:00:0a",
        },
        {
            "expiry": None,
            "mac": "52:54:00:00:00:99",
            "ip": "10.10.1.150",
            "hostname": None,
            "client_id": None,
        },
        {
            "expiry": 1767225700,
            "mac": "52:54:00:00:00:0b",
            "ip": "10.10.1.11",
            "hostname": "web2",
            "client_id": None,
        },
    ]
    assert dnsmasq.parse_leases("") == [] and dnsmasq.parse_leases(None) == []


# --------------------------------------------------------------------------- decisions


def _actions(changes) -> list[str]:
    return [change.action for change in changes]


def test_decide():
    want = rendered()
    same = want.as_dict()
    assert dnsmasq.decide("n", want, same, 42) == []
    conf = dnsmasq.decide("n", want, {**same, "dnsmasq.conf": "old"}, 42)
    assert _actions(conf) == ["write", "restart"] and conf[0].files == ["dnsmasq.conf"]
    hosts = dnsmasq.decide("n", want, {**same, "hosts": "", "addn_hosts": ""}, 42)
    assert _actions(hosts) == ["write", "reload"] and hosts[0].files == ["hosts", "addn_hosts"]
    both = dnsmasq.decide("n", want, {**same, "dnsmasq.conf": "old", "hosts": ""}, 42)
    assert _actions(both) == ["write", "restart"]
    assert _actions(dnsmasq.decide("n", want, same, None)) == ["start"]
    assert _actions(dnsmasq.decide("n", want, {**same, "hosts": ""}, None)) == ["write", "start"]
    moved = dnsmasq.decide("n", want, same, 42, in_namespace=False)
    assert _actions(moved) == ["restart"] and "re-created" in moved[0].reason
    new = dnsmasq.decide("n", want, dict.fromkeys(same), None)
    assert _actions(new) == ["write", "start"] and new[1].reason == "new instance"


# --------------------------------------------------------------------------- converge


class FakeProcesses:
    """Processes keyed by state directory; records every call."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.calls: list[tuple[str, str]] = []
        self.next_pid = 100
        self.broken: dict[str, str] = {}
        self.moved: set[str] = set()
        self.reload_confirmed = True

    def running_pid(self, directory):
        return self.pids.get(directory)

    def check_network(self, instance):
        if instance["name"] in self.broken:
            raise dnsmasq.DnsmasqError(instance["name"], self.broken[instance["name"]])

    def start(self, instance, directory):
        assert os.path.exists(os.path.join(directory, "dnsmasq.conf"))
        self.next_pid += 1
        self.pids[directory] = self.next_pid
        self.calls.append(("start", os.path.basename(directory)))
        return self.next_pid

    def stop(self, pid, directory):
        assert self.pids.pop(directory) == pid
        self.calls.append(("stop", os.path.basename(directory)))

    def in_namespace(self, pid, namespace):
        return namespace not in self.moved

    def reload(self, pid, directory):
        self.calls.append(("reload", os.path.basename(directory)))
        return self.reload_confirmed


@pytest.fixture
def env(tmp_path):
    procs = FakeProcesses()

    def run(state, config, **kwargs):
        return dnsmasq.converge(state, config, procs, root=str(tmp_path), **kwargs)

    return procs, run, tmp_path


def _instance(name: str, **changes):
    return {**BASE, "name": name, "namespace": name, **changes}


def _pairs(result) -> list[tuple[str, str]]:
    return [(change.instance, change.action) for change in result.changes]


def test_merged_creates_then_is_idempotent(env):
    procs, run, root = env
    result = run("merged", [BASE])
    assert _pairs(result) == [("qdhcp-acme.web", "write"), ("qdhcp-acme.web", "start")]
    assert sorted(os.listdir(root / "qdhcp-acme.web")) == ["addn_hosts", "dnsmasq.conf", "hosts"]
    assert [d["before_header"].endswith("(absent)") for d in result.diff] == [True] * 3
    assert result.leases == {"qdhcp-acme.web": []}
    again = run("merged", [BASE])
    assert not again.changed and again.diff == []
    assert procs.calls == [("start", "qdhcp-acme.web")]


def test_reservation_change_reloads_and_settings_change_restarts(env):
    procs, run, root = env
    run("merged", [BASE])
    (root / "qdhcp-acme.web" / "leases").write_text(LEASES)
    added = {
        "name": BASE["name"],
        "hosts": [{"mac": "52:54:00:00:00:0d", "ip": "10.10.1.12", "name": "web3"}],
    }
    result = run("merged", [added])
    assert _actions(result.changes) == ["write", "reload"]
    assert len(result.after[0]["hosts"]) == 4
    assert (root / "qdhcp-acme.web" / "leases").read_text() == LEASES
    assert len(result.leases["qdhcp-acme.web"]) == 3
    assert result.warnings == []
    procs.reload_confirmed = False
    dropped = {
        "name": BASE["name"],
        "hosts": [{"mac": "52:54:00:00:00:0d", "ip": "10.10.1.13", "name": "web3"}],
    }
    assert "did not show" in run("merged", [dropped]).warnings[0]
    result = run("merged", [{"name": BASE["name"], "mtu": 1400}])
    assert _actions(result.changes) == ["write", "restart"]
    assert result.changes[0].files == ["dnsmasq.conf"]
    assert procs.calls[-2:] == [("stop", "qdhcp-acme.web"), ("start", "qdhcp-acme.web")]
    assert (root / "qdhcp-acme.web" / "leases").read_text() == LEASES
    # a namespace deleted and created again under the same name: restart into the new one
    procs.moved.add(BASE["namespace"])
    assert _actions(run("merged", [{"name": BASE["name"]}]).changes) == ["restart"]
    procs.moved.clear()
    # a stopped instance is started again, without writing anything
    procs.pids.clear()
    assert _actions(run("merged", [{"name": BASE["name"]}]).changes) == ["start"]


def test_check_mode_touches_nothing(env):
    procs, run, root = env
    result = run("merged", [BASE], check_mode=True)
    assert _actions(result.changes) == ["write", "start"]
    assert not (root / "qdhcp-acme.web").exists() and procs.calls == []
    run("merged", [BASE])
    conf = (root / "qdhcp-acme.web" / "dnsmasq.conf").read_text()
    result = run("replaced", [{**BASE, "mtu": 1300}], check_mode=True)
    assert _actions(result.changes) == ["write", "restart"]
    assert "option:mtu,1300" in result.diff[0]["after"]
    assert (root / "qdhcp-acme.web" / "dnsmasq.conf").read_text() == conf
    result = run("deleted", [], check_mode=True)
    assert _actions(result.changes) == ["stop", "remove"]
    assert (root / "qdhcp-acme.web").exists() and len(procs.calls) == 1


def test_replaced_drops_unlisted_reservations(env):
    _procs, run, _root = env
    run("merged", [BASE])
    result = run("replaced", [{**BASE, "hosts": BASE["hosts"][:1], "gateway": None}])
    assert _actions(result.changes) == ["write", "restart"]
    assert [h["name"] for h in result.after[0]["hosts"]] == ["web2"]
    assert result.after[0]["gateway"] is None


def test_removed_reservation_with_a_lease_warns_without_dhcp_release(env, monkeypatch):
    _procs, run, root = env
    run("merged", [BASE])
    (root / "qdhcp-acme.web" / "leases").write_text(LEASES)
    monkeypatch.setattr(dnsmasq.shutil, "which", lambda _name: None)
    result = run("replaced", [{**BASE, "hosts": BASE["hosts"][2:]}])
    assert len(result.warnings) == 1
    assert "10.10.1.10 (52:54:00:00:00:0a)" in result.warnings[0]
    assert "10.10.1.11 (52:54:00:00:00:0b)" in result.warnings[0]


def test_overridden_removes_only_unlisted_instances_in_scope(env):
    procs, run, root = env
    run("merged", [_instance("qdhcp-a-1"), _instance("qdhcp-a-2"), _instance("qdhcp-b-1")])
    result = run("overridden", [_instance("qdhcp-a-1")], scope="qdhcp-a-")
    assert _pairs(result) == [("qdhcp-a-2", "stop"), ("qdhcp-a-2", "remove")]
    assert sorted(os.listdir(root)) == ["qdhcp-a-1", "qdhcp-b-1"]
    result = run("overridden", [_instance("qdhcp-a-1")])
    assert _pairs(result) == [("qdhcp-b-1", "stop"), ("qdhcp-b-1", "remove")]
    assert set(procs.pids) == {str(root / "qdhcp-a-1")}


def test_deleted_listed_or_whole_scope(env):
    _procs, run, root = env
    run("merged", [_instance("x-1"), _instance("x-2"), _instance("y-1")])
    assert _pairs(run("deleted", [{"name": "x-1"}, {"name": "nope"}])) == [
        ("x-1", "stop"),
        ("x-1", "remove"),
    ]
    assert [c.instance for c in run("deleted", [], scope="x-").changes] == ["x-2", "x-2"]
    assert os.listdir(root) == ["y-1"]
    assert not run("deleted", [], scope="x-").changed


def test_gathered(env):
    _procs, run, root = env
    run("merged", [_instance("x-1"), _instance("y-1")])
    (root / "x-1" / "leases").write_text(LEASES)
    result = run("gathered", [], scope="x")
    assert not result.changed
    (gathered,) = result.gathered
    assert gathered["name"] == "x-1" and gathered["running"] and gathered["pid"] == 101
    assert gathered["config"] == dnsmasq.normalize_instance(_instance("x-1"))
    assert len(gathered["leases"]) == 3
    assert [g["name"] for g in run("gathered", [{"name": "y-1"}]).gathered] == ["y-1"]


def test_errors(env):
    procs, run, root = env
    procs.broken["bad"] = "network namespace 'bad' does not exist"
    with pytest.raises(dnsmasq.DnsmasqError, match="'bad': network namespace 'bad' does not"):
        run("merged", [_instance("bad")])
    assert not (root / "bad").exists()
    with pytest.raises(dnsmasq.DnsmasqError, match="more than once"):
        run("merged", [_instance("a"), _instance("a")])
    with pytest.raises(dnsmasq.DnsmasqError, match="name"):
        run("deleted", [{"name": "../etc"}])
    (root / "foreign").mkdir()
    (root / "foreign" / "dnsmasq.conf").write_text("no-resolv\n")
    with pytest.raises(dnsmasq.DnsmasqError, match="not written by this module"):
        run("merged", [_instance("foreign")])


def test_log_tail(tmp_path):
    (tmp_path / "log").write_text("".join(f"line {i}\n" for i in range(100)))
    assert dnsmasq.log_tail(str(tmp_path), 3) == "line 97\nline 98\nline 99"
    assert dnsmasq.log_tail(str(tmp_path / "none")) == ""


def test_start_reports_a_namespace_it_cannot_enter(tmp_path):
    """The child that would exec dnsmasq cannot enter a file that is no namespace (setns
    refuses it before exec, whoever runs the test): a DnsmasqError naming the namespace,
    not a traceback; nothing is executed."""
    (tmp_path / "netns").mkdir()
    (tmp_path / "netns" / "qdhcp-acme.web").write_text("not a namespace\n")
    marker = tmp_path / "ran"
    fake = tmp_path / "dnsmasq"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\n")
    fake.chmod(0o755)
    procs = dnsmasq.SystemProcesses(dnsmasq=str(fake), netns_dir=str(tmp_path / "netns"))
    directory = tmp_path / "run"
    directory.mkdir()
    with pytest.raises(dnsmasq.DnsmasqError, match=r"inside namespace 'qdhcp-acme\.web'"):
        procs.start(BASE, str(directory))
    assert not marker.exists()
