#!/usr/bin/python
# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cloud host's libvirt and qemu TLS material: check it, request a certificate, install it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: host_certificate
short_description: Check, request and install a host's libvirt and qemu TLS certificate
version_added: 0.1.0
description:
  - The host's side of the migration PKI (roles/migration_tls). The host generates and
    keeps its own private key; only a certificate signing request leaves it, and only the
    signed certificate comes back. The CA signs the request where its key is (the state
    host, M(community.crypto.x509_certificate_pipe) with the C(ownca) provider).
  - O(state=check) reads everything and changes nothing - the CA certificate files
    (C(/etc/pki/CA/cacert.pem), C(/etc/pki/qemu/ca-cert.pem)) equal O(ca_pem); the
    certificate (C(/etc/pki/libvirt/servercert.pem)) is signed by that CA, does not expire
    within O(renew_before_days) and names O(dns_names) and O(ip_addresses); the key
    (C(/etc/pki/libvirt/private/serverkey.pem)) is an RSA key of O(key_size) bits and
    matches the certificate; libvirt's and qemu's copies of both are equal; modes, owners
    and groups are right; C(listen_tls = 1) is in O(libvirtd_conf),
    C(migrate_tls_x509_cert_dir = "/etc/pki/qemu") and C(migrate_tls_x509_verify = 1) in
    O(qemu_conf); under systemd socket activation C(libvirtd-tls.socket) is enabled;
    libvirtd answers on O(verify_address), port O(verify_port) - with a TLS handshake as
    libvirt's client makes it (the host's client certificate, the CA) presenting the
    installed certificate when everything else is valid, else a TCP connect.
    RV(problems) lists every problem, each naming its file. With O(sysctls), each of
    those kernel settings must have its value too (the role's TCP settings).
  - O(state=request) keeps the private key if it is an RSA key of O(key_size) bits and
    otherwise generates one (mode 0600), then returns a certificate signing request
    (RV(csr)) - subject O(common_name) and O(organization), subject alternative names
    O(dns_names) and O(ip_addresses), C(CA:FALSE), key usage digitalSignature and
    keyEncipherment (critical), extended key usage serverAuth and clientAuth (libvirtd
    and qemu use one certificate as server and as client). Changed only when a key was
    generated. The key itself is never returned.
  - O(state=installed) writes O(certificate) (C(/etc/pki/libvirt/servercert.pem),
    C(clientcert.pem), C(/etc/pki/qemu/server-cert.pem), C(client-cert.pem)), O(ca_pem) and
    the copies of the key that libvirt and qemu read (C(/etc/pki/libvirt/private/clientkey.pem)
    0600, C(/etc/pki/qemu/server-key.pem) and C(client-key.pem) 0640 with group
    O(qemu_key_group)), each atomically and only when its content, mode, owner or group
    differs. It refuses a certificate that O(ca_pem) did not sign or that does not match the
    host's key, naming the host, the file and what to do. Without O(certificate) it keeps
    the installed one (checked the same way) and installs the rest.
  - O(state=ca) runs on the state host and changes nothing - the CA that
    roles/migration_tls makes in O(pki_dir) (C(ca-key.pem) mode 0600, an RSA key of
    O(key_size) bits; C(ca.csr) 0600; C(ca-cert.pem) 0644, self-signed by that key, subject
    O(common_name) and O(organization), not expired; the directory 0700). RV(ca_pem) is the
    CA certificate (public), RV(problems) what the role's CA tasks would make or fix. The
    key is never returned.
  - File contents are never logged nor shown in a diff - RV(changed_files) and the diff
    name paths and sha256 digests only.
author: multicloud.migration contributors (@multicloud)
requirements:
  - python cryptography on the host (python3-cryptography; version 38 or later)
options:
  state:
    description: What to do; see the description.
    type: str
    choices: [check, request, installed, ca]
    default: check
  ca_pem:
    description:
      - The CA certificate (PEM). Required for O(state=installed); for O(state=check) an
        empty value is reported as a problem (the CA is not made yet).
    type: str
    default: ""
  certificate:
    description:
      - The host's certificate signed by the CA (PEM); O(state=installed) only.
      - Omitted - the installed certificate is kept (and checked like a given one); the
        CA certificate and the copies are installed again. What RV(reissue) false allows.
    type: str
  common_name:
    description:
      - Common name (CN) of the request's subject; required for O(state=request).
      - For O(state=ca), the CA certificate's (required).
    type: str
  organization:
    description: Organization (O) of the request's subject (O(state=ca) - of the CA's).
    type: str
    default: multicloud.migration
  dns_names:
    description: DNS names the certificate must name (subject alternative names).
    type: list
    elements: str
    default: []
  ip_addresses:
    description: IP addresses the certificate must name (subject alternative names).
    type: list
    elements: str
    default: []
  key_size:
    description: Size in bits of the host's RSA key; another key is replaced by O(state=request).
    type: int
    default: 3072
  renew_before_days:
    description: A certificate that expires within this many days is a problem (renewed).
    type: int
    default: 30
  qemu_key_group:
    description: Group of C(/etc/pki/qemu) and of qemu's keys (qemu opens them itself).
    type: str
    default: root
  allowed_dn_list:
    description:
      - When given, libvirtd's C(tls_allowed_dn_list) must be this list (an empty list - no
        such line). Not checked when omitted.
    type: list
    elements: str
  libvirtd_conf:
    description: libvirtd's configuration file.
    type: path
    default: /etc/libvirt/libvirtd.conf
  qemu_conf:
    description: The qemu driver's configuration file.
    type: path
    default: /etc/libvirt/qemu.conf
  verify_address:
    description:
      - O(state=check) - an address of the host where libvirtd must answer on its TLS port.
        Not checked when omitted.
      - libvirtd reads its certificates only when it starts - the handshake shows one that
        still presents a replaced certificate (RV(libvirtd_restart)).
    type: str
  verify_port:
    description: libvirtd's TLS port.
    type: int
    default: 16514
  verify_timeout:
    description: Seconds to wait for that connection.
    type: float
    default: 3
  sysctls:
    description:
      - O(state=check) - kernel settings (name, value as C(sysctl -n) prints it) the host must
        have; each other value is a problem. Not checked when empty.
    type: dict
    default: {}
  pki_dir:
    description: O(state=ca) - the CA's directory on the state host (required).
    type: path
