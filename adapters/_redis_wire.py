"""What the lean Redis clients share (asyncio's in ``adapters._store_redis``,
trio's in ``adapters._redis_trio``): commands packed by hiredis, the greeting of
a new connection, and a script call (EVALSHA, EVAL again after ``NOSCRIPT``)."""

from __future__ import annotations

import hashlib
from typing import Any

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

__all__ = ["LeanScript", "closed", "pack"]


def pack(*parts: Any) -> bytes:
    """A command in Redis's protocol (hiredis's encoder)."""
    command: Any = parts  # its stub wants a 1-tuple
    packed: bytes = hiredis.pack_command(command)
    return packed


def closed() -> Exception:
    """The error of a call on a connection that is gone."""
    return RedisConnectionError("Connection closed.")


class LeanScript:
    """One script on one pipelined connection: a subclass connects (``_connection``:
    ``_conn``, made again once ``closed``) and sends a packed command (``_ask``: its
    reply, a ``ResponseError`` for an error reply); ``call`` runs the script.
    ``options`` are redis-py's connection options (host, port or path, username,
    password, db)."""

    def __init__(self, options: dict[str, Any], where: str, script: str, timeout: float) -> None:
        self._options = options
        self._where = where
        self._timeout = timeout
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script, usedforsecurity=False).hexdigest().encode()
        self._conn: Any = None

    async def call(self, keys: list[str], args: list[str]) -> Any:
        """The script's reply; raises what redis-py would (``ResponseError`` for an
        error reply, ``ConnectionError``...), ``TimeoutError`` after ``timeout``."""
        conn = await self._ready()
        reply = await self._ask(conn, self._packed(keys, args))
        if self.unknown_script(reply):
            reply = await self._ask(conn, self._packed(keys, args, again=True))
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _packed(self, keys: list[str], args: list[str], *, again: bool = False) -> bytes:
        """The script's call: EVALSHA, or ``again`` (Redis did not know it) EVAL."""
        if again:
            return pack("EVAL", self._script, len(keys), *keys, *args)
        return pack("EVALSHA", self._sha, len(keys), *keys, *args)

    @staticmethod
    def unknown_script(reply: Any) -> bool:
        """Whether ``reply`` says Redis does not have the script (flushed, restarted)."""
        return isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")

    async def _ready(self) -> Any:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        return conn

    async def _connection(self) -> Any:
        raise NotImplementedError

    async def _ask(self, conn: Any, packed: bytes) -> Any:
        raise NotImplementedError

    def _greeting(self) -> list[bytes]:
        """A new connection's first commands: AUTH and SELECT if asked, SCRIPT LOAD."""
        options = self._options
        hello: list[tuple[Any, ...]] = []
        if options.get("password"):
            user = options.get("username")
            hello.append(
                ("AUTH", user, options["password"]) if user else ("AUTH", options["password"])
            )
        if options.get("db"):
            hello.append(("SELECT", options["db"]))
        hello.append(("SCRIPT", "LOAD", self._script))
        return [pack(*cmd) for cmd in hello]

    def _greeted(self, reply: Any) -> None:
        """Check a reply to the greeting."""
        if isinstance(reply, ResponseError):
            raise RedisConnectionError(f"Redis refused the connection: {reply}")

    def _unreachable(self, exc: OSError) -> RedisConnectionError:
        """The error of a connection that could not be made."""
        why = exc.strerror or type(exc).__name__
        return RedisConnectionError(f"Error connecting to {self._where}: {why}")
