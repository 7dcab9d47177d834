"""host_pki (the host_certificate module's logic) and host_files (tls_files'), in a
temporary root: a throwaway CA made with cryptography signs the requests the host side
makes, nothing touches /etc."""

from __future__ import annotations

import dataclasses
import datetime
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ansible_collections.multicloud.migration.plugins.module_utils import host_files, host_pki

KEY_SIZE = 2048  # smaller than the role's 3072: the tests generate many keys
NOW = datetime.datetime.now(datetime.UTC)
NAMES, ADDRESSES = ["mcm-x1"], ["172.30.0.11", "172.30.1.11"]
CONF = {
    "etc/libvirt/libvirtd.conf": '#listen_tls = 0\nlisten_tls = 1\nunix_sock_group = "root"\n',
    "etc/libvirt/qemu.conf": 'migrate_tls_x509_cert_dir = "/etc/pki/qemu"\n'
    "migrate_tls_x509_verify = 1\n",
}


def make_ca(name: str = "test CA") -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


def sign(ca: tuple[rsa.RSAPrivateKey, str], csr_pem: str, days: int = 825) -> str:
    """What x509_certificate_pipe (ownca) does on the state host: the CSR's extensions."""
    ca_key, ca_pem = ca
    issuer = x509.load_pem_x509_certificate(ca_pem.encode()).subject
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(issuer)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=days))
    )
    for extension in csr.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def ca():
    return make_ca()


@pytest.fixture(scope="module")
def other_ca():
    return make_ca("another CA")


@pytest.fixture
def layout(tmp_path) -> host_pki.Layout:
    uid, gid = str(os.getuid()), str(os.getgid())
    for path, text in CONF.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    return host_pki.Layout(root=str(tmp_path), owner=uid, group=gid, qemu_key_group=gid)


def expected(ca_pem: str, **changes) -> host_pki.Expected:
    values = {"ca_pem": ca_pem, "dns_names": NAMES, "ip_addresses": ADDRESSES,
              "key_size": KEY_SIZE, "verify_address": "172.30.0.11", **changes}  # fmt: skip
    return host_pki.Expected(**values)


def answers(_address: str, _port: int, _timeout: float, _client) -> str | None:
    return None


def check(layout, want, **kwargs) -> list[str]:
    kwargs.setdefault("connect", answers)
    return host_pki.check(layout, want, **kwargs).problems


def reissue(layout, want) -> bool:
    return host_pki.check(layout, want, connect=answers).reissue


def issue(layout, ca, days: int = 825) -> host_files.Changes:
    """request -> sign -> installed, as the role runs it."""
    made = host_pki.request(layout, expected(ca[1]), "mcm-x1", "multicloud.migration", False)
    return host_pki.install(layout, sign(ca, made.csr, days), ca[1], False, host="mcm-x1")


@pytest.fixture
def issued(layout, ca) -> host_pki.Layout:
    issue(layout, ca)
    return layout


def only(problems: list[str], *needles: str) -> None:
    """Every needle is in some problem, and every problem matches a needle."""
    for needle in needles:
        assert any(needle in p for p in problems), (needle, problems)
    assert all(any(n in p for n in needles) for p in problems), problems


def path(layout, name: str) -> str:
    return layout.at(name)


# --- check ------------------------------------------------------------------------------


def test_a_valid_set_is_ok(issued, ca):
    assert check(issued, expected(ca[1])) == []


def test_nothing_there_names_every_file(layout, ca):
    problems = check(layout, expected(ca[1]))
    for f in host_pki.FILES:
        assert f"{layout.at(f.path)}: missing" in problems
    assert f"{layout.at('/etc/pki/qemu')}: missing directory" in problems


def test_another_ca(issued, other_ca):
    only(check(issued, expected(other_ca[1])),
         "cacert.pem: not the CA certificate", "ca-cert.pem: not the CA certificate",
         "servercert.pem: not signed by the CA of the state host (issuer CN=test CA)")  # fmt: skip