extends_documentation_fragment:
  - multicloud.migration._attributes
notes:
  - O(state=check) never changes anything and always reports C(changed=false). The
    module never restarts libvirtd - RV(libvirtd_restart) says when it is needed.
  - In check mode O(state=request) reports whether a key would be generated; RV(csr) is then
    returned only when the key already exists.
seealso:
  - module: multicloud.migration.tls_files
  - module: community.crypto.x509_certificate_pipe
"""

EXAMPLES = r"""
# What roles/migration_tls does on each cloud host. The CA lives on the state host
# (state_host, in pki_dir: the role takes hostvars.localhost.mcm_state_host and
# mcm_pki_dir); ca_pem is its certificate (the role reads it there).
- name: Is this host's TLS material in place and valid
  multicloud.migration.host_certificate:
    state: check
    ca_pem: "{{ ca_pem }}"
    dns_names: ["{{ inventory_hostname }}"]
    ip_addresses: ["{{ underlay_ip }}", "{{ wan_ip }}"]
    verify_address: "{{ wan_ip }}"
  register: tls_check

- name: Key (kept when valid) and certificate signing request, made on the host
  multicloud.migration.host_certificate:
    state: request
    common_name: "{{ inventory_hostname }}"
    dns_names: ["{{ inventory_hostname }}"]
    ip_addresses: ["{{ underlay_ip }}", "{{ wan_ip }}"]
  register: tls_request
  when: tls_check.reissue

- name: The CA signs the request on the state host (its key never leaves it)
  community.crypto.x509_certificate_pipe:
    provider: ownca
    csr_content: "{{ tls_request.csr }}"
    ownca_path: "{{ pki_dir }}/ca-cert.pem"
    ownca_privatekey_path: "{{ pki_dir }}/ca-key.pem"
    ownca_not_after: +825d
  delegate_to: "{{ state_host }}"
  register: tls_signed
  when: tls_check.reissue

# Without a new certificate (only copies, modes or the CA files were wrong) the installed
# one is kept.
- name: Certificate, CA certificate and the key's copies for libvirt and qemu
  multicloud.migration.host_certificate:
    state: installed
    certificate: "{{ tls_signed.certificate if tls_check.reissue else omit }}"
    ca_pem: "{{ ca_pem }}"
  register: tls_installed
  when: tls_check.problems | length > 0

- name: What was wrong
  ansible.builtin.debug:
    var: tls_check.problems
"""

RETURN = r"""
ok:
  description:
    - Whether the host's TLS material is complete and valid (no RV(problems)); for
      O(state=ca), the CA.
  returned: state=check or state=ca
  type: bool
  sample: false
problems:
  description: What is wrong, one entry per problem, each naming its file or setting.
  returned: state=check or state=ca
  type: list
  elements: str
  sample:
    - "/etc/pki/libvirt/servercert.pem: not signed by the CA of the state host (issuer CN=old CA)"
    - "/etc/pki/qemu/client-key.pem: missing"
reissue:
  description:
    - Whether the host needs a new certificate - its certificate or key is missing, not
      signed by the CA, expiring, missing a name, of another size or not matching. When
      false, the other problems (copies, modes, CA files) are fixed by O(state=installed)
      without O(certificate).
  returned: state=check
  type: bool
ca_pem:
  description: The CA certificate (PEM, public); empty when it is missing or unreadable.
  returned: state=ca
  type: str
csr:
  description:
    - The certificate signing request (PEM) for the host's key. Not returned in check mode
      when the key is still to be generated.
  returned: state=request
  type: str
key_generated:
  description: Whether a new key was generated (or, in check mode, would be).
  returned: state=request
  type: bool
key_reason:
  description: Why the key was (or would be) generated - C(missing), or what is wrong with it.
  returned: state=request and a key was generated
  type: str
  sample: RSA 2048 bits, want RSA 3072 bits
