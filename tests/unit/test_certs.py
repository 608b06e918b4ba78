"""The certs directory: what init_certs writes, how it keeps it, and how peers are named."""

from __future__ import annotations

import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.errors import ConfigError
from ops import certs_cli
from ops.certs import (
    CertPaths,
    init_certs,
    load_node_credentials,
    load_signing_key,
    load_signing_public_keys,
    load_token_secret,
    region_of_peer,
)

REGIONS = ["velizy", "germany", "uk", "us", "japan"]
NOW = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return init_certs(tmp_path_factory.mktemp("certs") / "certs", REGIONS, now=NOW)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(c: x509.Certificate) -> list[str]:
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in san]


def usages(c: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def test_layout(paths: CertPaths) -> None:
    expected = {
        "ca.crt",
        "ca.key",
        "cli.crt",
        "cli.key",
        "etcd-server.crt",
        "etcd-server.key",
        "etcd-client.crt",
        "etcd-client.key",
        "tokens.key",
    }
    for r in REGIONS:
        expected |= {f"nodes/{r}.crt", f"nodes/{r}.key", f"signing/{r}.key", f"signing/{r}.pub"}
    found = {str(p.relative_to(paths.dir)) for p in paths.dir.rglob("*") if p.is_file()}
    assert found == expected
    assert {str(p.relative_to(paths.dir)) for p in paths.created} == expected


def test_private_files_are_owner_only(paths: CertPaths) -> None:
    private = [
        paths.ca_key,
        paths.cli_key,
        paths.etcd_server_key,
        paths.etcd_client_key,
        paths.token_secret,
        *(paths.node_key(r) for r in REGIONS),
        *(paths.signing_key(r) for r in REGIONS),
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(paths.dir.stat().st_mode) & 0o077 == 0
    assert len(load_token_secret(paths.dir)) == 32


def test_node_certificates_name_their_region(paths: CertPaths) -> None:
    ca = cert(paths.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    for r in REGIONS:
        c = cert(paths.node_cert(r))
        c.verify_directly_issued_by(ca)
        subject = {a.oid: a.value for a in c.subject}
        assert subject[NameOID.COMMON_NAME] == f"sundesk-node-{r}"
        assert subject[NameOID.ORGANIZATIONAL_UNIT_NAME] == "node"
        assert subject[NameOID.ORGANIZATION_NAME] == "Sundesk"
        assert {"localhost", f"sundesk://node/{r}", str(ipaddress.ip_address("127.0.0.1"))} <= set(
            names(c)
        )
        assert usages(c) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert isinstance(c.public_key(), ec.EllipticCurvePublicKey)
        assert c.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert c.not_valid_after_utc == NOW + timedelta(days=825)
        assert c.not_valid_before_utc < NOW


def test_client_and_etcd_certificates(paths: CertPaths) -> None:
    ca = cert(paths.ca_cert)
    cli = cert(paths.cli_cert)
    cli.verify_directly_issued_by(ca)
    assert cli.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "client"
    assert usages(cli) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    server = cert(paths.etcd_server_cert)
    assert {"localhost", "127.0.0.1"} <= set(names(server))
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages(server)
    client = cert(paths.etcd_client_cert)
    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    assert client.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "etcd-client"


def test_signing_keys_are_ed25519_pairs(paths: CertPaths) -> None:
    public = load_signing_public_keys(paths.dir)
    assert set(public) == set(REGIONS)
    for r in REGIONS:
        key = load_signing_key(paths.signing_key(r))
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        public[r].verify(key.sign(b"x"), b"x")


def test_running_again_keeps_everything(paths: CertPaths) -> None:
    before = {p: p.read_bytes() for p in paths.dir.rglob("*") if p.is_file()}
    again = init_certs(paths.dir, REGIONS)
    assert again.created == ()
    assert {p: p.read_bytes() for p in paths.dir.rglob("*") if p.is_file()} == before


def test_a_new_region_is_signed_by_the_existing_ca(tmp_path: Path) -> None:
    first = init_certs(tmp_path, ["velizy"])
    ca_before = first.ca_cert.read_bytes()
    second = init_certs(tmp_path, ["velizy", "uk"], hosts=["desk.example.com", "10.0.0.7"])
    assert first.ca_cert.read_bytes() == ca_before
    assert {p.relative_to(tmp_path).as_posix() for p in second.created} == {
        "nodes/uk.crt",
        "nodes/uk.key",
        "signing/uk.key",
        "signing/uk.pub",
    }
    uk = cert(second.node_cert("uk"))
    uk.verify_directly_issued_by(cert(second.ca_cert))
    assert {"desk.example.com", "10.0.0.7"} <= set(names(uk))


def test_force_replaces_everything(tmp_path: Path) -> None:
    first = init_certs(tmp_path, ["velizy"])
    old = {p: p.read_bytes() for p in first.created}
    second = init_certs(tmp_path, ["velizy"], overwrite=True)
    assert set(second.created) == set(old)
    assert all(p.read_bytes() != data for p, data in old.items())


def test_a_lost_ca_key_is_not_silently_replaced(tmp_path: Path) -> None:
    init_certs(tmp_path, ["velizy"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.key is missing"):
        init_certs(tmp_path, ["velizy"])


def test_a_leaf_from_another_ca_is_reported(tmp_path: Path) -> None:
    init_certs(tmp_path / "a", ["velizy"])
    init_certs(tmp_path / "b", ["velizy"])
    (tmp_path / "a" / "nodes" / "velizy.crt").write_bytes(
        (tmp_path / "b" / "nodes" / "velizy.crt").read_bytes()
    )
    with pytest.raises(ConfigError, match="was not issued by"):
        init_certs(tmp_path / "a", ["velizy"])


@pytest.mark.parametrize("region", ["Velizy", "vel izy", "", "../etc", "x" * 70])
def test_region_names_must_fit_a_certificate(tmp_path: Path, region: str) -> None:
    with pytest.raises(ConfigError):
        init_certs(tmp_path, [region])


def test_missing_files_say_how_to_create_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sundesk certs init --dir"):
        load_node_credentials(tmp_path, "velizy")


def test_load_node_credentials(paths: CertPaths) -> None:
    ca, crt, key = load_node_credentials(paths.dir, "uk")
    assert ca.startswith(b"-----BEGIN CERTIFICATE")
    assert crt == paths.node_cert("uk").read_bytes()
    assert key.startswith(b"-----BEGIN PRIVATE KEY")


# ----- region_of_peer, on auth contexts shaped like grpc's ----------------------------------


def auth_context(path: Path) -> dict[str, list[bytes]]:
    c = cert(path)
    return {
        "transport_security_type": [b"ssl"],
        "x509_common_name": [
            str(a.value).encode() for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ],
        "x509_subject_alternative_name": [n.encode() for n in names(c)],
        "x509_pem_cert": [path.read_bytes()],
    }


def test_region_of_a_node_peer(paths: CertPaths) -> None:
    for r in REGIONS:
        assert region_of_peer(auth_context(paths.node_cert(r))) == r


def test_clients_etcd_and_plaintext_peers_have_no_region(paths: CertPaths) -> None:
    assert region_of_peer(auth_context(paths.cli_cert)) is None
    assert region_of_peer(auth_context(paths.etcd_client_cert)) is None
    assert region_of_peer({}) is None
    assert region_of_peer({"transport_security_type": [b"insecure"]}) is None


def test_names_that_disagree_are_not_a_region(paths: CertPaths) -> None:
    ctx = auth_context(paths.node_cert("uk"))
    ctx["x509_common_name"] = [b"sundesk-node-japan"]
    assert region_of_peer(ctx) is None
    ctx = auth_context(paths.node_cert("uk"))
    ctx["x509_pem_cert"] = [b"not a certificate"]
    assert region_of_peer(ctx) is None


# ----- the command line --------------------------------------------------------------------


def run_cli(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="sundesk")
    certs_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_cli_init_and_issue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.auth import verify_token

    assert run_cli(["certs", "init", "--dir", str(tmp_path), "--regions", "velizy,uk"]) == 0
    assert "created" in capsys.readouterr().out
    assert (tmp_path / "nodes" / "uk.crt").exists()
    assert run_cli(["certs", "init", "--dir", str(tmp_path), "--regions", "velizy,uk"]) == 0
    assert "already there" in capsys.readouterr().out
    assert (
        run_cli(
            [
                "tokens",
                "issue",
                "--dir",
                str(tmp_path),
                "--role",
                "agent",
                "--subject",
                "alice",
                "--ttl",
                "60",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    token = out.out.strip()
    claims = verify_token(load_token_secret(tmp_path), token, datetime.now(UTC))
    assert (claims.role, claims.subject) == ("agent", "alice")
    assert "agent:alice" in out.err
