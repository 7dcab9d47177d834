"""Every module, filter and role documents itself: ansible-doc renders it from the checkout.

Modules declare what they promise (check_mode, diff_mode, idempotent) through the private
doc fragment plugins/doc_fragments/_attributes.py, never by hand. The tenant_infra role's
argument spec describes each module's ``config`` exactly as the module's argument spec
takes it, so a plan that passes the role's validation is one the modules accept.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import plan as planmod
import pytest
import spec as specmod
import yaml
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COLLECTION = "multicloud.migration"
PLUGINS = "ansible_collections.multicloud.migration.plugins"
MODULES = sorted(p.stem for p in (ROOT / "plugins/modules").glob("*.py") if p.stem != "__init__")
FRAGMENT = "multicloud.migration._attributes"
ATTRIBUTES = ("check_mode", "diff_mode", "idempotent")


def _filter_names() -> list[str]:
    names = []
    for path in sorted((ROOT / "plugins/filter").glob("*.py")):
        module = importlib.import_module(f"{PLUGINS}.filter.{path.stem}")
        names += module.FilterModule().filters()
    return sorted(names)


FILTERS = _filter_names()
ROLES = sorted(p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml"))


def ansible_doc(plugin_type: str, names: list[str]) -> dict:
    """ansible-doc -j for several plugins at once, from the checkout (ansible.cfg)."""
    env = {**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")}
    proc = subprocess.run(
        [BIN / "ansible-doc", "-t", plugin_type, "-j", *(f"{COLLECTION}.{n}" for n in names)],
        capture_output=True, text=True, check=False, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    missing = [n for n in names if f"{COLLECTION}.{n}" not in docs]
    assert not missing, f"ansible-doc rendered no documentation for {missing}: {proc.stderr}"
    return {name.rsplit(".", 1)[1]: value for name, value in docs.items()}


@pytest.fixture(scope="module")
def module_docs() -> dict:
    return ansible_doc("module", MODULES)


@pytest.fixture(scope="module")
def filter_docs() -> dict:
    return ansible_doc("filter", FILTERS)


@pytest.fixture(scope="module")
def role_docs() -> dict:
    return ansible_doc("role", ROLES)


def source_documentation(name: str) -> dict:
    """The DOCUMENTATION string of plugins/modules/<name>.py as written (no fragments merged)."""
    tree = ast.parse((ROOT / "plugins/modules" / f"{name}.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [
            t.id for t in node.targets if isinstance(t, ast.Name)
        ] == ["DOCUMENTATION"]:
            return yaml.safe_load(node.value.value)
    raise AssertionError(f"plugins/modules/{name}.py has no DOCUMENTATION")


def test_there_is_something_to_check():
    assert {"netns", "link", "address", "route", "fdb", "dnsmasq", "tenant_spec"} <= set(MODULES)
    assert {"host_plans", "removal_plans"} <= set(FILTERS)
    assert {"load_spec", "tenant_infra"} <= set(ROLES)


@pytest.mark.parametrize("name", MODULES)
def test_module_renders_with_examples_and_return(name, module_docs):
    entry = module_docs[name]
    doc = entry["doc"]
    assert doc["module"] == name
    assert doc["short_description"] and doc["description"] and doc["author"]
    assert doc["version_added"]
    examples = yaml.safe_load(entry["examples"])
    assert isinstance(examples, list) and examples
    assert any(f"{COLLECTION}.{name}" in task for task in examples), "no example calls it by FQCN"
    assert not [task for task in examples if name in task], "an example uses the short name"
    assert entry["return"], f"{name} documents no RETURN values"
    for key, value in entry["return"].items():
        assert value.get("description") and value.get("returned") and value.get("type"), key


@pytest.mark.parametrize("name", MODULES)
def test_module_declares_its_attributes_through_the_fragment(name, module_docs):
    written = source_documentation(name)
    fragments = written.get("extends_documentation_fragment", [])
    assert any(f == FRAGMENT or f.startswith(FRAGMENT + ".") for f in fragments), fragments
    assert "attributes" not in written, "attributes come from the fragment, not the module"
    attributes = module_docs[name]["doc"]["attributes"]
    for attribute in ATTRIBUTES:
        assert attributes[attribute]["support"] in ("full", "partial", "none", "N/A"), attribute
        assert attributes[attribute]["description"], attribute


@pytest.mark.parametrize("name", FILTERS)
def test_filter_renders_its_own_documentation(name, filter_docs):
    # A .py file's DOCUMENTATION would be shown for every filter it defines: each filter
    # of a multi-filter file has a sidecar named after it instead.
    doc = filter_docs[name]["doc"]
    assert doc["name"] == name
    assert doc["short_description"] and doc["description"] and doc["author"]
    assert "_input" in doc["options"]
    assert filter_docs[name]["examples"] and filter_docs[name]["return"]


@pytest.mark.parametrize("name", ROLES)
def test_role_renders_its_argument_spec(name, role_docs):
    main = role_docs[name]["entry_points"]["main"]
    assert main["short_description"] and main["options"]
    assert (ROOT / "roles" / name / "README.md").exists()


def _documented(spec: dict) -> dict:
    """Argument spec (module or role) reduced to what both must agree on."""
    out = {}
    for key, opt in spec.items():
        item = {
            "type": opt.get("type", "str"),
            "required": bool(opt.get("required", False)),
            "choices": sorted(opt["choices"]) if "choices" in opt else None,
            "elements": opt.get("elements"),
        }
        if "options" in opt:
            item["options"] = _documented(opt["options"])
        out[key] = item
    return out


# (role, its plan variable, key of the plan): the module whose config that key is.
ROLE_PLAN_CONFIGS = {
    ("tenant_infra", "tenant_infra_plan", "netns"): "netns",
    ("tenant_infra", "tenant_infra_plan", "links"): "link",
    ("tenant_infra", "tenant_infra_plan", "addresses"): "address",
    ("tenant_infra", "tenant_infra_plan", "routes"): "route",
    ("tenant_infra", "tenant_infra_plan", "fdb"): "fdb",
    ("tenant_infra", "tenant_infra_plan", "dnsmasq"): "dnsmasq",
    ("vm_provision", "vm_provision_plan", "vms"): "vm",
}


def role_options(role: str) -> dict:
    specs = yaml.safe_load((ROOT / "roles" / role / "meta/argument_specs.yml").read_text())
    return specs["argument_specs"]["main"]["options"]


def _module_config_spec(module: str) -> dict:
    """The ``config`` suboptions of a module, from the argument spec it really uses."""
    source = importlib.import_module(f"{PLUGINS}.modules.{module}")
    for name in ("ITEM_SPEC", "INSTANCE_SPEC"):
        if hasattr(source, name):
            return getattr(source, name)
    raise AssertionError(f"{module}: no ITEM_SPEC or INSTANCE_SPEC")


@pytest.mark.parametrize(("role", "variable", "key"), sorted(ROLE_PLAN_CONFIGS), ids=str)
def test_role_plan_options_match_the_modules(role, variable, key):
    plan = role_options(role)[variable]["options"][key]
    assert (plan["type"], plan["elements"]) == ("list", "dict")
    module = ROLE_PLAN_CONFIGS[(role, variable, key)]
    assert _documented(plan["options"]) == _documented(_module_config_spec(module))


def test_plans_pass_the_roles_argument_specs():
    groups = {"cloud_a": ["a1", "a2"], "cloud_b": ["b1"]}
    hostvars = {
        "a1": {"underlay_ip": "172.30.1.11", "wan_ip": "172.30.0.11"},
        "a2": {"underlay_ip": "172.30.1.12", "wan_ip": "172.30.0.12"},
        "b1": {"underlay_ip": "172.30.2.11", "wan_ip": "172.30.0.21"},
    }
    normal = specmod.normalize(
        specmod.load_spec_text((ROOT / "docs/examples/tenants.yml").read_text()), clouds=groups
    )
    hosts = planmod.hosts_from_inventory(groups, groups, hostvars)
    plans = [planmod.host_plan(normal, hosts, h) for h in sorted(hosts)]
    plans.append(planmod.removal_plan("a1", ["acme"]))
    assert any(p["dnsmasq"] and p["routes"] and p["fdb"] for p in plans)
    validator = ArgumentSpecValidator(role_options("tenant_infra"))
    for p in plans:
        result = validator.validate({"tenant_infra_plan": p})
        assert not result.error_messages, (p["host"], result.error_messages)
    boot = {"kernel": "/var/lib/mcm/images/vmlinuz", "initrd": "/i", "cmdline": "console=ttyS0"}
    vm_plans = planmod.vm_plans(normal, hosts, {}, boot={h: boot for h in hosts})
    assert any(p["vms"] for p in vm_plans.values())
    validator = ArgumentSpecValidator(role_options("vm_provision"))
    for p in vm_plans.values():
        result = validator.validate({"vm_provision_plan": p})
        assert not result.error_messages, (p["host"], result.error_messages)
