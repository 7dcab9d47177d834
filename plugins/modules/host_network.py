#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host's whole tenant network plan (netns, links, addresses, routes, FDB, dnsmasq, nft) in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_network
short_description: Converge a host's whole tenant network plan in one call
version_added: 0.1.0
description:
  - Applies one host's plan (what the C(multicloud.migration.tenant_infra) role receives as
    C(tenant_infra_plan), computed by the C(multicloud.migration.host_plans) or
    C(multicloud.migration.removal_plans) filter) - network namespaces, bridges, VXLAN
    devices and veth legs, addresses, routes, VXLAN FDB entries and dnsmasq instances - in
    one module call instead of six.
  - Each step is the engine of the matching resource module, called with the arguments the
    role used to give that module, in this order - M(multicloud.migration.netns)
    (V(overridden) within O(plan.namespace_scopes)), M(multicloud.migration.link)
    (V(overridden) within O(plan.scopes)), M(multicloud.migration.address) (V(replaced)),
    M(multicloud.migration.route) (V(replaced)), M(multicloud.migration.fdb) (V(overridden)
    within O(plan.scopes)), M(multicloud.migration.dnsmasq) (V(overridden) within
    O(plan.dhcp_scopes)) and, when the plan lists tables, M(multicloud.migration.nft_ruleset)
    (security groups and floating addresses in the tenant router namespaces). What each
    step compares, creates, updates and removes is documented with its module.
  - Everything the plan's tenants own on the host and the plan leaves out is removed;
    objects of other tenants, and objects not created by this collection, are never
    touched. Re-running with the same plan reports no change.
  - Steps with nothing to decide are left out - addresses and routes when the plan lists
    none, every scoped step when the plan names no tenant (an empty scope would mean the
    objects of every tenant).
author: multicloud.migration contributors (@multicloud)
requirements:
  - pyroute2 (0.7.2 or later) on the managed host
  - dnsmasq (Debian package C(dnsmasq-base)) on the managed host, when the plan has DHCP instances
  - nft (Debian package C(nftables)) on the managed host, when the plan has a table with O(plan.firewall[].state=present)
  - root on the managed host
