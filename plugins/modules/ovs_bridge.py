#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Open vSwitch bridges and their ports (tunnels included), as desired state over OVSDB."""

from __future__ import annotations

DOCUMENTATION = r"""
module: ovs_bridge
short_description: Manage Open vSwitch bridges and their ports, tunnel options included
version_added: 0.1.0
description:
  - Creates, updates and removes Open vSwitch bridges and their ports by talking to
    C(ovsdb-server) directly (the OVSDB protocol, through the Python IDL of
    python3-openvswitch), not by running C(ovs-vsctl) commands.
  - Reads what exists, compares every managed attribute with the arguments, returns the
    list of changes and applies them only outside check mode, in one transaction. Compared
    are a bridge's datapath type, fail mode and MTU, and a port's bridge, interface type,
    B(every) interface option (C(remote_ip), C(key), C(dst_port), C(local_ip), ... as one
    map, so a drifted, extra or missing option is corrected), split-horizon flag
    (O(bridges[].ports[].protected)), VLAN tag and MTU.
  - After the transaction the module waits until C(ovs-vswitchd) has applied it, as
    C(ovs-vsctl) does. It fails with the error that C(ovs-vswitchd) reported on a listed
    port, such as a missing NIC or a rejected option.
  - Bridges and ports created by this module carry their owner tag in
    C(external_ids:mcm-owner); O(bridges[].purge_ports) only removes ports with that tag.
author: multicloud.migration contributors (@multicloud)
requirements:
  - python3-openvswitch (the C(ovs) Python package) on the managed host
  - a running C(ovsdb-server) and C(ovs-vswitchd) (see the role multicloud.migration.ovs)
options:
  bridges:
    description: The bridges.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Bridge name (also the name of its internal port).
        type: str
        required: true
      state:
        description: V(absent) removes the bridge with all its ports.
        type: str
        choices: [present, absent]
        default: present
      datapath_type:
        description:
          - V(system) (kernel module) or V(netdev) (userspace datapath, needed where the
            openvswitch kernel module is missing, as in the lab); omit to leave it.
        type: str
      fail_mode:
        description: V(standalone) or V(secure); omit to leave it.
        type: str
        choices: [standalone, secure]
      mtu:
        description: MTU requested for the bridge's internal port; omit to leave it.
        type: int
      owner:
        description: Owner tag stored in C(external_ids:mcm-owner) of new bridges and ports.
        type: str
        default: mcm:ovs
      purge_ports:
        description:
          - Remove the ports of the bridge that carry an owner tag and are not listed
            (tunnels to peers that left the mesh). Untagged ports are never removed.
        type: bool
        default: false
      ports:
        description: Ports of the bridge (one interface each).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Port and interface name.
            type: str
            required: true
          state:
            description: V(absent) removes the port from this bridge.
            type: str
            choices: [present, absent]
            default: present
          type:
            description:
              - Interface type - empty for a network device that exists (a physical NIC,
                a veth), V(internal), V(vxlan), V(geneve), V(gre), V(patch)...
            type: str
            default: ""
          options:
            description:
              - Interface options, compared as a whole - for a tunnel C(remote_ip),
                C(local_ip), C(key), C(dst_port)... Values are stored as strings.
            type: dict
            default: {}
          protected:
            description:
              - Split horizon - traffic between two protected ports of a bridge is dropped
                by the C(NORMAL) action. Tunnel ports of a full mesh are protected, so a
                node never forwards from one tunnel to another.
            type: bool
            default: false
          tag:
            description: VLAN tag (access port); omit for none.
            type: int
          mtu:
            description: MTU requested for the interface; omit to leave it.
            type: int
  db:
    description: OVSDB connection method of C(ovsdb-server).
    type: str
    default: unix:/var/run/openvswitch/db.sock
  schema:
    description: Path of the Open_vSwitch schema on the managed host.
    type: path
    default: /usr/share/openvswitch/vswitch.ovsschema
  timeout:
    description: Seconds to wait for C(ovsdb-server) and for C(ovs-vswitchd) to apply the changes.
    type: int
    default: 30
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - Only the listed bridges and ports are read for changes; other bridges are left alone.
seealso:
  - module: openvswitch.openvswitch.openvswitch_bridge
"""

EXAMPLES = r"""
- name: Overlay bridge with a split-horizon VXLAN tunnel to one peer (userspace datapath)
  multicloud.migration.ovs_bridge:
    bridges:
      - name: xenbr0
        datapath_type: netdev
        mtu: 1450
        purge_ports: true
        ports:
          - name: vxo-2
            type: vxlan
            protected: true
            options: {remote_ip: 172.30.1.12, key: 5000, dst_port: 4790}

- name: Attach a physical NIC to the bridge
  multicloud.migration.ovs_bridge:
    bridges:
      - name: xenbr0
        ports:
          - name: eth2

- name: Remove the bridge
  multicloud.migration.ovs_bridge:
    bridges:
      - name: xenbr0
        state: absent
"""

RETURN = r"""
changes:
  description:
    - What was changed (or would be, in check mode), removals first. Each item has
      C(action) (create, update, delete), C(object) (bridge, port), C(name), C(bridge) and
      C(details); for an update, C(details) maps each differing attribute to C([have, want]).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: update, object: port, name: vxo-2, bridge: xenbr0,
       details: {options: [{remote_ip: 172.30.1.12, key: "5000", dst_port: "4789"},
                           {remote_ip: 172.30.1.12, key: "5000", dst_port: "4790"}]}}
before:
  description:
    - "Every bridge before the call, by name: C(datapath_type), C(fail_mode), C(mtu), C(owner)
      and C(ports), by name;"
    - Each port has C(type), C(options), C(protected), C(tag), C(mtu), C(owner), C(ofport)
      and C(error).
  returned: always
  type: dict
after:
  description: The same after the call (predicted in check mode).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

try:
    # python3-openvswitch: imported to know it is there
    import ovs.db.idl  # noqa: F401  pylint: disable=unused-import

    HAS_OVS = True
    OVS_IMPORT_ERROR = None
except ImportError as _exc:
    HAS_OVS = False
    OVS_IMPORT_ERROR = _exc

from ansible_collections.multicloud.migration.plugins.module_utils.ovsdb import (
    DEFAULT_DB,
    DEFAULT_SCHEMA,
    OvsdbError,
    run,
)

PORT_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "type": {"type": "str", "default": ""},
    "options": {"type": "dict", "default": {}},
    "protected": {"type": "bool", "default": False},
    "tag": {"type": "int"},
    "mtu": {"type": "int"},
}

BRIDGE_SPEC = {
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "datapath_type": {"type": "str"},
    "fail_mode": {"type": "str", "choices": ["standalone", "secure"]},
    "mtu": {"type": "int"},
    "owner": {"type": "str", "default": "mcm:ovs"},
    "purge_ports": {"type": "bool", "default": False},
    "ports": {"type": "list", "elements": "dict", "default": [], "options": PORT_SPEC},
}


def main() -> None:
    from ansible.module_utils.basic import missing_required_lib

    module = AnsibleModule(
        argument_spec={
            "bridges": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": BRIDGE_SPEC,
            },
            "db": {"type": "str", "default": DEFAULT_DB},
            "schema": {"type": "path", "default": DEFAULT_SCHEMA},
            "timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    if not HAS_OVS:
        module.fail_json(msg=missing_required_lib("python3-openvswitch"),
                         exception=str(OVS_IMPORT_ERROR))  # fmt: skip
    try:
        result = run(module.params, module.check_mode, module._diff)
    except OvsdbError as exc:
        module.fail_json(msg=str(exc), changes=exc.changes)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
