"""CreateTicket throughput with mTLS, tokens and signed operations against plaintext.

Two real node processes of the same region, each on its own data directory: one started
with ``--tls-dir`` (mTLS on the port, a token verified and authorised on every call,
the write charged to its caller's rate limit, every operation signed with Ed25519), one
with ``--insecure``. Rounds alternate between them in one run, so machine noise hits
both alike. The secure node's write limit is raised so that the limiter is paid for
but never refuses. Also prints what one signature and one verification cost here.

Run: ``.venv/bin/python -m bench.trust [--seconds 5 --rounds 3 --in-flight 64]``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import grpc

from bench.create_ticket import measure as measure_plaintext
from bench.load import Result, closed_loop, median
from federation.config import load_config
from federation.operations import TICKET_CREATE, Operation
from federation.signing import load_signer, load_verifier
from ops.certs import init_certs
from ops.credentials import ClientCredentials, from_certs_dir, mint_token
from ops.processes import ROOT, NodeProcess, free_ports
from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc


async def measure_secure(
    address: str, creds: ClientCredentials, in_flight: int, seconds: float
) -> Result:
    metadata = creds.metadata()
    async with grpc.aio.secure_channel(address, creds.tls()) as channel:
        stub = desk_pb2_grpc.DeskStub(channel)

        async def call(i: int) -> object:
            return await stub.CreateTicket(
                pb.CreateTicketRequest(title=f"bench ticket {i}", customer="bench", priority=3),
                metadata=metadata,
            )

        return await closed_loop(call, in_flight, seconds)


def crypto_costs(certs: Path, n: int = 2000) -> tuple[float, float]:
    """Microseconds per Ed25519 signature and per verification of a typical operation."""
    signer, verifier = load_signer(certs, "velizy"), load_verifier(certs)
    op = Operation(
        "velizy",
        1,
        1 << 40,
        "VEL-000001",
        TICKET_CREATE,
        {"title": "bench ticket", "customer": "bench", "priority": 3, "state": "new"},
    )
    started = time.perf_counter()
    for _ in range(n):
        signed = signer.sign(op)
    signing = (time.perf_counter() - started) / n * 1e6
    started = time.perf_counter()
    for _ in range(n):
        verifier.verify(signed)
    return signing, (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=64)
    args = parser.parse_args()
    secure_port, plain_port = free_ports(2)
    with tempfile.TemporaryDirectory(
        prefix="sundesk-bench-", dir=ROOT / "var" if (ROOT / "var").is_dir() else None
    ) as tmp:
        base = Path(tmp)
        certs = init_certs(base / "certs", ["velizy"]).dir
        nodes: dict[str, NodeProcess] = {}
        for name, port, tls in (("secure", secure_port, certs), ("plain", plain_port, None)):
            config = load_config(None).with_addresses({"velizy": f"127.0.0.1:{port}"})
            path = base / f"{name}.toml"
            path.write_text(config.to_toml())
            creds = from_certs_dir(certs, mint_token(certs, "ops", "bench")) if tls else None
            nodes[name] = NodeProcess(
                "velizy",
                f"127.0.0.1:{port}",
                base / name,
                path,
                base / f"{name}.log",
                extra_args=["--metrics-port", "0", "--write-rate", "1000000"],
                credentials=creds,
                tls_dir=tls,
            ).start()
        agent = from_certs_dir(certs, mint_token(certs, "agent", "bench"))
        rates: dict[str, list[float]] = {"secure": [], "plain": []}
        try:
            for r in range(args.rounds):
                for name in ("plain", "secure"):
                    address = nodes[name].address
                    if name == "secure":
                        run = measure_secure(address, agent, args.in_flight, args.seconds)
                    else:
                        run = measure_plaintext(address, args.in_flight, args.seconds)
                    result = asyncio.run(run)
                    rates[name].append(result.rate)
                    print(f"round {r + 1}: {name:6}  {result.summary()}")
        finally:
            for node in nodes.values():
                node.terminate()
        signing, verifying = crypto_costs(certs)
    plain, secure = median(rates["plain"]), median(rates["secure"])
    # Each secure round against the plaintext round just before it: drift in the
    # machine's load between rounds cancels out of the pair.
    paired = median([s / p for p, s in zip(rates["plain"], rates["secure"], strict=True)])
    print(
        f"median plaintext {plain:.0f}/s, mTLS+tokens+signing {secure:.0f}/s "
        f"({args.in_flight} in flight): overhead {(1 - secure / plain) * 100:.1f}%, "
        f"median of paired rounds {(1 - paired) * 100:.1f}% (target <= 15%)"
    )
    print(f"Ed25519 per operation: sign {signing:.0f} us, verify {verifying:.0f} us")


if __name__ == "__main__":
    main()
