"""One load scenario with subpoold under valgrind: concurrent clients, a batch,
bad input, a client leaving with requests in flight, an oversized reply and
every upstream lost and reconnected, then SIGTERM. The daemon must exit 0 with
no memory errors and no "definitely lost" bytes."""

import re
import threading

import pytest

import harness



def _pipelined_echoes(sock, client_no, count, problems):
    try:
        with harness.NdjsonClient(sock, 120) as c:
            ids = [c.request("devnode_echo", [f"c{client_no}-{i}"], raw_id=f'"aB{i}"'.encode())
                   for i in range(count)]
            for i, raw_id in enumerate(ids):
                r = c.recv_id(raw_id)
                if not r.has_result or r.result != f"c{client_no}-{i}":
                    problems.append(f"client {client_no}: {r!r}")
    except Exception as e:  # reported by the test, not lost in the thread
        problems.append(f"client {client_no}: {e!r}")


def test_load_under_valgrind_leaks_nothing(devnode, daemon, daemon_bin, tmp_path):
    if not harness.valgrind_usable(daemon_bin):
        pytest.skip("valgrind is missing or this is a sanitizer build (the normal build runs it)")
    vg_log = tmp_path / "valgrind.log"
    node = devnode()
    d = daemon(node, pool_size=2, log_level="info", ready_timeout=60,
               wrapper=("valgrind", "--leak-check=full", "--show-leak-kinds=definite",
                        "--errors-for-leak-kinds=definite", "--error-exitcode=99",
                        f"--log-file={vg_log}"),
               max_message="64K", reconnect_min="50ms", reconnect_max="200ms")

    problems = []
    threads = [threading.Thread(target=_pipelined_echoes, args=(d.socket, n, 50, problems))
               for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not problems, problems[:5]

    with d.client(120) as c:
        batch = [harness.request_line("devnode_echo", [i], str(i).encode()) for i in range(8)]
        c.send_batch(batch + [b'{"bad":1}', b'{"jsonrpc":"2.0","method":"n"}'])
        replies = c.recv()
        assert isinstance(replies, list) and len(replies) == 9, replies
        c.send_line(b"{not json")
        assert c.recv().error["code"] == -32700
        c.send_line(b"[]")
        assert c.recv().error["code"] == -32600
        r = c.call("devnode_blob", [100000])
        assert r.error["code"] == -32053, r

    leaver = d.client(120)
    for _ in range(5):
        leaver.request("devnode_sleep", [300])
    leaver.close()

    # Every upstream link dropped at once, reconnecting until the fault is lifted.
    node.fault("close", "all")
    d.wait_status(lambda s: sum(u["reconnects"] for u in s["upstreams"]) >= 2,
                  "both upstreams lost", 60)
    node.fault("none", "all")
    d.wait_upstreams_ready(60)
    with d.client(120) as c:
        assert c.call_ok("system_chain") == "Bittensor"
    d.wait_status(lambda s: s["in_flight"] == 0 and s["clients"] == 1, "the leaver's requests done",
                  60)

    rc = d.stop(timeout=120)
    report = vg_log.read_text()
    assert "Memcheck" in report and "HEAP SUMMARY" in report, f"not a valgrind report:\n{report}"
    assert rc == 0, f"subpoold under valgrind exited {rc}:\n{report[-3000:]}"
    assert re.search(r"ERROR SUMMARY: 0 errors", report), report[-3000:]
    lost = re.search(r"definitely lost: ([\d,]+) bytes", report)
    assert lost is None or lost.group(1) == "0", report[-3000:]
