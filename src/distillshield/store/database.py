"""The Store: one async engine, accounts/orgs/keys, and the hash-chained audit log with its Merkle tree.

SQLite (WAL) is the embedded default; PostgreSQL through asyncpg is a change of URL. Nothing here
branches on the back end except connection set-up: the SQL is SQLAlchemy Core throughout.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from distillshield.contracts import Backlog
from distillshield.store import chain, merkle
from distillshield.store.merkle import Frontier
from distillshield.store.tables import (
    accounts,
    admin_rows_index,
    api_keys,
    audit_log,
    audit_tree,
    batches,
    chain_head,
    metadata,
    orgs,
)

log = logging.getLogger("distillshield.store")

KEY_PREFIX = "ds"
TIERS = ("free", "standard", "pro", "enterprise")
VERIFICATION_LEVELS = ("none", "email", "phone", "id", "business")
# PostgreSQL text cannot hold NUL (SQLite can): a pattern for every API field whose text reaches the store.
NO_NUL = r"^[^\x00]*$"


class StoreError(Exception):
    """A store operation that cannot be done; the message says why (unknown account, duplicate id...)."""


CLOCK_SKEW_S = 60.0  # how far ahead of this clock a given creation time may be (another machine's clock)


def check_created_at(ts: float) -> None:
    """An account's given creation time (one brought over from another system): a Unix time after 1970 and not in
    the future. The one rule for the store, the admin API and the CLI; StoreError names the problem."""
    if not math.isfinite(ts) or ts <= 0:
        raise StoreError(f"created_at {ts!r} is not a Unix time after 1970")
    if ts > time.time() + CLOCK_SKEW_S:
        raise StoreError(f"created_at is in the future ({ts:.0f}, now {time.time():.0f})")


@dataclass(frozen=True)
class Org:
    id: str
    name: str
    created_at: float
    limits: dict[str, Any] | None = None


@dataclass(frozen=True)
class Account:
    id: str
    org_id: str
    name: str
    created_at: float
    tier: str
    verification: str
    status: str
    limits: dict[str, Any] | None = None


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    salt: str
    secret_hash: str
    created_at: float
    revoked_at: float | None
    limits: dict[str, Any] | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def public(self) -> dict[str, Any]:
        """Everything except the salt and hash: safe to print or return from the admin API."""
        return {
            "id": self.id,
            "account_id": self.account_id,
            "name": self.name,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "limits": self.limits,
        }


@dataclass
class KeyContext:
    """What a verified key resolves to: the key, its account and the account's org."""

    key: ApiKey
    account: Account
    org: Org
    loaded_at: float = field(default_factory=time.monotonic)


def hash_secret(salt_hex: str, secret: str) -> str:
    # API keys carry 192 random bits, so a salted SHA-256 is enough (as GitHub and Stripe do); a slow
    # password KDF would only add milliseconds to every request without adding security.
    return hashlib.sha256(bytes.fromhex(salt_hex) + secret.encode("utf-8")).hexdigest()


def split_key(presented: str) -> tuple[str, str] | None:
    """'ds-<key_id>-<secret>' -> (key_id, secret), or None if the shape is wrong."""
    parts = presented.split("-")
    if len(parts) != 3 or parts[0] != KEY_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def secret_matches(key: ApiKey, secret: str) -> bool:
    return hmac.compare_digest(hash_secret(key.salt, secret), key.secret_hash)


_AUDIT_LENGTHS = {c.name: c.type.length for c in audit_log.c if isinstance(c.type, sa.String) and c.type.length}
_AUDIT_TEXT = tuple(c.name for c in audit_log.c if isinstance(c.type, sa.String) and c.name in chain.CHAINED_FIELDS)
# Statements built once: SQLAlchemy caches their compiled form, and the writer runs them per batch.
_LOCK_HEAD = chain_head.update().where(chain_head.c.id == 1).values(id=1)
_READ_HEAD = sa.select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1).with_for_update()
_INSERT_AUDIT = audit_log.insert()
_WRITE_HEAD = chain_head.update().where(chain_head.c.id == 1)
_READ_TREE = sa.select(audit_tree.c.size, audit_tree.c.frontier).where(audit_tree.c.id == 1)
_WRITE_TREE = audit_tree.update().where(audit_tree.c.id == 1)
_BOOLEAN_COLUMNS = tuple(c.name for c in audit_log.c if isinstance(c.type, sa.Boolean))


