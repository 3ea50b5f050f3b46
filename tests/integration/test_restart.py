"""The node restarts under load: every request gets exactly one reply."""

import threading

from harness import ERR_TIMEOUT, ERR_UNAVAILABLE, ERR_UPSTREAM_LOST

CLIENTS = 16
REQUESTS = 200
WINDOW = 4
# Only reads are sent: they are retried once, so the worst outcomes are these
# (never -32052, which is for writes).
ALLOWED_ERRORS = {ERR_UNAVAILABLE, ERR_TIMEOUT, ERR_UPSTREAM_LOST}


class LoadClient(threading.Thread):
    """Keeps WINDOW requests outstanding until REQUESTS were sent; records every reply."""

    def __init__(self, daemon, no, progress):
        super().__init__(daemon=True)
        self.c = daemon.client(timeout=30)
        self.no = no
        self.progress = progress
        self.expected = {}  # raw id -> echo payload (None for sleeps)
        self.replies = {}   # raw id -> [Reply, ...]
        self.error = None

    def send_next(self, i):
        if i % 2:
            self.expected[self.c.request("devnode_sleep", [20])] = None
        else:
            payload = f"c{self.no}-{i}"
            self.expected[self.c.request("devnode_echo", [payload])] = payload

    def run(self):
        try:
            sent = 0
            while sent < min(WINDOW, REQUESTS):
                self.send_next(sent)
                sent += 1
            for _ in range(REQUESTS):
                r = self.c.recv(30)
                self.replies.setdefault(r.id_raw, []).append(r)
                self.progress.release()
                if sent < REQUESTS:
                    self.send_next(sent)
                    sent += 1
            # Nothing more may come: a late duplicate would show up here.
            self.c.expect_silence(0.5)
        except Exception as e:
            self.error = e

    def problems(self):
        out = [f"client {self.no}: {self.error!r}"] if self.error else []
        for raw_id, payload in self.expected.items():
            got = self.replies.get(raw_id, [])
            if len(got) != 1:
                out.append(f"client {self.no}: id {raw_id!r} got {len(got)} replies: {got}")
            elif got[0].has_result:
                if payload is not None and got[0].result != payload:
                    out.append(f"client {self.no}: wrong result {got[0]!r}")
            elif got[0].code not in ALLOWED_ERRORS:
                out.append(f"client {self.no}: unexpected error {got[0]!r}")
        out += [f"client {self.no}: reply for unknown id {i!r}" for i in self.replies if i not in self.expected]
        return out


def wait_replies(progress: threading.Semaphore, n: int, timeout: float):
    for _ in range(n):
        assert progress.acquire(timeout=timeout), "the load stalled"


def test_node_restart_under_load(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2, request_timeout="15s", reconnect_min="50ms", reconnect_max="500ms")
    progress = threading.Semaphore(0)
    clients = [LoadClient(d, n, progress) for n in range(CLIENTS)]
    total = CLIENTS * REQUESTS
    for c in clients:
        c.start()

    wait_replies(progress, total // 5, 30)
    assert node.stop() == 0
    answered = sum(len(v) for c in clients for v in list(c.replies.values()))
    assert answered < total, "the load ended before the node stopped; raise REQUESTS"
    d.wait_status(lambda s: s["ready"] == 0, "the daemon to notice the node is gone", timeout=10)
    node.restart()

    for c in clients:
        c.join(90)
    assert not any(c.is_alive() for c in clients), "clients still running"
    problems = [p for c in clients for p in c.problems()]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])

    ok = sum(1 for c in clients for v in c.replies.values() if v[0].has_result)
    assert ok > answered, "nothing was served after the restart"
    status = d.wait_upstreams_ready()
    assert status["in_flight"] == 0 and status["queued"] == 0
    assert node.upstream_connections() == 2
