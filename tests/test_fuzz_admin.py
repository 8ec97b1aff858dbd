"""Fuzzing the admin API with schemathesis: every operation of its OpenAPI spec (fetched with the admin token from
a running gateway) gets generated requests, valid ones and invalid ones (wrong types, missing or extra fields,
values outside the schema, a missing token). Whatever arrives, the answer is never a 5xx, and a response whose
status the spec documents has the documented shape. On the SQLite store and on PostgreSQL, whose driver rejects
what SQLite takes (NUL characters in text, text past a column's width, a negative LIMIT). Bounded in examples so
that `make test` stays quick, and derandomized: a failure reproduces on the next run."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.conftest import ADMIN_TOKEN, RunningGateway
from tests.fakes import FakeUpstream

EXAMPLES_PER_OPERATION = 100
EXAMPLES_WITHOUT_INPUTS = 10  # an operation with no parameters and no body: only the token varies
AUTH = {"authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None: the gateway's default SQLite file. PostgreSQL: a database of its own, dropped afterwards (the shared
    one is used by other tests, which drop tables)."""
    if request.param == "sqlite":
        yield None
        return
    yield request.getfixturevalue("pg_database")


@pytest.fixture
def gateway(store_url: str | None, gateway_factory: Any) -> RunningGateway:
    overrides = {"store__url": store_url} if store_url else {}
    gw = gateway_factory({"upstream": FakeUpstream()}, **overrides)
    gw.create_key("fuzz-seed")  # an account and a key for generated ids to find
    return gw


def fuzz_operation(operation: Any, base_url: str, session: requests.Session, sent: list[int]) -> None:
    """Schemathesis's coverage cases for one operation (deterministic: each parameter and body field at its
    boundaries, missing, or of another type), then EXAMPLES_PER_OPERATION generated requests, valid and invalid.
    Raises on the first failed check (a generated request shrunk to a minimal one first)."""

    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=base_url, session=session, headers=AUTH, timeout=30)
        sent.append(response.status_code)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

    schema = operation.schema
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    generation = schema.config.generation_for(operation=operation)
    for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=generation):
        check(case)

    has_inputs = bool(operation.body) or any(True for _ in operation.iter_parameters())
    examples = EXAMPLES_PER_OPERATION if has_inputs else EXAMPLES_WITHOUT_INPUTS
    cases = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))
    hypothesis_settings = settings(
        max_examples=examples, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
    )
    hypothesis_settings(given(case=cases)(check))()


# The gateway runs in a thread of this process and uses `random`; hypothesis notices and warns.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_no_admin_request_gets_a_server_error(gateway: RunningGateway) -> None:
    spec = httpx.get(f"{gateway.base}/admin/openapi.json", headers=AUTH, timeout=30)
    assert spec.status_code == 200, spec.text
    doc = spec.json()
    declared = [set(op["responses"]) for ops in doc["paths"].values() for op in ops.values()]
    assert all({"400", "401", "403"} <= d for d in declared)  # errors are declared, so their shape is checked
    schema = schemathesis.openapi.from_dict(doc)
    operations = [result.ok() for result in schema.get_all_operations()]

    failures: dict[str, str] = {}
    sent: list[int] = []
    started = time.monotonic()
    with requests.Session() as session:  # one keep-alive connection, as a client would hold it
        for operation in operations:
            try:
                fuzz_operation(operation, f"{gateway.base}/admin", session, sent)
            except (Exception, FailureGroup) as exc:  # every operation is fuzzed; all failures are reported together
                failures[operation.label] = str(exc)
    print(f"{len(operations)} operations, {len(sent)} requests in {time.monotonic() - started:.1f} s")

    assert failures == {}, "\n\n".join(f"{k}: {v[:1500]}" for k, v in failures.items())
    assert len(operations) >= 19  # the whole admin API, not an empty or truncated spec
    assert any(s < 300 for s in sent) and any(400 <= s < 500 for s in sent)  # both kinds were exercised


