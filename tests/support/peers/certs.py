"""Throwaway TLS material for the real peers (Dovecot IMAPS, SMTP STARTTLS).

Why generate instead of committing PEM files: committed keys expire, get
flagged by secret scanners, and tempt people to reuse them.  Generating an EC
P-256 CA and leaf takes milliseconds.

Two kinds of bundle:

* :func:`make_certs` - a private CA plus a server certificate it signed, for
  ``localhost``, ``127.0.0.1`` and ``::1``.  Clients that trust ``ca_file``
  verify the server successfully (hostname checks included).
* :func:`make_untrusted_cert` - a self-signed server certificate for the same
  names that nobody trusts, to test that certificate verification *fails*.
  Its ``ca_file`` is the certificate itself (so a test can opt in to trusting
  it deliberately), but it is unrelated to the private CA above.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DNS_NAMES: tuple[str, ...] = ("localhost",)
DEFAULT_IP_ADDRESSES: tuple[str, ...] = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class CertBundle:
    """PEM files for one server identity.

    ``ca_file`` is what a client trusts; ``cert_file``/``key_file`` are what the
    server presents.
    """

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only ``ca_file`` (hostname check on)."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        """A server context presenting ``cert_file``/``key_file`` (e.g. for aiosmtpd STARTTLS)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailpipe tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(path, 0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _san(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    entries += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    return x509.SubjectAlternativeName(entries)


def _builder(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, days: int
) -> x509.CertificateBuilder:
    """What every certificate here shares: names, key, serial, a validity from yesterday."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf(
    subject_key: ec.EllipticCurvePrivateKey,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    days: int,
) -> x509.Certificate:
    """A server certificate with the extensions strict verifiers (Python 3.13+) insist on."""
    common_name = dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else "server")
    return (
        _builder(_name(common_name), issuer_name, subject_key, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(dns_names, ip_addresses), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .sign(issuer_key, hashes.SHA256())
    )


def make_certs(
    directory: Path | str,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
    prefix: str = "",
    days: int = 30,
) -> CertBundle:
    """Write ``ca.pem``, ``server.pem`` and ``server.key`` (each with *prefix*) into *directory*.

    The server certificate is signed by a fresh private CA; trust ``ca_file``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("mailpipe test CA")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _leaf(server_key, ca_name, ca_key, dns_names, ip_addresses, days)

    bundle = CertBundle(
        ca_file=directory / f"{prefix}ca.pem",
        cert_file=directory / f"{prefix}server.pem",
        key_file=directory / f"{prefix}server.key",
    )
    _write_cert(bundle.ca_file, ca_cert)
    _write_cert(bundle.cert_file, server_cert)
    _write_key(bundle.key_file, server_key)
    return bundle


def make_untrusted_cert(
    directory: Path | str,
    dns_names: Sequence[str] = DEFAULT_DNS_NAMES,
    ip_addresses: Sequence[str] = DEFAULT_IP_ADDRESSES,
    prefix: str = "untrusted-",
    days: int = 30,
) -> CertBundle:
    """Write a self-signed server certificate (no CA) for the same names.

    A client using the system store or the :func:`make_certs` CA rejects it
    with ``CERTIFICATE_VERIFY_FAILED``.  ``ca_file`` is the certificate itself.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    common_name = dns_names[0] if dns_names else "server"
    name = _name(f"{common_name} (self-signed, untrusted)")
    cert = (
        _builder(name, name, key, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(dns_names, ip_addresses), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    bundle = CertBundle(
        ca_file=directory / f"{prefix}server.pem",
        cert_file=directory / f"{prefix}server.pem",
        key_file=directory / f"{prefix}server.key",
    )
    _write_cert(bundle.cert_file, cert)
    _write_key(bundle.key_file, key)
    return bundle
