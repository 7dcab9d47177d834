# Copyright: multicloud.migration contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A cloud host's TLS material for libvirt and qemu: check, request, install (on the host).

The host keeps its own private key: ``request`` makes it on the host (when it is missing
or not the wanted RSA key) and returns a certificate signing request; the CA on the state
host signs it (community.crypto, roles/migration_tls); ``install`` writes the certificate,
the CA certificate and the copies of the key that libvirt and qemu read. ``check`` reads
everything and lists what is wrong, so a host whose material is valid is left alone (no
new key, no new certificate, no libvirtd restart).

The files are libvirt's and qemu's default paths (FILES); every path goes through
``Layout.at`` so that unit tests work in a temporary directory (``root``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .host_files import (
    Changes,
    WantedDirectory,
    WantedFile,
    attribute_problems,
    converge,
    read,
)

try:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
except ImportError as exc:  # reported by the module (missing_required_lib)
    CRYPTOGRAPHY_ERROR: ImportError | None = exc
else:
    CRYPTOGRAPHY_ERROR = None

# datetime.UTC is Python 3.11+; the module runs on the hosts' python3, which may be older.
UTC = datetime.timezone.utc  # noqa: UP017
STATES = ("check", "request", "installed", "ca")
TLS_PORT = 16514  # libvirtd's TLS port (qemu+tls://)


@dataclass(frozen=True)
class TlsDirectory:
    path: str
    mode: str
    qemu_group: bool = False


@dataclass(frozen=True)
class TlsFile:
    path: str
    kind: str  # ca | cert | key
    mode: str = "0644"
    qemu_group: bool = False  # group migration_tls_qemu_key_group instead of root


# libvirt's defaults (one certificate and key per host, used as server and as client) and
# qemu's migrate_tls_x509_cert_dir; qemu opens its keys itself (qemu_key_group).
DIRECTORIES = (
    TlsDirectory("/etc/pki/CA", "0755"),
    TlsDirectory("/etc/pki/libvirt", "0755"),
    TlsDirectory("/etc/pki/libvirt/private", "0750"),
    TlsDirectory("/etc/pki/qemu", "0750", qemu_group=True),
)
KEY = "/etc/pki/libvirt/private/serverkey.pem"  # the one the host generates
CERTIFICATE = "/etc/pki/libvirt/servercert.pem"  # the one the others are compared with
LIBVIRT_CA = "/etc/pki/CA/cacert.pem"
LIBVIRT_CLIENT_CERT = "/etc/pki/libvirt/clientcert.pem"
LIBVIRT_CLIENT_KEY = "/etc/pki/libvirt/private/clientkey.pem"
FILES = (
    TlsFile(LIBVIRT_CA, "ca"),
    TlsFile("/etc/pki/qemu/ca-cert.pem", "ca"),
    TlsFile(CERTIFICATE, "cert"),
    TlsFile(LIBVIRT_CLIENT_CERT, "cert"),
    TlsFile("/etc/pki/qemu/server-cert.pem", "cert"),
    TlsFile("/etc/pki/qemu/client-cert.pem", "cert"),
    TlsFile(KEY, "key", "0600"),
    TlsFile(LIBVIRT_CLIENT_KEY, "key", "0600"),
    TlsFile("/etc/pki/qemu/server-key.pem", "key", "0640", qemu_group=True),
    TlsFile("/etc/pki/qemu/client-key.pem", "key", "0640", qemu_group=True),
)
LIBVIRTD_CONF = "/etc/libvirt/libvirtd.conf"
QEMU_CONF = "/etc/libvirt/qemu.conf"
# The settings roles/migration_tls writes (its lineinfile tasks): (file option, key, value).
CONF_SETTINGS = (
    ("libvirtd_conf", "listen_tls", "1"),
    ("qemu_conf", "migrate_tls_x509_cert_dir", '"/etc/pki/qemu"'),
    ("qemu_conf", "migrate_tls_x509_verify", "1"),
)
# Where ansible.posix.sysctl (the role's TCP settings) keeps the values for the next boot.
SYSCTL_FILE = "/etc/sysctl.conf"
# Under systemd socket activation libvirtd ignores listen_tls: this socket must be enabled.
SYSTEMD_DIR = "/run/systemd/system"
TLS_SOCKET_UNIT = "/usr/lib/systemd/system/libvirtd-tls.socket"
TLS_SOCKET_ENABLED = "/etc/systemd/system/sockets.target.wants/libvirtd-tls.socket"


class PkiError(Exception):
    """The task fails; str(exc) names the host, the file and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where the files are and who owns them (``root``: a prefix for unit tests)."""

    root: str = "/"
    owner: str = "root"
    group: str = "root"
    qemu_key_group: str = "root"
    libvirtd_conf: str = LIBVIRTD_CONF
    qemu_conf: str = QEMU_CONF

    def at(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def group_of(self, qemu_group: bool) -> str:
        return self.qemu_key_group if qemu_group else self.group

    def directories(self, only: Sequence[str] | None = None) -> list[WantedDirectory]:
        return [
            WantedDirectory(self.at(d.path), d.mode, self.owner, self.group_of(d.qemu_group))
            for d in DIRECTORIES
            if only is None or d.path in only
        ]

    def files(self, content: dict[str, bytes]) -> list[WantedFile]:
        """Every file of FILES with the content of its kind (``content["ca"]`` ...)."""
        return [
            WantedFile(
                self.at(f.path), content[f.kind], f.mode, self.owner, self.group_of(f.qemu_group)
            )
            for f in FILES
        ]


def pem_bytes(text: str) -> bytes:
    """A PEM as written to the files: no surrounding blank lines, one final newline."""
    return text.strip().encode() + b"\n"


# --- reading certificates and keys ------------------------------------------------------


def load_certificate(data: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        return None


def load_key(data: bytes) -> object | None:
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # TypeError: an encrypted key
        return None


def public_der(public_key: object) -> bytes:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def same_key(one: object, other: object) -> bool:
    """Whether two keys, certificates or requests hold the same public key."""
    return public_der(one.public_key()) == public_der(other.public_key())  # type: ignore[attr-defined]


def key_problem(key: object | None, key_size: int) -> str | None:
    """Why this key is not the wanted one (None: it is an RSA key of ``key_size`` bits)."""
    if key is None:
        return "not a readable PEM private key"
    if not isinstance(key, rsa.RSAPrivateKey):
        return f"not an RSA key ({type(key).__name__}), want RSA {key_size} bits"
    if key.key_size != key_size:
        return f"RSA {key.key_size} bits, want RSA {key_size} bits"
    return None


def signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """The certificate names ``ca`` as its issuer and its signature verifies with the CA's
    public key (cryptography 38, the lab hosts' version, has no verify_directly_issued_by)."""
    if cert.issuer != ca.subject:
        return False
    key = ca.public_key()
    signature, data = cert.signature, cert.tbs_certificate_bytes
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), cert.signature_hash_algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(cert.signature_hash_algorithm))
        elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
            key.verify(signature, data)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def not_after(cert: x509.Certificate) -> datetime.datetime:
    aware = getattr(cert, "not_valid_after_utc", None)  # cryptography >= 42
    if aware is not None:
        return aware
    return cert.not_valid_after.replace(tzinfo=UTC)


def missing_names(cert: x509.Certificate, dns_names: Sequence[str],
                  ip_addresses: Sequence[str]) -> list[str]:  # fmt: skip
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
        ips = set(san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = set(), set()
    missing = [f"DNS:{name}" for name in dns_names if name.lower() not in dns]
    missing += [f"IP:{a}" for a in ip_addresses if ipaddress.ip_address(a) not in ips]
    return missing


# --- the CA on the state host -------------------------------------------------------------

# The files roles/migration_tls makes in the state host's pki directory (community.crypto).
CA_KEY, CA_CSR, CA_CERT = "ca-key.pem", "ca.csr", "ca-cert.pem"


@dataclass(frozen=True)
class ExpectedCa:
    """The CA the role would make (its options): what a valid one looks like."""

    common_name: str
    organization: str
    key_size: int = 3072


def check_ca(pki_dir: str, expected: ExpectedCa,
             now: datetime.datetime | None = None) -> tuple[str, list[str]]:  # fmt: skip
    """(the CA certificate PEM or "", problems) of the CA in ``pki_dir``: no problem means
    the role's CA tasks would change nothing (directory 0700, key 0600 of the wanted size,
    its request and a self-signed, unexpired CA certificate of that key and subject)."""
    problems: list[str] = []
    try:
        mode = os.stat(pki_dir).st_mode & 0o7777
    except FileNotFoundError:
        return "", [f"{pki_dir}: missing (the CA is not made yet)"]
    if mode != 0o700:
        problems.append(f"{pki_dir}: mode {mode:04o}, want 0700")
    contents: dict[str, bytes] = {}
    for name, want in ((CA_KEY, 0o600), (CA_CSR, 0o600), (CA_CERT, 0o644)):
        path = os.path.join(pki_dir, name)
        data = read(path)
        if data is None:
            problems.append(f"{path}: missing")
            continue
        contents[name] = data
        mode = os.stat(path).st_mode & 0o7777
        if mode != want:
            problems.append(f"{path}: mode {mode:04o}, want {want:04o}")
    key = load_key(contents[CA_KEY]) if CA_KEY in contents else None
    if CA_KEY in contents:
        why = key_problem(key, expected.key_size)
        if why:
            problems.append(f"{os.path.join(pki_dir, CA_KEY)}: {why}")
            key = None
    if CA_CSR in contents:
        csr_path = os.path.join(pki_dir, CA_CSR)
        try:
            csr = x509.load_pem_x509_csr(contents[CA_CSR])
        except ValueError:
            problems.append(f"{csr_path}: not a readable certificate signing request")
        else:
            if key is not None and not same_key(csr, key):
                problems.append(f"{csr_path}: not a request of {CA_KEY}")
    cert = load_certificate(contents[CA_CERT]) if CA_CERT in contents else None
    cert_path = os.path.join(pki_dir, CA_CERT)
    if CA_CERT in contents and cert is None:
        problems.append(f"{cert_path}: not a readable PEM certificate")
    if cert is not None:
        subject = {a.oid: a.value for a in cert.subject}
        if (subject.get(NameOID.COMMON_NAME) != expected.common_name
                or subject.get(NameOID.ORGANIZATION_NAME) != expected.organization):  # fmt: skip
            problems.append(f"{cert_path}: subject {cert.subject.rfc4514_string()}, want CN="
                            f"{expected.common_name}, O={expected.organization}")  # fmt: skip
        if key is not None and not same_key(cert, key):
            problems.append(f"{cert_path}: not the certificate of {CA_KEY}")
        if not signed_by(cert, cert):
            problems.append(f"{cert_path}: not self-signed")
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            problems.append(f"{cert_path}: not a CA certificate (basicConstraints CA:TRUE)")
        if not_after(cert) <= (now or datetime.datetime.now(UTC)):
            problems.append(f"{cert_path}: expired on {not_after(cert):%Y-%m-%d}")
    pem = contents[CA_CERT].decode("ascii", "replace") if cert is not None else ""
    return pem, problems


# --- check ------------------------------------------------------------------------------


def conf_value(text: str, key: str) -> str | None:
    """The value of the last uncommented ``key = value`` line (libvirt's conf syntax)."""
    value = None
    for line in text.splitlines():
        found = re.match(rf"^\s*{re.escape(key)}\s*=\s*(.*?)\s*$", line)
        if found:
            value = found.group(1)
    return value


def conf_problems(layout: Layout, allowed_dn_list: Sequence[str] | None) -> list[str]:
    problems = []
    texts: dict[str, str | None] = {}
    for option in ("libvirtd_conf", "qemu_conf"):
        data = read(layout.at(getattr(layout, option)))
        texts[option] = None if data is None else data.decode(errors="replace")
        if data is None:
            problems.append(f"{layout.at(getattr(layout, option))}: missing")
    for option, key, want in CONF_SETTINGS:
        text = texts[option]
        if text is None:
            continue
        have = conf_value(text, key)
        if have != want:
            where = layout.at(getattr(layout, option))
            now = "not set" if have is None else f"{key} = {have}"
            problems.append(f"{where}: {now}, want {key} = {want}")
    text = texts["libvirtd_conf"]
    if allowed_dn_list is not None and text is not None:
        have = conf_value(text, "tls_allowed_dn_list")
        try:
            have_list = None if have is None else json.loads(have)
        except ValueError:
            have_list = have
        if have_list != (list(allowed_dn_list) or None):
            want = json.dumps(list(allowed_dn_list)) if allowed_dn_list else "no such line"
            problems.append(f"{layout.at(layout.libvirtd_conf)}: tls_allowed_dn_list = "
                            f"{have}, want {want}")  # fmt: skip
    return problems


@dataclass(frozen=True)
class TlsClient:
    """What libvirtd_answers needs for a TLS handshake as libvirt's own client would make."""

    ca_file: str
    cert_file: str
    key_file: str
    served: bytes  # DER of the certificate libvirtd must present (its servercert.pem)


def libvirtd_answers(address: str, port: int, timeout: float,
                     client: TlsClient | None) -> str | None:  # fmt: skip
    """None when libvirtd answers there, else what is wrong.

    Without ``client`` a TCP connect is enough. With it, a TLS handshake with the host's
    client certificate, verified against its CA, and the certificate libvirtd presents
    compared with the one on disk: libvirtd reads its certificates only when it starts,
    so a run that replaced them but never restarted it (a failed handler) shows here.
    """
    try:
        with socket.create_connection((address, port), timeout=timeout) as raw:
            if client is None:
                return None
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False  # the names are checked on the file (SANs)
            context.load_verify_locations(cafile=client.ca_file)
            context.load_cert_chain(client.cert_file, client.key_file)
            with context.wrap_socket(raw) as tls:
                served = tls.getpeercert(binary_form=True)
    except OSError as exc:  # ssl.SSLError is an OSError
        what = "TLS handshake failed" if isinstance(exc, ssl.SSLError) else "no answer"
        return f"{what} on {address}:{port} ({exc})"
    if served != client.served:
        return (f"serves another certificate on {address}:{port} than the one installed: "
                "not restarted since its certificates changed")  # fmt: skip
    return None


@dataclass(frozen=True)
class Expected:
    """What a valid set of files looks like (the module's options)."""

    ca_pem: str = ""
    dns_names: Sequence[str] = ()
    ip_addresses: Sequence[str] = ()
    key_size: int = 3072
    renew_before_days: int = 30
    allowed_dn_list: Sequence[str] | None = None  # None: not checked
    verify_address: str | None = None  # None: the TLS port is not checked
    verify_port: int = TLS_PORT
    verify_timeout: float = 3.0
    # sysctl name -> wanted value (the role's TCP settings); empty: none checked
    sysctls: dict[str, str] = field(default_factory=dict)


@dataclass
class Findings:
    """What check found: every problem, and whether the host needs a new certificate."""

    problems: list[str] = field(default_factory=list)
    # The certificate or the key is missing or not valid (signature, expiry, names, key):
    # a new key request and certificate are needed. Otherwise installing the files again
    # (copies, modes) with the current certificate is enough.
    reissue: bool = False
    # libvirtd does not answer on its TLS port with the installed certificate: restart it.
    restart: bool = False


def check(
    layout: Layout,
    expected: Expected,
    now: datetime.datetime | None = None,
    connect: Callable[[str, int, float, TlsClient | None], str | None] = libvirtd_answers,
) -> Findings:
    """Every problem of the host's TLS material, each naming its file; none when valid."""
    findings = Findings()
    present = _present_files(layout, findings.problems)
    ca_pem = pem_bytes(expected.ca_pem) if expected.ca_pem.strip() else None
    ca = load_certificate(ca_pem) if ca_pem else None
    if ca is None:
        findings.problems.append(
            "ca_pem: no CA certificate to compare with (the CA is not made yet)"
        )
    for f in FILES:
        path = layout.at(f.path)
        if f.kind == "ca" and ca_pem and path in present and present[path] != ca_pem:
            findings.problems.append(f"{path}: not the CA certificate of the state host")
    own = _certificate_problems(layout, expected, present, ca, now or datetime.datetime.now(UTC))
    absent = layout.at(CERTIFICATE) not in present or layout.at(KEY) not in present
    findings.reissue = bool(own) or absent or ca is None
    findings.problems += own
    findings.problems += _copy_problems(layout, present)
    findings.problems += conf_problems(layout, expected.allowed_dn_list)
    if os.path.isdir(layout.at(SYSTEMD_DIR)) and os.path.exists(layout.at(TLS_SOCKET_UNIT)):
        if not os.path.lexists(layout.at(TLS_SOCKET_ENABLED)):
            findings.problems.append(f"{layout.at(TLS_SOCKET_ENABLED)}: missing "
                                     "(libvirtd-tls.socket not enabled)")  # fmt: skip
    findings.problems += sysctl_problems(layout, expected.sysctls)
    if expected.verify_address:
        # The full handshake needs valid files: with other problems the role reissues or
        # reinstalls them (and restarts libvirtd when its files change) anyway.
        client = None
        if not findings.problems:
            cert = load_certificate(present[layout.at(CERTIFICATE)])
            client = TlsClient(
                ca_file=layout.at(LIBVIRT_CA),
                cert_file=layout.at(LIBVIRT_CLIENT_CERT),
                key_file=layout.at(LIBVIRT_CLIENT_KEY),
                served=cert.public_bytes(serialization.Encoding.DER),  # type: ignore[union-attr]
            )
        error = connect(
            expected.verify_address, expected.verify_port, expected.verify_timeout, client
        )
        if error:
            findings.problems.append(f"libvirtd: {error}")
            findings.restart = True
    return findings


def sysctl_problems(layout: Layout, wanted: dict[str, str]) -> list[str]:
    """Each sysctl whose value (/proc/sys) is not the wanted one, or that SYSCTL_FILE
    (where the role's ansible.posix.sysctl writes it) does not set to it: lost at boot."""
    problems = []
    conf = read(layout.at(SYSCTL_FILE))
    conf_text = conf.decode("utf-8", "replace") if conf is not None else ""
    for name, value in sorted(wanted.items()):
        want = " ".join(str(value).split())
        saved = conf_value(conf_text, name)
        if saved is None or " ".join(saved.split()) != want:
            problems.append(f"{layout.at(SYSCTL_FILE)}: {name} "
                            f"{'is ' + saved if saved is not None else 'is not set'}, "
                            f"want {value} (the value at boot)")  # fmt: skip
        path = layout.at("/proc/sys/" + name.replace(".", "/"))
        try:
            with open(path, encoding="ascii") as handle:
                now = " ".join(handle.read().split())
        except OSError as exc:
            problems.append(f"sysctl {name}: cannot be read ({exc.strerror})")
            continue
        if now != want:
            problems.append(f"sysctl {name}: {now}, want {value}")
    return problems


def _present_files(layout: Layout, problems: list[str]) -> dict[str, bytes]:
    """The contents of the files there; missing ones and wrong attributes in ``problems``."""
    for directory in layout.directories():
        if not os.path.isdir(directory.path):
            problems.append(f"{directory.path}: missing directory")
            continue
        problems += [f"{directory.path}: {p}" for p in attribute_problems(
            directory.path, directory.mode, directory.owner, directory.group)]  # fmt: skip
    present: dict[str, bytes] = {}
    for wanted in layout.files(dict.fromkeys(("ca", "cert", "key"), b"")):
        data = read(wanted.path)
        if data is None:
            problems.append(f"{wanted.path}: missing")
            continue
        present[wanted.path] = data
        problems += [f"{wanted.path}: {p}" for p in attribute_problems(
            wanted.path, wanted.mode, wanted.owner, wanted.group)]  # fmt: skip
    return present


def _certificate_problems(
    layout: Layout,
    expected: Expected,
    present: dict[str, bytes],
    ca: x509.Certificate | None,
    now: datetime.datetime,
) -> list[str]:
    """What is wrong with the certificate and the key themselves (a reissue fixes it; a
    missing one is already reported)."""
    problems: list[str] = []
    cert_path, key_path = layout.at(CERTIFICATE), layout.at(KEY)
    cert = load_certificate(present[cert_path]) if cert_path in present else None
    if cert_path in present and cert is None:
        problems.append(f"{cert_path}: not a PEM certificate")
    elif cert is not None:
        if ca is not None and not signed_by(cert, ca):
            problems.append(f"{cert_path}: not signed by the CA of the state host "
                            f"(issuer {cert.issuer.rfc4514_string()})")  # fmt: skip
        expires = not_after(cert)
        if expires <= now:
            problems.append(f"{cert_path}: expired on {expires:%Y-%m-%d}")
        elif expires <= now + datetime.timedelta(days=expected.renew_before_days):
            problems.append(f"{cert_path}: expires on {expires:%Y-%m-%d}, within "
                            f"{expected.renew_before_days} days")  # fmt: skip
        missing = missing_names(cert, expected.dns_names, expected.ip_addresses)
        if missing:
            problems.append(f"{cert_path}: no subject alternative name {', '.join(missing)}")
    if key_path not in present:
        return problems
    key = load_key(present[key_path])
    wrong = key_problem(key, expected.key_size)
    if wrong:
        problems.append(f"{key_path}: {wrong}")
    elif key and cert and not same_key(key, cert):
        problems.append(f"{key_path}: does not match the certificate {cert_path}")
    return problems


def _copy_problems(layout: Layout, present: dict[str, bytes]) -> list[str]:
    """libvirt's and qemu's copies that differ from the certificate or the key."""
    originals = {"cert": layout.at(CERTIFICATE), "key": layout.at(KEY)}
    problems = []
    for f in FILES:
        path, original = layout.at(f.path), originals.get(f.kind)
        if original and path != original and path in present and original in present:
            if present[path] != present[original]:
                problems.append(f"{path}: differs from {original}")
    return problems


# --- request ----------------------------------------------------------------------------


@dataclass
class Request:
    key_generated: bool = False
    reason: str | None = None  # why a key was (or would be) generated
    csr: str | None = None  # None in check mode when the key is still to be made
    changes: Changes = field(default_factory=Changes)


def make_csr(key: rsa.RSAPrivateKey, common_name: str, organization: str,
             dns_names: Sequence[str], ip_addresses: Sequence[str]) -> str:  # fmt: skip
    """The host's request: used by libvirtd and qemu as server and as client certificate."""
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    subject = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
    ])  # fmt: skip
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=True,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    csr = builder.sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def request(layout: Layout, expected: Expected, common_name: str, organization: str,
            check_mode: bool) -> Request:  # fmt: skip
    """Keep a valid key (RSA of the wanted size) or make one; return the CSR (never the key)."""
    key_path = layout.at(KEY)
    data = read(key_path)
    key = load_key(data) if data is not None else None
    reason = "missing" if data is None else key_problem(key, expected.key_size)
    result = Request(reason=reason)
    if reason is not None:
        result.key_generated = True
        if check_mode:
            result.changes.files.append(key_path)
            result.changes.before.append(f"{key_path}: {reason}")
            result.changes.after.append(f"{key_path}: a new RSA {expected.key_size} bits key")
            return result
        key = rsa.generate_private_key(public_exponent=65537, key_size=expected.key_size)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        wanted_key = WantedFile(key_path, pem, "0600", layout.owner, layout.group)
        parents = ("/etc/pki/libvirt", "/etc/pki/libvirt/private")
        result.changes = converge(layout.directories(only=parents), [wanted_key], False)
        # the diff names the file and the new key's kind, never a digest of the key
        result.changes.before = [f"{key_path}: {reason}"]
        result.changes.after = [f"{key_path}: a new RSA {expected.key_size} bits key"]
    result.csr = make_csr(key, common_name, organization, expected.dns_names,  # type: ignore[arg-type]
                          expected.ip_addresses)  # fmt: skip
    return result


