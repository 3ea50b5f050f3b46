"""A client that goes away with requests in flight must not disturb anyone."""

import pytest

import harness
from harness import request_line

IN_FLIGHT = 20


def send_singles(c):
    for _ in range(IN_FLIGHT):
        c.request("devnode_sleep", [500])


def send_batch(c):
    c.send_batch([request_line("devnode_sleep", [500], str(i).encode()) for i in range(IN_FLIGHT)])


@pytest.mark.parametrize("send", [send_singles, send_batch], ids=["singles", "batch"])
def test_client_leaving_with_requests_in_flight(devnode, daemon, send):
    node = devnode()
    d = daemon(node, pool_size=2)
    before = d.status()  # its own connection is one of before["clients"]
    other = harness.BackgroundTraffic(d)

    leaver = d.client()
    send(leaver)
    d.wait_status(lambda s: s["in_flight"] >= IN_FLIGHT, f"{IN_FLIGHT} sleeps in flight")
    leaver.close()

    # The orphaned requests finish at the node; their replies are dropped.
    after = d.wait_status(lambda s: s["in_flight"] == 0 and s["clients"] == before["clients"] + 1,
                          "in_flight 0 and only the other client left", timeout=10)
    answered = other.stop()
    assert d.proc.alive()
    assert after["queued"] == 0
    assert after["errors"] == before["errors"]
    final = d.wait_status(lambda s: s["clients"] == before["clients"], "the other client to be gone")
    # A closed Unix socket looks like a half-close (SHUT_WR) to the daemon, so it may still
    # write the orphans' replies (and then see EPIPE): they count, nothing else does.
    delivered = final["responses"] - before["responses"]
    assert answered <= delivered <= answered + IN_FLIGHT
    assert node.upstream_connections() == 2
    with d.client() as c:
        assert c.call_ok("devnode_echo", ["fine"]) == "fine"
