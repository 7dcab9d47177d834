#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: one dnsmasq (DHCP + local DNS) per tenant network, in its namespace."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dnsmasq
short_description: One dnsmasq per tenant network, inside the network's DHCP namespace
version_added: 0.1.0
description:
  - Manages dnsmasq instances the way Neutron's DHCP agent does. Each instance serves DHCP
    and DNS for one subnet, runs inside an existing network namespace and listens only on
    one interface (the namespace's leg on the network's bridge).
  - Every instance has a state directory C(/var/lib/mcm/dhcp/<name>/) holding the
    generated C(dnsmasq.conf), the reservations (C(hosts), C(addn_hosts)), the lease file
    C(leases), and dnsmasq's C(pid) and C(log).
  - The lease file is kept across restarts and configuration changes and never truncated.
  - A change of the settings rewrites C(dnsmasq.conf) and restarts dnsmasq; a change of
    the reservations only rewrites C(hosts) and C(addn_hosts) and sends SIGHUP (dnsmasq
    re-reads them and keeps its leases); a stopped instance is started.
  - DNS never leaves the namespace. dnsmasq runs with C(no-resolv) and no upstream server,
    answers names of its domain and reserved hosts locally and refuses everything else.
  - dnsmasq is started inside the namespace by entering it (setns) between fork and exec,
    not through C(ip netns exec).
  - The module does not create namespaces, interfaces or addresses. The namespace, the
    interface in it and the server address on that interface must exist.
author:
  - multicloud.migration contributors (@multicloud)
extends_documentation_fragment:
  - multicloud.migration._attributes
requirements:
  - dnsmasq (Debian package C(dnsmasq-base)) on the managed host
  - root on the managed host (entering namespaces, signalling dnsmasq)
notes:
  - When a reservation is removed or changed while its client holds a lease, the lease is
    not released actively (C(dhcp_release) of dnsmasq-utils is not used); the module warns,
    the lease stays in the lease file until it expires, and dnsmasq refuses its renewal.
  - dnsmasq's C(log) file (C(log-dhcp) is on) is not rotated by this module.
