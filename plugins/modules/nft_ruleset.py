#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Security groups and floating addresses: a tenant's nftables table in its router namespace."""

from __future__ import annotations

DOCUMENTATION = r"""
module: nft_ruleset
short_description: Security groups and floating addresses as an nftables table in a namespace
version_added: 0.1.0
description:
  - Converges one nftables table (family C(inet)) per item, inside a network namespace -
    the tenant router namespace C(qrouter-<tenant>), whose table is C(mcm-<tenant>).
  - For each network of O(config[].networks), traffic the router forwards into the
    network's subnet is filtered by its ingress rules (chain C(sg-<network>)); established
    and related traffic is always let through, traffic from the subnet itself too (it
    passes the router only through a floating address). Traffic inside a network never
    passes the router, DHCP and ARP are not affected.
  - Each floating address of O(config[].floating) is DNATed to its VM's fixed address for
    the traffic the router forwards; a client in the VM's own subnet is
    masqueraded behind the gateway, so that the replies pass the router again.
  - The wanted table is compared with what the namespace has (rules in order, chains,
    hooks, priorities; rule handles and counter values are ignored). When they differ the
    table is replaced in one atomic nftables transaction; open connections keep their
    conntrack state and NAT mappings. Re-running with the same arguments reports no change.
  - Only the tables named in O(config) are read or changed; other tables of the namespace
    are left alone.
  - The collection computes the items from the spec's C(security_group) and
    C(floating_ip) keys (filter C(multicloud.migration.host_plans), key C(firewall)), and
    M(multicloud.migration.host_network) applies them as its last step. See
    C(docs/security.md).
author: multicloud.migration contributors (@multicloud)
requirements:
  - nft (Debian package C(nftables)) and C(ip) (iproute2) on the managed host
  - root on the managed host
options:
  config:
    description: The tables.
    type: list
    elements: dict
    required: true
    suboptions:
      namespace:
        description: Network namespace (a name under C(/run/netns)) holding the table.
        type: str
        required: true
      table:
        description: Name of the table (family C(inet)).
        type: str
        required: true
      state:
        description:
          - V(present) makes the table exactly what O(config[].networks) and
            O(config[].floating) describe; V(absent) deletes it.
          - An item with V(absent) in a namespace that does not exist is already done.
        type: str
        choices: [present, absent]
        default: present
      networks:
        description: Networks whose incoming traffic is filtered, each with its security group.
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: The network's name (its chain is C(sg-<name>)).
            type: str
            required: true
          subnet:
            description: Its IPv4 subnet in CIDR form.
            type: str
            required: true
          default:
            description: What happens to traffic no rule matches.
            type: str
            choices: [drop, accept]
            default: drop
          ingress:
            description: Rules, in order; the first that matches decides.
            type: list
            elements: dict
            default: []
            suboptions:
              proto:
                description: Protocol; V(any) matches every protocol.
                type: str
                choices: [tcp, udp, icmp, any]
                default: any
              ports:
                description: Destination port (V(22)) or inclusive range (V(8000-8080)); only with V(tcp) or V(udp).
                type: raw
              from:
                description: Source addresses in CIDR form (every source when omitted).
                type: str
                default: 0.0.0.0/0
              action:
                description: What happens to matching traffic.
                type: str
                choices: [accept, drop]
                default: accept
      floating:
        description: Floating addresses and the fixed address each is DNATed to.
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
            description: The VM's subnet (clients inside it are masqueraded behind the gateway).
            type: str
            required: true
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - The module runs C(ip netns exec <namespace> nft -j) with JSON input and output (the
    same JSON API as the C(python3-nftables) binding, which the lab hosts do not have).
  - In check mode a namespace that does not exist yet is predicted as empty, with a warning
    (M(multicloud.migration.host_network) creates it in an earlier step).
  - In diff mode the diff has one before/after part per table that changes, as text close
    to C(nft list table).
seealso:
  - module: multicloud.migration.host_network
"""

