"""Python client of subpoold, the local connection pool to Subtensor (Substrate) nodes.

    import subpool

    with subpool.Client() as c:                 # blocking
        print(c.call("chain_getHeader"))

    async with subpool.AsyncClient() as c:      # asyncio: many calls on one connection
        hashes = await asyncio.gather(*(c.call("chain_getBlockHash", [n]) for n in range(10)))

Errors: RPCError (.code, .message, .data) for a JSON-RPC error reply,
ConnectionError (an OSError) when subpoold cannot be reached or goes away,
TimeoutError when a reply is late. Standard library only.
"""

from ._protocol import (
    SYSTEM_SOCKET,
    ConnectionError,
    Error,
    RPCError,
    TimeoutError,
    socket_path,
    unsubscribe_method,
)
from .aio import AsyncClient, Subscription
from .sync import Client

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ConnectionError",
    "Error",
    "RPCError",
    "SYSTEM_SOCKET",
    "Subscription",
    "TimeoutError",
    "socket_path",
    "unsubscribe_method",
]