def _driver_sql(stmt: sa.ClauseElement, dialect: sa.Dialect) -> tuple[str, tuple[str, ...]]:
    """A statement as the driver's own SQL and the names of its positional parameters, in order."""
    compiled = stmt.compile(dialect=dialect)
    assert compiled.positional and compiled.positiontup is not None
    return compiled.string, tuple(compiled.positiontup)


# The same statements as SQLite's own SQL, for the audit thread's plain sqlite3 connection.
_SQLITE_INSERT = _driver_sql(_INSERT_AUDIT, sqlite_dialect.dialect())
_SQLITE_READ_HEAD, _names = _driver_sql(
    sa.select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1), sqlite_dialect.dialect()
)
assert _names == ("id_1",)
_SQLITE_WRITE_HEAD, _names = _driver_sql(
    _WRITE_HEAD.values(seq=sa.bindparam("seq"), hash=sa.bindparam("hash")), sqlite_dialect.dialect()
)
assert _names == ("seq", "hash", "id_1")
_SQLITE_READ_TREE, _names = _driver_sql(_READ_TREE, sqlite_dialect.dialect())
assert _names == ("id_1",)
_SQLITE_WRITE_TREE, _names = _driver_sql(
    _WRITE_TREE.values(size=sa.bindparam("size"), frontier=sa.bindparam("frontier")), sqlite_dialect.dialect()
)
assert _names == ("size", "frontier", "id_1")
_SQLITE_READ_ROWS, _names = _driver_sql(
    sa.select(*[audit_log.c[k] for k in chain.CHAINED_FIELDS])
    .where(audit_log.c.seq > sa.bindparam("lo"), audit_log.c.seq <= sa.bindparam("hi"))
    .order_by(audit_log.c.seq),
    sqlite_dialect.dialect(),
)
assert _names == ("lo", "hi")
del _names


def _sqlite_file(url: str) -> str | None:
    """The database file of a plain SQLite URL; None for in-memory, URI-style or parametrised ones."""
    u = sa.engine.make_url(url)
    db = u.database
    if not db or db == ":memory:" or db.startswith("file:") or u.query:
        return None
    return db


def _storable_row(r: Mapping[str, Any]) -> dict[str, Any]:
    """The row as it will be stored and hashed.

    Client-controlled strings must fit every back end and be stored exactly as hashed: PostgreSQL text
    cannot hold NUL, and VARCHAR(n) refuses longer values (SQLite would silently keep them).
    """
    rec = {k: r.get(k) for k in chain.CHAINED_FIELDS}
    for k in _AUDIT_TEXT:
        v = rec[k]
        if v is None:
            continue
        if "\x00" in v:
            v = v.replace("\x00", "\ufffd")
        length = _AUDIT_LENGTHS.get(k)
        if length is not None and len(v) > length:
            v = v[:length]
        rec[k] = v
    return rec


