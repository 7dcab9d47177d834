#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Migrate one libvirt domain from this host to another (live, live with its disks, or cold)."""

from __future__ import annotations

DOCUMENTATION = r"""
module: vm_migrate
short_description: Migrate a VM (libvirt domain) from the managed host to another host
version_added: 0.1.0
description:
  - Runs on the B(source) host and moves the domain O(name) to the host O(destination),
    through libvirt-python only, in one of three modes.
  - V(live) - shared storage, memory pre-copy (peer-to-peer C(migrateToURI3) with
    C(VIR_MIGRATE_LIVE), C(PERSIST_DEST) and C(UNDEFINE_SOURCE)). The domain ends up defined
    and running on the destination only.
  - V(live-block) - local disks, mirrored over NBD while memory is pre-copied
    (C(VIR_MIGRATE_NON_SHARED_DISK), C(--copy-storage-all)). The destination volume is
    created first with the same path, format and size through the destination's storage
    pool (the dir pool O(pool) at O(pool_path), created when missing). The source's disk
    file is left on the source (RV(source_disks_left)).
  - V(cold) - the domain is shut off (ACPI, at most O(shutdown_timeout) seconds, then a
    hard stop), each disk volume is streamed with C(virStorageVolDownload) /
    C(virStorageVolUpload) (sparse streams, holes are not sent), hashed on the way and
    hashed again on the destination (sha256 over the sha256 of each 1 MiB block, holes read
    as zeros; a hole costs one 32-byte update per MiB), then the domain is defined there with the same
    XML (same UUID and MAC) and started when it was running. The source stays defined and
    shut off (its autostart turned off), for a later confirm or revert.
  - V(cold) may also change the VM's layout on the way (mapping and conversion, as
    Coriolis and Forklift do) - O(destination_pool) puts the copied disks in another pool of
    the destination (created from O(destination_pool_path) when missing), O(disk_format)
    converts them (V(qcow2), V(raw), V(vmdk), V(vhdx)) with C(qemu-img convert) on the source
    (an argv list, reading through the backing chain; the new image is standalone), and
    O(destination_bridge) / O(destination_network) put the NIC (same MAC) on another bridge
    and record that network in the domain's metadata. A converted disk is verified by the
    checksum of its guest-visible content (the raw bytes the guest sees) on both sides - on
    the source from the raw image, on the destination from a raw view its libvirt makes of
    the copy (C(storageVolCreateXMLFrom), which runs the destination's C(qemu-img)); a
    mismatch fails the migration before the domain is defined there. V(live) and
    V(live-block) refuse these options; V(auto) picks V(cold) for them.
  - V(auto) picks V(live) when every disk is under O(shared_paths), else V(live-block) for
    a running domain and V(cold) for a shut-off one; RV(mode) and RV(mode_reason) say which.
  - While a live migration runs, its job statistics are sampled every second into
    RV(progress); past O(timeout) the job is aborted. After it the completed job statistics
    (downtime, time, bytes) are read on the destination.
  - A destination that stops answering (link cut, host down - the keepalive of the module's
    connection to its libvirtd fails, after about 20 seconds) aborts the job at once. A job
    that abortJob does not stop (its stream waits in qemu for the silent peer, which TCP
    ends after about 15 minutes or never) has the source qemu's TCP connections to the
    destination destroyed (sock_diag C(SOCK_DESTROY), as C(ss -K)), so it fails and the VM
    runs on at the source; this needs a kernel with C(CONFIG_INET_DIAG_DESTROY).
  - A migration that fails before cutover leaves the domain running on the source (libvirt
    keeps it running for live modes, the module checks it and resumes a paused source; for
    cold the module restarts it), and removes what it created on the destination (the
    volumes and the domain). A domain that already has an active job (another migration) is
    refused.
  - Encrypted by default (O(encryption=tls)) - the libvirt connection to the destination
    is C(qemu+tls://) (it also carries a V(cold) copy) and the live migration stream, disks
    included, uses qemu's native TLS (C(VIR_MIGRATE_TLS)), both with the CA and host
    certificates that C(playbooks/setup_migration_tls.yml) (role
    M(multicloud.migration.migration_tls)) makes and distributes. Before anything moves the
    module checks that the source has its certificates and that the destination's TLS port
    (16514) answers, and names the playbook to run when not.
  - Idempotent - when the domain is no longer on the source but on the destination, or runs
    on the destination while the source copy is shut off (after V(cold)), nothing is done.
author: multicloud.migration contributors (@multicloud)
requirements:
  - libvirt-python (Debian package C(python3-libvirt)) on the source host
  - libvirtd on both hosts; the destination's libvirtd reachable from the source at
    O(destination_uri) (and from the source's libvirtd, which connects to it peer to peer)
options:
  name:
    description: The libvirt domain to migrate, defined on the managed (source) host.
    type: str
    required: true
  destination:
    description: Host name of the destination (reported, and resolved when O(destination_address) is not given).
    type: str
    required: true
  destination_address:
    description:
      - Address of the destination used for its libvirtd URI and for the migration stream
        (C(tcp://<address>)), so that nothing relies on the hosts resolving each other's
        names. Defaults to O(destination) resolved on the source host.
    type: str
  destination_uri:
    description:
      - libvirt URI of the destination. Defaults to C(qemu+tls://<destination_address>/system)
        with O(encryption=tls), C(qemu+tcp://<destination_address>/system) with
        O(encryption=none).
      - With O(encryption=tls) it must be an encrypted transport (C(qemu+tls://) or
        C(qemu+ssh://)).
    type: str
  encryption:
    description:
      - V(tls) - the libvirt connection is C(qemu+tls://) and the live migration stream
        (memory and, for V(live-block), the disks over NBD) is encrypted by qemu
        (C(VIR_MIGRATE_TLS)); a V(cold) copy streams through the TLS connection. Both ends
        authenticate with certificates of the collection's CA (mutual TLS). Needs
        C(playbooks/setup_migration_tls.yml) run on the clouds first.
      - V(none) - C(qemu+tcp://) and a plaintext stream, as in a trusted lab; the module
        warns that memory and disk contents cross the network unencrypted.
    type: str
    choices: [tls, none]
    default: tls
  mode:
    description: How to migrate; see the description. V(live) and V(live-block) need a running domain.
    type: str
    choices: [auto, live, live-block, cold]
    default: auto
  shared_paths:
    description:
      - Directories that are the same storage on every host. A disk under one of them is
        not copied (V(live)), and V(auto) picks V(live) when every disk is under one.
    type: list
    elements: path
    default: [/var/lib/mcm/shared]
  unsafe:
    description:
      - Add C(VIR_MIGRATE_UNSAFE) - needed for a directory that is shared but that libvirt
        does not recognise as shared storage (a bind mount, as in the lab).
      - Defaults to true when a disk of the domain is under O(shared_paths), else false.
    type: bool
  max_downtime_ms:
    description: Maximum tolerated downtime of a live migration in milliseconds (C(migrateSetMaxDowntime)).
    type: int
    default: 30
  guest_watch_s:
    description:
      - After a live migration, seconds to watch the domain on the destination for a guest
        reset or crash (libvirt's reboot and crashed events, also seen during the job); each
        one is returned in RV(guest_resets) and warned about. 0 does not watch.
      - A guest that resets right after its cutover lost its running state although libvirt
        reports success; QEMU before 9.0 causes it for TCG guests (see the notes).
      - Not given - 3 s when the source runs the guest under TCG with a QEMU before 9.0 (that
        known cause), else no wait after the job (the events during it are still reported).
    type: float
  bandwidth_mib:
    description:
      - Bandwidth limit of a live migration in MiB/s (C(VIR_MIGRATE_PARAM_BANDWIDTH));
        unlimited when not given. Also the bandwidth of the estimate in check mode
        (100 MiB/s is assumed without it). A cold copy is not throttled.
    type: int
  auto_converge:
    description: Add C(VIR_MIGRATE_AUTO_CONVERGE) (throttle the guest's vCPUs when its memory does not converge).
    type: bool
    default: false
  timeout:
    description: Seconds a migration (or a cold copy) may take; a live job is aborted past it and the VM stays on the source.
    type: int
    default: 600
  shutdown_timeout:
    description: For V(cold), seconds to wait for a graceful shutdown before a hard stop (0 for a hard stop at once).
    type: int
    default: 60
  pool:
    description:
      - Name of the destination's dir pool created when no pool there holds the disk's directory and that directory is O(pool_path).
      - A disk under O(shared_paths) is not copied, but when its directory is O(pool_path) the
        destination gets this pool too (created when missing, refreshed), so that
        M(multicloud.migration.vm) finds the VM's volume there (a VM with C(storage=shared)
        in the spec passes its shared pool here).
    type: str
    default: mcm
  pool_path:
    description: Directory of O(pool).
    type: path
    default: /var/lib/mcm/vms
  destination_pool:
    description:
      - V(cold) - the storage pool of the destination the disks are copied into (instead of
        the pool of their own directory there). It must exist on the destination (a dir, fs
        or netfs pool; started when inactive), or O(destination_pool_path) is given to create
        it. Checked before the VM is touched, also in check mode.
      - The file name stays (C(<domain>.<format>)); only its directory changes.
    type: str
  destination_pool_path:
    description:
      - Directory to create O(destination_pool) from (a dir pool, built, started and
        autostarted) when the destination lacks it. A pool that exists elsewhere is refused.
      - A migration that fails removes the pool it created, when it is empty.
    type: path
  disk_format:
    description:
      - V(cold) - convert every copied disk to this format on the way (the destination file
        is C(<domain>.<format>)), and define the domain with it. The destination's libvirt
        must know the format (its dir pools' volume formats; libvirt 9.0 has no V(vhdx)), and
        the source needs C(qemu-img) (Debian C(qemu-utils)) with both formats; both are
        checked before the VM is touched.
      - A disk already in this format is copied as it is.
    type: str
    choices: [qcow2, raw, vmdk, vhdx]
  destination_bridge:
    description:
      - V(cold) - the bridge of the NIC on the destination (the first NIC of type bridge; its
        MAC kept). It must exist there (checked; in check mode a warning, as the migration
        playbooks build it just before the copy).
    type: str
  destination_network:
    description:
      - With O(destination_bridge), the tenant network written into the domain's metadata
        (C(mcm:vm network=)), so that M(multicloud.migration.vm_info) and
        M(multicloud.migration.vm) see the VM on its new network.
    type: str
  convert_dir:
    description:
      - Directory on the source for the temporary images of a conversion (created, mode
        0700; each image deleted when the disk is copied or the migration failed). Needs
        about the allocation of the disk and its backing chain, twice when neither side is
        V(raw) (checked before the VM is touched).
    type: path
    default: /var/lib/mcm/convert
  progress_file:
    description:
      - A file on the managed (source) host where the latest progress sample is written as
        one JSON object while the data moves (for V(live), V(live-block) and V(cold)) -
        the sample's keys as in RV(progress) plus C(mode), C(name), C(source),
        C(destination) and C(updated) (epoch seconds); before the first sample it holds
        C(mode) and C(phase) (V(starting), or V(shutdown) while a V(cold) migration waits for
        the guest to stop). Each write replaces the file atomically (a temporary file in the
        same directory, then a rename), so a reader never sees half a sample.
      - The file is removed when the module ends, successfully or not. Not written in check
        mode. A file that cannot be written does not fail the migration (a warning says why).
      - Without it, the action plugin (see O(progress_interval)) uses a file in the task's
        remote temporary directory.
    type: path
  progress_interval:
    description:
      - Seconds between two progress lines printed on the controller while the migration
        runs - host, domain, destination, mode, percent, processed/total MiB, rate in MiB/s,
        estimated seconds left and, for live modes, the memory iteration.
      - Handled by the action plugin of the same name - the module is started in the
        background (as with C(async)); every second one C(cat) reads its O(progress_file)
        and the async job's file, and once the module has ended its result is fetched with
        M(ansible.builtin.async_status) and the job cleaned up. The task's result is then the
        module's own, as without the action plugin.
      - This costs a few seconds per migration (three more Python starts on the host - the
        async wrapper and two async_status calls - and the module's upload); V(0) avoids it.
      - V(0) runs the module in the foreground without progress lines. No progress lines
        either in check mode, or when the task sets C(async) itself.
    type: float
    default: 3
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - Check mode connects to the destination and checks that nothing is in the way (a domain
    of that name or UUID, a volume at the disk's path), then returns RV(plan) - mode,
    source, destination, bytes to copy, estimated time - and changes nothing.
  - The bridge of the domain's NIC, the directory of its console socket, and the backing
    images of its disks must exist on the destination at the same paths.
  - "Progress lines - with O(progress_interval) above 0 (the default) the task prints lines
    such as 'mcm-a1: web1 -> mcm-b1 (live-block): 42.5%, 60.1/141.3 MiB, 4.0 MiB/s, ~20 s
    left, memory iteration 2, 15 s elapsed' while the data moves - the first one as soon as
    there is a sample, then every O(progress_interval) seconds. While V(live-block) mirrors
    the disks the line says C(disk mirror), its percent is that of the disks, and its rate
    (libvirt reports none then) is the average since the start."
  - The progress lines go to standard output, or to standard error when the stdout callback
    is a JSON one (C(ansible.posix.json), C(ansible.posix.jsonl)) so that its output stays
    parseable. The background job may run for O(timeout) + O(shutdown_timeout) + 120 seconds
    before it is killed; the task waits 30 seconds more for its result and then fails,
    naming the job.
  - A live migration (also in check mode) warns when the domain runs under TCG (domain type
    C(qemu), no KVM) on a source whose QEMU is older than 9.0 - such a QEMU can lose memory
    the guest writes during the copy (QEMU commit 03bfc2188f06), and the guest may crash on
    its destination. Upgrade QEMU on the source, run the guest under KVM, or use V(cold).
  - For V(cold) the checksum is taken over each volume's bytes as stored (holes read as
    zeros) - for a raw volume exactly what the guest sees, for a qcow2 volume its image file
    (the guest's data plus qcow2 metadata; its backing image is not copied). A disk converted
    with O(disk_format) is checked by the checksum of its guest-visible content instead
    (RV(checksum) C(content=guest)), which also proves the conversion.
seealso:
  - module: multicloud.migration.vm
  - module: multicloud.migration.vm_info
"""

