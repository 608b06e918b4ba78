"""What a node needs to run secure, loaded once from its certs directory.

``load_node_trust(dir, region)`` reads the federation CA, the node's certificate and key,
its operation-signing key, every region's public signing key, the token secret and,
when present, the etcd client certificate. A node started without it must be started
with ``--insecure`` on purpose: nothing falls back to plaintext silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from federation.op_admission import SignedOnly
from federation.signing import Signer, Verifier, load_signer, load_verifier
from node.auth import AuthInterceptor
from node.errors import ConfigError
from node.limits import NodeLimits
from ops.certs import (
    CertPaths,
    channel_credentials,
    load_token_secret,
    server_credentials,
)
from ops.metrics import Metrics


@dataclass(frozen=True)
class EtcdTls:
    """The files a node presents to etcd (client-certificate auth)."""

    ca: Path
    cert: Path
    key: Path

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


@dataclass(frozen=True)
class NodeTrust:
    region: str
    dir: Path
    server: grpc.ServerCredentials
    peer: grpc.ChannelCredentials
    signer: Signer
    verifier: Verifier
    token_secret: bytes
    etcd: EtcdTls | None

    def interceptor(self, limits: NodeLimits, metrics: Metrics) -> AuthInterceptor:
        """Tokens and roles on every call, writes charged to their caller."""
        return AuthInterceptor(
            self.token_secret,
            limiter=limits.limiter(),
            on_rate_limited=metrics.writes_rate_limited_total.inc,
        )

    def admission(self, metrics: Metrics) -> SignedOnly:
        """The store's check of remote operations, counted per claimed origin."""
        return SignedOnly(
            self.verifier,
            on_rejected=lambda op, _exc: metrics.operations_rejected_total.labels(op.origin).inc(),
        )


def load_node_trust(dir: Path, region: str) -> NodeTrust:
    paths = CertPaths(Path(dir))
    if not paths.dir.is_dir():
        raise ConfigError(
            f"--tls-dir {dir} does not exist; create it with `sundesk certs init --dir {dir}` "
            "(or start the node with --insecure for a plaintext test node)"
        )
    verifier = load_verifier(paths.dir)
    if region not in verifier.regions:
        raise ConfigError(f"{paths.dir}/signing has no public key for this region {region}")
    etcd = None
    if paths.etcd_client_cert.exists():
        etcd = EtcdTls(paths.ca_cert, paths.etcd_client_cert, paths.etcd_client_key)
    return NodeTrust(
        region=region,
        dir=paths.dir,
        server=server_credentials(paths.dir, region),
        peer=channel_credentials(paths.dir, region),
        signer=load_signer(paths.dir, region),
        verifier=verifier,
        token_secret=load_token_secret(paths.dir),
        etcd=etcd,
    )


__all__ = ["EtcdTls", "NodeTrust", "load_node_trust"]
