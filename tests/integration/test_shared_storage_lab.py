"""setup_shared_storage.yml on the lab (issue 6): the NFS configuration only.

The lab's kernel has no NFS client and its hosts no route to a package mirror, so the lab
inventory (group_vars/all/shared_storage.yml) writes the configuration without installing,
mounting or re-exporting: the export file on the server (mcm-a1) naming every other host
by the address it reaches the server from (mcm-a2 inside cloud_a by its underlay address,
mcm-b1 from cloud_b by its WAN address), and an fstab entry on each client mounting the
server's matching address at the same path. A second run changes nothing; check mode
changes nothing; state=absent removes the export and the entries. The fixture removes what
the role wrote (the fstab lines, the export file, the directories) also after a failure.
"""

from __future__ import annotations

import pytest

from conftest import ansible_json
from migration_lab import changed

pytestmark = pytest.mark.lab

PATH = "/var/lib/mcm/nfs-test"
EXPORTS = "/etc/exports.d/multicloud-migration.exports"
OPTIONS = "rw,sync,no_subtree_check,no_root_squash"
SERVER = "mcm-a1"
CLIENTS = {"mcm-a2": "172.30.1.11", "mcm-b1": "172.30.0.11"}  # the server's address each uses
EXPORTED_TO = {"mcm-a2": "172.30.1.12", "mcm-b1": "172.30.0.21"}


def play(*extra: str) -> dict:
    proc, data = ansible_json(["ansible-playbook", "playbooks/setup_shared_storage.yml",
                               "-e", f"shared_storage_path={PATH}", *extra])  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    return data


def fstab_lines(host) -> list[str]:
    return [line for line in host.file("/etc/fstab").content_string.splitlines() if PATH in line]


@pytest.fixture
def nodes(hosts):
    had_exports_d = hosts[SERVER].file("/etc/exports.d").exists
    try:
        yield hosts
    finally:
        for name in (SERVER, *CLIENTS):
            hosts[name].run(f"sed -i '\\# {PATH} #d' /etc/fstab; rmdir {PATH}")
        hosts[SERVER].run(f"rm -f {EXPORTS}")
        if not had_exports_d:
            hosts[SERVER].run("rmdir /etc/exports.d")


def test_export_and_fstab_entries_by_cloud(nodes):
    checked = play("--check")
    assert changed(checked) > 0
    assert not nodes[SERVER].file(EXPORTS).exists, "check mode wrote the export"
    assert not fstab_lines(nodes["mcm-a2"])

    first = play()
    assert changed(first) > 0
    export = nodes[SERVER].file(EXPORTS).content_string.splitlines()
    assert export[1].split() == [PATH, *(f"{EXPORTED_TO[c]}({OPTIONS})" for c in CLIENTS)]
    assert fstab_lines(nodes[SERVER]) == []
    for client, server_ip in CLIENTS.items():
        [entry] = fstab_lines(nodes[client])
        assert entry.split()[:4] == [f"{server_ip}:{PATH}", PATH, "nfs", "rw,hard,vers=4.2,_netdev"]
        assert nodes[client].file(PATH).is_directory
        assert not nodes[client].mount_point(PATH).exists, "the lab writes the entry only"

    again = play()
    assert changed(again) == 0, again["stats"]

    gone = play("-e", "shared_storage_state=absent")
    assert changed(gone) > 0
    assert not nodes[SERVER].file(EXPORTS).exists
    assert all(fstab_lines(nodes[c]) == [] for c in CLIENTS)
    assert changed(play("-e", "shared_storage_state=absent")) == 0
