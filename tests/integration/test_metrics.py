"""GET /metrics: the text is checked by a strict Prometheus text-format (0.0.4) parser
written here, and its counters and gauges are checked to move with real traffic."""

import json
import math
import re

import pytest

import harness
from localwire import OP_CLOSE, TRANSPORTS, Conn, metrics_text, rpc, run_async, tcp_daemon, ws_connect

# --------------------------------------------------------------------------
# A strict parser of the Prometheus text exposition format, version 0.0.4.

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", "")}


class Family:
    def __init__(self, name):
        self.name = name
        self.type = None
        self.help = None
        self.samples = []  # (sample name, labels dict, value)


def parse_value(text, where):
    if text in ("+Inf", "-Inf", "NaN"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text), f"{where}: bad value {text!r}"
    return float(text)


def parse_labels(text, pos, where):
    """Labels from text[pos] == '{'; returns (dict, position after '}')."""
    labels = {}
    assert text[pos] == "{"
    pos += 1
    while True:
        if text[pos] == "}":
            return labels, pos + 1
        m = re.compile(LABEL).match(text, pos)
        assert m, f"{where}: bad label name at {text[pos:]!r}"
        name = m.group(0)
        assert not name.startswith("__"), f"{where}: reserved label name {name}"
        pos = m.end()
        assert text[pos:pos + 2] == '="', f"{where}: expected =\" after {name}"
        pos += 2
        value = []
        while True:
            assert pos < len(text), f"{where}: unterminated label value"
            c = text[pos]
            if c == "\\":
                esc = text[pos + 1:pos + 2]
                assert esc in ("\\", '"', "n"), f"{where}: bad escape \\{esc} in label {name}"
                value.append("\n" if esc == "n" else esc)
                pos += 2
            elif c == '"':
                pos += 1
                break
            else:
                assert c != "\n", f"{where}: raw newline in a label value"
                value.append(c)
                pos += 1
        assert name not in labels, f"{where}: label {name} twice"
        labels[name] = "".join(value)
        if text[pos] == ",":
            pos += 1
            continue
        assert text[pos] == "}", f"{where}: expected , or }} at {text[pos:]!r}"