EXAMPLES = r"""
- name: Web network of tenant ex-acme - tcp/8080 from the db subnet, ping from anywhere, the rest dropped
  multicloud.migration.nft_ruleset:
    config:
      - namespace: qrouter-ex-acme
        table: mcm-ex-acme
        networks:
          - name: web
            subnet: 10.10.1.0/24
            default: drop
            ingress:
              - {proto: tcp, ports: 8080, from: 10.10.2.0/24}
              - {proto: icmp}
  register: ex_acme_firewall

- name: The same, and floating address 192.0.2.10 DNATed to web1 (10.10.1.10)
  multicloud.migration.nft_ruleset:
    config:
      - namespace: qrouter-ex-acme
        table: mcm-ex-acme
        networks:
          - name: web
            subnet: 10.10.1.0/24
            ingress:
              - {proto: tcp, ports: "8000-8080", from: 10.10.2.0/24}
              - {proto: tcp, ports: 9090, action: drop}
              - {proto: icmp}
        floating:
          - {address: 192.0.2.10, fixed: 10.10.1.10, subnet: 10.10.1.0/24}

- name: Remove the table
  multicloud.migration.nft_ruleset:
    config:
      - {namespace: qrouter-ex-acme, table: mcm-ex-acme, state: absent}
"""

RETURN = r"""
changes:
  description:
    - One entry per table that changed (or would change in check mode) - C(action)
      (V(create), V(replace), V(delete)), C(object) (V(nft_table)), C(name), C(namespace)
      and C(details) (number of chains and rules of the new table).
  returned: always
  type: list
  elements: dict
  sample:
    - {action: create, object: nft_table, name: mcm-acme, namespace: qrouter-acme,
       details: {chains: 2, rules: 6}}
before:
  description: Each changed table before, as text (C(ruleset) empty when it did not exist).
  returned: always
  type: list
  elements: dict
  sample: []
after:
  description: Each changed table after (predicted in check mode), as text.
  returned: always
  type: list
  elements: dict
  sample:
    - namespace: qrouter-acme
      table: mcm-acme
      ruleset: "table inet mcm-acme {\n  chain forward {\n ..."
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multicloud.migration.plugins.module_utils.firewall import (
    FirewallError,
    NftCommand,
    converge,
)

RULE_SPEC = {
    "proto": {"type": "str", "choices": ["tcp", "udp", "icmp", "any"], "default": "any"},
    "ports": {"type": "raw"},
    "from": {"type": "str", "default": "0.0.0.0/0"},
    "action": {"type": "str", "choices": ["accept", "drop"], "default": "accept"},
}
# The config item; plugins/modules/host_network.py has the same as its plan's firewall
# items (tests/unit/test_host_network.py checks that they stay equal).
ITEM_SPEC = {
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


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {"type": "list", "elements": "dict", "required": True, "options": ITEM_SPEC}
        },
        supports_check_mode=True,
    )
    config = module.params["config"]
    needed = any(item["state"] == "present" for item in config)
    nft = module.get_bin_path("nft", required=needed, opt_dirs=["/usr/sbin"])
    ip = module.get_bin_path("ip", required=True, opt_dirs=["/usr/sbin", "/sbin"])

    def run(argv: list[str], data: str | None) -> tuple[int, str, str]:
        return module.run_command(argv, data=data)

    try:
        result = converge(config, NftCommand(run, nft, ip=ip), check_mode=module.check_mode)
    except FirewallError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"nft_ruleset: {exc}", exception=traceback.format_exc())
    for warning in result.warnings:
        module.warn(warning)
    out = {
        "changed": result.changed,
        "changes": result.changes,
        "before": result.before,
        "after": result.after,
    }
    if module._diff:
        out["diff"] = result.diff
    module.exit_json(**out)


if __name__ == "__main__":
    main()