LONG = "x" * 300
# Values that random generation rarely produces but that broke the store before: text past a column's width or
# with a NUL (PostgreSQL rejects both; SQLite takes them), integers past 64 bits, Unicode digits, non-finite
# numbers (which no JSON answer can carry) and wrong types inside the free-form risk report.
AWKWARD = [
    ("POST", "/accounts", {"id": "awk-1", "name": LONG}),
    ("POST", "/keys", {"account_id": "fuzz-seed", "name": LONG}),
    ("POST", "/keys", {"account_id": LONG}),
    ("POST", "/policy/reload", {"path": "policy\x00.yaml"}),
    ("GET", "/review?limit=-1", None),
    ("GET", "/review?limit=100000000000000000000", None),
    ("GET", "/review/100000000000000000000", None),
    ("GET", "/review/\u00b2", None),
    ("POST", "/review/100000000000000000000/decide", {"decision": "clear"}),
    ("POST", "/review/account:fuzz-seed/decide", {"decision": "clear", "reviewer": LONG}),
    ("POST", "/review/account:fuzz-seed/decide", {"decision": "clear", "note": "a\x00b"}),
    ("POST", "/review/account:fuzz-seed/decide", {"decision": "clear", "reviewer": "a\x00b"}),
    ("POST", "/risk", {"accounts": [{"account_id": "a\x00b", "risk": 0.9, "verdict": "extraction"}]}),
    ("POST", "/risk", {"accounts": [{"account_id": LONG, "risk": 0.9, "verdict": "extraction"}]}),
    ("POST", "/risk", {"accounts": [{"account_id": "c1", "risk": 0.9, "verdict": "extraction", "cluster_id": 7}]}),
    ("POST", "/risk", {"accounts": [{"account_id": "c2", "risk": 0.9, "verdict": "extraction", "cluster_id": [1]}]}),
    ("POST", "/risk", {"accounts": [{"account_id": "c3", "risk": 0.9, "verdict": "extraction", "cluster_id": LONG}]}),
    ("POST", "/risk", {"accounts": [{"account_id": "r1", "risk": 0.9, "verdict": "extraction",
                                     "reasons": [{"signal": "s", "score": "high"}]}]}),
    ("POST", "/risk", {"accounts": [{"account_id": "r2", "risk": 0.9, "verdict": "extraction",
                                     "reasons": [{"signal": "s", "score": 10**400}]}]}),
    ("POST", "/risk", b'{"accounts": [{"account_id": "r3", "risk": 0.9, "verdict": "extraction", '
                      b'"reasons": [{"signal": "s", "score": 0.5, "detail": NaN}]}]}'),
    ("POST", "/risk", {"accounts": [{"account_id": "r4", "risk": 0.9, "verdict": "extraction", "reasons": 5}]}),
]  # fmt: skip


def test_awkward_values_get_a_4xx_that_names_the_problem(gateway: RunningGateway) -> None:
    flagged = {"accounts": [{"account_id": "fuzz-seed", "risk": 0.9, "verdict": "extraction"}]}
    r = gateway.admin("POST", "/risk", json=flagged)  # an open review item, so that the decisions reach the store
    assert r.status_code == 200 and r.json()["queued"] >= 1, r.text
    answers = {}
    for method, path, body in AWKWARD:
        kw = {} if body is None else {"content": body} if isinstance(body, bytes) else {"json": body}
        r = gateway.admin(method, path, **kw)
        answers[(method, path, repr(body)[:60])] = (r.status_code, r.json().get("detail"))
    assert {place: got for place, got in answers.items() if not (400 <= got[0] < 500 and got[1])} == {}

    # nothing that was refused reached the board or the queue: both still answer
    for path in ("/risk", "/review", "/review/account:fuzz-seed"):
        assert gateway.admin("GET", path).status_code == 200, path
    assert gateway.admin("POST", "/review/scan").status_code == 200