def _add_missing_audit_columns(conn: sa.Connection) -> None:
    """Add the audit columns a log created by an earlier release lacks (create_all adds tables, not columns).
    Each is nullable and hashed only when set (chain.OPTIONAL_FIELDS), so the old rows still verify."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("audit_log")}
    for name in sorted(chain.OPTIONAL_FIELDS - have):
        column = audit_log.c[name]
        conn.execute(sa.text(f"ALTER TABLE audit_log ADD COLUMN {name} {column.type.compile(conn.dialect)}"))


# Columns of the batches table added after its first release (store/batches.py): each nullable, so the
# batches already there read as before (a null lease: no runner holds the batch by lease).
_LATER_BATCH_COLUMNS = ("claimed_by", "lease_until")


def _add_missing_batch_columns(conn: sa.Connection) -> None:
    """Add the batch columns a database created by an earlier release lacks (create_all adds tables, not
    columns)."""
    have = {c["name"] for c in sa.inspect(conn).get_columns("batches")}
    for name in _LATER_BATCH_COLUMNS:
        if name not in have:
            column = batches.c[name]
            conn.execute(sa.text(f"ALTER TABLE batches ADD COLUMN {name} {column.type.compile(conn.dialect)}"))


_SCHEMA_LOCK = 0x44535348  # "DSSH": the advisory lock around schema creation on PostgreSQL


_IDS_PER_QUERY = 500  # request ids per IN (...) lookup


async def _held_ids(conn: AsyncConnection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` the audit log holds, on an open (async) connection."""
    found: set[str] = set()
    for i in range(0, len(ids), _IDS_PER_QUERY):
        q = sa.select(audit_log.c.request_id).where(audit_log.c.request_id.in_(list(ids[i : i + _IDS_PER_QUERY])))
        found.update(r[0] for r in (await conn.execute(q)).all())
    return found


def _held_ids_sqlite(conn: sqlite3.Connection, ids: Sequence[str]) -> set[str]:
    """The same on the audit thread's plain sqlite3 connection."""
    found: set[str] = set()
    for i in range(0, len(ids), _IDS_PER_QUERY):
        part = list(ids[i : i + _IDS_PER_QUERY])
        q = f"SELECT request_id FROM audit_log WHERE request_id IN ({','.join('?' * len(part))})"  # noqa: S608
        found.update(r[0] for r in conn.execute(q, part))
    return found


def _unheld(rows: Sequence[Mapping[str, Any]], held: set[str]) -> list[Mapping[str, Any]]:
    """The rows whose request id is not in `held`, each once (a batch may carry a redelivered row twice)."""
    out, seen = [], set(held)
    for r in rows:
        rid = r["request_id"]
        if rid not in seen:
            seen.add(rid)
            out.append(r)
    return out


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


