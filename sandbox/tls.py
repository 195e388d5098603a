"""A self-signed certificate authority and a localhost server certificate for the sandbox's HTTPS.

simple-salesforce always speaks https, so the sandbox serves TLS and clients trust it through
``REQUESTS_CA_BUNDLE=<home>/tls/ca.pem``; nothing is switched off in the clients.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def ensure_certificates(folder: Path) -> Certificates:
    """Create the CA and server certificate in ``folder`` once; later calls reuse them."""
    folder.mkdir(parents=True, exist_ok=True)
    out = Certificates(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    if out.ca.exists() and out.cert.exists() and out.key.exists():
        return out

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Retention sandbox local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    out.key.chmod(0o600)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return out


@dataclass(frozen=True)
class ConnectedAppKeys:
    """The connected app's JWT signing pair: the private key a team keeps (and points its Airflow connection
    at), and the certificate uploaded to the connected app ("Use digital signatures"), which the org verifies
    JWT bearer assertions with."""

    private_key: Path
    cert: Path

    @classmethod
    def in_folder(cls, folder: Path) -> ConnectedAppKeys:
        return cls(folder / "jwt-private.pem", folder / "jwt-cert.pem")


def ensure_connected_app_keys(folder: Path) -> ConnectedAppKeys:
    """Create the connected app's RSA key pair and self-signed certificate in ``folder`` once."""
    folder.mkdir(parents=True, exist_ok=True)
    out = ConnectedAppKeys.in_folder(folder)
    if out.private_key.exists() and out.cert.exists():
        return out

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    # The JWT bearer flow signs with RS256 ({"alg":"RS256"}), so the pair is RSA.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Retention sandbox connected app")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .sign(key, hashes.SHA256())
    )
    out.private_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    out.private_key.chmod(0o600)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out
