"""Trust material of a federation: one CA, node certificates, signing keys, a token secret.

``sundesk certs init --dir DIR`` (``init_certs``) writes::

    DIR/                          0700
      ca.crt                      federation CA (ECDSA P-256); every party trusts it
      ca.key                      CA private key: keep it offline once nodes are issued
      nodes/<region>.crt          node certificate: CN=sundesk-node-<region>, O=Sundesk,
      nodes/<region>.key            OU=node, SAN URI sundesk://node/<region>, DNS localhost,
                                    IP 127.0.0.1 and ::1 (plus --hosts); serverAuth and
                                    clientAuth, since a node both serves and pulls from peers
      cli.crt, cli.key            client certificate for people and machines (OU=client,
                                    SAN URI sundesk://client/cli); they also need a token
      etcd-server.crt/.key        etcd's own certificate (SAN localhost, 127.0.0.1, ::1)
      etcd-client.crt/.key        what nodes present to etcd (CN=etcd-client)
      signing/<region>.key        Ed25519 private key that signs the region's operations
      signing/<region>.pub        its public key; every node loads all of them
      tokens.key                  32 random bytes: the HMAC secret of caller tokens

Private keys and ``tokens.key`` are written 0600, atomically. Running ``init_certs`` again
keeps every existing file and creates only what is missing (a new region, say), signed by
the existing CA; ``overwrite=True`` replaces everything, which invalidates every issued
token and every signature made with the old keys.

A node only needs ``ca.crt``, its own ``nodes/<region>.*`` and ``signing/<region>.key``,
every ``signing/*.pub``, ``tokens.key`` and, with etcd TLS, ``etcd-client.*``; copy just
those to each host of a real deployment.

The peer side: ``region_of_peer`` reads the region from the verified client certificate
that gRPC exposes in ``context.auth_context()``; it answers only for node certificates.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.errors import ConfigError

log = logging.getLogger("sundesk.certs")

# The federation's default regions; ``--regions`` chooses others.
DEFAULT_REGIONS = ("velizy", "germany", "uk", "us", "japan")
ORGANIZATION = "Sundesk"
NODE_OU = "node"
CLIENT_OU = "client"
NODE_CN_PREFIX = "sundesk-node-"
NODE_URI_PREFIX = "sundesk://node/"
TOKEN_SECRET_BYTES = 32
CA_MIN_DAYS = 3650  # the CA outlives the certificates it signs
BACKDATE = timedelta(minutes=5)  # tolerate clocks a little behind the issuer's
RENEW_BEFORE = timedelta(days=30)

_REGION_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class CertPaths:
    """Where every file of a certs directory lives; ``created`` lists what one run wrote."""

    dir: Path
    regions: tuple[str, ...] = ()
    created: tuple[Path, ...] = field(default=(), compare=False)

    @property
    def ca_cert(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    def node_cert(self, region: str) -> Path:
        return self.dir / "nodes" / f"{region}.crt"

    def node_key(self, region: str) -> Path:
        return self.dir / "nodes" / f"{region}.key"

    @property
    def cli_cert(self) -> Path:
        return self.dir / "cli.crt"

    @property
    def cli_key(self) -> Path:
        return self.dir / "cli.key"

    @property
    def etcd_server_cert(self) -> Path:
        return self.dir / "etcd-server.crt"

    @property
    def etcd_server_key(self) -> Path:
        return self.dir / "etcd-server.key"

    @property
    def etcd_client_cert(self) -> Path:
        return self.dir / "etcd-client.crt"

    @property
    def etcd_client_key(self) -> Path:
        return self.dir / "etcd-client.key"

    def signing_key(self, region: str) -> Path:
        return self.dir / "signing" / f"{region}.key"

    def signing_pub(self, region: str) -> Path:
        return self.dir / "signing" / f"{region}.pub"

    @property
    def token_secret(self) -> Path:
        return self.dir / "tokens.key"


@dataclass(frozen=True)
class _Leaf:
    """One certificate to issue: its subject, names and what it may be used for."""

    cert: Path
    key: Path
    common_name: str
    unit: str
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    server: bool = False
    client: bool = True


def check_region(region: str) -> str:
    if not _REGION_RE.match(region):
        raise ConfigError(
            f"region name {region!r} is not usable in a certificate: "
            "use lower-case letters, digits and '-', starting with a letter"
        )
    return region


def init_certs(
    dir: Path,
    regions: Sequence[str] = DEFAULT_REGIONS,
    *,
    days: int = 825,
    overwrite: bool = False,
    hosts: Sequence[str] = (),
    now: datetime | None = None,
) -> CertPaths:
    """Create whatever is missing in ``dir`` (everything with ``overwrite``).

    ``hosts`` are extra DNS names or IP addresses put in every node certificate and in
    etcd's, for nodes reached by something other than loopback.
    """
    names = tuple(dict.fromkeys(check_region(r) for r in regions))
    if not names:
        raise ConfigError("no regions given; name at least one, e.g. --regions velizy,uk")
    if days < 1:
        raise ConfigError(f"--days {days} must be at least 1")
    instant = (now or datetime.now(UTC)).astimezone(UTC)
    paths = CertPaths(Path(dir), names)
    _make_dir(paths.dir)
    _make_dir(paths.dir / "nodes")
    _make_dir(paths.dir / "signing")
    created: list[Path] = []

    ca_key, ca_cert = _ensure_ca(paths, instant, days, overwrite, created)
    dns, ips = _split_hosts(hosts)
    leaves = [
        _Leaf(
            paths.node_cert(r),
            paths.node_key(r),
            f"{NODE_CN_PREFIX}{r}",
            NODE_OU,
            dns=("localhost", *dns),
            ips=("127.0.0.1", "::1", *ips),
            uris=(f"{NODE_URI_PREFIX}{r}",),
            server=True,
        )
        for r in names
    ]
    leaves += [
        _Leaf(
            paths.cli_cert, paths.cli_key, "sundesk-cli", CLIENT_OU, uris=("sundesk://client/cli",)
        ),
        _Leaf(
            paths.etcd_server_cert,
            paths.etcd_server_key,
            "etcd-server",
            "etcd",
            dns=("localhost", *dns),
            ips=("127.0.0.1", "::1", *ips),
            server=True,
        ),
        _Leaf(paths.etcd_client_cert, paths.etcd_client_key, "etcd-client", "etcd"),
    ]
    for leaf in leaves:
        if not overwrite and leaf.cert.exists() and leaf.key.exists():
            _check_kept(leaf.cert, ca_cert, instant)
            continue
        key = ec.generate_private_key(ec.SECP256R1())
        _write(leaf.key, _private_pem(key), private=True, created=created)
        _write(leaf.cert, _issue(leaf, key, ca_key, ca_cert, instant, days), created=created)

    for r in names:
        if not overwrite and paths.signing_key(r).exists():
            if not paths.signing_pub(r).exists():  # the public half can always be rebuilt
                pub = load_signing_key(paths.signing_key(r)).public_key()
                _write(paths.signing_pub(r), _public_pem(pub), created=created)
            continue
        signing = ed25519.Ed25519PrivateKey.generate()
        _write(paths.signing_key(r), _private_pem(signing), private=True, created=created)
        _write(paths.signing_pub(r), _public_pem(signing.public_key()), created=created)

    if overwrite or not paths.token_secret.exists():
        _write(
            paths.token_secret,
            secrets.token_bytes(TOKEN_SECRET_BYTES),
            private=True,
            created=created,
        )
    return CertPaths(paths.dir, names, tuple(created))


def _ensure_ca(
    paths: CertPaths, now: datetime, days: int, overwrite: bool, created: list[Path]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    have_cert, have_key = paths.ca_cert.exists(), paths.ca_key.exists()
    if not overwrite and have_cert and have_key:
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            key.public_key().public_numbers() != _ec_public(cert).public_numbers()
        ):
            raise ConfigError(
                f"{paths.ca_key} does not match {paths.ca_cert}; "
                "restore the pair or start over with --force"
            )
        return key, cert
    if not overwrite and (have_cert or have_key):
        missing = paths.ca_key if have_cert else paths.ca_cert
        raise ConfigError(
            f"{missing} is missing but its pair exists: issuing from a new CA would split "
            "the federation; restore it, or start over with --force"
        )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, "Sundesk Federation CA"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + timedelta(days=max(days, CA_MIN_DAYS)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(paths.ca_key, _private_pem(key), private=True, created=created)
    _write(paths.ca_cert, cert.public_bytes(serialization.Encoding.PEM), created=created)
    return key, cert


def _issue(
    leaf: _Leaf,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime,
    days: int,
) -> bytes:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, leaf.unit),
            x509.NameAttribute(NameOID.COMMON_NAME, leaf.common_name),
        ]
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in leaf.dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in leaf.ips]
    names += [x509.UniformResourceIdentifier(u) for u in leaf.uris]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if leaf.server else []
    usages += [ExtendedKeyUsageOID.CLIENT_AUTH] if leaf.client else []
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(_ec_public(ca_cert)),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _check_kept(cert_path: Path, ca_cert: x509.Certificate, now: datetime) -> None:
    """An existing certificate is kept only if our CA issued it; say when it runs out."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise ConfigError(
            f"{cert_path} was not issued by {ca_cert.subject.rfc4514_string()} in this "
            "directory; delete it to have it reissued, or start over with --force"
        ) from None
    if cert.not_valid_after_utc - now < RENEW_BEFORE:
        log.warning(
            "%s expires %s; delete it and its key, then run `sundesk certs init` again",
            cert_path,
            cert.not_valid_after_utc.isoformat(),
        )