def parse_exposition(text: str) -> dict:
    """Family name -> Family. Fails on anything the format does not allow, and on samples
    whose family has no TYPE, families split apart, duplicate series, and bad histograms."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    families = {}
    finished = set()  # families whose block is over: they may not come back
    current = None

    def family_of(sample_name):
        for fam in families.values():
            if fam.type is None:
                continue
            for suffix in SUFFIXES.get(fam.type, ("",)):
                if sample_name == fam.name + suffix:
                    return fam
        return None

    def enter(name):
        nonlocal current
        if current is not None and current.name != name:
            finished.add(current.name)
        assert name not in finished, f"family {name} is split into separate blocks"
        current = families.setdefault(name, Family(name))
        return current

    for no, line in enumerate(text[:-1].split("\n"), 1):
        where = f"line {no} {line[:120]!r}"
        assert line.strip(), f"{where}: empty line"
        assert line == line.strip(), f"{where}: leading or trailing whitespace"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                assert re.fullmatch(NAME, parts[2]), f"{where}: bad metric name"
                fam = enter(parts[2])
                if parts[1] == "HELP":
                    assert fam.help is None, f"{where}: second HELP"
                    fam.help = parts[3] if len(parts) > 3 else ""
                    assert re.fullmatch(r"([^\\]|\\\\|\\n)*", fam.help), f"{where}: bad escape in HELP"
                else:
                    assert fam.type is None, f"{where}: second TYPE"
                    assert not fam.samples, f"{where}: TYPE after samples"
                    assert len(parts) == 4 and parts[3] in TYPES, f"{where}: bad type"
                    fam.type = parts[3]
            continue
        m = re.compile(NAME).match(line)
        assert m, f"{where}: bad sample name"
        name, pos = m.group(0), m.end()
        labels = {}
        if pos < len(line) and line[pos] == "{":
            labels, pos = parse_labels(line, pos, where)
        assert line[pos:pos + 1] == " ", f"{where}: expected a space before the value"
        fields = line[pos + 1:].split(" ")
        assert 1 <= len(fields) <= 2, f"{where}: expected value [timestamp]"
        value = parse_value(fields[0], where)
        if len(fields) == 2:
            assert re.fullmatch(r"-?\d+", fields[1]), f"{where}: bad timestamp"
        fam = family_of(name)
        assert fam is not None, f"{where}: sample {name} has no TYPE for its family"
        enter(fam.name)
        key = (name, tuple(sorted(labels.items())))
        assert key not in {(s[0], tuple(sorted(s[1].items()))) for s in fam.samples}, \
            f"{where}: duplicate series"
        if fam.type == "counter" or name.endswith(("_count", "_bucket")) and fam.type == "histogram":
            assert value >= 0 and not math.isnan(value), f"{where}: negative or NaN counter"
        fam.samples.append((name, labels, value))

    for fam in families.values():
        assert fam.type is not None, f"family {fam.name} has HELP but no TYPE"
        if fam.type == "histogram":
            check_histogram(fam)
    return families


def check_histogram(fam: Family):
    series = {}
    for name, labels, value in fam.samples:
        base = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        entry = series.setdefault(base, {"buckets": [], "sum": None, "count": None})
        if name == fam.name + "_bucket":
            assert "le" in labels, f"{fam.name}: bucket without le"
            entry["buckets"].append((parse_value(labels["le"], fam.name), value))
        elif name == fam.name + "_sum":
            entry["sum"] = value
        else:
            entry["count"] = value
    assert series, f"histogram {fam.name} has no samples"
    for base, e in series.items():
        les = [le for le, _ in e["buckets"]]
        counts = [c for _, c in e["buckets"]]
        assert les == sorted(les) and len(set(les)) == len(les), f"{fam.name}{base}: le not ascending"
        assert les and les[-1] == math.inf, f"{fam.name}{base}: buckets do not end in +Inf"
        assert all(a <= b for a, b in zip(counts, counts[1:])), \
            f"{fam.name}{base}: buckets not cumulative: {counts}"
        assert e["count"] is not None and e["sum"] is not None, f"{fam.name}{base}: no _count or _sum"
        assert counts[-1] == e["count"], f"{fam.name}{base}: +Inf bucket {counts[-1]} != _count {e['count']}"


def test_parser_rejects_what_it_should():
    """The checker itself: each broken exposition is refused."""
    good = "# HELP a_total A.\n# TYPE a_total counter\na_total{m=\"x\\\"y\\\\z\\n\"} 3\n"
    assert parse_exposition(good)["a_total"].samples == [("a_total", {"m": 'x"y\\z\n'}, 3.0)]
    hist = ("# TYPE h histogram\nh_bucket{le=\"0.1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.3\n"
            "h_count 2\n")
    parse_exposition(hist)
    bad = [
        "a 1\n",                                                     # no TYPE
        "# TYPE a counter\na 1",                                     # no final newline
        "# TYPE a counter\na{m=\"\\x\"} 1\n",                          # bad escape
        "# TYPE a counter\na{m=\"x\"\"} 1\n",                          # stray quote
        "# TYPE a counter\na one\n",                                 # bad value
        "# TYPE a counter\na -1\n",                                  # negative counter
        "# TYPE a counter\na 1\n# TYPE b gauge\nb 1\na 2\n",          # split family
        "# TYPE a counter\na{m=\"1\"} 1\na{m=\"1\"} 2\n",              # duplicate
        "# TYPE a wat\na 1\n",                                       # bad type
        hist.replace("h_count 2", "h_count 3"),                      # +Inf != count
        hist.replace('le="0.1"} 1', 'le="0.1"} 5'),                  # not cumulative
        hist.replace('h_bucket{le="+Inf"} 2\n', ""),                 # no +Inf
    ]
    for text in bad:
        with pytest.raises(AssertionError):
            parse_exposition(text)


# --------------------------------------------------------------------------
# Reading values


class Metrics:
    def __init__(self, text):
        self.text = text
        self.families = parse_exposition(text)

    def value(self, name, default=None, **labels):
        for fam in self.families.values():
            for sname, slabels, value in fam.samples:
                if sname == name and slabels == labels:
                    return value
        if default is not None:
            return default
        raise AssertionError(f"no sample {name}{labels} in\n{self.text}")

    def labelled(self, name, label):
        return {s[1][label]: s[2] for f in self.families.values() for s in f.samples
                if s[0] == name and label in s[1]}

    def method(self, name, method):
        return self.value(name, 0.0, method=method)


def scrape(d, transport="unix") -> Metrics:
    return Metrics(metrics_text(d, transport))


@pytest.fixture(params=TRANSPORTS)
def transport(request):
    return request.param


def test_metrics_parse_and_describe_the_daemon(devnode, daemon, transport):
    node = devnode()
    d = tcp_daemon(daemon, node, pool_size=3)
    with Conn(d, transport) as c:
        r = c.http("GET", "/metrics")
        assert r.status == 200, r
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4"), r.headers
        m = Metrics(r.body.decode("utf-8"))
    for family, kind in [("subpool_requests_total", "counter"),
                         ("subpool_request_errors_total", "counter"),
                         ("subpool_request_duration_seconds", "histogram"),
                         ("subpool_upstream_up", "gauge"),
                         ("subpool_upstream_reconnects_total", "counter"),
                         ("subpool_upstream_in_flight", "gauge"),
                         ("subpool_clients", "gauge"),
                         ("subpool_subscriptions", "gauge"),
                         ("subpool_queue_depth", "gauge"),
                         ("subpool_client_received_bytes_total", "counter"),
                         ("subpool_client_sent_bytes_total", "counter"),
                         ("subpool_coalesced_total", "counter"),
                         ("subpool_queue_evicted_total", "counter"),
                         ("subpool_cache_hits_total", "counter"),
                         ("subpool_cache_misses_total", "counter"),
                         ("subpool_cache_stores_total", "counter"),
                         ("subpool_cache_evictions_total", "counter"),
                         ("subpool_cache_bytes", "gauge"),
                         ("subpool_cache_entries", "gauge")]:
        assert m.families.get(family) and m.families[family].type == kind, family
        assert m.families[family].help, f"{family} has no HELP"
    up = m.labelled("subpool_upstream_up", "upstream")
    assert up == {"0": 1, "1": 1, "2": 1}
    for _, labels, _ in m.families["subpool_upstream_up"].samples:
        assert labels["endpoint"] == node.url, labels
    assert set(m.labelled("subpool_clients", "protocol")) >= {"ndjson", "websocket", "http"}
    assert m.value("subpool_clients", protocol="http") == 1  # this scrape


def test_requests_errors_and_latency_move_with_traffic(devnode, daemon):
    node = devnode()
    d = tcp_daemon(daemon, node)
    m0 = scrape(d)
    # system_chain: 2 over NDJSON, 3 over HTTP (unix and tcp), 1 over a websocket.
    with d.client() as c:
        c.call_ok("system_chain")
        c.call_ok("system_chain")
        assert c.call("foo_noSuchMethod").code == harness.METHOD_NOT_FOUND   # the node's error
        assert c.call("subpool_noSuchMethod").code == harness.METHOD_NOT_FOUND  # subpool's
        c.send_line(b'{"jsonrpc":"2.0","id":1,"method":7}')
        assert c.recv().code == harness.INVALID_REQUEST
    for transport in ("unix", "unix", "tcp"):
        with Conn(d, transport) as h:
            assert h.http("POST", "/", rpc("system_chain")).json()["result"]

    async def ws():
        async with ws_connect(d, "tcp") as w:
            await w.send(rpc("system_chain").decode())
            await w.recv()
            # A 300 ms request lands above the 0.25 s bucket and within the 1 s one.
            await w.send(rpc("devnode_sleep", [300], 2).decode())
            await w.recv()

    run_async(ws())
    m1 = scrape(d)

    def delta(name, method):
        return m1.method(name, method) - m0.method(name, method)

    assert delta("subpool_requests_total", "system_chain") == 6
    # Names that are not known methods (the devnode's own, made-up ones) share one label:
    # devnode_sleep, foo_noSuchMethod and subpool_noSuchMethod, the last two errors.
    assert delta("subpool_requests_total", "(other)") == 3
    assert delta("subpool_request_errors_total", "system_chain") == 0
    assert delta("subpool_request_errors_total", "(other)") == 2
    assert delta("subpool_requests_total", "(invalid)") == 1
    assert delta("subpool_request_errors_total", "(invalid)") == 1
    # Routed requests only: 6 + 1 sleep + 1 unknown method.
    hist = "subpool_request_duration_seconds"
    assert m1.value(hist + "_count") - m0.value(hist + "_count") == 8
    assert m1.value(hist + "_sum") - m0.value(hist + "_sum") >= 0.3
    bucket = lambda m, le: m.value(hist + "_bucket", le=le)  # noqa: E731
    slow_then = bucket(m1, "1") - bucket(m1, "0.25") - (bucket(m0, "1") - bucket(m0, "0.25"))
    assert slow_then == 1, "the 300 ms request is not counted between the 0.25 s and 1 s buckets"


def test_subpool_errors_are_counted_by_method(devnode, daemon):
    """An unknown subpool_* method is answered -32601 by subpool itself: /metrics says its
    errors are "Error replies by method, from the node or from subpool", so it counts."""
    node = devnode()
    d = daemon(node)
    m0 = scrape(d)
    with d.client() as c:
        assert c.call("subpool_noSuchMethod").code == harness.METHOD_NOT_FOUND
    m1 = scrape(d)
    assert m1.method("subpool_requests_total", "(other)") == 1
    assert m1.method("subpool_request_errors_total", "(other)") - \
        m0.method("subpool_request_errors_total", "(other)") == 1, \
        "subpool's own -32601 for subpool_noSuchMethod is not counted in subpool_request_errors_total"


def test_method_labels_are_fixed(devnode, daemon):
    """Item 2 of the bounds issue: method names are labels only when they are known methods;
    every other name, however long or many, is counted as "(other)" and never kept. Before,
    each of 256 names of up to max_request bytes was kept for ever and rendered byte by byte."""
    node = devnode()
    d = daemon(node, max_request="2M")
    with d.client() as c:
        # A method name with a quote, a backslash, an escaped newline and non-ASCII text.
        c.send_line(b'{"jsonrpc":"2.0","id":1,"method":"we\\"ird\\\\na\\nme_\xc3\xa9"}')
        # subpoold refuses escaped method names (they could dodge the write rules).
        assert c.recv().code == harness.INVALID_REQUEST
        c.send_batch([rpc(f"x_m{i}", None, i) for i in range(300)])
        replies = c.recv(30)
        assert isinstance(replies, list) and len(replies) == 300, replies
        for i in range(4):
            c.send_line(rpc("y" * (1 << 20) + str(i), None, i))
            assert c.recv().code == harness.METHOD_NOT_FOUND
        assert c.call_ok("system_chain") == "Bittensor"
    text = metrics_text(d)
    assert len(text) < 64 * 1024, f"a scrape of {len(text)} bytes"
    m = Metrics(text)
    methods = m.labelled("subpool_requests_total", "method")
    assert set(methods) == {"(other)", "system_chain", "subpool_status"}, methods
    assert methods["(other)"] == 1 + 300 + 4, methods


def test_bytes_counters_are_exact(devnode, daemon):
    """Bytes in and out of local clients, counted exactly over NDJSON, HTTP and WebSocket."""
    node = devnode()
    d = tcp_daemon(daemon, node)
    with Conn(d, "unix") as scraper:
        r0 = scraper.http("GET", "/metrics")
        m0 = Metrics(r0.body.decode())
        sent0, recv0 = scraper.sent, scraper.received
        conns = []
        for transport in ("unix", "tcp"):
            nd = Conn(d, transport)
            nd.send(rpc("devnode_echo", ["n" * 1000]) + b"\n")
            assert json.loads(nd.read_until(b"\n"))["result"] == "n" * 1000
            h = Conn(d, transport)
            assert h.http("POST", "/", rpc("devnode_echo", ["h" * 2000])).json()["result"] == "h" * 2000
            w = Conn(d, transport)
            assert w.ws_upgrade().status == 101
            w.ws_text(rpc("devnode_echo", ["w" * 70000]))
            assert w.ws_json()["result"] == "w" * 70000
            conns += [nd, h, w]
        scraper.http_send("GET", "/metrics")
        request_bytes = scraper.sent - sent0
        r1 = scraper.http_response()
        m1 = Metrics(r1.body.decode())
        traffic_in = sum(c.sent for c in conns) + request_bytes
        # Out: what the clients received, plus the first scrape's response.
        traffic_out = sum(c.received for c in conns) + recv0
        got_in = m1.value("subpool_client_received_bytes_total") - m0.value("subpool_client_received_bytes_total")
        got_out = m1.value("subpool_client_sent_bytes_total") - m0.value("subpool_client_sent_bytes_total")
        assert got_in == traffic_in, f"received bytes moved {got_in}, clients sent {traffic_in}"
        assert got_out == traffic_out, f"sent bytes moved {got_out}, clients received {traffic_out}"
        for c in conns:
            c.close()


def test_clients_by_protocol(devnode, daemon):
    node = devnode()
    d = tcp_daemon(daemon, node)
    m0 = scrape(d)
    assert m0.labelled("subpool_clients", "protocol") == \
        {"detecting": 0, "ndjson": 0, "websocket": 0, "http": 1}
    conns = [Conn(d, t) for t in ("unix", "tcp", "unix", "tcp", "unix", "unix")]
    nd1, nd2, ws1, ws2, h, idle = conns
    for c in (nd1, nd2):
        c.send(rpc("subpool_ping") + b"\n")
        c.read_until(b"\n")
    for c in (ws1, ws2):
        assert c.ws_upgrade().status == 101
    assert h.http("GET", "/health").status == 200
    want = {"detecting": 1, "ndjson": 2, "websocket": 2, "http": 2}
    harness.poll(lambda: scrape(d).labelled("subpool_clients", "protocol"), lambda v: v == want, 5,
                 f"clients by protocol {want}")
    ws1.ws_send(OP_CLOSE, (1000).to_bytes(2, "big"))
    ws1.ws_expect_close()
    for c in conns:
        c.close()
    want = {"detecting": 0, "ndjson": 0, "websocket": 0, "http": 1}
    harness.poll(lambda: scrape(d).labelled("subpool_clients", "protocol"), lambda v: v == want, 5,
                 "clients by protocol back to only the scraper")


def test_upstream_state_reconnects_queue_and_in_flight(devnode, daemon):
    node = devnode()
    d = daemon(node, pool_size=2, reconnect_min="50ms", reconnect_max="300ms", request_timeout="20s")
    m0 = scrape(d)
    assert m0.labelled("subpool_upstream_up", "upstream") == {"0": 1, "1": 1}
    assert m0.labelled("subpool_upstream_reconnects_total", "upstream") == {"0": 0, "1": 0}

    with d.client() as c:
        # In flight: a 1 s sleep shows on one upstream.
        slow = c.request("devnode_sleep", [1000])
        harness.poll(lambda: sum(scrape(d).labelled("subpool_upstream_in_flight", "upstream").values()),
                     lambda v: v == 1, 5, "one request in flight")
        assert c.recv_id(slow, 10).result is True

        assert node.stop() == 0
        harness.poll(lambda: scrape(d).labelled("subpool_upstream_up", "upstream"),
                     lambda v: v == {"0": 0, "1": 0}, 10, "both upstreams down")
        # Queue depth: requests wait for an upstream while none is ready.
        waiting = [c.request("devnode_echo", [f"q{i}"]) for i in range(3)]
        harness.poll(lambda: scrape(d).value("subpool_queue_depth"), lambda v: v == 3, 5,
                     "three requests queued")
        node.restart()
        for i, raw_id in enumerate(waiting):
            assert c.recv_id(raw_id, 15).result == f"q{i}"
    m1 = harness.poll(lambda: scrape(d), lambda m: m.labelled("subpool_upstream_up", "upstream") ==
                      {"0": 1, "1": 1}, 15, "both upstreams up again")
    assert m1.value("subpool_queue_depth") == 0
    assert m1.labelled("subpool_upstream_reconnects_total", "upstream") == {"0": 1, "1": 1}
    status = d.status()
    assert [u["reconnects"] for u in status["upstreams"]] == [1, 1]
    assert sum(m1.labelled("subpool_upstream_in_flight", "upstream").values()) == 0