# --- installed --------------------------------------------------------------------------


def install(layout: Layout, certificate: str | None, ca_pem: str, check_mode: bool,
            host: str | None = None) -> Changes:  # fmt: skip
    """Write the certificate (None: keep the installed one), the CA certificate and the
    key's copies; refuse a certificate the CA did not sign or that does not belong to this
    host's key."""
    host = host or socket.gethostname()
    key_path, cert_path = layout.at(KEY), layout.at(CERTIFICATE)
    if certificate is None:
        installed = read(cert_path)
        if installed is None:
            raise PkiError(f"{host}: no certificate given and none at {cert_path}: make a "
                           "request (state=request), have the CA sign it, pass the result as "
                           "certificate")  # fmt: skip
        certificate = installed.decode(errors="replace")
    ca_data, cert_data = pem_bytes(ca_pem), pem_bytes(certificate)
    ca = load_certificate(ca_data)
    if ca is None:
        raise PkiError(f"{host}: ca_pem is not a PEM certificate: pass the CA certificate "
                       "of the state host")  # fmt: skip
    cert = load_certificate(cert_data)
    if cert is None:
        raise PkiError(f"{host}: certificate is not a PEM certificate: pass the certificate "
                       f"the CA signed for {cert_path}")  # fmt: skip
    key_data = read(key_path)
    if key_data is None:
        raise PkiError(f"{host}: {key_path} is missing: make the key and its request first "
                       "(state=request), then have the CA sign that request")  # fmt: skip
    key = load_key(key_data)
    if key is None:
        raise PkiError(f"{host}: {key_path} is not a readable private key: run state=request "
                       "(it replaces the key), then have the CA sign the new request")  # fmt: skip
    if not signed_by(cert, ca):
        raise PkiError(
            f"{host}: the certificate for {cert_path} (subject {cert.subject.rfc4514_string()}, "
            f"issuer {cert.issuer.rfc4514_string()}) is not signed by the CA in ca_pem "
            f"({ca.subject.rfc4514_string()}): have that CA sign this host's request "
            "(state=request)"
        )
    if not same_key(key, cert):
        raise PkiError(
            f"{host}: the certificate for {cert_path} does not match the private key "
            f"{key_path} (it was signed for another key, or for an older request): have the "
            "CA sign the request state=request returns now"
        )
    content = {"ca": ca_data, "cert": cert_data, "key": key_data}
    return converge(layout.directories(), layout.files(content), check_mode)


def libvirtd_reads(layout: Layout, changes: Changes) -> bool:
    """Whether a changed path is one libvirtd reads when it starts (it needs a restart);
    qemu opens the files of /etc/pki/qemu itself at every migration."""
    qemu_dir = layout.at("/etc/pki/qemu")
    return any(
        path != qemu_dir and not path.startswith(qemu_dir + "/")
        for path in changes.files + changes.directories
    )