def test_a_certificate_of_another_ca_with_the_same_name_is_not_signed_by_it(issued, ca):
    # same subject as the CA, different key: the signature decides, not the issuer's name
    impostor = make_ca("test CA")
    for name in ("/etc/pki/CA/cacert.pem", "/etc/pki/qemu/ca-cert.pem"):
        with open(path(issued, name), "w") as handle:
            handle.write(impostor[1])
    only(check(issued, expected(impostor[1])), "servercert.pem: not signed by the CA")


def test_expiring_and_expired(layout, ca):
    issue(layout, ca, days=10)
    only(check(layout, expected(ca[1])), "servercert.pem: expires on", "within 30 days")
    assert check(layout, expected(ca[1], renew_before_days=5)) == []
    later = NOW + datetime.timedelta(days=11)
    only(check(layout, expected(ca[1]), now=later), "servercert.pem: expired on")


def test_missing_subject_alternative_names(issued, ca):
    want = expected(ca[1], dns_names=[*NAMES, "mcm-x1.example"], ip_addresses=["172.30.0.99"])
    missing = "servercert.pem: no subject alternative name DNS:mcm-x1.example, IP:172.30.0.99"
    only(check(issued, want), missing)


def test_key_that_does_not_match(issued, ca):
    other = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
    pem = other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())  # fmt: skip
    with open(path(issued, host_pki.KEY), "wb") as handle:
        handle.write(pem)
    only(check(issued, expected(ca[1])),
         "serverkey.pem: does not match the certificate",
         "clientkey.pem: differs from", "server-key.pem: differs from",
         "client-key.pem: differs from")  # fmt: skip


def test_key_of_another_size(issued, ca):
    only(check(issued, expected(ca[1], key_size=3072)),
         "serverkey.pem: RSA 2048 bits, want RSA 3072 bits")  # fmt: skip


def test_differing_copies(issued, ca):
    with open(path(issued, "/etc/pki/qemu/client-cert.pem"), "a") as handle:
        handle.write("\n")
    with open(path(issued, "/etc/pki/libvirt/private/clientkey.pem"), "w") as handle:
        handle.write("")
    only(check(issued, expected(ca[1])),
         f"{path(issued, '/etc/pki/qemu/client-cert.pem')}: differs from "
         f"{path(issued, host_pki.CERTIFICATE)}",
         "clientkey.pem: differs from")  # fmt: skip


def test_modes_and_groups(issued, ca):
    os.chmod(path(issued, "/etc/pki/qemu/server-key.pem"), 0o644)
    os.chmod(path(issued, "/etc/pki/libvirt/private"), 0o755)
    only(check(issued, expected(ca[1])),
         "server-key.pem: mode 0644, want 0640", "private: mode 0755, want 0750")  # fmt: skip
    layout = host_pki.Layout(root=issued.root, owner=issued.owner, group=issued.group,
                             qemu_key_group=str(os.getgid() + 1))  # fmt: skip
    problems = check(layout, expected(ca[1]))
    assert any("server-key.pem: group gid" in p for p in problems), problems


@pytest.mark.parametrize(("conf", "text", "needle"), [
    ("etc/libvirt/libvirtd.conf", "#listen_tls = 1\n", "not set, want listen_tls = 1"),
    ("etc/libvirt/libvirtd.conf", "listen_tls = 1\nlisten_tls = 0\n",
     "listen_tls = 0, want listen_tls = 1"),
    ("etc/libvirt/qemu.conf", "migrate_tls_x509_verify = 1\n",
     'not set, want migrate_tls_x509_cert_dir = "/etc/pki/qemu"'),
    ("etc/libvirt/qemu.conf", 'migrate_tls_x509_cert_dir = "/etc/pki/qemu"\n',
     "not set, want migrate_tls_x509_verify = 1"),
])  # fmt: skip
def test_missing_conf_lines(issued, ca, conf, text, needle):
    with open(path(issued, conf), "w") as handle:
        handle.write(text)
    only(check(issued, expected(ca[1])), f"{path(issued, conf)}: {needle}")


