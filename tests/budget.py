"""The test-time budget of `make test`, per area (docs/lab.md, "Test-time budget").

Each area has a line in the budget and the test files that count against it; pytest's
terminal summary prints each area's measured time (setup, call and teardown of its tests)
next to its line, so a change that makes an area slower shows where. It reports, it never
fails a run: a slow machine is not a failing test (speed targets live in bench/).

`make test` must stay under 30 minutes on 2 cores: lint, the lab's start and the areas
below together. tests/unit/test_budget.py keeps docs/lab.md's table equal to AREAS.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Area:
    name: str
    budget_s: int
    files: tuple[str, ...]  # test file names (tests/unit/ or tests/integration/)


# The lines of the budget. Areas whose tests are not written yet (SSH and execution-
# environment jobs, WAN security, recovery) hold their line already: the issues that add
# them must fit in it.
AREAS: tuple[Area, ...] = (
    Area("unit", 60, ("tests/unit/",)),
    Area("lab", 30, ("test_lab_hosts.py", "test_zz_lab_lifecycle.py", "test_molecule_lab.py")),
    Area(
        "network",
        200,
        (
            "test_host_network_lab.py",
            "test_netlink_modules.py",
            "test_dnsmasq_module.py",
            "test_tenant_infra.py",
            "test_security_lab.py",
            "test_gather_infra_lab.py",
        ),
    ),
    Area("vms", 100, ("test_vm_modules.py", "test_vms_infra.py", "test_module_examples_lab.py")),
    Area(
        "migration",
        420,
        (
            "test_vm_migrate.py",
            "test_vm_migrate_progress_lab.py",
            "test_migrate_playbooks.py",
            "test_migrate_cold_lab.py",
            "test_migrate_map_convert_lab.py",
            "test_cold_copy_segments_lab.py",
            "test_subnet_migration_loss_lab.py",
        ),
    ),
    # test_fault_matrix_lab.py: `make faults` only (marker matrix, deselected in make test)
    Area("faults", 240, ("test_migration_faults_lab.py", "test_fault_matrix_lab.py")),
    Area(
        "overlay",
        100,
        ("test_overlay_lab.py", "test_overlay_tinc_lab.py", "test_xen_blanket_lab.py"),
    ),
    Area("storage", 60, ("test_shared_storage_lab.py", "test_migrate_live_shared_lab.py")),
    Area("shared state", 150, ("test_shared_state_lab.py",)),
    Area("ssh and ee jobs", 120, ()),
    Area("wan security", 90, ()),
    Area("recovery", 90, ()),
)
# Outside pytest, in the same `make test`: lint and the lab's start (images cached).
OUTSIDE_PYTEST_S = {"lint": 120, "lab start": 20}
TOTAL_S = 30 * 60


def area_of(nodeid: str) -> str:
    """The area a test counts against ('other' for a file no area lists)."""
    path = nodeid.split("::", 1)[0]
    for area in AREAS:
        for entry in area.files:
            if (entry.endswith("/") and path.startswith(entry)) or path.endswith("/" + entry):
                return area.name
    return "other"


class Report(Protocol):
    nodeid: str
    duration: float


def spent(reports: Iterable[Report]) -> dict[str, float]:
    """Seconds per area over the reports of every phase (setup, call, teardown)."""
    out: dict[str, float] = {}
    for report in reports:
        area = area_of(report.nodeid)
        out[area] = out.get(area, 0.0) + float(report.duration)
    return out


def lines(measured: Mapping[str, float]) -> list[str]:
    """The summary: each area's time against its line, and the total."""
    out = []
    for area in AREAS:
        took = measured.get(area.name)
        if took is None:
            continue
        mark = "  OVER" if took > area.budget_s else ""
        out.append(f"{area.name:<16} {took:7.0f} s of {area.budget_s:5d} s{mark}")
    if measured.get("other"):
        out.append(
            f"{'other':<16} {measured['other']:7.0f} s (in no area: add the file to "
            "tests/budget.py)"
        )
    total = sum(measured.values())
    room = TOTAL_S - sum(OUTSIDE_PYTEST_S.values())
    out.append(
        f"{'pytest total':<16} {total:7.0f} s of {room:5d} s "
        f"({', '.join(f'{k} {v} s' for k, v in OUTSIDE_PYTEST_S.items())} outside pytest; "
        f"make test: {TOTAL_S // 60} min)"
    )
    return out


def terminal_summary(terminalreporter: Any) -> None:
    # every phase's report: pytest files passed setups and teardowns under the key ""
    reports = [
        r
        for kind, found in terminalreporter.stats.items()
        if kind not in ("warnings", "deselected")
        for r in found
        if hasattr(r, "duration") and hasattr(r, "nodeid")
    ]
    if not reports:
        return
    terminalreporter.write_sep("-", "test-time budget (docs/lab.md)")
    for line in lines(spent(reports)):
        terminalreporter.write_line(line)
