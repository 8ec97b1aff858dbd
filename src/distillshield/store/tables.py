"""SQLAlchemy table definitions. One metadata object; create_all builds them on either database."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("limits", sa.JSON, nullable=True),
)

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("org_id", sa.String(64), sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("tier", sa.String(32), nullable=False, default="standard"),
    sa.Column("verification", sa.String(32), nullable=False, default="none"),
    sa.Column("status", sa.String(16), nullable=False, default="active"),
    sa.Column("limits", sa.JSON, nullable=True),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("name", sa.String(200), nullable=False, default=""),
    # Only a salted hash of the secret is stored; the key itself is shown once at creation.
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("revoked_at", sa.Double, nullable=True),
    sa.Column("limits", sa.JSON, nullable=True),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("ts", sa.Double, nullable=False, index=True),
    sa.Column("request_id", sa.String(64), nullable=False, index=True),
    sa.Column("account_id", sa.String(64), nullable=True, index=True),
    sa.Column("org_id", sa.String(64), nullable=True),
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("ip", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.Text, nullable=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("stream", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Double, nullable=False),
    sa.Column("request", sa.Text, nullable=True),
    sa.Column("response_text", sa.Text, nullable=True),
    sa.Column("finish_reason", sa.String(32), nullable=True),
    sa.Column("prompt_tokens", sa.Integer, nullable=True),
    sa.Column("completion_tokens", sa.Integer, nullable=True),
    sa.Column("decision", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    # The batch (store/batches.py) a row's request ran in; null for live requests. Added after the log's
    # first release: Store.init adds it to older databases, and chain.canonical leaves it out when null.
    sa.Column("batch_id", sa.String(64), nullable=True, index=True),
    # When the row's account was created (accounts.created_at, copied at request time so the log and its
    # exports carry it: detection reads accounts created in waves from it). Added later, like batch_id.
    sa.Column("account_created_at", sa.Double, nullable=True),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# Administrative acts (review decisions, account and key changes, reveals: store/admin_log.py) are rows of
# the audit log too, with the endpoint "admin/<action>" and no account. A partial index holds only them, so
# listing them does not scan the request rows (and costs the request rows' inserts nothing).
ADMIN_ENDPOINT_PREFIX = "admin/"


def is_admin_endpoint(endpoint: str) -> bool:
    """`is_admin_row` for a row already read: an administrative act, not a request."""
    return endpoint.startswith(ADMIN_ENDPOINT_PREFIX)


def is_admin_row() -> sa.ColumnElement[bool]:
    """The condition that selects the admin rows: the partial index's own, so both databases use it."""
    return audit_log.c.endpoint.like(ADMIN_ENDPOINT_PREFIX + "%")


admin_rows_index = sa.Index(
    "ix_audit_log_admin", audit_log.c.seq, sqlite_where=is_admin_row(), postgresql_where=is_admin_row()
)

# One row (id=1): the last sequence number and hash. Writers lock it, so several gateway replicas
# sharing one PostgreSQL extend a single chain; verification checks the log's tail against it.
chain_head = sa.Table(
    "audit_chain_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

# One row (id=1): the audit log's Merkle tree (store/merkle.py) as its size and right-edge subtree hashes,
# updated with the chain head in every append, so a signed checkpoint needs no rehash of the log.
audit_tree = sa.Table(
    "audit_tree",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("frontier", sa.Text, nullable=False),  # hex hashes, largest subtree first, space-separated
)

# The review queue (store/review.py): one item per flagged account, cluster or allowlisted org, with
# its current status; every reviewer decision is a row of its own, the record of who decided what.
review_items = sa.Table(
    "review_items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(16), nullable=False),  # account | cluster | org
    sa.Column("subject", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # open | confirmed | cleared | allowlisted | escalated
    sa.Column("verdict", sa.String(16), nullable=True),  # detection's latest verdict
    sa.Column("risk", sa.Double, nullable=True),
    sa.Column("cluster_id", sa.String(64), nullable=True),
    sa.Column("decided_verdict", sa.String(16), nullable=True),  # the verdict a reviewer last decided on
    sa.Column("evidence", sa.JSON, nullable=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False, index=True),
    sa.UniqueConstraint("kind", "subject", name="uq_review_items_subject"),
)

review_decisions = sa.Table(
    "review_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item_id", sa.Integer, sa.ForeignKey("review_items.id"), nullable=False, index=True),
    sa.Column("decision", sa.String(16), nullable=False),  # confirm | clear | allowlist | escalate
    sa.Column("scope", sa.String(16), nullable=False),  # account | cluster | org: what it applies to
    sa.Column("reviewer", sa.String(64), nullable=False, default=""),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("verdict", sa.String(16), nullable=True),  # detection's verdict when decided
    sa.Column("members", sa.JSON, nullable=True),  # the accounts (or orgs) it applied to
    sa.Column("ts", sa.Double, nullable=False),
)

# Countermeasures an analyst applied by hand (store/pins.py): a throttle, degrade or watermark pinned to one
# account, whatever detection says, until it is lifted or expires; every replica's policy engine reads them.
countermeasure_pins = sa.Table(
    "countermeasure_pins",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),  # throttle | degrade | watermark
    sa.Column("params", sa.JSON, nullable=False),  # the policy file's params for that action (rules.PARAMS)
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("expires_at", sa.Double, nullable=True),  # null: until lifted
    sa.Column("lifted_at", sa.Double, nullable=True),
    sa.Column("lifted_by", sa.String(64), nullable=True),
    sa.Column("updated_at", sa.Double, nullable=False, index=True),  # replicas poll for changes on it
)