def test_allowed_dn_list(issued, ca):
    assert check(issued, expected(ca[1], allowed_dn_list=[])) == []
    only(check(issued, expected(ca[1], allowed_dn_list=["O=multicloud.migration,CN=*"])),
         'tls_allowed_dn_list = None, want ["O=multicloud.migration,CN=*"]')  # fmt: skip
    with open(path(issued, "etc/libvirt/libvirtd.conf"), "a") as handle:
        handle.write('tls_allowed_dn_list = ["O=multicloud.migration,CN=*"]\n')
    assert check(issued, expected(ca[1], allowed_dn_list=["O=multicloud.migration,CN=*"])) == []
    only(check(issued, expected(ca[1], allowed_dn_list=[])), "tls_allowed_dn_list =")


def test_tls_port_that_does_not_answer(issued, ca):
    clients = []

    def refused(address: str, port: int, timeout: float, client) -> str:
        assert (address, port) == ("172.30.0.11", 16514) and timeout == 3.0
        clients.append(client)
        return "no answer on 172.30.0.11:16514 ([Errno 111] Connection refused)"

    findings = host_pki.check(issued, expected(ca[1]), connect=refused)
    only(findings.problems, "libvirtd: no answer on 172.30.0.11:16514 ([Errno 111]")
    assert findings.restart and not findings.reissue
    # everything else valid: a handshake with the host's client certificate
    [client] = clients
    assert client.cert_file == issued.at(host_pki.LIBVIRT_CLIENT_CERT)
    assert client.served == x509.load_pem_x509_certificate(
        open(issued.at(host_pki.CERTIFICATE), "rb").read()
    ).public_bytes(serialization.Encoding.DER)
    # another problem: a plain connect is enough (the files are reinstalled anyway)
    os.unlink(issued.at("/etc/pki/qemu/client-cert.pem"))
    host_pki.check(issued, expected(ca[1]), connect=refused)
    assert clients[-1] is None
    assert check(issued, expected(ca[1], verify_address=None), connect=refused) == [
        f"{issued.at('/etc/pki/qemu/client-cert.pem')}: missing"
    ]


def tls_server(cert_file: str, key_file: str, ca_file: str) -> tuple[int, object]:
    """A TLS server on 127.0.0.1 that asks for a client certificate, in a thread; one
    connection."""
    import socket
    import ssl
    import threading

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.load_verify_locations(cafile=ca_file)
    context.verify_mode = ssl.CERT_REQUIRED
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        connection, _address = server.accept()
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], thread


def test_libvirtd_answers_with_a_real_handshake(issued, ca, tmp_path):
    import socket

    files = {k: issued.at(p) for k, p in (("ca", host_pki.LIBVIRT_CA),
             ("cert", host_pki.CERTIFICATE), ("key", host_pki.KEY))}  # fmt: skip
    client = host_pki.TlsClient(files["ca"], issued.at(host_pki.LIBVIRT_CLIENT_CERT),
                                issued.at(host_pki.LIBVIRT_CLIENT_KEY),
                                x509.load_pem_x509_certificate(open(files["cert"], "rb").read())
                                .public_bytes(serialization.Encoding.DER))  # fmt: skip
    port, thread = tls_server(files["cert"], files["key"], files["ca"])
    assert host_pki.libvirtd_answers("127.0.0.1", port, 3.0, client) is None
    thread.join(5)
    # a server still presenting an older certificate (same key, reissued since)
    stale = import_pem(tmp_path / "stale.pem", issued, ca)
    port, thread = tls_server(str(stale), files["key"], files["ca"])
    message = host_pki.libvirtd_answers("127.0.0.1", port, 3.0, client)
    assert "serves another certificate" in message and "not restarted" in message
    thread.join(5)
    # a server of another CA: the handshake fails
    other = make_ca("another CA")
    made = host_pki.request(issued, expected(ca[1]), "mcm-x1", "o", False)
    foreign = tmp_path / "foreign.pem"
    foreign.write_text(sign(other, made.csr))
    port, thread = tls_server(str(foreign), files["key"], files["ca"])
    assert "TLS handshake failed" in host_pki.libvirtd_answers("127.0.0.1", port, 3.0, client)
    thread.join(5)
    # nothing listens
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    assert "no answer on 127.0.0.1" in host_pki.libvirtd_answers("127.0.0.1", free, 1.0, None)