options:
  config:
    description:
      - The instances. For O(state=deleted) and O(state=gathered) only their O(config[].name)
        matters.
      - Defaults of the suboptions apply when an instance is created, and with
        O(state=replaced) or O(state=overridden). With O(state=merged) an option that is
        not given keeps its current value.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Name of the instance and of its state directory (letters, digits, C(_), C(.),
            C(-)), usually the network namespace's name.
        type: str
        required: true
      namespace:
        description: Network namespace dnsmasq runs in (must exist).
        type: str
      interface:
        description: Interface inside O(config[].namespace) dnsmasq listens on (the DHCP leg).
        type: str
      server:
        description:
          - Address of the DHCP/DNS server, configured on O(config[].interface); also handed
            out as DNS server when O(config[].dns) is true.
        type: str
      subnet:
        description: The IPv4 subnet served, as a CIDR (C(10.10.1.0/24)).
        type: str
      range:
        description:
          - First and last address of the dynamic range.
          - When not given, the instance serves only the reservations of O(config[].hosts)
            (dnsmasq's C(static) mode).
        type: list
        elements: str
      lease_time:
        description:
          - Lease time, in dnsmasq's syntax (C(3600), C(45m), C(1h), C(1d), C(infinite)); at
            least 2 minutes. Defaults to C(1h).
        type: str
      gateway:
        description:
          - Router handed out (DHCP option 3). When not given, no router is handed out.
        type: str
      mtu:
        description:
          - Interface MTU handed out (DHCP option 26). Defaults to C(1450), what fits in a
            VXLAN tunnel over a 1500-byte underlay.
        type: int
      domain:
        description:
          - DNS domain of the network. Handed out (option 15), and answered locally for the
            reservations and the clients that sent their host name; never forwarded.
        type: str
      dns:
        description:
          - Serve DNS on port 53 of the server address and hand it out as DNS server.
            When false, DNS is off and no DNS server is handed out. Defaults to true.
        type: bool
      hosts:
        description: Reservations. With O(state=merged) they are merged by MAC.
        type: list
        elements: dict
        suboptions:
          mac:
            description: MAC address of the client.
            type: str
            required: true
          ip:
            description: Address reserved for it, inside O(config[].subnet).
            type: str
            required: true
          name:
            description:
              - Host name (one DNS label) handed out and resolved, also as
                C(<name>.<domain>).
            type: str
            required: true
  state:
    description:
      - V(merged) creates the listed instances, or updates them with the options given.
      - V(replaced) sets the listed instances to exactly the options given (defaults for the
        others); reservations not listed are removed.
      - V(overridden) is V(replaced), and also stops and removes every instance under
        C(/var/lib/mcm/dhcp) that is not listed (only those whose name starts with
        O(scope) when it is given).
      - V(deleted) stops the listed instances and removes their state directory, lease
        file included; with an empty O(config), every instance in O(scope).
      - V(gathered) changes nothing and returns the listed instances (all in O(scope) when
        O(config) is empty) in RV(gathered).
    type: str
    choices: [merged, replaced, overridden, deleted, gathered]
    default: merged
  scope:
    description:
      - Name prefix that narrows the instances O(state=overridden) may remove, and those
        that O(state=deleted) and O(state=gathered) handle when O(config) is empty.
        Other instances on the host are left alone.
    type: list
    elements: str
"""

EXAMPLES = r"""
- name: DHCP and DNS for the web network of tenant ex-acme
  multicloud.migration.dnsmasq:
    config:
      - name: qdhcp-ex-acme.web
        namespace: qdhcp-ex-acme.web
        interface: dhn-3901
        server: 10.10.1.2
        subnet: 10.10.1.0/24
        range: [10.10.1.100, 10.10.1.200]
        gateway: 10.10.1.1
        domain: web.ex-acme
        hosts:
          - {mac: "52:54:00:12:34:56", ip: 10.10.1.10, name: web1}

- name: A static network serves only its reservations, with no router
  multicloud.migration.dnsmasq:
    config:
      - name: qdhcp-ex-acme.db
        namespace: qdhcp-ex-acme.db
        interface: dhn-3902
        server: 10.10.2.2
        subnet: 10.10.2.0/24
        domain: db.ex-acme
        hosts:
          - {mac: "52:54:00:ab:cd:ef", ip: 10.10.2.10, name: db1}

- name: Add one reservation (SIGHUP, leases kept)
  multicloud.migration.dnsmasq:
    state: merged
    config:
      - name: qdhcp-ex-acme.web
        hosts:
          - {mac: "52:54:00:65:43:21", ip: 10.10.1.11, name: web2}

# ex_acme_dhcp_instances: the whole instances, as in the first two tasks
- name: Exactly these instances of tenant ex-acme on this host, remove the others
  multicloud.migration.dnsmasq:
    state: overridden
    scope: qdhcp-ex-acme.
    config: "{{ ex_acme_dhcp_instances }}"

- name: Leases and state of every instance of tenant ex-acme
  multicloud.migration.dnsmasq:
    state: gathered
    scope: qdhcp-ex-acme.
  register: ex_acme_dhcp

- name: Remove the DHCP server of a network
  multicloud.migration.dnsmasq:
    state: deleted
    config:
      - name: qdhcp-ex-acme.db
"""

RETURN = r"""
changes:
  description:
    - What was done, or would be done in check mode, in order. O(state=gathered) returns
      an empty list.
    - V(write) rewrites files (listed in C(files)), V(start) starts dnsmasq, V(restart)
      stops and starts it, V(reload) sends SIGHUP, V(stop) stops it, V(remove) removes the
      state directory.
    - C(pid) is the new pid after a start or restart, the signalled one otherwise;
      C(seconds) is how long the action took (absent in check mode).
  returned: always
  type: list
  elements: dict
  sample:
    - {instance: qdhcp-acme.web, action: write, reason: "hosts, addn_hosts changed",
       files: [hosts, addn_hosts], seconds: 0.000412}
    - {instance: qdhcp-acme.web, action: reload, pid: 4711,
       reason: "reservations changed: SIGHUP re-reads them", seconds: 0.000051}
leases:
  description:
    - Current leases of every instance of O(config) (after the change), by instance name.
      C(expiry) is a Unix time (null for an infinite lease).
  returned: when O(state) is merged, replaced or overridden
  type: dict
  sample:
    qdhcp-acme.web:
      - {expiry: 1767225600, mac: "52:54:00:12:34:56", ip: 10.10.1.10, hostname: web1,
         client_id: null}
gathered:
  description: The instances with their settings, process and leases.
  returned: when O(state=gathered)
  type: list
  elements: dict
  contains:
    name:
      description: Instance name.
      type: str
    directory:
      description: The state directory.
      type: str
    config:
      description: Settings and reservations, as O(config) takes them (null if the files
        were not written by this module).
      type: dict
    running:
      description: Whether its dnsmasq runs.
      type: bool
    pid:
      description: Pid of its dnsmasq, or null.
      type: int
    leases:
      description: Its leases, as in RV(leases).
      type: list
      elements: dict
before:
  description: Settings of the affected instances that existed before the run.
  returned: when O(state) is not gathered
  type: list
  elements: dict
after:
  description: Settings of the listed instances after the run (what they are, or would be
    in check mode).
  returned: when O(state) is merged, replaced or overridden
  type: list
  elements: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.multicloud.migration.plugins.module_utils.dnsmasq import (
    STATES,
    DnsmasqError,
    SystemProcesses,
    converge,
)

HOST_SPEC = {
    "mac": {"type": "str", "required": True},
    "ip": {"type": "str", "required": True},
    "name": {"type": "str", "required": True},
}

INSTANCE_SPEC = {
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
    "hosts": {"type": "list", "elements": "dict", "options": HOST_SPEC},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "config": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": INSTANCE_SPEC,
            },
            "state": {"type": "str", "choices": list(STATES), "default": "merged"},
            "scope": {"type": "list", "elements": "str"},
        },
        supports_check_mode=True,
    )
    state = module.params["state"]
    needs_dnsmasq = state in ("merged", "replaced", "overridden")
    binary = module.get_bin_path("dnsmasq", required=needs_dnsmasq, opt_dirs=["/usr/sbin"])
    try:
        result = converge(
            state,
            module.params["config"],
            SystemProcesses(dnsmasq=binary or "dnsmasq"),
            scope=module.params["scope"],
            check_mode=module.check_mode,
        )
    except DnsmasqError as exc:
        module.fail_json(msg=str(exc), instance=exc.instance, reason=exc.reason)
    except OSError as exc:
        module.fail_json(msg=f"dnsmasq: {exc}", exception=traceback.format_exc())

    for warning in result.warnings:
        module.warn(warning)
    output = {"changed": result.changed, "changes": [c.as_dict() for c in result.changes]}
    if state == "gathered":
        output["gathered"] = result.gathered
    else:
        output["before"] = result.before
    if state in ("merged", "replaced", "overridden"):
        output["after"] = result.after
        output["leases"] = result.leases
    if module._diff and result.diff:
        output["diff"] = result.diff
    module.exit_json(**output)


if __name__ == "__main__":
    main()