def _ec_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("the federation CA must have an ECDSA key")
    return key


def _split_hosts(hosts: Sequence[str]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    ips: list[str] = []
    for host in hosts:
        host = host.strip()
        if not host:
            continue
        try:
            ips.append(str(ipaddress.ip_address(host)))
        except ValueError:
            if not re.match(r"^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$", host):
                raise ConfigError(
                    f"--hosts entry {host!r} is neither a DNS name nor an IP"
                ) from None
            dns.append(host)
    return dns, ips


def _private_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _make_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)


def _write(path: Path, data: bytes, *, private: bool = False, created: list[Path]) -> None:
    """Write atomically; a private file is never readable by others, not even briefly."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    created.append(path)


# ----- loading ----------------------------------------------------------------------------


def _read(path: Path, what: str, dir: Path, *, private: bool = False) -> bytes:
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(
            f"{what} {path} does not exist; create it with `sundesk certs init --dir {dir}`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if private and mode & 0o077:
        log.warning("%s %s is readable by other users; chmod 600 it", what, path)
    return data


def load_node_credentials(dir: Path, region: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, node certificate, node private key), all PEM."""
    paths = CertPaths(Path(dir))
    check_region(region)
    return (
        _read(paths.ca_cert, "the federation CA certificate", paths.dir),
        _read(paths.node_cert(region), f"the node certificate of {region}", paths.dir),
        _read(paths.node_key(region), f"the node key of {region}", paths.dir, private=True),
    )