def import_pem(target, layout, ca):
    """Another certificate of the CA for the host's current key (an earlier issue)."""
    made = host_pki.request(layout, expected(ca[1]), "mcm-x1", "o", False)
    target.write_text(sign(ca, made.csr))
    return target


def test_socket_activation_needs_the_tls_socket_enabled(issued, ca):
    for name in (host_pki.SYSTEMD_DIR, os.path.dirname(host_pki.TLS_SOCKET_UNIT),
                 os.path.dirname(host_pki.TLS_SOCKET_ENABLED)):  # fmt: skip
        os.makedirs(path(issued, name), exist_ok=True)
    open(path(issued, host_pki.TLS_SOCKET_UNIT), "w").close()
    only(check(issued, expected(ca[1])), "libvirtd-tls.socket not enabled")
    os.symlink(host_pki.TLS_SOCKET_UNIT, path(issued, host_pki.TLS_SOCKET_ENABLED))
    assert check(issued, expected(ca[1])) == []


def test_no_ca_yet(issued):
    only(check(issued, expected("")), "ca_pem: no CA certificate to compare with")


# --- request ----------------------------------------------------------------------------


def test_request_makes_a_key_and_keeps_it(layout, ca):
    first = host_pki.request(layout, expected(ca[1]), "mcm-x1", "multicloud.migration", False)
    assert first.key_generated and first.reason == "missing"
    key_path = path(layout, host_pki.KEY)
    key_pem = open(key_path, "rb").read()
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(key_path)).st_mode) == 0o750
    assert b"PRIVATE KEY" not in first.csr.encode() and "PRIVATE" not in str(first.changes.diff())
    again = host_pki.request(layout, expected(ca[1]), "mcm-x1", "multicloud.migration", False)
    assert not again.key_generated and again.changes.files == []
    assert open(key_path, "rb").read() == key_pem

    csr = x509.load_pem_x509_csr(again.csr.encode())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "O=multicloud.migration,CN=mcm-x1"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ADDRESSES
    usage = csr.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign
    eku = csr.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # the CA can sign it, and the result belongs to the kept key
    host_pki.install(layout, sign(ca, again.csr), ca[1], False, host="mcm-x1")
    assert check(layout, expected(ca[1])) == []


def test_request_replaces_a_key_of_another_size(layout, ca):
    host_pki.request(layout, expected(ca[1], key_size=1024), "mcm-x1", "o", False)
    made = host_pki.request(layout, expected(ca[1]), "mcm-x1", "o", False)
    assert made.key_generated and made.reason == "RSA 1024 bits, want RSA 2048 bits"
    key = host_pki.load_key(open(path(layout, host_pki.KEY), "rb").read())
    assert key.key_size == KEY_SIZE


def test_request_in_check_mode_makes_no_key(layout, ca):
    made = host_pki.request(layout, expected(ca[1]), "mcm-x1", "o", True)
    assert made.key_generated and made.csr is None
    assert not os.path.exists(path(layout, host_pki.KEY))


# --- installed --------------------------------------------------------------------------


