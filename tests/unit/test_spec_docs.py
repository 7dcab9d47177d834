"""docs/spec.md is checked against what the validator accepts: its key tables list exactly
the keys spec.py knows, its modes are the validator's, and its YAML examples validate."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import spec

DOC = (Path(__file__).resolve().parents[2] / "docs" / "spec.md").read_text()
CLOUDS = {"cloud_a", "cloud_b"}


def section(title: str) -> str:
    match = re.search(rf"^### {re.escape(title)}\n(.*?)(?=^##)", DOC, re.M | re.S)
    assert match, f"docs/spec.md has no section {title!r}"
    return match.group(1)


def table_keys(text: str) -> list[str]:
    return re.findall(r"^\| `([a-z_]+)` \|", text, re.M)


@pytest.mark.parametrize(
    ("title", "keys"),
    [
        ("Top level", spec.TOP_KEYS),
        ("Tenant", spec.TENANT_KEYS),
        ("Network", spec.NETWORK_KEYS),
        ("dhcp", spec.DHCP_KEYS),
        ("VM", spec.VM_KEYS),
        ("shared_storage", spec.SHARED_STORAGE_KEYS),
    ],
)
def test_key_tables_match_the_validator(title, keys):
    assert table_keys(section(title)) == list(keys)


def test_modes_match_the_validator():
    modes = re.findall(r"^\| `([a-z-]+)`(?: \(default\))? \|", DOC.split("## Modes", 1)[1], re.M)
    assert modes[: len(spec.MODES)] == list(spec.MODES)


def test_yaml_examples_validate():
    northbound = DOC.split("## The normalised spec", 1)[0]  # later blocks show the output
    blocks = re.findall(r"```yaml\n(.*?)```", northbound, re.S)
    specs = [b for b in blocks if b.lstrip().startswith("tenants:")]
    assert len(specs) >= 2
    for text in specs:
        data = spec.load_spec_text(text)
        assert spec.validate(data, CLOUDS) == [], text


def test_every_documented_key_is_rejected_when_misspelt():
    for keys, build in (
        (spec.TENANT_KEYS, lambda k: {"tenants": [{"name": "t", "networks": [], k + "x": 1}]}),
        (
            spec.VM_KEYS,
            lambda k: {
                "tenants": [
                    {
                        "name": "t",
                        "networks": [
                            {
                                "name": "n",
                                "cloud": "cloud_a",
                                "subnet": "10.0.0.0/24",
                                "vms": [
                                    {"name": "v", "vcpus": 1, "memory": 1, "disk": 1, k + "x": 1}
                                ],
                            }
                        ],
                    }
                ]
            },
        ),
    ):
        for key in keys:
            problems = spec.validate(build(key), CLOUDS)
            assert any(f"unknown key '{key}x'" in str(p) for p in problems), (key, problems)