EXAMPLES = r"""
- name: What a migration of ex-acme-web1 to mcm-b1 would do (mode, bytes, estimated time)
  multicloud.migration.vm_migrate:
    name: ex-acme-web1
    destination: mcm-b1
    destination_address: 172.30.0.21
  delegate_to: mcm-a1
  check_mode: true
  register: plan

# live when every disk is under shared_paths (/var/lib/mcm/shared, the same storage on
# both hosts), else live-block (the local disk is mirrored while the memory is copied)
- name: Move ex-acme-web1 from mcm-a1 to mcm-b1, mode chosen by the module
  multicloud.migration.vm_migrate:
    name: ex-acme-web1
    destination: mcm-b1
    destination_address: 172.30.0.21
    max_downtime_ms: 50
    bandwidth_mib: 200
  delegate_to: mcm-a1
  register: moved

# live-block leaves the source's disk file behind (moved.source_disks_left); deleting it
# confirms the move, and frees its path for a migration back
- name: Confirm the move - delete the disk left on mcm-a1
  multicloud.migration.vm_volume:
    state: deleted
    config:
      - name: ex-acme-web1.qcow2
  delegate_to: mcm-a1

# cold may also map and convert: here the disk lands as raw in the pool ex-fast of mcm-a1
# (made at /var/lib/mcm/ex-fast when missing), checked by its guest-visible checksum;
# destination_bridge (and destination_network) would put the NIC on another bridge
- name: Cold migration back to mcm-a1, converted to raw into another pool, with the checksum of every disk
  multicloud.migration.vm_migrate:
    name: ex-acme-web1
    destination: mcm-a1
    destination_address: 172.30.0.11
    # encrypted by default (encryption: tls, over qemu+tls); over ssh instead:
    # destination_uri: qemu+ssh://root@mcm-a1/system
    mode: cold
    shutdown_timeout: 10
    disk_format: raw
    destination_pool: ex-fast
    destination_pool_path: /var/lib/mcm/ex-fast
  delegate_to: mcm-b1
  register: moved_back
"""