def test_installed_writes_every_file_then_nothing(layout, ca):
    changes = issue(layout, ca)
    written = {layout.at(f.path) for f in host_pki.FILES} - {layout.at(host_pki.KEY)}
    assert written <= set(changes.files)
    modes = {f.path: stat.S_IMODE(os.stat(layout.at(f.path)).st_mode) for f in host_pki.FILES}
    assert modes == {f.path: int(f.mode, 8) for f in host_pki.FILES}
    diff = changes.diff()
    assert "BEGIN" not in diff["before"] + diff["after"] and "sha256:" in diff["after"]
    cert = open(layout.at(host_pki.CERTIFICATE)).read()
    again = host_pki.install(layout, cert, ca[1], False, host="mcm-x1")
    assert not again.changed and again.files == [] and again.directories == []


def test_installed_in_check_mode_changes_nothing(layout, ca):
    made = host_pki.request(layout, expected(ca[1]), "mcm-x1", "o", False)
    changes = host_pki.install(layout, sign(ca, made.csr), ca[1], True, host="mcm-x1")
    assert changes.changed and layout.at(host_pki.CERTIFICATE) in changes.files
    assert not os.path.exists(layout.at(host_pki.CERTIFICATE))


def test_installed_refuses_a_certificate_of_another_ca(issued, ca, other_ca):
    made = host_pki.request(issued, expected(ca[1]), "mcm-x1", "o", False)
    foreign = sign(other_ca, made.csr)
    with pytest.raises(host_pki.PkiError, match=r"mcm-x1: .*servercert\.pem.*not signed by "
                       r"the CA in ca_pem.*state=request"):  # fmt: skip
        host_pki.install(issued, foreign, ca[1], False, host="mcm-x1")
    before = open(issued.at(host_pki.CERTIFICATE)).read()
    assert check(issued, expected(ca[1])) == [] and before


def test_installed_refuses_a_certificate_for_another_key(issued, ca):
    stranger = dataclasses.replace(issued, root=issued.root + "-stranger")
    made = host_pki.request(stranger, expected(ca[1]), "mcm-x2", "o", False)
    with pytest.raises(host_pki.PkiError, match=r"mcm-x1: .*does not match the private key"):
        host_pki.install(issued, sign(ca, made.csr), ca[1], False, host="mcm-x1")


def test_installed_without_a_key(layout, ca):
    with pytest.raises(host_pki.PkiError, match=r"serverkey\.pem is missing.*state=request"):
        host_pki.install(layout, ca[1], ca[1], False, host="mcm-x1")


def test_installed_fixes_a_mode_only(issued, ca):
    target = issued.at("/etc/pki/qemu/client-key.pem")
    os.chmod(target, 0o600)
    cert = open(issued.at(host_pki.CERTIFICATE)).read()
    changes = host_pki.install(issued, cert, ca[1], False, host="mcm-x1")
    assert changes.files == [target] and stat.S_IMODE(os.stat(target).st_mode) == 0o640


# --- host_files (tls_files) --------------------------------------------------------------


def test_host_files_converge(tmp_path):
    uid, gid = str(os.getuid()), str(os.getgid())
    directory = host_files.WantedDirectory(str(tmp_path / "d/private"), "0700", uid, gid)
    wanted = host_files.WantedFile(str(tmp_path / "d/private/k.pem"), b"secret\n", "0600",
                                   uid, gid)  # fmt: skip
    planned = host_files.converge([directory], [wanted], check_mode=True)
    assert planned.files == [wanted.path] and not (tmp_path / "d").exists()
    done = host_files.converge([directory], [wanted], check_mode=False)
    assert done.directories == [directory.path] and done.files == [wanted.path]
    assert "secret" not in repr(wanted) and "secret" not in str(done.diff())
    assert (tmp_path / "d/private/k.pem").read_bytes() == b"secret\n"
    assert stat.S_IMODE(os.stat(wanted.path).st_mode) == 0o600
    assert not host_files.converge([directory], [wanted], check_mode=False).changed
    os.chmod(wanted.path, 0o644)
    fixed = host_files.converge([], [wanted], check_mode=False)
    assert fixed.files == [wanted.path] and stat.S_IMODE(os.stat(wanted.path).st_mode) == 0o600
    assert [p.name for p in (tmp_path / "d/private").iterdir()] == ["k.pem"]  # no temp file