options:
  plan:
    description:
      - The host's plan. Its lists are the C(config) of the resource modules, with
        the same suboptions, defaults and meaning.
    type: dict
    required: true
    suboptions:
      host:
        description: The host the plan is for (reported, not checked).
        type: str
      cloud:
        description: The host's cloud (reported, not checked).
        type: str
      tenants:
        description:
          - Tenants whose objects on this host the plan decides. Their objects that the
            plan leaves out are removed.
        type: list
        elements: str
        required: true
      scopes:
        description:
          - Owner-tag prefixes of those tenants (V(mcm:acme/)), the C(scope) of the
            link and fdb steps. Required when O(plan.tenants) is not empty.
        type: list
        elements: str
        default: []
      namespace_scopes:
        description:
          - Their namespace names or prefixes (V(qdhcp-acme.), V(qrouter-acme)), the
            C(scope_namespaces) of the netns and link steps. Required when
            O(plan.tenants) is not empty.
        type: list
        elements: str
        default: []
      dhcp_scopes:
        description:
          - Their dnsmasq instance name prefixes (V(qdhcp-acme.)), the C(scope) of
            the dnsmasq step. Required when O(plan.tenants) is not empty.
        type: list
        elements: str
        default: []
      dhcp_clients:
        description: MACs of the VMs the plan's dnsmasq instances serve (not used here).
        type: list
        elements: str
        default: []
      netns:
        description: The namespaces, as the C(config) of M(multicloud.migration.netns).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Name of the namespace.
            type: str
            required: true
          forwarding:
            description: IPv4 forwarding inside the namespace (off when omitted).
            type: bool
          state:
            description: V(absent) removes the namespace.
            type: str
            choices: [present, absent]
            default: present
      links:
        description: The links, as the C(config) of M(multicloud.migration.link).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Interface name (at most 15 bytes).
            type: str
            required: true
          kind:
            description: What the link is; V(device) is an existing link (such as C(lo)).
            type: str
            required: true
            choices: [bridge, vxlan, veth, device]
          namespace:
            description: Namespace of the link; omit for the root namespace.
            type: str
          mtu:
            description: MTU; omit to leave it to the kernel.
            type: int
          mac:
            description: Ethernet address (kinds veth and vxlan); omit to leave it to the kernel.
            type: str
          master:
            description: The bridge this link is a port of (none when omitted).
            type: str
          state:
            description: Administrative state (V(up) when omitted).
            type: str
            choices: [up, down]
          owner:
            description: Owner tag (C(mcm:<tenant>/<network>)), stored as the interface alias.
            type: str
          vxlan:
            description: VXLAN attributes, required for kind V(vxlan).
            type: dict
            suboptions:
              id:
                description: The VNI.
                type: int
                required: true
              port:
                description: UDP destination port.
                type: int
                default: 4789
              learning:
                description: Learn remote MAC addresses from received packets.
                type: bool
                default: true
              local:
                description: Source address of the tunnel.
                type: str
              ttl:
                description: TTL of tunnel packets.
                type: int
          peer:
            description: The other end of a veth pair, required for kind V(veth).
            type: dict
            suboptions:
              name:
                description: Interface name of the peer.
                type: str
                required: true
              namespace:
                description: Namespace of the peer, where it is created directly.
                type: str
              mtu:
                description: MTU of the peer.
                type: int
              mac:
                description: Ethernet address of the peer.
                type: str
              state:
                description: Administrative state of the peer.
                type: str
                choices: [up, down]
              owner:
                description: Owner tag of the peer.
                type: str
      addresses:
        description: Interfaces and their addresses, as the C(config) of M(multicloud.migration.address).
        type: list
        elements: dict
        default: []
        suboptions:
          namespace:
            description: Namespace of the interface; omit for the root namespace.
            type: str
          interface:
            description: Name of the interface.
            type: str
            required: true
          addresses:
            description: IPv4 addresses in CIDR form; the interface gets exactly these.
            type: list
            elements: str
      routes:
        description: Namespaces and their routes, as the C(config) of M(multicloud.migration.route).
        type: list
        elements: dict
        default: []
        suboptions:
          namespace:
            description: The namespace; omit for the root namespace.
            type: str
          routes:
            description: The routes of ours the namespace has exactly.
            type: list
            elements: dict
            suboptions:
              dst:
                description: Destination network in CIDR form, or V(default).
                type: str
                required: true
              gateway:
                description: Next hop.
                type: str
              dev:
                description: Output interface.
                type: str
              metric:
                description: Route metric (priority).
                type: int
                default: 0
      fdb:
        description: VXLAN devices and their entries, as the C(config) of M(multicloud.migration.fdb).
        type: list
        elements: dict
        default: []
        suboptions:
          device:
            description: Name of the VXLAN device.
            type: str
            required: true
          namespace:
            description: Namespace of the device; omit for the root namespace.
            type: str
          entries:
            description: The entries (head-end replication to each peer).
            type: list
            elements: dict
            suboptions:
              dst:
                description: Underlay IPv4 address of the remote VTEP.
                type: str
                required: true
              mac:
                description: MAC address; the default all-zero MAC is the flood entry.
                type: str
                default: "00:00:00:00:00:00"
      dnsmasq:
        description: The DHCP/DNS instances, as the C(config) of M(multicloud.migration.dnsmasq).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: Name of the instance and of its state directory.
            type: str
            required: true
          namespace:
            description: Network namespace dnsmasq runs in.
            type: str
          interface:
            description: Interface in that namespace dnsmasq listens on.
            type: str
          server:
            description: Its own address on that interface.
            type: str
          subnet:
            description: The IPv4 subnet served, as a CIDR.
            type: str
          range:
            description: First and last address of the dynamic range (reservations only when omitted).
            type: list
            elements: str
          lease_time:
            description: Lease time, in dnsmasq's syntax (C(1h) when omitted).
            type: str
          gateway:
            description: Router handed out (none when omitted).
            type: str
          mtu:
            description: Interface MTU handed out (C(1450) when omitted).
            type: int
          domain:
            description: DNS domain of the network.
            type: str
          dns:
            description: Serve DNS (true when omitted).
            type: bool
          hosts:
            description: Reservations.
            type: list
            elements: dict
            suboptions:
              mac:
                description: MAC address of the client.
                type: str
                required: true
              ip:
                description: Address reserved for it.
                type: str
                required: true
              name:
                description: Host name handed out and resolved.
                type: str
                required: true
      firewall:
        description:
          - The nftables tables of the router namespaces, as the C(config) of
            M(multicloud.migration.nft_ruleset) (see there for what the rules do).
        type: list
        elements: dict
        default: []
        suboptions:
          namespace:
            description: Network namespace holding the table.
            type: str
            required: true
          table:
            description: Name of the table (family C(inet)).
            type: str
            required: true
          state:
            description: V(absent) deletes the table.
            type: str
            choices: [present, absent]
            default: present
          networks:
            description: Networks whose incoming traffic is filtered.
            type: list
            elements: dict
            default: []
            suboptions:
              name:
                description: The network's name.
                type: str
                required: true
              subnet:
                description: Its IPv4 subnet.
                type: str
                required: true
              default:
                description: What happens to traffic no rule matches.
                type: str
                choices: [drop, accept]
                default: drop
              ingress:
                description: Rules, in order.
                type: list
                elements: dict
                default: []
                suboptions:
                  proto:
                    description: Protocol.
                    type: str
                    choices: [tcp, udp, icmp, any]
                    default: any
                  ports:
                    description: Destination port or range (tcp and udp).
                    type: raw
                  from:
                    description: Source addresses (CIDR).
                    type: str
                    default: 0.0.0.0/0
                  action:
                    description: What happens to matching traffic.
                    type: str
                    choices: [accept, drop]
                    default: accept
          floating:
            description: Floating addresses DNATed to fixed ones.
            type: list
            elements: dict
            default: []
            suboptions:
              address:
                description: The floating address.
                type: str
                required: true
              fixed:
                description: The VM's fixed address.
                type: str
                required: true
              subnet:
                description: The VM's subnet.
                type: str
                required: true
  read_vms:
    description:
      - Also read the libvirt domains of the plan's tenants on this host after the plan is
        applied, and return them in RV(vms) - what M(multicloud.migration.vm_info) returns
        with O(multicloud.migration.vm_info#module:scope) set to O(plan.tenants), in the
        same call (C(create_infra.yml) places the spec's VMs with it, one module start-up
        fewer per host).
      - A plan that names no tenant returns no domain (vm_info with an empty scope would
        list the domains of every tenant).
      - Needs libvirt-python and a running libvirtd on the host.
    type: bool
    default: false
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - A step that fails stops the call. The steps before it stay applied; the error names the
    step and the object, and returns the results of the steps done (RV(resources)).
  - In check mode every step reads the host as it is, as the separate modules do - a step
    after one that would create a namespace predicts on that namespace as empty and warns.
    A dnsmasq instance whose namespace, DHCP leg and server address the same plan creates
    is predicted as if they were there (the dnsmasq module alone refuses it).
  - In diff mode the diff has one before/after part per netlink resource that changes, in
    the one-line form of its module, and one per dnsmasq file that changes.
  - On success the result's C(invocation) (shown with C(-vvv)) echoes the plan's tenants and
    scopes and the number of objects of each kind, not the plan itself - for 100 networks
    the plan is about 0.2 MB that every run would carry back. A failure echoes it whole.
seealso:
  - module: multicloud.migration.netns
  - module: multicloud.migration.link
  - module: multicloud.migration.address
  - module: multicloud.migration.route
  - module: multicloud.migration.fdb
  - module: multicloud.migration.dnsmasq
  - module: multicloud.migration.nft_ruleset
"""

EXAMPLES = r"""
- name: A small plan written by hand - one network of tenant ex-acme, DHCP only
  multicloud.migration.host_network:
    plan:
      tenants: [ex-acme]
      scopes: ["mcm:ex-acme/"]
      namespace_scopes: [qdhcp-ex-acme., qrouter-ex-acme]
      dhcp_scopes: [qdhcp-ex-acme.]
      netns:
        - name: qdhcp-ex-acme.web
      links:
        - {name: brq-3901, kind: bridge, mtu: 1450, owner: "mcm:ex-acme/web"}
        - name: dhb-3901
          kind: veth
          master: brq-3901
          mtu: 1450
          owner: "mcm:ex-acme/web"
          peer: {name: dhn-3901, namespace: qdhcp-ex-acme.web}
        - {name: lo, kind: device, namespace: qdhcp-ex-acme.web, state: up}
      addresses:
        - {namespace: qdhcp-ex-acme.web, interface: dhn-3901, addresses: [10.10.1.2/24]}
      dnsmasq:
        - name: qdhcp-ex-acme.web
          namespace: qdhcp-ex-acme.web
          interface: dhn-3901
          server: 10.10.1.2
          subnet: 10.10.1.0/24
          range: [10.10.1.100, 10.10.1.200]
          domain: web.ex-acme
  register: ex_acme_network

- name: Converge this host's tenant networks to the plan load_spec computed
  multicloud.migration.host_network:
    plan: "{{ hostvars.localhost.mcm_plans[inventory_hostname] }}"

- name: Remove everything tenant ex-acme has on this host
  multicloud.migration.host_network:
    plan: "{{ (['ex-acme'] | multicloud.migration.removal_plans(hosts=[inventory_hostname]))[inventory_hostname] }}"
"""


RETURN = r"""
resources:
  description:
    - Per step that ran (C(netns), C(link), C(address), C(route), C(fdb), C(dnsmasq)),
      what its module returns - C(changed), C(changes) (in order, as the module lists
      them), C(before) and C(after) (predicted in check mode); the dnsmasq step also
      C(leases).
    - C(before) and C(after) are left out of a step that changed nothing, unless in diff
      mode (for 100 networks they are about 0.6 MB that a no-op run would carry back).
    - A step the plan did not need is absent.
  returned: always
  type: dict
  sample:
    netns:
      changed: true
      changes:
        - {action: create, object: netns, name: qdhcp-acme.web, namespace: null,
           details: {forwarding: false}}
      before: []
      after: [{name: qdhcp-acme.web, forwarding: false}]
    dnsmasq:
      changed: true
      changes:
        - {instance: qdhcp-acme.web, action: write, reason: new instance,
           files: [dnsmasq.conf, hosts, addn_hosts]}
        - {instance: qdhcp-acme.web, action: start, pid: 4711, reason: not running}
      before: []
      after: []
      leases: {qdhcp-acme.web: []}
leases:
  description:
    - Current leases of every dnsmasq instance of the plan, by instance name (as the
      dnsmasq module returns them). Empty when the dnsmasq step did not run.
  returned: always
  type: dict
  sample:
    qdhcp-acme.web:
      - {expiry: 1767225600, mac: "52:54:00:12:34:56", ip: 10.10.1.10, hostname: web1,
         client_id: null}
vms:
  description:
    - With O(read_vms), the libvirt domains of the plan's tenants on the host, each as
      M(multicloud.migration.vm_info) returns it (name, state, memory, vCPUs, NICs, disks,
      metadata, leases).
  returned: when O(read_vms) is true
  type: list
  elements: dict
  sample:
    - {name: ex-acme-web1, state: running, metadata: {tenant: ex-acme, network: web, vm: web1}}
resource:
  description: On failure, the step that failed.
  returned: failure
  type: str
  sample: address
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.dnsmasq import (
    SystemProcesses,
)
from ansible_collections.multicloud.migration.plugins.module_utils.firewall import NftCommand
from ansible_collections.multicloud.migration.plugins.module_utils.host_network import (
    HostNetworkError,
    converge_host,
)
from ansible_collections.multicloud.migration.plugins.module_utils.netlink import (
    HAS_PYROUTE2,
    PYROUTE2_IMPORT_ERROR,
    SharedRuns,
)

# The config items of the resource modules (plugins/modules/<name>.py ITEM_SPEC or
# INSTANCE_SPEC): a module cannot import another, and tests/unit/test_host_network.py
# checks that these stay equal to theirs.
NETNS_SPEC = {
    "name": {"type": "str", "required": True},
    "forwarding": {"type": "bool"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
}
LINK_SPEC = {
    "name": {"type": "str", "required": True},
    "kind": {"type": "str", "required": True, "choices": ["bridge", "vxlan", "veth", "device"]},
    "namespace": {"type": "str"},
    "mtu": {"type": "int"},
    "mac": {"type": "str"},
    "master": {"type": "str"},
    "state": {"type": "str", "choices": ["up", "down"]},
    "owner": {"type": "str"},
    "vxlan": {
        "type": "dict",
        "options": {
            "id": {"type": "int", "required": True},
            "port": {"type": "int", "default": 4789},
            "learning": {"type": "bool", "default": True},
            "local": {"type": "str"},
            "ttl": {"type": "int"},
        },
    },
    "peer": {
        "type": "dict",
        "options": {
            "name": {"type": "str", "required": True},
            "namespace": {"type": "str"},
            "mtu": {"type": "int"},
            "mac": {"type": "str"},
            "state": {"type": "str", "choices": ["up", "down"]},
            "owner": {"type": "str"},
        },
    },
}
ADDRESS_SPEC = {
    "namespace": {"type": "str"},
    "interface": {"type": "str", "required": True},
    "addresses": {"type": "list", "elements": "str"},
}
ROUTE_SPEC = {
    "namespace": {"type": "str"},
    "routes": {
        "type": "list",
        "elements": "dict",
        "options": {
            "dst": {"type": "str", "required": True},
            "gateway": {"type": "str"},
            "dev": {"type": "str"},
            "metric": {"type": "int", "default": 0},
        },
    },
}
FDB_SPEC = {
    "device": {"type": "str", "required": True},
    "namespace": {"type": "str"},
    "entries": {
        "type": "list",
        "elements": "dict",
        "options": {
            "dst": {"type": "str", "required": True},
            "mac": {"type": "str", "default": "00:00:00:00:00:00"},
        },
    },
}
DNSMASQ_SPEC = {
    "name": {"type": "str", "required": True},
    "namespace": {"type": "str"},
    "interface": {"type": "str"},
    "server": {"type": "str"},
    "subnet": {"type": "str"},
    "range": {"type": "list", "elements": "str"},
    "lease_time": {"type": "str"},
    "gateway": {"type": "str"},
    "mtu": {"type": "int"},
    "domain": {"type": "str"},
    "dns": {"type": "bool"},
    "hosts": {
        "type": "list",
        "elements": "dict",
        "options": {
            "mac": {"type": "str", "required": True},
            "ip": {"type": "str", "required": True},
            "name": {"type": "str", "required": True},
        },
    },
}


RULE_SPEC = {
    "proto": {"type": "str", "choices": ["tcp", "udp", "icmp", "any"], "default": "any"},
    "ports": {"type": "raw"},
    "from": {"type": "str", "default": "0.0.0.0/0"},
    "action": {"type": "str", "choices": ["accept", "drop"], "default": "accept"},
}
FIREWALL_SPEC = {
    "namespace": {"type": "str", "required": True},
    "table": {"type": "str", "required": True},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "networks": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "name": {"type": "str", "required": True},
            "subnet": {"type": "str", "required": True},
            "default": {"type": "str", "choices": ["drop", "accept"], "default": "drop"},
            "ingress": {"type": "list", "elements": "dict", "default": [], "options": RULE_SPEC},
        },
    },
    "floating": {
        "type": "list",
        "elements": "dict",
        "default": [],
        "options": {
            "address": {"type": "str", "required": True},
            "fixed": {"type": "str", "required": True},
            "subnet": {"type": "str", "required": True},
        },
    },
}