RETURN = r"""
mode:
  description: The mode used (null when there was nothing to do).
  returned: always
  type: str
  sample: live-block
mode_reason:
  description: Why this mode (V(requested), or what V(auto) saw).
  returned: always
  type: str
  sample: "auto: the domain runs with local disks"
plan:
  description:
    - What the migration does - C(mode), C(source), C(destination), C(destination_uri),
      C(migrate_uri), C(disks) (path, target, format, capacity, allocation, shared),
      C(copied_disks), C(disk_bytes), C(memory_bytes), C(bytes_to_copy), C(bandwidth_mib),
      C(bandwidth_assumed), C(estimated_seconds), C(encryption) and for live modes C(flags)
      and C(max_downtime_ms).
    - For a V(cold) migration that changes the layout, C(relayout) - C(disks) (C(path),
      C(format), C(destination_path), C(destination_format), C(destination_pool),
      C(convert)), C(bridge) (C(from), C(to)) and C(network).
  returned: when something was (or would be) migrated
  type: dict
stats:
  description:
    - Live modes - from the completed job (jobStats COMPLETED on the destination) -
      C(downtime_ms), C(downtime_net_ms), C(elapsed_ms), C(setup_ms), C(bytes) (data
      processed), C(data_total), C(disk_bytes), C(disk_total), C(memory_bytes), C(memory_total),
      C(memory_iterations), plus C(wall_ms) measured by the module.
    - Cold - C(downtime_ms) (shutdown request to the destination started), C(elapsed_ms),
      C(shutdown_ms), C(copy_ms), C(bytes) (data sent), C(disk_bytes) (volume bytes, holes
      included), C(disk_hole_bytes), C(memory_bytes) (0), C(graceful_shutdown).
  returned: success, outside check mode
  type: dict
  sample: {downtime_ms: 64, elapsed_ms: 1130, bytes: 61440000, disk_bytes: 3014656, memory_bytes: 58000000}
guest_resets:
  description:
    - Live modes - the guest's resets and crashes seen on the destination during the job and
      the O(guest_watch_s) after it - C(event) (V(reset) or V(crashed)), C(after_s) (seconds
      after the job ended, negative during it). Empty when the guest ran on.
  returned: success of a live mode, outside check mode
  type: list
  elements: dict
  sample: [{event: reset, after_s: 0.8}]
progress:
  description:
    - Samples taken about every second while the data moved - C(elapsed_s), C(percent)
      (processed/total), C(processed_bytes), C(remaining_bytes), C(total_bytes), C(rate_bps),
      C(memory_iteration).
  returned: always
  type: list
  elements: dict
checksum:
  description:
    - V(cold) - per copied disk C(path), C(destination_path), C(source_format),
      C(destination_format), C(content) (V(file) - the image file as stored, or V(guest) - the
      guest-visible content, for a converted disk), C(algorithm) (V(sha256-1mib-blocks)),
      C(source) (hash of the bytes sent, or of the source's guest-visible content),
      C(destination) (hash read back on the destination), C(match), C(bytes),
      C(data_bytes), C(hole_bytes), C(sparse), C(seconds).
  returned: always (null unless cold)
  type: list
  elements: dict
source_state:
  description: State of the domain on the source afterwards - V(absent) after a live migration, V(shutoff) after cold.
  returned: always
  type: str
destination_state:
  description: State of the domain on the destination afterwards.
  returned: always
  type: str
source_disks_left:
  description: After V(live-block), the disk files that stay on the source (delete them once the migration is confirmed).
  returned: after live-block
  type: list
  elements: str
flags:
  description: Names of the VIR_MIGRATE_* flags used.
  returned: after a live mode
  type: list
  elements: str
unsafe:
  description: Whether C(VIR_MIGRATE_UNSAFE) was (or would be) used.
  returned: always
  type: bool
changes:
  description: Objects created on the destination (volumes, a pool, the domain for cold).
  returned: always
  type: list
  elements: dict
source:
  description: Host name of the source.
  returned: always
  type: str
destination_address:
  description: Address used for the destination.
  returned: always
  type: str
destination_uri:
  description: libvirt URI of the destination used.
  returned: always
  type: str
encryption:
  description: V(tls) when the libvirt connection and the migration stream were (or would be) encrypted, V(none) when not.
  returned: always
  type: str
  sample: tls
diff:
  description: Where the domain runs, before and after, in diff mode.
  returned: when diff mode is on and something changed
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.libvirt_migrate import (
    DEFAULT_CONVERT_DIR,
    DEFAULT_ENCRYPTION,
    DEFAULT_GUEST_WATCH_S,
    DEFAULT_MAX_DOWNTIME_MS,
    DEFAULT_SHARED_PATHS,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_TIMEOUT,
    DISK_FORMATS,
    ENCRYPTION_CHOICES,
    HAS_LIBVIRT,
    LIBVIRT_IMPORT_ERROR,
    MODE_CHOICES,
    MigrationError,
    run_vm_migrate,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "destination": {"type": "str", "required": True},
            "destination_address": {"type": "str"},
            "destination_uri": {"type": "str"},
            "encryption": {
                "type": "str",
                "choices": list(ENCRYPTION_CHOICES),
                "default": DEFAULT_ENCRYPTION,
            },
            "mode": {"type": "str", "choices": list(MODE_CHOICES), "default": "auto"},
            "shared_paths": {
                "type": "list",
                "elements": "path",
                "default": list(DEFAULT_SHARED_PATHS),
            },
            "unsafe": {"type": "bool"},
            "max_downtime_ms": {"type": "int", "default": DEFAULT_MAX_DOWNTIME_MS},
            "bandwidth_mib": {"type": "int"},
            "guest_watch_s": {"type": "float", "default": DEFAULT_GUEST_WATCH_S},
            "auto_converge": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": DEFAULT_TIMEOUT},
            "shutdown_timeout": {"type": "int", "default": DEFAULT_SHUTDOWN_TIMEOUT},
            "pool": {"type": "str", "default": "mcm"},
            "pool_path": {"type": "path", "default": "/var/lib/mcm/vms"},
            "destination_pool": {"type": "str"},
            "destination_pool_path": {"type": "path"},
            "disk_format": {"type": "str", "choices": list(DISK_FORMATS)},
            "destination_bridge": {"type": "str"},
            "destination_network": {"type": "str"},
            "convert_dir": {"type": "path", "default": DEFAULT_CONVERT_DIR},
            "progress_file": {"type": "path"},
            # used by the action plugin (plugins/action/vm_migrate.py); ignored here
            "progress_interval": {"type": "float", "default": 3},
        },
        required_by={
            "destination_pool_path": "destination_pool",
            "destination_network": "destination_bridge",
        },
        supports_check_mode=True,
    )
    if not HAS_LIBVIRT:
        module.fail_json(msg=missing_required_lib("libvirt-python"), exception=LIBVIRT_IMPORT_ERROR)
    for key in ("max_downtime_ms", "timeout"):
        if module.params[key] < 1:
            module.fail_json(msg=f"{key} must be at least 1")
    if (module.params["guest_watch_s"] or 0) < 0:
        module.fail_json(msg="guest_watch_s must be 0 (no watch) or more")
    if module.params["bandwidth_mib"] is not None and module.params["bandwidth_mib"] < 1:
        module.fail_json(msg="bandwidth_mib must be at least 1 (leave it out for no limit)")
    try:
        result = run_vm_migrate(module.params, module.check_mode, module._diff)
    except MigrationError as exc:
        for warning in exc.details.pop("warnings", []):
            module.warn(warning)
        module.fail_json(msg=str(exc), **exc.details)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
