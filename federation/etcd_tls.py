"""An aetcd client that speaks TLS with a client certificate (etcd ``--client-cert-auth``).

aetcd 1.0 only ever opens ``grpc.aio.insecure_channel``. ``TlsEtcdClient`` overrides the
one place that opens the channel and builds the same stubs over a secure channel; every
other method of aetcd works unchanged on top of them.
"""

from __future__ import annotations

from typing import Any

import aetcd
import grpc
from aetcd import rpc, watcher

# etcd's own certificate names localhost and the loopback addresses; a multi-endpoint
# target ("ipv4:a,b") has no single host name to check, so name the certificate's.
ETCD_SERVER_NAME = "localhost"


class TlsEtcdClient(aetcd.Client):
    def __init__(self, credentials: grpc.ChannelCredentials, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._credentials = credentials

    async def connect(self) -> None:
        if self._connected.is_set():
            return
        options = [*self._options.items(), ("grpc.ssl_target_name_override", ETCD_SERVER_NAME)]
        self.channel = grpc.aio.secure_channel(
            f"{self._host}:{self._port}", self._credentials, options=options
        )
        self.kvstub = rpc.KVStub(self.channel)
        self.clusterstub = rpc.ClusterStub(self.channel)
        self.leasestub = rpc.LeaseStub(self.channel)
        self.maintenancestub = rpc.MaintenanceStub(self.channel)
        self._watcher = watcher.Watcher(
            rpc.WatchStub(self.channel), timeout=self._timeout, metadata=self.metadata
        )
        self._connected.set()


def etcd_client(
    host: str, port: int, credentials: grpc.ChannelCredentials | None, **kwargs: Any
) -> aetcd.Client:
    """A plaintext client without credentials, a TLS one with them."""
    if credentials is None:
        return aetcd.Client(host=host, port=port, **kwargs)
    return TlsEtcdClient(credentials, host=host, port=port, **kwargs)


__all__ = ["TlsEtcdClient", "etcd_client"]
