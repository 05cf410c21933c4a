"""Redis URLs: which redis-py client a URL names, and which options are the backend's."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

#: The keywords of ``from_url`` that go to the backend; every other one goes to redis-py.
BACKEND_OPTIONS = (
    "prefix",
    "owner",
    "grace",
    "release_timeout",
    "sharded_pubsub",
    "registry_ttl",
    "command_timeout",
    "chain_ttl",
    "observer",
)


def client_from_url(
    url: str, options: dict[str, Any]
) -> tuple[aioredis.Redis | RedisCluster, dict[str, Any]]:
    """The client ``url`` names (not connected) and the backend's options.

    ``options`` are ``from_url``'s keywords: the backend's (:data:`BACKEND_OPTIONS`, and the
    query parameter ``threadlock_prefix``) are taken out; the rest go to the client.
    """
    if not isinstance(url, str):
        raise TypeError(f"url must be a str, not {type(url).__name__}")
    options = dict(options)
    backend_options: dict[str, Any] = {
        name: options.pop(name) for name in BACKEND_OPTIONS if name in options
    }
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    kept = []
    for name, value in query:
        if name == "threadlock_prefix":
            backend_options.setdefault("prefix", value)
        else:
            kept.append((name, value))
    parts = parts._replace(query=urlencode(kept))
    scheme = parts.scheme.lower()
    client: aioredis.Redis | RedisCluster
    if scheme in ("redis", "rediss", "unix"):
        client = aioredis.Redis.from_url(urlunsplit(parts), **options)
    elif scheme in ("redis+cluster", "rediss+cluster"):
        plain = parts._replace(scheme=scheme.partition("+")[0])
        client = RedisCluster.from_url(urlunsplit(plain), **options)
    elif scheme in ("redis+sentinel", "rediss+sentinel"):
        client = _sentinel_client(parts, scheme.startswith("rediss"), options)
    else:
        raise ValueError(f"url: {scheme!r} is not a Redis URL scheme: {url!r}")
    return client, backend_options


def _sentinel_client(parts: Any, tls: bool, options: dict[str, Any]) -> aioredis.Redis:
    """``redis+sentinel://[:password@]host:port[,host:port]/service[/db]`` -> master client."""
    netloc = parts.netloc
    password: str | None = None
    username: str | None = None
    if "@" in netloc:
        auth, _, netloc = netloc.rpartition("@")
        user, _, pw = auth.partition(":")
        username = unquote(user) or None
        password = unquote(pw) or None
    hosts: list[tuple[str, int]] = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if ":" in item else (item, "", "26379")
        hosts.append((host.strip("[]") or "localhost", int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError("url: a redis+sentinel:// URL needs the service name as its path")
    service = unquote(path[0])
    db = int(path[1]) if len(path) > 1 else 0
    query = dict(parse_qsl(parts.query))
    sentinel_kwargs: dict[str, Any] = {}
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query.pop("sentinel_password")
    client_kwargs: dict[str, Any] = {"db": db, **options}
    if password is not None:
        client_kwargs.setdefault("password", password)
    if username is not None:
        client_kwargs.setdefault("username", username)
    if tls:
        client_kwargs.setdefault("ssl", True)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        hosts, sentinel_kwargs=sentinel_kwargs or None, **client_kwargs
    )
    client: aioredis.Redis = sentinel.master_for(service)
    return client


async def close_client(client: aioredis.Redis | RedisCluster) -> None:
    """Close ``client``; a Sentinel-managed client's connections to the sentinels too."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
