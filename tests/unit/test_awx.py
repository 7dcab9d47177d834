"""The AWX / Automation Controller configuration of awx/ (docs/awx.md) is consistent.

Every job template runs a playbook of the project, every survey question is well formed
(infra.aap_configuration / awx.awx survey_spec) and feeds a variable that the playbook, or
a role it calls, really reads. The templates whose playbook is still to be written are
listed in PENDING_PLAYBOOKS: the test fails when one of them appears (move it out of the
list, its variables are then checked) or when another playbook goes missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
AWX = ROOT / "awx"
COLLECTION = "multicloud.migration"

# Playbooks referenced by job templates that do not exist yet (a later issue).
PENDING_PLAYBOOKS: frozenset[str] = frozenset()

SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}
QUESTION_REQUIRED = ("question_name", "variable", "type", "required")
TEMPLATE_REQUIRED = ("name", "job_type", "inventory", "project", "playbook", "survey_enabled")


def _load(name: str) -> dict:
    return yaml.safe_load((AWX / name).read_text())


TEMPLATES = _load("controller_templates.yml")["controller_templates"]
TEMPLATE_IDS = [t["name"] for t in TEMPLATES]


def _questions(template: dict) -> list[dict]:
    return (template.get("survey_spec") or {}).get("spec") or []


def _playbook_sources(playbook: Path, seen: set[Path] | None = None) -> list[Path]:
    """The playbook, the playbooks it imports and every file of the roles they call."""
    seen = seen if seen is not None else set()
    if playbook in seen or not playbook.exists():
        return []
    seen.add(playbook)
    text = playbook.read_text()
    files = [playbook]
    for imported in re.findall(r"import_playbook:\s*(\S+)", text):
        files += _playbook_sources((playbook.parent / imported.strip("'\"")).resolve(), seen)
    roles = set(re.findall(rf"{re.escape(COLLECTION)}\.(\w+)", text))
    roles |= set(re.findall(r"role:\s*([\w]+)\s*$", text, re.MULTILINE))
    for role in sorted(roles):
        role_dir = ROOT / "roles" / role
        if role_dir.is_dir() and role_dir not in seen:
            seen.add(role_dir)
            files += sorted(p for p in role_dir.rglob("*.yml") if p.is_file())
    return files


def test_there_are_templates():
    playbooks = {t["playbook"] for t in TEMPLATES}
    assert {"playbooks/create_infra.yml", "playbooks/delete_infra.yml"} <= playbooks
    assert PENDING_PLAYBOOKS <= playbooks
    assert len(set(TEMPLATE_IDS)) == len(TEMPLATE_IDS), "template names are unique"


def test_missing_playbooks_are_exactly_the_pending_ones():
    missing = {t["playbook"] for t in TEMPLATES if not (ROOT / t["playbook"]).is_file()}
    assert missing == PENDING_PLAYBOOKS, (
        "playbooks referenced by awx/controller_templates.yml that do not exist; update "
        "PENDING_PLAYBOOKS (and docs/awx.md) when one is added or removed"
    )


def test_pending_playbooks_are_documented():
    doc = (ROOT / "docs/awx.md").read_text()
    for playbook in PENDING_PLAYBOOKS:
        assert playbook in doc


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_IDS)
def test_template_is_complete(template):
    for key in TEMPLATE_REQUIRED:
        assert template.get(key) not in (None, ""), key
    assert template["job_type"] in ("run", "check")
    assert template["playbook"].startswith("playbooks/") and template["playbook"].endswith(".yml")


def test_templates_refer_to_defined_objects():
    projects = {p["name"] for p in _load("controller_projects.yml")["controller_projects"]}
    inventory_file = _load("controller_inventories.yml")
    inventories = {i["name"] for i in inventory_file["controller_inventories"]}
    credentials = {c["name"] for c in _load("controller_credentials.yml")["controller_credentials"]}
    for template in TEMPLATES:
        assert template["project"] in projects
        assert template["inventory"] in inventories
        assert set(template.get("credentials", [])) <= credentials
    for source in inventory_file["controller_inventory_sources"]:
        assert source["inventory"] in inventories and source["source_project"] in projects
        path = re.sub(r"\{\{.*default\('([^']+)'\).*\}\}", r"\1", source["source_path"])
        assert (ROOT / path).is_file(), path


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_IDS)
def test_survey_is_well_formed(template):
    questions = _questions(template)
    assert template["survey_enabled"] is bool(questions)
    if not questions:
        return
    assert template["survey_spec"]["name"] and "description" in template["survey_spec"]
    variables = [q["variable"] for q in questions]
    assert len(set(variables)) == len(variables), "a variable is asked twice"
    for q in questions:
        for key in QUESTION_REQUIRED:
            assert key in q, (q.get("variable"), key)
        assert q["type"] in SURVEY_TYPES, q
        assert isinstance(q["required"], bool), q
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", q["variable"]), q
        if q["type"] in ("multiplechoice", "multiselect"):
            assert isinstance(q.get("choices"), list) and q["choices"], q
            if "default" in q:
                assert q["default"] in q["choices"], q
        else:
            assert "choices" not in q, q


def test_migration_modes():
    by_playbook = {t["playbook"]: t for t in TEMPLATES}
    modes = {q["variable"]: q for q in _questions(by_playbook["playbooks/migrate_instance.yml"])}[
        "mode"
    ]
    assert modes["choices"] == ["auto", "live", "live-block", "cold"]


EXISTING = [t for t in TEMPLATES if t["playbook"] not in PENDING_PLAYBOOKS]


@pytest.mark.parametrize("template", EXISTING, ids=[t["name"] for t in EXISTING])
def test_survey_variables_are_used_by_the_playbook(template):
    files = _playbook_sources(ROOT / template["playbook"])
    assert files, template["playbook"]
    text = "\n".join(p.read_text() for p in files)
    for q in _questions(template):
        assert re.search(rf"\b{re.escape(q['variable'])}\b", text), (
            f"{q['variable']} is read neither by {template['playbook']} nor by the roles it calls"
        )
