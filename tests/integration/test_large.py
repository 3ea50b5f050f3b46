"""Large replies: passed through intact, or refused per request when over max_message."""

import string

from harness import ERR_LIMIT, check_reply_error, check_reply_ok

MiB = 1 << 20


def expected_blob(n: int) -> str:
    """What devnode_blob([n]) returns: n bytes cycling through 'a'..'z'."""
    alphabet = string.ascii_lowercase
    return (alphabet * (n // 26 + 1))[:n]


def test_8mib_reply_passes_intact(devnode, daemon):
    node = devnode()
    d = daemon(node)
    with d.client() as c:
        reply = c.call("devnode_blob", [8 * MiB], timeout=60)
        assert reply.has_result, reply
        assert len(reply.result) == 8 * MiB
        assert reply.result == expected_blob(8 * MiB)
        # The connection is fine afterwards.
        assert c.call_ok("devnode_echo", ["after"]) == "after"


def test_reply_over_max_message_fails_only_that_request(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2, max_message="1M")
    handshakes = node.stats()["handshakes"]
    reconnects = [u["reconnects"] for u in d.status()["upstreams"]]

    with d.client() as big, d.client() as other:
        # The other client's requests are in flight together with the oversized one.
        first_half = [other.request("devnode_echo", [f"o{i}"]) for i in range(200)]
        blob_id = big.request("devnode_blob", [2 * MiB])
        second_half = [other.request("devnode_echo", [f"o{i}"]) for i in range(200, 400)]

        reply = big.recv_id(blob_id, 30)
        check_reply_error(reply, ERR_LIMIT, blob_id)
        for i, raw_id in enumerate(first_half + second_half):
            check_reply_ok(other.recv_id(raw_id, 30), raw_id, f"o{i}")

        # Both connections and the upstreams keep working; one under the limit passes.
        assert big.call_ok("devnode_blob", [512 * 1024]) == expected_blob(512 * 1024)
        assert other.call_ok("devnode_echo", ["still"]) == "still"

    assert node.stats()["handshakes"] == handshakes, "an upstream reconnected"
    status = d.status()
    assert [u["reconnects"] for u in status["upstreams"]] == reconnects
    assert status["ready"] == 2
    assert node.upstream_connections() == 2
