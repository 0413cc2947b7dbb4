"""Throw-away TLS material for the secured-broker tests, made with the `cryptography` package: a CA, a
broker certificate for 127.0.0.1 signed by it, a client certificate signed by it, and a second CA with its
own client certificate that the broker does not trust. Keys are unencrypted PKCS#8 PEM (Kafka's PEM
keystore reads that)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path

    def keystore(self, path: Path) -> Path:
        """Key and certificate in one PEM file, as Kafka's `ssl.keystore.type=PEM` wants them."""
        path.write_bytes(self.key.read_bytes() + self.cert.read_bytes())
        return path


@dataclass(frozen=True)
class Certs:
    ca: Path
    broker: Pair
    client: Pair
    other_ca: Path  # a CA nobody here trusts
    stranger: Pair  # a client certificate signed by other_ca


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer is not None else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    if not ca:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    pair = Pair(directory / f"{name}.pem", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pair


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    keys = {
        n: ec.generate_private_key(ec.SECP256R1()) for n in ("ca", "broker", "client", "other", "stranger")
    }
    ca = _issue("qta-test-ca", keys["ca"], None, ca=True)
    other = _issue("qta-untrusted-ca", keys["other"], None, ca=True)
    ca_pair = _write(directory, "ca", ca, keys["ca"])
    other_pair = _write(directory, "other-ca", other, keys["other"])
    signed_by_ca = (ca.subject, keys["ca"])
    return Certs(
        ca=ca_pair.cert,
        broker=_write(
            directory,
            "broker",
            _issue("127.0.0.1", keys["broker"], signed_by_ca, server=True),
            keys["broker"],
        ),
        client=_write(
            directory, "client", _issue("qta-monitor", keys["client"], signed_by_ca), keys["client"]
        ),
        other_ca=other_pair.cert,
        stranger=_write(
            directory,
            "stranger",
            _issue("stranger", keys["stranger"], (other.subject, keys["other"])),
            keys["stranger"],
        ),
    )
