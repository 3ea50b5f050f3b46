"""Many concurrent clients with colliding ids of every JSON type."""

import asyncio
import time

import harness
from harness import Reply, request_line

CLIENTS = 500
REQUESTS = 100
POOL_SIZE = 3

# Ids exactly as written on the wire; every client uses all of them, so they collide
# across clients (and within one). The daemon must hand back the very same bytes.
IDS = [
    rb'"aB123"', rb'"aB124"', rb'"zY987"',
    rb"0", rb"1", rb"7", rb"42", rb"-1",
    rb"9223372036854775808",
    rb"18446744073709551616",
    rb"1e400",
    rb"-0",
    rb"1.5e-7",
    rb"null",
    rb'"\u00e9"',
    rb'"\\\"x"',
    '"é"'.encode(),
    rb'""',
]


def plan(client_no: int):
    """(payload, raw id) of each request of one client; payloads are unique overall."""
    return [(f"c{client_no}-r{i}", IDS[(client_no + i) % len(IDS)]) for i in range(REQUESTS)]


async def run_client(path: str, client_no: int):
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 20)
    lines = [request_line("devnode_echo", [payload], raw_id) for payload, raw_id in plan(client_no)]
    # Pipelined: everything goes out before the first reply is read.
    writer.write(b"\n".join(lines) + b"\n")
    await writer.drain()
    replies = [await reader.readline() for _ in range(REQUESTS)]
    writer.close()
    await writer.wait_closed()
    return replies


async def run_all(path: str):
    return await asyncio.wait_for(
        asyncio.gather(*(run_client(path, n) for n in range(CLIENTS))), timeout=90)


def check_client(client_no: int, lines) -> list:
    """Problems with one client's replies: each must answer one of its own requests once,
    with the id bytes it sent."""
    expected = dict(plan(client_no))
    problems = []
    for line in lines:
        if not line.endswith(b"\n"):
            problems.append(f"client {client_no}: truncated reply {line[:200]!r}")
            continue
        reply = Reply(line[:-1])
        payload = reply.result
        if not reply.has_result:
            problems.append(f"client {client_no}: error reply {reply!r}")
        elif payload not in expected:
            problems.append(f"client {client_no}: got a reply that is not its own or a duplicate: {reply!r}")
        elif reply.id_raw != expected.pop(payload):
            problems.append(f"client {client_no}: {payload} came back with id {reply.id_raw!r}")
    problems += [f"client {client_no}: no reply for {p}" for p in expected]
    return problems


def test_500_clients_with_colliding_ids(devnode, daemon):
    harness.raise_fd_limit(4 * CLIENTS)
    node = devnode()
    # All 50000 are sent at once; the pool carries 3 x max_in_flight, the rest wait in the
    # queue (default queue_max 100000) instead of being refused.
    d = daemon(node, pool_size=POOL_SIZE)
    before = d.status()

    started = time.monotonic()
    results = asyncio.run(run_all(d.socket))
    elapsed = time.monotonic() - started

    problems = [p for n, lines in enumerate(results) for p in check_client(n, lines)]
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:20])
    assert elapsed < 60, f"{CLIENTS * REQUESTS} requests took {elapsed:.1f}s"

    # The node saw only the pool, whatever the number of clients.
    assert node.upstream_connections() == POOL_SIZE
    after = d.wait_status(lambda s: s["clients"] == 1, "the 500 clients to be gone")
    total = CLIENTS * REQUESTS
    assert after["in_flight"] == 0 and after["queued"] == 0, after
    assert after["responses"] - before["responses"] == total
    assert after["errors"] == before["errors"]
    sent = sum(u["requests"] for u in after["upstreams"]) - sum(u["requests"] for u in before["upstreams"])
    assert sent == total, "every request went upstream exactly once"
    assert all(u["state"] == "ready" for u in after["upstreams"]), after["upstreams"]
    assert [u["reconnects"] for u in after["upstreams"]] == [u["reconnects"] for u in before["upstreams"]]