def load_client_credentials(dir: Path) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, CLI client certificate, its private key), all PEM."""
    paths = CertPaths(Path(dir))
    return (
        _read(paths.ca_cert, "the federation CA certificate", paths.dir),
        _read(paths.cli_cert, "the client certificate", paths.dir),
        _read(paths.cli_key, "the client key", paths.dir, private=True),
    )


def load_token_secret(dir: Path) -> bytes:
    path = CertPaths(Path(dir)).token_secret
    secret = _read(path, "the token secret", Path(dir), private=True)
    if len(secret) < TOKEN_SECRET_BYTES:
        raise ConfigError(
            f"{path} holds {len(secret)} bytes; a token secret needs "
            f"{TOKEN_SECRET_BYTES}; recreate it with `sundesk certs init`"
        )
    return secret


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    pem = _read(path, "the signing key", path.parent.parent, private=True)
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def load_signing_public_keys(dir: Path) -> dict[str, ed25519.Ed25519PublicKey]:
    """Every region's operation-signing public key, by region name."""
    keys: dict[str, ed25519.Ed25519PublicKey] = {}
    signing_dir = Path(dir) / "signing"
    for path in sorted(signing_dir.glob("*.pub")):
        key = serialization.load_pem_public_key(_read(path, "the signing key", Path(dir)))
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigError(f"{path} is not an Ed25519 public key")
        keys[path.stem] = key
    if not keys:
        raise ConfigError(f"no signing/*.pub in {dir}; create them with `sundesk certs init`")
    return keys


def server_credentials(dir: Path, region: str) -> grpc.ServerCredentials:
    """mTLS for a node's server: every caller must present a certificate of the CA."""
    ca, cert, key = load_node_credentials(dir, region)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=True
    )


def channel_credentials(dir: Path, region: str) -> grpc.ChannelCredentials:
    """A node dialling a peer: verify the peer against the CA, present the node cert."""
    ca, cert, key = load_node_credentials(dir, region)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def client_channel_credentials(dir: Path) -> grpc.ChannelCredentials:
    """The CLI, tools and machines: verify the node against the CA, present ``cli.crt``."""
    ca, cert, key = load_client_credentials(dir)
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


# ----- the peer of a call -----------------------------------------------------------------


def _entries(auth_context: Mapping[str, Sequence[bytes]], key: str) -> list[str]:
    return [
        v.decode(errors="replace") if isinstance(v, bytes) else str(v)
        for v in auth_context.get(key, ())
    ]


def region_of_peer(auth_context: Mapping[str, Sequence[bytes]]) -> str | None:
    """The region of a caller that presented a verified node certificate, else None.

    gRPC fills ``auth_context`` only after it verified the chain to our CA (the server
    requires client certificates), so the names in it can be trusted. A node certificate
    is OU=node with the URI ``sundesk://node/<region>``; the CN must agree when present.
    """
    if not auth_context.get("x509_pem_cert"):
        return None
    pem = auth_context["x509_pem_cert"][0]
    try:
        cert = x509.load_pem_x509_certificate(pem if isinstance(pem, bytes) else pem.encode())
    except ValueError:
        return None
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    if [u.value for u in units] != [NODE_OU]:
        return None
    uris = [
        n
        for n in _entries(auth_context, "x509_subject_alternative_name")
        if n.startswith(NODE_URI_PREFIX)
    ]
    regions = {n.removeprefix(NODE_URI_PREFIX) for n in uris}
    cns = {
        c.removeprefix(NODE_CN_PREFIX)
        for c in _entries(auth_context, "x509_common_name")
        if c.startswith(NODE_CN_PREFIX)
    }
    if len(regions) > 1 or len(cns) > 1 or (regions and cns and regions != cns):
        return None
    region = next(iter(regions or cns), None)
    if region is None or not _REGION_RE.match(region):
        return None
    return region


__all__ = [
    "DEFAULT_REGIONS",
    "CertPaths",
    "channel_credentials",
    "client_channel_credentials",
    "init_certs",
    "load_client_credentials",
    "load_node_credentials",
    "load_signing_key",
    "load_signing_public_keys",
    "load_token_secret",
    "region_of_peer",
    "server_credentials",
]
