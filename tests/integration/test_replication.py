"""Five real nodes replicate every change: convergence, conflicts, crashes, partitions."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import grpc
import pytest

from sundesk.v1 import desk_pb2 as pb
from sundesk.v1 import desk_pb2_grpc
from tests.support.nodes import Federation, kill_during_burst, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    f = Federation.make(tmp_path_factory.mktemp("five"), proxied=True)
    f.start()
    yield f
    f.stop()


@pytest.fixture(autouse=True)
def healthy_federation(fed: Federation) -> Iterator[None]:
    """Every test starts and ends with all nodes up and all links healed."""
    fed.heal_all()
    for n in fed.nodes.values():
        if not n.alive:
            n.start()
    yield
    fed.heal_all()


def stubs(fed: Federation) -> dict[str, tuple[grpc.aio.Channel, desk_pb2_grpc.DeskStub]]:
    out = {}
    for r, n in fed.nodes.items():
        ch = grpc.aio.insecure_channel(n.address)
        out[r] = (ch, desk_pb2_grpc.DeskStub(ch))
    return out


def ticket_everywhere(fed: Federation, code: str) -> dict[str, pb.Ticket]:
    result = {}
    for r, n in fed.nodes.items():
        with n.client() as c:
            result[r] = c.desk.GetTicket(pb.GetTicketRequest(code=code))
    return result


def test_concurrent_writes_on_all_five_converge(fed: Federation) -> None:
    async def burst() -> dict[str, tuple[int, int]]:
        conns = stubs(fed)
        try:

            async def create(region: str, i: int) -> pb.Ticket:
                return await conns[region][1].CreateTicket(
                    pb.CreateTicketRequest(title=f"{region} {i}", customer="converge")
                )

            created = await asyncio.gather(*(create(r, i) for r in conns for i in range(20)))
            rnd = random.Random(1)
            regions = list(conns)

            async def comment(t: pb.Ticket, k: int) -> pb.Ticket:
                # Comment from a region that is usually not the origin: it may not have the
                # ticket yet, so retry NOT_FOUND until replication brings it.
                stub = conns[rnd.choice(regions)][1]
                for _ in range(200):
                    try:
                        return await stub.AddComment(
                            pb.AddCommentRequest(code=t.code, author="x", text=f"c{k}")
                        )
                    except grpc.aio.AioRpcError as e:
                        if e.code() != grpc.StatusCode.NOT_FOUND:
                            raise
                        await asyncio.sleep(0.02)
                raise AssertionError(f"{t.code} never replicated")

            commented = await asyncio.gather(*(comment(t, k) for k, t in enumerate(created)))
            return {t.code: (1, len(t.comments)) for t in commented}
        finally:
            for ch, _ in conns.values():
                await ch.close()

    acked = asyncio.run(burst())
    digest = fed.wait_same_digest(timeout=30)
    assert digest
    with fed.node("japan").client() as c:
        for code in acked:
            t = c.desk.GetTicket(pb.GetTicketRequest(code=code))
            assert len(t.comments) >= 1 and t.customer == "converge"


def test_same_field_same_moment_has_one_winner_and_both_comments(fed: Federation) -> None:
    with fed.node("velizy").client() as c:
        code = c.desk.CreateTicket(pb.CreateTicketRequest(title="contended")).code
    wait_for("ticket on all nodes", lambda: _everywhere(fed, code))

    async def race() -> None:
        conns = stubs(fed)
        try:
            await asyncio.gather(
                conns["uk"][1].UpdateTicket(
                    pb.UpdateTicketRequest(code=code, actor="uk-agent", priority=1)
                ),
                conns["japan"][1].UpdateTicket(
                    pb.UpdateTicketRequest(code=code, actor="jp-agent", priority=4)
                ),
                conns["uk"][1].AddComment(
                    pb.AddCommentRequest(code=code, author="uk-agent", text="from the UK")
                ),
                conns["japan"][1].AddComment(
                    pb.AddCommentRequest(code=code, author="jp-agent", text="from Japan")
                ),
            )
        finally:
            for ch, _ in conns.values():
                await ch.close()

    asyncio.run(race())
    fed.wait_same_digest()
    tickets = ticket_everywhere(fed, code)
    assert len({t.priority for t in tickets.values()}) == 1
    assert next(iter(tickets.values())).priority in (1, 4)
    for t in tickets.values():
        assert sorted(c.text for c in t.comments) == ["from Japan", "from the UK"]


def _everywhere(fed: Federation, code: str) -> bool:
    try:
        ticket_everywhere(fed, code)
        return True
    except grpc.RpcError:
        return False


def test_sigkill_mid_burst_loses_no_acknowledged_write(fed: Federation) -> None:
    victim = fed.node("germany")
    acked = kill_during_burst(victim, total=300, kill_after=40, customer="crash")
    victim.start()
    fed.wait_same_digest(timeout=30)
    for r, n in fed.nodes.items():
        with n.client() as c:
            codes = {
                t.code
                for t in c.desk.ListTickets(
                    pb.ListTicketsRequest(customer="crash", page_size=500)
                ).tickets
            }
        missing = set(acked) - codes
        assert not missing, f"{r} lacks acknowledged {sorted(missing)[:5]}"


def test_partitioned_region_converges_after_heal(fed: Federation) -> None:
    fed.isolate("us")
    wait_for("the US to see its links down", lambda: _links_down(fed, "us"), timeout=20)
    written: list[str] = []
    for region in ("us", "velizy", "japan"):
        with fed.node(region).client() as c:
            for i in range(5):
                written.append(
                    c.desk.CreateTicket(
                        pb.CreateTicketRequest(title=f"split {region} {i}", customer="split")
                    ).code
                )
    us_codes = [c for c in written if c.startswith("USA-")]
    with fed.node("velizy").client() as c:
        for code in us_codes:
            with pytest.raises(grpc.RpcError) as info:
                c.desk.GetTicket(pb.GetTicketRequest(code=code))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    healed_at = time.monotonic()
    fed.heal_all()
    fed.wait_same_digest(timeout=30)
    seconds = time.monotonic() - healed_at
    print(f"\nconverged {seconds:.2f} s after healing the partition")
    for code in written:
        assert _everywhere(fed, code)


def _links_down(fed: Federation, region: str) -> bool:
    st = fed.node(region).status()
    return st is not None and not any(p.connected for p in st.peers.values())


def test_changes_reach_japan_through_others_when_the_direct_link_is_cut(
    fed: Federation,
) -> None:
    fed.cut("velizy", "japan")
    wait_for(
        "Japan to see Vélizy unreachable", lambda: _peer_down(fed, "japan", "velizy"), timeout=20
    )
    with fed.node("velizy").client() as c:
        code = c.desk.CreateTicket(pb.CreateTicketRequest(title="via relays")).code
    with fed.node("japan").client() as c:
        t = wait_for("Japan to get Vélizy's ticket", lambda: _get(c, code), timeout=20)
    assert t.title == "via relays" and t.origin_region == "velizy"
    assert _peer_down(fed, "japan", "velizy")


def _peer_down(fed: Federation, region: str, peer: str) -> bool:
    st = fed.node(region).status()
    return st is not None and not st.peers[peer].connected


def _get(c, code: str) -> pb.Ticket | None:  # type: ignore[no-untyped-def]
    try:
        t: pb.Ticket = c.desk.GetTicket(pb.GetTicketRequest(code=code), timeout=2)
        return t
    except grpc.RpcError:
        return None


def test_show_tells_where_the_latest_change_arrived(fed: Federation) -> None:
    with fed.node("uk").client() as c:
        code = c.desk.CreateTicket(pb.CreateTicketRequest(title="where is it")).code

    def everywhere() -> bool:
        with fed.node("uk").client() as c:
            t = c.desk.GetTicket(pb.GetTicketRequest(code=code))
        return sorted(t.replication.applied_in) == sorted(fed.nodes)

    wait_for("UK to see its change applied in every region", everywhere, timeout=20)