def test_libvirtd_restarts_only_for_its_own_files(issued, ca):
    cert = open(issued.at(host_pki.CERTIFICATE)).read()
    os.chmod(issued.at("/etc/pki/qemu/client-key.pem"), 0o600)
    qemu_only = host_pki.install(issued, cert, ca[1], False, host="mcm-x1")
    assert qemu_only.changed and not host_pki.libvirtd_reads(issued, qemu_only)
    os.unlink(issued.at("/etc/pki/libvirt/clientcert.pem"))
    libvirt = host_pki.install(issued, cert, ca[1], False, host="mcm-x1")
    assert host_pki.libvirtd_reads(issued, libvirt)


def test_reissue_only_when_the_certificate_or_the_key_is_not_valid(issued, ca, other_ca):
    assert not reissue(issued, expected(ca[1]))
    os.chmod(issued.at("/etc/pki/qemu/server-key.pem"), 0o644)
    os.unlink(issued.at("/etc/pki/qemu/client-cert.pem"))
    with open(issued.at("/etc/pki/CA/cacert.pem"), "w") as handle:
        handle.write("stale\n")
    assert check(issued, expected(ca[1])) and not reissue(issued, expected(ca[1]))
    # installed without a certificate keeps the one there and fixes the rest
    changes = host_pki.install(issued, None, ca[1], False, host="mcm-x1")
    assert issued.at(host_pki.CERTIFICATE) not in changes.files
    assert check(issued, expected(ca[1])) == []
    for want in (expected(other_ca[1]), expected(ca[1], dns_names=["x"]),
                 expected(ca[1], key_size=3072), expected("")):  # fmt: skip
        assert reissue(issued, want), want
    os.unlink(issued.at(host_pki.KEY))
    assert reissue(issued, expected(ca[1]))


def test_installed_without_a_certificate_refuses_a_foreign_one(issued, ca, other_ca):
    with pytest.raises(host_pki.PkiError, match="not signed by the CA in ca_pem"):
        host_pki.install(issued, None, other_ca[1], False, host="mcm-x1")
    os.unlink(issued.at(host_pki.CERTIFICATE))
    with pytest.raises(
        host_pki.PkiError, match=r"no certificate given and none at .*state=request"
    ):
        host_pki.install(issued, None, ca[1], False, host="mcm-x1")


# --- sysctls (the role's TCP settings) ------------------------------------------------------


def test_sysctls_other_than_wanted_are_problems(issued, ca):
    proc = issued.at("/proc/sys/net/ipv4")
    os.makedirs(proc)
    with open(os.path.join(proc, "tcp_retries2"), "w") as handle:
        handle.write("15\n")
    with open(os.path.join(proc, "tcp_notsent_lowat"), "w") as handle:
        handle.write("16384\n")
    conf = issued.at("/etc/sysctl.conf")
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    with open(conf, "w") as handle:
        handle.write("# kept\nnet.ipv4.tcp_retries2=15\nnet.ipv4.tcp_notsent_lowat = 16384\n")
    wanted = {"net.ipv4.tcp_retries2": "5", "net.ipv4.tcp_notsent_lowat": "16384"}
    only(check(issued, expected(ca[1], sysctls=wanted)), "sysctl net.ipv4.tcp_retries2: 15, want 5",
         "sysctl.conf: net.ipv4.tcp_retries2 is 15, want 5 (the value at boot)")  # fmt: skip
    assert check(issued, expected(ca[1], sysctls={"net.ipv4.tcp_notsent_lowat": "16384"})) == []
    only(check(issued, expected(ca[1], sysctls={"net.ipv4.nope": "1"})),
         "sysctl net.ipv4.nope: cannot be read", "net.ipv4.nope is not set")  # fmt: skip
    # the running value right, the file without it: lost at the next boot
    with open(conf, "w") as handle:
        handle.write("")
    only(check(issued, expected(ca[1], sysctls={"net.ipv4.tcp_notsent_lowat": "16384"})),
         "sysctl.conf: net.ipv4.tcp_notsent_lowat is not set, want 16384")  # fmt: skip