def _items(spec: dict) -> dict:
    return {"type": "list", "elements": "dict", "default": [], "options": spec}


def _names() -> dict:
    return {"type": "list", "elements": "str", "default": []}


# plan keys echoed as they are in the result's invocation (the others as counts)
SCOPE_KEYS = ("tenants", "scopes", "namespace_scopes", "dhcp_scopes")

PLAN_SPEC = {
    "host": {"type": "str"},
    "cloud": {"type": "str"},
    "tenants": {"type": "list", "elements": "str", "required": True},
    "scopes": _names(),
    "namespace_scopes": _names(),
    "dhcp_scopes": _names(),
    "dhcp_clients": _names(),
    "netns": _items(NETNS_SPEC),
    "links": _items(LINK_SPEC),
    "addresses": _items(ADDRESS_SPEC),
    "routes": _items(ROUTE_SPEC),
    "fdb": _items(FDB_SPEC),
    "dnsmasq": _items(DNSMASQ_SPEC),
    "firewall": _items(FIREWALL_SPEC),
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "plan": {"type": "dict", "required": True, "options": PLAN_SPEC},
            "read_vms": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    if not HAS_PYROUTE2:
        module.fail_json(msg=missing_required_lib("pyroute2"), exception=PYROUTE2_IMPORT_ERROR)
    plan = module.params["plan"]
    binary = module.get_bin_path(
        "dnsmasq", required=bool(plan["dnsmasq"] and plan["tenants"]), opt_dirs=["/usr/sbin"]
    )
    tables = any(item["state"] == "present" for item in plan["firewall"])
    nft = module.get_bin_path("nft", required=tables, opt_dirs=["/usr/sbin"])
    ip = module.get_bin_path("ip", required=bool(plan["firewall"]), opt_dirs=["/usr/sbin", "/sbin"])

    def run(argv: list[str], data: str | None) -> tuple[int, str, str]:
        return module.run_command(argv, data=data)

    try:
        with SharedRuns() as run_netlink:
            result = converge_host(
                plan,
                SystemProcesses(dnsmasq=binary or "dnsmasq"),
                check_mode=module.check_mode,
                diff_mode=module._diff,
                run_netlink=run_netlink,
                firewall=NftCommand(run, nft, ip=ip or "ip"),
            )
    except HostNetworkError as exc:
        message = str(exc)
        if exc.resource and not message.startswith(exc.resource):
            message = f"{exc.resource}: {message}"
        module.fail_json(
            msg=message,
            resource=exc.resource,
            changes=exc.changes,
            resources=exc.done,
            changed=any(r.get("changed") for r in exc.done.values()),
        )
    except OSError as exc:
        module.fail_json(msg=f"host_network: {exc}", exception=traceback.format_exc())
    for warning in result.pop("warnings"):
        module.warn(warning)
    if module.params["read_vms"]:
        result["vms"] = _tenant_vms(module, plan["tenants"])
    module.exit_json(**result, invocation=_invocation(module.params))


def _invocation(params: dict) -> dict:
    """The arguments echoed in the result (shown with -vvv): the plan's counts, not the plan.

    Echoing a plan of 100 networks (about 0.2 MB once its defaults are filled in) made
    every run carry it back to the controller for nothing; the plan is the task's input.
    """
    plan = params["plan"]
    summary = {k: v if not isinstance(v, list) or k in SCOPE_KEYS else f"{len(v)} items"
               for k, v in plan.items()}  # fmt: skip
    return {"module_args": {"plan": summary, "read_vms": params["read_vms"]}}


def _tenant_vms(module: AnsibleModule, tenants: list[str]) -> list[dict]:
    """vm_info's view of the tenants' domains (libvirt is imported only when asked for)."""
    from ansible_collections.multicloud.migration.plugins.module_utils import libvirt_vm

    if not tenants:
        return []
    if not libvirt_vm.HAS_LIBVIRT:
        module.fail_json(
            msg=missing_required_lib("libvirt-python") + " (read_vms)",
            exception=libvirt_vm.LIBVIRT_IMPORT_ERROR,
        )
    try:
        return libvirt_vm.run_vm_info({"scope": tenants})["vms"]
    except libvirt_vm.VmError as exc:
        module.fail_json(
            msg=f"read_vms: the network plan is applied, reading the VMs failed: {exc}"
        )
    return []


if __name__ == "__main__":
    main()