# Imported threat intelligence (intel/store.py): one row per STIX indicator id, its latest version only;
# `data` is its matchable form (intel/indicators.py Indicator).
intel_indicators = sa.Table(
    "intel_indicators",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("modified", sa.Double, nullable=False),
    sa.Column("producer", sa.String(200), nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("valid_until", sa.Double, nullable=True),
    sa.Column("source", sa.String(500), nullable=False, default=""),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("imported_at", sa.Double, nullable=False, index=True),
)

# Where each TAXII collection's last pull ended (the latest `date_added` of its manifest), per collection URL.
intel_pulls = sa.Table(
    "intel_pulls",
    metadata,
    sa.Column("collection", sa.String(500), primary_key=True),
    sa.Column("added_after", sa.String(64), nullable=True),
    sa.Column("pulled_at", sa.Double, nullable=False),
)

# The Batch API (store/batches.py, docs/batches-api.md): uploaded and produced files, one row each with
# its bytes, and batches, each owned by the account (and key) that created it.
files = sa.Table(
    "files",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False, index=True),
    sa.Column("purpose", sa.String(32), nullable=False),  # batch | batch_output
    sa.Column("filename", sa.String(500), nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("content", sa.LargeBinary, nullable=False),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=False, index=True),
    sa.Column("key_id", sa.String(32), nullable=False),  # the key whose limits each request is charged to
    # Where the batch came from: its requests' audit rows carry them, as a live request's would.
    sa.Column("client_ip", sa.String(64), nullable=True),
    sa.Column("user_agent", sa.Text, nullable=True),
    sa.Column("endpoint", sa.String(64), nullable=False),
    sa.Column("input_file_id", sa.String(64), nullable=False),
    sa.Column("completion_window", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("created_at", sa.Double, nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    sa.Column("times", sa.JSON, nullable=False),  # in_progress_at, completed_at, ... (Unix seconds)
    sa.Column("output_file_id", sa.String(64), nullable=True),
    sa.Column("error_file_id", sa.String(64), nullable=True),
    sa.Column("request_counts", sa.JSON, nullable=False),  # {total, completed, failed}
    sa.Column("errors", sa.JSON, nullable=True),  # [{code, message, line, param}]
    sa.Column("user_metadata", sa.JSON, nullable=True),  # the client's `metadata`
    sa.Column("usage", sa.JSON, nullable=True),  # {input_tokens, output_tokens}
    # The runner that holds the batch and until when (Unix seconds): it renews the lease while it runs the
    # batch; a batch whose lease ran out (its gateway died) is taken over by another runner. Added after the
    # Batch API's first release: Store.init adds them to older databases (null: not leased).
    sa.Column("claimed_by", sa.String(64), nullable=True),
    sa.Column("lease_until", sa.Double, nullable=True),
)

# A batch's requests that were sent, one row each, written before the request goes out and again with its
# answer: a runner taking over a batch runs only the lines that have no row, so no request is sent (or
# charged) twice. A row still `sent` when the batch is taken over was in flight when its runner died.
# Dropped once the batch's output and error files are written.
batch_lines = sa.Table(
    "batch_lines",
    metadata,
    sa.Column("batch_id", sa.String(64), primary_key=True),
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),  # 1-based line of the input file
    sa.Column("custom_id", sa.Text, nullable=False),
    sa.Column("state", sa.String(8), nullable=False),  # sent | output | error
    sa.Column("data", sa.LargeBinary, nullable=True),  # the output or error file line, once answered
    sa.Column("claimed_by", sa.String(64), nullable=False),
)