# --- the CA on the state host (state=ca) ------------------------------------------------------

CA_NAME, CA_ORG = "mcm test CA", "multicloud.migration"


def write_ca(directory, *, cn: str = CA_NAME, days: int = 3650, key_size: int = KEY_SIZE,
             other_key: bool = False, ca: bool = True) -> None:  # fmt: skip
    """The files the role's CA tasks make (community.crypto): key, request, certificate."""
    directory.mkdir(mode=0o700, exist_ok=True)
    os.chmod(directory, 0o700)
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    signer = (rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE) if other_key
              else key)  # fmt: skip
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORG)])  # fmt: skip
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(signer.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=2))
        .not_valid_after(NOW + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(signer, hashes.SHA256())
    )  # fmt: skip
    for name, data, mode in (
        ("ca-key.pem", key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), 0o600),
        ("ca.csr", csr.public_bytes(serialization.Encoding.PEM), 0o600),
        ("ca-cert.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644),
    ):  # fmt: skip
        (directory / name).write_bytes(data)
        os.chmod(directory / name, mode)


def check_ca(directory, key_size: int = KEY_SIZE) -> tuple[str, list[str]]:
    return host_pki.check_ca(str(directory), host_pki.ExpectedCa(CA_NAME, CA_ORG, key_size))


def test_a_valid_ca_is_ok_and_returns_its_certificate_only(tmp_path):
    write_ca(tmp_path / "pki")
    pem, problems = check_ca(tmp_path / "pki")
    assert problems == []
    assert pem == (tmp_path / "pki" / "ca-cert.pem").read_text()
    assert "PRIVATE KEY" not in pem


def test_a_missing_ca_is_one_problem(tmp_path):
    assert check_ca(tmp_path / "pki") == ("", [f"{tmp_path}/pki: missing (the CA is not made yet)"])
    (tmp_path / "pki").mkdir(mode=0o700)
    pem, problems = check_ca(tmp_path / "pki")
    assert pem == ""
    only(problems, "ca-key.pem: missing", "ca.csr: missing", "ca-cert.pem: missing")


@pytest.mark.parametrize(("change", "needle"), [
    ({"cn": "another CA"}, "CN=another CA, want CN=mcm test CA"),
    ({"days": -1}, "expired on"),
    ({"other_key": True}, "not the certificate of ca-key.pem"),
    ({"ca": False}, "not a CA certificate"),
])  # fmt: skip
def test_a_wrong_ca_certificate(tmp_path, change, needle):
    write_ca(tmp_path / "pki", **change)
    _pem, problems = check_ca(tmp_path / "pki")
    assert any(needle in p for p in problems), problems


def test_a_request_of_another_key(tmp_path):
    write_ca(tmp_path / "pki")
    other = tmp_path / "other"
    write_ca(other)
    (tmp_path / "pki" / "ca.csr").write_bytes((other / "ca.csr").read_bytes())
    _pem, problems = check_ca(tmp_path / "pki")
    only(problems, "ca.csr: not a request of ca-key.pem")


def test_a_ca_key_of_another_size_and_loose_modes(tmp_path):
    write_ca(tmp_path / "pki")
    os.chmod(tmp_path / "pki", 0o755)
    os.chmod(tmp_path / "pki" / "ca-key.pem", 0o644)
    _pem, problems = check_ca(tmp_path / "pki", key_size=3072)
    only(problems, "pki: mode 0755, want 0700", "ca-key.pem: mode 0644, want 0600",
         f"ca-key.pem: RSA {KEY_SIZE} bits, want RSA 3072 bits")  # fmt: skip
