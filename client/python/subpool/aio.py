"""The asyncio client: any number of calls in flight on one connection,
answered by one reader task that dispatches replies by id, and
subscriptions delivered as async iterators."""

import asyncio
import itertools

from . import _protocol as p

_END = object()  # queued to end a subscription's iterator


class AsyncClient:
    """An asyncio connection to subpoold.

    async with AsyncClient() as c:
        heads = await asyncio.gather(*(c.call("chain_getBlockHash", [n]) for n in range(100)))

    timeout (seconds, None for no limit) is the default for every call.
    """

    def __init__(self, path=None, timeout=None):
        self.path = p.socket_path(path)
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._pending = {}  # id -> (future, hook run by the reader on a good reply, or None)
        self._subs = {}  # subscription key -> Subscription
        self._reader = self._writer = self._task = None
        self._lost = None  # why the connection ended: each waiter gets its own ConnectionError
        self._drain_lock = asyncio.Lock()  # Python before 3.11 allows one drain() at a time

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def connect(self):
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=p.MAX_REPLY)
        except OSError as e:
            raise p.ConnectionError(f"cannot connect to {self.path}: {e.strerror or e}") from e
        self._task = asyncio.get_running_loop().create_task(self._read_loop())

    async def close(self):
        """Close the connection; outstanding calls raise ConnectionError."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        self._end("the client is closed")
        self._task.cancel()
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def call(self, method: str, params=None, timeout=None):
        """Send one request and await its result; raises RPCError for an error reply,
        TimeoutError, or ConnectionError."""
        return await self._request(method, params, timeout)

    def subscribe(self, method: str, params=None, unsubscribe=None, timeout=None) -> "Subscription":
        """A subscription, e.g. subscribe("chain_subscribeNewHeads"):

        async with client.subscribe("chain_subscribeNewHeads") as heads:
            async for head in heads:
                ...

        Entering subscribes (RPCError when refused); leaving unsubscribes with `unsubscribe`
        (default: derived, chain_subscribeX -> chain_unsubscribeX). Each item is a
        notification's params.result.
        """
        return Subscription(self, method, params, unsubscribe or p.unsubscribe_method(method), timeout)

    async def _request(self, method, params, timeout, hook=None):
        if self._lost is not None:
            raise p.ConnectionError(self._lost)
        if self._writer is None:
            raise p.ConnectionError("the client is not connected")
        rid = next(self._ids)
        line = p.request_line(rid, method, params)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = (fut, hook)
        timeout = self.timeout if timeout is None else timeout
        try:
            self._writer.write(line)
            async with self._drain_lock:
                await self._writer.drain()
            return p.result_of(await asyncio.wait_for(fut, timeout))
        except p.Error:
            raise
        except asyncio.TimeoutError:
            raise p.TimeoutError(f"no reply to {method} within {timeout} s") from None
        except OSError as e:
            raise p.ConnectionError(f"connection to {self.path} failed: {e}") from e
        finally:
            self._pending.pop(rid, None)

    async def _read_loop(self):
        try:
            while True:
                line = await self._reader.readline()
                if not line.endswith(b"\n"):
                    raise p.ConnectionError(f"subpoold closed the connection ({self.path})")
                msg = p.decode_line(line)
                if msg is not None:
                    self._dispatch(msg)
        except (OSError, ValueError, asyncio.IncompleteReadError) as e:
            # ValueError: a line over the limit; the stream cannot be followed after it.
            self._end(str(e) if isinstance(e, p.ConnectionError) else f"connection lost: {e}")

    def _dispatch(self, msg):
        if p.is_reply(msg):
            entry = self._pending.pop(p.reply_id(msg, self._pending), None)
            if entry is not None and not entry[0].done():
                fut, hook = entry
                if hook is not None and "result" in msg:
                    hook(msg["result"])  # before any later line is read
                fut.set_result(msg)
            return
        note = p.notification(msg)
        if note is not None and note[0] in self._subs:
            self._subs[note[0]]._queue.put_nowait(note[1])

    def _end(self, why: str):
        """The connection is over: calls and subscriptions hear why."""
        if self._lost is None:
            self._lost = why
        for fut, _ in self._pending.values():
            if not fut.done():
                fut.set_exception(p.ConnectionError(why))
        self._pending.clear()
        for sub in self._subs.values():
            sub._queue.put_nowait(_END)
        self._subs.clear()


class Subscription:
    """An async context manager and async iterator over a subscription's notifications."""

    def __init__(self, client, method, params, unsubscribe, timeout):
        self._client = client
        self._method = method
        self._params = params
        self._unsubscribe = unsubscribe
        self._timeout = timeout
        self._queue = asyncio.Queue()
        self.id = None  # the subscription id the node gave

    async def __aenter__(self):
        await self._client._request(self._method, self._params, self._timeout, hook=self._started)
        return self

    def _started(self, sid):
        # Runs in the reader task, so no notification can slip past before we are registered.
        self.id = sid
        self._client._subs[p.subscription_key(sid)] = self

    async def __aexit__(self, *exc):
        if self._client._subs.pop(p.subscription_key(self.id), None) is None:
            return  # the connection ended it already
        try:
            await self._client._request(self._unsubscribe, [self.id], self._timeout)
        except p.Error:
            pass  # the subscription is over for us either way

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # stays ended
            raise p.ConnectionError(self._client._lost)
        return item
