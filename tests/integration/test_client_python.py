"""The Python client (client/python, imported from the source tree) against the real
daemon and devnode: sync and async calls, errors, timeouts, connection counts as the
daemon sees them, subscriptions, and the examples."""

import asyncio
import signal
import subprocess
import sys
import threading
import zipfile

import pytest

import harness

PYTHON_DIR = harness.REPO / "client" / "python"
sys.path.insert(0, str(PYTHON_DIR))

import subpool  # noqa: E402


@pytest.fixture
def served(devnode, daemon):
    return daemon(devnode(block_ms=50))


def clients_seen(d) -> int:
    """Clients connected, not counting the status query's own connection."""
    return d.status()["clients"] - 1


def test_sync_call(served):
    with subpool.Client(served.socket, timeout=10) as c:
        assert c.call("subpool_ping") == "pong"
        assert c.call("devnode_echo", [{"k": [1, "v"]}]) == {"k": [1, "v"]}
        assert c.call("devnode_echo", ("tuple",)) == "tuple"
        header = c.call("chain_getHeader")
        assert int(header["number"], 16) >= 0 and header["parentHash"].startswith("0x")
        assert c.call("subpool_status")["pool_size"] == served.pool_size


def test_sync_error_reply_raises_with_its_code(served):
    with subpool.Client(served.socket) as c:
        with pytest.raises(subpool.RPCError) as e:
            c.call("subpool_nope")
        assert e.value.code == harness.METHOD_NOT_FOUND
        assert e.value.message == "Method not found"
        assert e.value.data is None
        # An error from the node itself passes through: bad hex is invalid params there.
        with pytest.raises(subpool.RPCError) as e:
            c.call("author_submitExtrinsic", ["0xzz"])
        assert e.value.code == -32602
        assert c.call("subpool_ping") == "pong", "the connection survives error replies"


def test_sync_timeout_then_the_connection_is_still_good(served):
    with subpool.Client(served.socket) as c:
        with pytest.raises(subpool.TimeoutError) as e:
            c.call("devnode_sleep", [1500], timeout=0.3)
        assert isinstance(e.value, TimeoutError)
        # The late reply (id 1) arrives while we wait for this one and is dropped.
        assert c.call("devnode_sleep", [1500], timeout=10) is True
        assert c.call("devnode_echo", ["after"], timeout=10) == "after"


def test_leaving_with_closes_the_socket(served):
    base = clients_seen(served)
    with subpool.Client(served.socket) as c:
        c.call("subpool_ping")
        assert clients_seen(served) == base + 1
    served.wait_status(lambda s: s["clients"] - 1 == base, "the client gone after the with block")
    with pytest.raises(subpool.ConnectionError):
        c.call("subpool_ping")
    c.close()  # again: harmless


def test_bad_arguments_are_caught_locally(served):
    with subpool.Client(served.socket) as c:
        with pytest.raises(TypeError):
            c.call("devnode_echo", "not a list")
        with pytest.raises(ValueError):
            c.call("")
        assert c.call("subpool_ping") == "pong"


def test_cannot_connect(short_dir):
    missing = short_dir / "nobody.sock"
    with pytest.raises(subpool.ConnectionError) as e:
        subpool.Client(missing)
    assert isinstance(e.value, OSError) and str(missing) in str(e.value)
    with pytest.raises(subpool.ConnectionError):
        asyncio.run(subpool.AsyncClient(missing).connect())


def test_sync_daemon_lost_mid_call(devnode, daemon):
    d = daemon(devnode())
    with subpool.Client(d.socket, timeout=20) as c:
        c.call("subpool_ping")
        threading.Timer(0.5, d.stop, (signal.SIGKILL,)).start()
        with pytest.raises(subpool.ConnectionError):
            c.call("devnode_sleep", [5000])


