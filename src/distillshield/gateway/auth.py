"""Authentication: API key -> key record -> account -> org.

Keys arrive as `Authorization: Bearer ds-...` (OpenAI SDK) or `x-api-key: ds-...` (Anthropic SDK).
The key id part selects the record; the secret part is hashed with the record's salt and compared in
constant time. Lookups are cached for a few seconds (auth.cache_ttl_s); revoking through the admin
API drops the cache entry at once. While the database is unreachable, a key looked up within
auth.stale_ttl_s still authenticates from the cache; any other answers 503 store_unavailable. Keys never
appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Mapping

from distillshield.gateway.errors import ApiError
from distillshield.store.database import KeyContext, Store, secret_matches, split_key

_NEGATIVE_CACHE_MAX = 10_000


def presented_key(headers: Mapping[str, str]) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


class Authenticator:
    def __init__(self, store: Store, cache_ttl_s: float = 5.0, stale_ttl_s: float = 300.0) -> None:
        self.store = store
        self.ttl = cache_ttl_s
        self.stale_ttl = stale_ttl_s  # how old a cached key may be, used only while the database is away
        self._cache: dict[str, KeyContext] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()  # key ids that do not exist, with expiry
        self._loading: dict[str, asyncio.Future[KeyContext | None]] = {}

    async def authenticate(self, headers: Mapping[str, str]) -> KeyContext:
        """The caller's key context, or ApiError 401/403 naming what is wrong (never the key itself)."""
        presented = presented_key(headers)
        if not presented:
            raise ApiError(
                401,
                "missing API key: send it as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
                code="missing_api_key",
            )
        parts = split_key(presented)
        if parts is None:
            raise ApiError(
                401,
                "invalid API key: not a DistillShield key (they look like ds-k...-...)",
                code="invalid_api_key",
            )
        key_id, secret = parts
        ctx = await self._lookup(key_id)
        if ctx is None or not secret_matches(ctx.key, secret):
            raise ApiError(401, "invalid API key", code="invalid_api_key")
        return self._usable(ctx)

    async def authenticate_key_id(self, key_id: str) -> KeyContext:
        """The context of a key that authenticated earlier, without its secret: a batch's requests run as the
        key that created the batch (gateway/batches.py). The same revocation and account checks as
        `authenticate`, so a key revoked or an account suspended since then stops the batch."""
        ctx = await self._lookup(key_id)
        if ctx is None:
            raise ApiError(401, f"API key {key_id} no longer exists", code="invalid_api_key")
        return self._usable(ctx)

    @staticmethod
    def _usable(ctx: KeyContext) -> KeyContext:
        if ctx.key.revoked:
            raise ApiError(401, f"API key {ctx.key.id} has been revoked", code="revoked_api_key")
        if ctx.account.status != "active":
            raise ApiError(403, f"account {ctx.account.id} is {ctx.account.status}", code="account_suspended")
        return ctx

    async def _lookup(self, key_id: str) -> KeyContext | None:
        now = time.monotonic()
        ctx = self._cache.get(key_id)
        if ctx is not None and now - ctx.loaded_at < self.ttl:
            return ctx
        expiry = self._unknown.get(key_id)
        if expiry is not None and expiry > now:
            return None
        pending = self._loading.get(key_id)
        if pending is not None:  # one database query per key id, however many requests wait on it
            return await asyncio.shield(pending)
        fut: asyncio.Future[KeyContext | None] = asyncio.get_running_loop().create_future()
        self._loading[key_id] = fut
        try:
            ctx = await self.store.load_key_context(key_id)
            fut.set_result(ctx)
        except Exception as exc:  # noqa: BLE001 - the database is away: a recent lookup stands in, or 503
            stale = self._cache.get(key_id)
            if stale is not None and now - stale.loaded_at < self.stale_ttl:
                fut.set_result(stale)
                return stale
            err = ApiError(
                503,
                "the key store is unavailable; retry shortly",
                code="store_unavailable",
                headers={"retry-after": "5"},
            )
            fut.set_exception(err)
            fut.exception()  # mark retrieved
            raise err from exc
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._loading[key_id]
        if ctx is None:
            self._unknown[key_id] = now + self.ttl
            while len(self._unknown) > _NEGATIVE_CACHE_MAX:
                self._unknown.popitem(last=False)
        else:
            self._cache[key_id] = ctx
            self._unknown.pop(key_id, None)
        return ctx

    def invalidate(self, key_id: str | None = None, account_id: str | None = None) -> None:
        """Forget cached lookups for a key, for all keys of an account, or everything."""
        if key_id is None and account_id is None:
            self._cache.clear()
            self._unknown.clear()
            return
        if key_id is not None:
            self._cache.pop(key_id, None)
            self._unknown.pop(key_id, None)
        if account_id is not None:
            for kid in [k for k, c in self._cache.items() if c.account.id == account_id]:
                del self._cache[kid]
