"""The fault matrix: a node misbehaving in each way a real one does, while many clients
pipeline requests with colliding ids. For every fault, every request gets exactly one
answer (a result, or one of subpool's documented errors), counted id by id; none is
duplicated and none reaches another client (payloads name their client)."""

import asyncio
import threading

import pytest

from harness import (ERR_LIMIT, ERR_TIMEOUT, ERR_UNAVAILABLE, ERR_UPSTREAM_LOST, Reply, poll,
                     request_line)

CLIENTS = 12
WAVES = 3
PER_WAVE = 25
WAVE_GAP = 0.25
# Errors a read may legitimately end with while its upstream misbehaves.
ALLOWED = {ERR_UNAVAILABLE, ERR_TIMEOUT, ERR_UPSTREAM_LOST}

DAEMON_OPTS = {"reconnect_min": "50ms", "reconnect_max": "300ms", "ping_interval": "300ms",
               "pong_timeout": "300ms", "request_timeout": "15s"}


def plan(tag: str, big: int = 0):
    """(raw id, payload) per request; ids collide across clients (numbers and strings)."""
    pad = "x" * big
    out = []
    for k in range(WAVES * PER_WAVE):
        raw = str(k + 1).encode() if k % 2 == 0 else f'"id{k}"'.encode()
        out.append((raw, f"{tag}:{k}:{pad}"))
    return out


async def run_client(path: str, tag: str, slow: bool = False, big: int = 0):
    reader, writer = await asyncio.open_unix_connection(path, limit=1 << 24)
    requests = plan(tag, big)
    answers = {raw: [] for raw, _ in requests}
    stray = []

    async def send():
        for wave in range(WAVES):
            batch = requests[wave * PER_WAVE:(wave + 1) * PER_WAVE]
            writer.write(b"".join(request_line("devnode_echo", [p], raw) + b"\n" for raw, p in batch))
            await writer.drain()
            await asyncio.sleep(WAVE_GAP)

    async def receive():
        while sum(map(len, answers.values())) < len(requests):
            line = await reader.readline()
            if not line:
                break
            if slow:
                await asyncio.sleep(0.005)
            reply = Reply(line.rstrip(b"\n"))
            if reply.id_raw in answers:
                answers[reply.id_raw].append(reply)
            else:
                stray.append(reply)

    await asyncio.wait_for(asyncio.gather(send(), receive()), timeout=60)
    writer.close()
    await writer.wait_closed()
    return tag, requests, answers, stray


def check(results, allowed_errors):
    problems, errors, ok = [], 0, 0
    for tag, requests, answers, stray in results:
        problems += [f"{tag}: reply for an id it never sent: {r!r}" for r in stray]
        for raw, payload in requests:
            got = answers[raw]
            if len(got) != 1:
                problems.append(f"{tag}: {len(got)} answers for id {raw!r}: {got[:2]!r}")
                continue
            reply = got[0]
            if reply.has_result:
                ok += 1
                if reply.result != payload:
                    problems.append(f"{tag}: id {raw!r} answered with someone else's payload "
                                    f"{str(reply.result)[:60]!r}")
            elif reply.code in allowed_errors:
                errors += 1
            else:
                problems.append(f"{tag}: id {raw!r}: unexpected error {reply!r}")
    return problems, ok, errors


class Load:
    """CLIENTS clients (plus an optional slow reader) running in a thread."""

    def __init__(self, d, slow_reader=False):
        self.results = None
        self.error = None

        async def all_clients():
            jobs = [run_client(d.socket, f"c{n}") for n in range(CLIENTS)]
            if slow_reader:
                jobs.append(run_client(d.socket, "slow", slow=True, big=32768))
            return await asyncio.gather(*jobs)

        def run():
            try:
                self.results = asyncio.run(all_clients())
            except BaseException as e:  # reported by finish()
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self, allowed_errors=ALLOWED):
        self.thread.join(90)
        assert not self.thread.is_alive(), "clients still waiting for answers"
        assert self.error is None, f"a client failed: {self.error!r}"
        problems, ok, errors = check(self.results, allowed_errors)
        assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
        return ok, errors