class Store:
    """Accounts, keys and the audit log over one SQLAlchemy async engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if not self.is_sqlite:
            kwargs.update(pool_size=5, max_overflow=5, pool_pre_ping=True)
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._write_lock = asyncio.Lock()
        self._insert_sql: tuple[str, tuple[str, ...]] | None = None
        # SQLite audit writes run in a thread of their own, on their own connection (see _append_sqlite).
        self._audit_file = _sqlite_file(url) if self.is_sqlite else None
        self._audit_executor: ThreadPoolExecutor | None = None
        self._audit_conn: sqlite3.Connection | None = None

    async def init(self) -> None:
        """Create missing tables and the chain head and tree rows. Safe to call on every start."""
        try:
            async with self.engine.begin() as conn:
                if not self.is_sqlite:
                    # Replicas and workers starting at once on a fresh database would race to create the same
                    # tables ("relation already exists"): one at a time, the lock released with the transaction.
                    await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK})
                await conn.run_sync(metadata.create_all)
                await conn.run_sync(_add_missing_audit_columns)
                await conn.run_sync(_add_missing_batch_columns)
                # create_all makes a table's indexes only with the table: an earlier release's log gets it here
                await conn.run_sync(lambda c: admin_rows_index.create(c, checkfirst=True))
                head = (await conn.execute(sa.select(chain_head.c.seq).where(chain_head.c.id == 1))).first()
                if head is None:
                    await conn.execute(chain_head.insert().values(id=1, seq=0, hash=chain.GENESIS))
        except IntegrityError:
            pass  # another replica created the head row first
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreError(f"cannot open the store at {self.safe_url}: {exc}") from None
        try:
            # A log written before the tree existed gets an empty tree row: the next append (or
            # tree_head) extends it over the rows already there.
            async with self.engine.begin() as conn:
                if (await conn.execute(sa.select(audit_tree.c.id).where(audit_tree.c.id == 1))).first() is None:
                    await conn.execute(audit_tree.insert().values(id=1, size=0, frontier=""))
        except IntegrityError:
            pass  # another replica created it first
        except (OperationalError, DBAPIError, OSError) as exc:
            raise StoreError(f"cannot open the store at {self.safe_url}: {exc}") from None

    @property
    def safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    async def close(self) -> None:
        executor, self._audit_executor = self._audit_executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_audit_conn)
            executor.shutdown(wait=False)
        await self.engine.dispose()

    def _close_audit_conn(self) -> None:
        if self._audit_conn is not None:
            self._audit_conn.close()
            self._audit_conn = None

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(sa.text("SELECT 1"))
            return True
        except Exception:  # noqa: BLE001 - readiness probe: any failure means not ready
            return False

    async def backlogs(self) -> dict[str, Backlog] | None:
        """contracts.AuditSink: the log itself has no consumers waiting on it."""
        return {}

    # -- orgs and accounts ------------------------------------------------------------------------

    async def create_org(self, org_id: str, name: str = "", limits: dict[str, Any] | None = None) -> Org:
        org = Org(org_id, name or org_id, time.time(), limits)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(orgs.insert().values(**org.__dict__))
        except IntegrityError:
            raise StoreError(f"org '{org_id}' already exists") from None
        return org

    async def get_org(self, org_id: str) -> Org | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(orgs.select().where(orgs.c.id == org_id))).mappings().first()
        return Org(**row) if row else None

    async def create_account(
        self,
        account_id: str,
        org_id: str = "default",
        *,
        name: str = "",
        tier: str = "standard",
        verification: str = "none",
        limits: dict[str, Any] | None = None,
        created_at: float | None = None,
    ) -> Account:
        """Create an account; its org is created too when missing."""
        if not account_id or len(account_id) > 64:
            raise StoreError("account id must be 1-64 characters")
        if tier not in TIERS:
            raise StoreError(f"unknown tier '{tier}'; choose one of {', '.join(TIERS)}")
        if verification not in VERIFICATION_LEVELS:
            raise StoreError(
                f"unknown verification level '{verification}'; choose one of {', '.join(VERIFICATION_LEVELS)}"
            )
        if created_at is not None:
            check_created_at(created_at)
        acct = Account(
            account_id,
            org_id,
            name or account_id,
            created_at or time.time(),
            tier,
            verification,
            "active",
            limits,
        )
        try:
            async with self.engine.begin() as conn:
                if (await conn.execute(sa.select(orgs.c.id).where(orgs.c.id == org_id))).first() is None:
                    await conn.execute(orgs.insert().values(id=org_id, name=org_id, created_at=time.time()))
                await conn.execute(accounts.insert().values(**acct.__dict__))
        except IntegrityError:
            raise StoreError(f"account '{account_id}' already exists") from None
        return acct

    async def get_account(self, account_id: str) -> Account | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(accounts.select().where(accounts.c.id == account_id))).mappings().first()
        return Account(**row) if row else None

    async def list_accounts(self, org_id: str | None = None) -> list[Account]:
        q = accounts.select().order_by(accounts.c.created_at, accounts.c.id)
        if org_id:
            q = q.where(accounts.c.org_id == org_id)
        async with self.engine.connect() as conn:
            return [Account(**r) for r in (await conn.execute(q)).mappings()]

    async def set_account_status(self, account_id: str, status: str) -> None:
        async with self.engine.begin() as conn:
            res = await conn.execute(accounts.update().where(accounts.c.id == account_id).values(status=status))
        if res.rowcount == 0:
            raise StoreError(f"account '{account_id}' does not exist")

    async def set_account_limits(self, account_id: str, limits: dict[str, Any] | None) -> None:
        """Replace the account's own limits (None: its tier's defaults apply again)."""
        async with self.engine.begin() as conn:
            res = await conn.execute(accounts.update().where(accounts.c.id == account_id).values(limits=limits))
        if res.rowcount == 0:
            raise StoreError(f"account '{account_id}' does not exist")

    async def account_usage(self, account_id: str, since: float = 0.0) -> dict[str, Any]:
        """Request count and token totals for one account from the audit log."""
        q = sa.select(
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(audit_log.c.prompt_tokens), 0),
            sa.func.coalesce(sa.func.sum(audit_log.c.completion_tokens), 0),
            sa.func.max(audit_log.c.ts),
        ).where(audit_log.c.account_id == account_id, audit_log.c.ts >= since)
        async with self.engine.connect() as conn:
            n, pt, ct, last = (await conn.execute(q)).one()
        return {
            "requests": int(n),
            "prompt_tokens": int(pt),
            "completion_tokens": int(ct),
            "last_request_ts": last,
        }

    # -- keys ---------------------------------------------------------------------------------------

    async def create_key(
        self, account_id: str, name: str = "", limits: dict[str, Any] | None = None
    ) -> tuple[ApiKey, str]:
        """Create a key for an account. Returns the record and the plaintext key, which is never stored."""
        if await self.get_account(account_id) is None:
            raise StoreError(
                f"account '{account_id}' does not exist; create it first (distillshield accounts create {account_id})"
            )
        key_id = "k" + secrets.token_hex(6)
        secret = secrets.token_hex(24)
        salt = secrets.token_hex(16)
        key = ApiKey(key_id, account_id, name, salt, hash_secret(salt, secret), time.time(), None, limits)
        async with self.engine.begin() as conn:
            await conn.execute(api_keys.insert().values(**key.__dict__))
        return key, f"{KEY_PREFIX}-{key_id}-{secret}"

    async def list_keys(self, account_id: str | None = None) -> list[ApiKey]:
        q = api_keys.select().order_by(api_keys.c.created_at)
        if account_id:
            q = q.where(api_keys.c.account_id == account_id)
        async with self.engine.connect() as conn:
            return [ApiKey(**r) for r in (await conn.execute(q)).mappings()]

    async def revoke_key(self, key_id: str) -> ApiKey:
        async with self.engine.begin() as conn:
            res = await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            row = (await conn.execute(api_keys.select().where(api_keys.c.id == key_id))).mappings().first()
        if row is None:
            raise StoreError(f"key '{key_id}' does not exist")
        if res.rowcount == 0:
            raise StoreError(f"key '{key_id}' was already revoked")
        return ApiKey(**row)

    async def load_key_context(self, key_id: str) -> KeyContext | None:
        """The key with its account and org in one query, or None if the key id is unknown."""
        q = (
            sa.select(api_keys, accounts, orgs)
            .select_from(api_keys.join(accounts, api_keys.c.account_id == accounts.c.id))
            .join(orgs, accounts.c.org_id == orgs.c.id)
            .where(api_keys.c.id == key_id)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        nk = len(api_keys.c)
        na = len(accounts.c)
        vals = list(row)
        key = ApiKey(*vals[:nk])
        acct = Account(*vals[nk : nk + na])
        org = Org(*vals[nk + na :])
        return KeyContext(key, acct, org)

    # -- audit log ----------------------------------------------------------------------------------

    async def existing_request_ids(self, ids: Sequence[str]) -> set[str]:
        """Which of these request ids the audit log already holds (imports use it to stay idempotent)."""
        async with self.engine.connect() as conn:
            return await _held_ids(conn, ids)

    async def append_audit(self, rows: Sequence[Mapping[str, Any]], *, skip_existing: bool = False) -> int:
        """Append rows to the hash chain in one transaction; returns the last seq written.

        The chain head row is locked (FOR UPDATE on PostgreSQL; SQLite serialises writers), so
        several writers, in one process or in several replicas, extend a single unbroken chain.
        `skip_existing`: rows whose request id the log already holds are left out, checked under that
        lock, so concurrent writers given the same row (a redelivered stream entry) store it once.
        """
        if not rows:
            return 0
        async with self._write_lock:
            for attempt in range(20):
                try:
                    return await self._append_once(rows, skip_existing)
                except (OperationalError, sqlite3.OperationalError) as exc:  # SQLite "database is locked": retry
                    if attempt == 19 or "locked" not in str(exc).lower():
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _chain(
        rows: Sequence[Mapping[str, Any]], seq: int, prev: str, names: tuple[str, ...], tree: Frontier
    ) -> tuple[list[tuple[Any, ...]], int, str]:
        """Number and link `rows` after (seq, prev), adding each to `tree`: their parameter tuples, the new
        head seq and hash. One canonical encoding per row feeds both the chain link and the tree leaf."""
        out = []
        link, encode, leaf, add = chain.link_encoded, chain.canonical, merkle.leaf_hash, tree.append
        for r in rows:
            seq += 1
            rec = _storable_row(r)
            rec["seq"] = seq
            rec["prev_hash"] = prev
            encoded = encode(rec)
            rec["hash"] = prev = link(prev, encoded)
            add(leaf(encoded))
            out.append(tuple([rec[n] for n in names]))
        return out, seq, prev

    @staticmethod
    def _tree_start(size: int, frontier: str, head_seq: int) -> tuple[Frontier, int]:
        """The stored tree and the seq its next leaf comes after. A tree ahead of the chain head (the log
        was cut back, or its tables recreated) is rebuilt from the rows; `logs verify --checkpoint` shows
        whether the log lost rows a checkpoint had signed."""
        if size > head_seq:
            log.warning(
                "audit tree (size %d) is ahead of the chain head (row %d): rebuilt from the log", size, head_seq
            )
            return Frontier(), 0
        return Frontier.decode(size, frontier), size

    @staticmethod
    def _extend(tree: Frontier, rows: Sequence[Mapping[str, Any]]) -> None:
        for r in rows:
            tree.append(merkle.leaf_hash(chain.canonical(r)))

    async def _append_once(self, rows: Sequence[Mapping[str, Any]], skip_existing: bool = False) -> int:
        if self._audit_file is not None:
            if self._audit_executor is None:
                self._audit_executor = ThreadPoolExecutor(1, thread_name_prefix="distillshield-audit")
            return await asyncio.get_running_loop().run_in_executor(
                self._audit_executor, self._append_sqlite, rows, skip_existing
            )
        async with self.engine.begin() as conn:
            if self._insert_sql is None:
                # The driver's own SQL, compiled once: batches go to the driver's executemany as plain
                # tuples, without SQLAlchemy's per-execution work (cache lookup, per-row parameter
                # processing). The audit columns are strings, numbers and booleans, taken by every driver.
                self._insert_sql = _driver_sql(_INSERT_AUDIT, conn.dialect)
            sql, names = self._insert_sql
            if self.is_sqlite:
                # Take the write lock before reading the head so two processes cannot fork the chain.
                await conn.execute(_LOCK_HEAD)
            head = (await conn.execute(_READ_HEAD)).one()
            if skip_existing:
                rows = _unheld(rows, await _held_ids(conn, [r["request_id"] for r in rows]))
                if not rows:
                    return int(head.seq)
            tree = await self._load_tree(conn, head.seq)
            out, seq, prev = self._chain(rows, head.seq, head.hash, names, tree)
            await conn.exec_driver_sql(sql, out)
            await conn.execute(_WRITE_HEAD.values(seq=seq, hash=prev))
            await conn.execute(_WRITE_TREE.values(size=tree.size, frontier=tree.encode()))
        return seq

    async def _load_tree(self, conn: Any, head_seq: int, stored: tuple[int, str] | None = None) -> Frontier:
        """The tree row (`stored`, or read now), extended over any rows it lacks (rows written before the
        tree existed)."""
        size, frontier = stored if stored is not None else (await conn.execute(_READ_TREE)).one()
        tree, after = self._tree_start(int(size), frontier, head_seq)
        while after < head_seq:
            q = (
                sa.select(*[audit_log.c[k] for k in chain.CHAINED_FIELDS])
                .where(audit_log.c.seq > after, audit_log.c.seq <= head_seq)
                .order_by(audit_log.c.seq)
                .limit(5000)
            )
            batch = [dict(r) for r in (await conn.execute(q)).mappings()]
            if not batch:
                break
            self._extend(tree, batch)
            after = batch[-1]["seq"]
        return tree

    def _append_sqlite(self, rows: Sequence[Mapping[str, Any]], skip_existing: bool = False) -> int:
        """One batch on a SQLite file, in the audit thread: the whole transaction is one hand-off from the
        event loop instead of one per statement through aiosqlite, and the chaining (hashes, copies) runs
        here too. BEGIN IMMEDIATE takes the write lock before the head is read, so two writers (threads or
        processes) cannot fork the chain; a busy database waits busy_timeout, then raises "locked"."""
        conn = self._audit_conn
        if conn is None:
            assert self._audit_file is not None
            conn = sqlite3.connect(self._audit_file, isolation_level=None)  # transactions are explicit
            _sqlite_pragmas(conn, None)
            self._audit_conn = conn
        sql, names = _SQLITE_INSERT
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq, prev = conn.execute(_SQLITE_READ_HEAD, (1,)).fetchone()
            if skip_existing:
                rows = _unheld(rows, _held_ids_sqlite(conn, [r["request_id"] for r in rows]))
                if not rows:
                    conn.execute("COMMIT")
                    return int(seq)
            tree = self._load_tree_sqlite(conn, seq)
            out, seq, prev = self._chain(rows, seq, prev, names, tree)
            conn.executemany(sql, out)
            conn.execute(_SQLITE_WRITE_HEAD, (seq, prev, 1))
            conn.execute(_SQLITE_WRITE_TREE, (tree.size, tree.encode(), 1))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return seq

    def _load_tree_sqlite(self, conn: sqlite3.Connection, head_seq: int) -> Frontier:
        size, frontier = conn.execute(_SQLITE_READ_TREE, (1,)).fetchone()
        tree, after = self._tree_start(int(size), frontier, head_seq)
        if after < head_seq:
            cur = conn.execute(_SQLITE_READ_ROWS, (after, head_seq))
            while batch := cur.fetchmany(5000):
                recs = [dict(zip(chain.CHAINED_FIELDS, r, strict=True)) for r in batch]
                for rec in recs:  # plain sqlite3 returns 0/1 where SQLAlchemy (and so the hash) has booleans
                    for k in _BOOLEAN_COLUMNS:
                        if rec[k] is not None:
                            rec[k] = bool(rec[k])
                self._extend(tree, recs)
        return tree

    async def tree_head(self) -> tuple[int, bytes]:
        """The Merkle tree head of the whole log as (size, root), as the last append left it: O(log n), no
        rehash of the log (the rows of a log written before the tree existed are read once)."""
        # Head and tree in one statement: they are written in one transaction, so they agree.
        q = (
            sa.select(chain_head.c.seq, audit_tree.c.size, audit_tree.c.frontier)
            .select_from(chain_head.join(audit_tree, audit_tree.c.id == chain_head.c.id))
            .where(chain_head.c.id == 1)
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
            if row is None:
                return 0, merkle.EMPTY_ROOT
            tree = await self._load_tree(conn, int(row.seq), (int(row.size), row.frontier))
        return tree.size, tree.root()

    async def chain_head(self) -> tuple[int, str]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(chain_head.c.seq, chain_head.c.hash).where(chain_head.c.id == 1))
            ).first()
        return (int(row.seq), row.hash) if row else (0, chain.GENESIS)

    async def iter_audit(
        self, start_seq: int = 1, end_seq: int | None = None, batch: int = 2000
    ) -> AsyncIterator[dict[str, Any]]:
        """Audit rows in seq order, read in pages (constant memory)."""
        cur = start_seq
        while True:
            q = audit_log.select().where(audit_log.c.seq >= cur).order_by(audit_log.c.seq).limit(batch)
            if end_seq is not None:
                q = q.where(audit_log.c.seq <= end_seq)
            async with self.engine.connect() as conn:
                rows = [dict(r) for r in (await conn.execute(q)).mappings()]
            if not rows:
                return
            for r in rows:
                yield r
            cur = rows[-1]["seq"] + 1

    async def verify_chain(self) -> chain.ChainReport:
        head = await self.chain_head()
        return await chain.averify_rows(self.iter_audit(), head if head[0] > 0 else None)