def test_socket_path_resolution(monkeypatch, short_dir):
    monkeypatch.setenv("SUBPOOL_SOCKET", "/tmp/env.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_dir))
    assert subpool.socket_path("/x.sock") == "/x.sock"
    assert subpool.socket_path() == "/tmp/env.sock"
    monkeypatch.delenv("SUBPOOL_SOCKET")
    system = subpool.SYSTEM_SOCKET
    expected = system if harness.Path(system).exists() else str(short_dir / "subpoold.sock")
    assert subpool.socket_path() == expected
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert subpool.socket_path() == system


def test_unsubscribe_method_rule():
    assert subpool.unsubscribe_method("chain_subscribeNewHeads") == "chain_unsubscribeNewHeads"
    assert subpool.unsubscribe_method("author_submitAndWatchExtrinsic") == "author_unwatchExtrinsic"
    assert subpool.unsubscribe_method("chainHead_v1_follow") == "chainHead_v1_unfollow"
    with pytest.raises(ValueError):
        subpool.unsubscribe_method("chain_getHeader")


def test_async_1000_concurrent_calls_on_one_connection(served):
    accepted_before = served.status()["accepted"]

    async def run():
        async with subpool.AsyncClient(served.socket, timeout=30) as c:
            payloads = [f"p{n}" if n % 2 else n for n in range(1000)]
            results = await asyncio.gather(*(c.call("devnode_echo", [p]) for p in payloads))
            assert results == payloads
            return await c.call("subpool_status")

    status = asyncio.run(run())
    assert status["clients"] == 1, "the daemon saw more than our one connection"
    assert status["accepted"] == accepted_before + 1, "more than one connection was opened"


def test_async_error_and_timeout(served):
    async def run():
        async with subpool.AsyncClient(served.socket) as c:
            with pytest.raises(subpool.RPCError) as e:
                await c.call("subpool_nope")
            assert e.value.code == harness.METHOD_NOT_FOUND
            slow = asyncio.ensure_future(c.call("devnode_sleep", [1000], timeout=10))
            with pytest.raises(subpool.TimeoutError):
                await c.call("devnode_sleep", [1500], timeout=0.2)
            assert await slow is True
            assert await c.call("devnode_echo", [3]) == 3

    asyncio.run(run())


def test_async_leaving_closes_the_socket(served):
    base = clients_seen(served)

    async def run():
        async with subpool.AsyncClient(served.socket) as c:
            await c.call("subpool_ping")
            assert clients_seen(served) == base + 1
        return c

    c = asyncio.run(run())
    served.wait_status(lambda s: s["clients"] - 1 == base, "the client gone after async with")

    async def after():
        with pytest.raises(subpool.ConnectionError):
            await c.call("subpool_ping")

    asyncio.run(after())


def test_async_daemon_lost_fails_every_call(devnode, daemon):
    d = daemon(devnode())

    async def run():
        async with subpool.AsyncClient(d.socket, timeout=20) as c:
            calls = [asyncio.ensure_future(c.call("devnode_sleep", [5000])) for _ in range(5)]
            await asyncio.sleep(0.3)
            d.stop(signal.SIGKILL)
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, subpool.ConnectionError) for r in results), results

    asyncio.run(asyncio.wait_for(run(), 15))


def test_async_subscription(devnode, daemon):
    node = devnode(block_ms=50)
    d = daemon(node, pool_size=1)

    async def run():
        async with subpool.AsyncClient(d.socket, timeout=10) as c:
            async with c.subscribe("chain_subscribeNewHeads") as heads:
                numbers = []
                async for head in heads:
                    numbers.append(int(head["number"], 16))
                    if len(numbers) == 3:
                        break
                assert node.stats()["subscriptions"] == 1
            assert numbers == sorted(numbers) and len(set(numbers)) == 3
            # Leaving the block unsubscribed: the node holds no subscription any more.
            harness.wait_until(lambda: node.stats()["subscriptions"] == 0, 10, "the unsubscribe")
            assert await c.call("subpool_ping") == "pong"

    asyncio.run(run())


@pytest.mark.parametrize("subnets", [7, 128])
def test_subnets_example_runs(devnode, daemon, subnets):
    """The seeds' scenarios: subnets 1..7, then every subnet (128), sync and async agree."""
    d = daemon(devnode(block_ms=0, latency_ms=5))
    r = subprocess.run([sys.executable, str(PYTHON_DIR / "examples" / "subnets.py"), "--socket",
                        d.socket, "--subnets", str(subnets)],
                       capture_output=True, text=True, timeout=120, cwd=PYTHON_DIR)
    assert r.returncode == 0, r.stderr
    assert f"subnet {subnets}:" in r.stdout and "async" in r.stdout, r.stdout


def test_package_builds_with_the_stdlib_backend_alone(tmp_path):
    """pip install client/python needs nothing from the network: the in-tree PEP 517
    backend builds a wheel with the standard library only, and the wheel imports."""
    backend_dir = harness.REPO / "client" / "python" / "build_backend"
    code = (f"import sys; sys.path.insert(0, {str(backend_dir)!r}); import subpool_build as b; "
            f"assert b.get_requires_for_build_wheel() == []; "
            f"print(b.build_wheel({str(tmp_path)!r})); print(b.build_sdist({str(tmp_path)!r}))")
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    wheel = tmp_path / out[0]
    names = zipfile.ZipFile(wheel).namelist()
    assert "subpool/__init__.py" in names and "subpool-0.1.0.dist-info/RECORD" in names, names
    check = subprocess.run([sys.executable, "-I", "-c",
                            f"import sys; sys.path.insert(0, {str(wheel)!r}); import subpool; "
                            f"print(subpool.Client.__name__)"],
                           capture_output=True, text=True, check=True)
    assert check.stdout.strip() == "Client"
    assert (tmp_path / out[1]).is_file()