def in_flight(d, n=1):
    d.wait_status(lambda s: s["in_flight"] >= n, f"{n} requests in flight")


def fault_killed(node, d):
    in_flight(d, 5)
    node.fault("close")  # every link dropped mid-request, without a close frame
    node.fault("none")


def fault_stalled(node, d):
    in_flight(d, 5)
    node.fault("stall")  # open links go silent: no replies, no pongs
    node.fault("none")  # new links are fine


def fault_garbage(node, d):
    in_flight(d, 5)
    node.fault("garbage")  # a text frame that is not JSON on every link


def fault_garbage_binary(node, d):
    in_flight(d, 5)
    node.fault("garbage_binary")  # an invalid frame: every link must be replaced
    node.fault("none")


def fault_handshake_close(node, d):
    in_flight(d, 5)
    node.fault("close")
    node.fault("hangup")  # reconnects get their upgrade read and the connection closed
    poll(lambda: node.stats()["hangups"], lambda n: n >= 2, 10, "hung-up handshakes")
    node.fault("none")


def fault_429(node, d):
    in_flight(d, 5)
    node.fault("close")
    node.fault("refuse429")  # with Retry-After: 1
    poll(lambda: node.stats()["refused"], lambda n: n >= 1, 10, "a refused handshake")
    node.fault("none")


def fault_oversize(node, d):
    in_flight(d, 5)
    node.fault("oversize")  # the next reply on each link is 2 MiB, over max_message


def fault_none(node, d):
    """The slow reader case: nothing breaks on the node side."""
    in_flight(d, 5)


MATRIX = {
    # name: (fault, node options, daemon options, extra allowed errors, slow reader)
    "killed_mid_request": (fault_killed, {}, {}, set(), False),
    "stalled_no_pong": (fault_stalled, {}, {}, set(), False),
    "garbage_text_frame": (fault_garbage, {}, {}, set(), False),
    "garbage_binary_frame": (fault_garbage_binary, {}, {}, set(), False),
    "close_during_handshake": (fault_handshake_close, {}, {}, set(), False),
    "refused_429_retry_after": (fault_429, {}, {}, set(), False),
    "oversized_message": (fault_oversize, {"max_message": 1 << 20}, {"max_message": "1M"},
                          {ERR_LIMIT}, False),
    "slow_reader": (fault_none, {}, {}, set(), True),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_every_request_answered_exactly_once(devnode, daemon, case):
    inject, node_opts, daemon_opts, extra_allowed, slow = MATRIX[case]
    node = devnode(latency_ms=100, **node_opts)
    d = daemon(node, pool_size=2, **{**DAEMON_OPTS, **daemon_opts})
    load = Load(d, slow_reader=slow)
    inject(node, d)
    ok, errors = load.finish(ALLOWED | extra_allowed)
    total = CLIENTS * WAVES * PER_WAVE + (WAVES * PER_WAVE if slow else 0)
    assert ok + errors == total
    assert ok > 0, "nothing succeeded"
    if case in ("garbage_text_frame", "slow_reader"):
        assert errors == 0, f"{errors} errors although no link was lost"
    if case == "oversized_message":
        assert 1 <= errors <= 2, f"{errors} errors: only the oversized replies may fail"
    # The pool recovers, and nothing is left behind.
    d.wait_upstreams_ready()
    status = d.wait_status(lambda s: s["in_flight"] == 0 and s["queued"] == 0, "an idle pool")
    assert status["clients"] <= 1
    lost = sum(u["reconnects"] for u in status["upstreams"])
    if case in ("garbage_text_frame", "oversized_message", "slow_reader"):
        assert lost == 0, "the link should have been kept"
    else:
        assert lost >= 1, "the fault never reached the links"
    print(f"{case}: {ok} results, {errors} errors, {lost} links replaced")