changed_files:
  description: Paths of the files written or whose mode, owner or group was corrected.
  returned: state=request or state=installed
  type: list
  elements: str
  sample: [/etc/pki/libvirt/servercert.pem, /etc/pki/qemu/server-cert.pem]
libvirtd_restart:
  description:
    - Whether libvirtd needs a restart. O(state=check) - it does not answer on its TLS port
      or presents another certificate than the installed one. O(state=installed) - a file
      or directory it reads when it starts changed (C(/etc/pki/CA), C(/etc/pki/libvirt));
      qemu opens the files of C(/etc/pki/qemu) itself at every migration.
  returned: state=check or state=installed
  type: bool
"""

import traceback
from typing import Any

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.multicloud.migration.plugins.module_utils.host_pki import (
    CRYPTOGRAPHY_ERROR,
    LIBVIRTD_CONF,
    QEMU_CONF,
    STATES,
    TLS_PORT,
    Expected,
    ExpectedCa,
    Layout,
    PkiError,
    check,
    check_ca,
    install,
    libvirtd_reads,
    request,
)

ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "state": {"type": "str", "choices": list(STATES), "default": "check"},
    "ca_pem": {"type": "str", "default": ""},
    "certificate": {"type": "str"},
    "common_name": {"type": "str"},
    "organization": {"type": "str", "default": "multicloud.migration"},
    "dns_names": {"type": "list", "elements": "str", "default": []},
    "ip_addresses": {"type": "list", "elements": "str", "default": []},
    "key_size": {"type": "int", "default": 3072},
    "renew_before_days": {"type": "int", "default": 30},
    "qemu_key_group": {"type": "str", "default": "root", "no_log": False},  # a group name
    "allowed_dn_list": {"type": "list", "elements": "str"},
    "libvirtd_conf": {"type": "path", "default": LIBVIRTD_CONF},
    "qemu_conf": {"type": "path", "default": QEMU_CONF},
    "verify_address": {"type": "str"},
    "verify_port": {"type": "int", "default": TLS_PORT},
    "verify_timeout": {"type": "float", "default": 3.0},
    "sysctls": {"type": "dict", "default": {}},
    "pki_dir": {"type": "path"},
}


def main() -> None:
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_if=[
            ("state", "request", ("common_name",)),
            ("state", "installed", ("ca_pem",)),
            ("state", "ca", ("pki_dir", "common_name")),
        ],
        supports_check_mode=True,
    )
    if CRYPTOGRAPHY_ERROR is not None:
        module.fail_json(
            msg=missing_required_lib("cryptography"), exception=str(CRYPTOGRAPHY_ERROR)
        )
    p = module.params
    layout = Layout(
        qemu_key_group=p["qemu_key_group"],
        libvirtd_conf=p["libvirtd_conf"],
        qemu_conf=p["qemu_conf"],
    )
    expected = Expected(
        ca_pem=p["ca_pem"],
        dns_names=p["dns_names"],
        ip_addresses=p["ip_addresses"],
        key_size=p["key_size"],
        renew_before_days=p["renew_before_days"],
        allowed_dn_list=p["allowed_dn_list"],
        verify_address=p["verify_address"],
        verify_port=p["verify_port"],
        verify_timeout=p["verify_timeout"],
        sysctls={str(k): str(v) for k, v in p["sysctls"].items()},
    )
    result: dict[str, Any] = {"changed": False}
    try:
        if p["state"] == "ca":
            pem, problems = check_ca(p["pki_dir"], ExpectedCa(
                common_name=p["common_name"], organization=p["organization"],
                key_size=p["key_size"]))  # fmt: skip
            result.update(ok=not problems, problems=problems, ca_pem=pem)
        elif p["state"] == "check":
            findings = check(layout, expected)
            result.update(ok=not findings.problems, problems=findings.problems,
                          reissue=findings.reissue, libvirtd_restart=findings.restart)  # fmt: skip
        elif p["state"] == "request":
            made = request(layout, expected, p["common_name"], p["organization"],
                           module.check_mode)  # fmt: skip
            result.update(changed=made.key_generated, csr=made.csr,
                          key_generated=made.key_generated, changed_files=made.changes.files)  # fmt: skip
            if made.key_generated:
                result["key_reason"] = made.reason
            if module._diff and made.key_generated:
                result["diff"] = made.changes.diff()
        else:
            changes = install(layout, p["certificate"], p["ca_pem"], module.check_mode)
            result.update(changed=changes.changed, changed_files=changes.files,
                          libvirtd_restart=libvirtd_reads(layout, changes))  # fmt: skip
            if module._diff and changes.changed:
                result["diff"] = changes.diff()
    except PkiError as exc:
        module.fail_json(msg=str(exc))
    except (OSError, KeyError, ValueError) as exc:
        # KeyError: an unknown group (qemu_key_group); ValueError: an address that is not one
        module.fail_json(msg=f"host_certificate ({p['state']}): {exc}",
                         exception=traceback.format_exc())  # fmt: skip
    module.exit_json(**result)


if __name__ == "__main__":
    main()
