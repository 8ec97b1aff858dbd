"""An account's sample prompts: redacted on the page, revealed only by a CSRF-protected POST that is recorded
first (a row of the hash-chained audit log: who, which account, which requests, when) and shown in the
decision log."""

from __future__ import annotations

import hashlib
import io
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from markupsafe import escape

from distillshield.detect.text import words
from tests.conftest import RunningGateway
from tests.console_helpers import admin_acts, login

ACCOUNT = "reveal-acme"
SECRET_PROMPT = 'Summarise ticket 4711 for our client, mr Jones: "card 4111 1111 1111 1111", write to jo@example.com'
OTHER_PROMPT = "Explain photosynthesis to a child in 2 sentences"


def _audit_row(account_id: str, prompt: str, ts: float) -> dict[str, Any]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": prompt}]}
    return {
        "ts": ts,
        "request_id": uuid.uuid4().hex,
        "account_id": account_id,
        "org_id": "default",
        "key_id": None,
        "ip": "203.0.113.7",
        "user_agent": "test",
        "endpoint": "/v1/chat/completions",
        "model": "fake-model",
        "stream": False,
        "status": 200,
        "latency_ms": 1.0,
        "request": orjson.dumps(body).decode(),
        "response_text": "an answer",
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "decision": "allow",
        "error": None,
    }


@pytest.fixture
def seeded(fake_gateway: RunningGateway) -> RunningGateway:
    fake_gateway.create_key(ACCOUNT)
    now = time.time()
    rows = [_audit_row(ACCOUNT, OTHER_PROMPT, now - 20), _audit_row(ACCOUNT, SECRET_PROMPT, now - 10)]
    fake_gateway.run(fake_gateway.state.store.append_audit(rows))
    return fake_gateway


def _seqs(gw: RunningGateway) -> list[int]:
    async def read() -> list[int]:
        from distillshield.store.tables import audit_log

        async with gw.state.store.engine.connect() as conn:
            q = sa.select(audit_log.c.seq).where(audit_log.c.account_id == ACCOUNT).order_by(sa.desc(audit_log.c.seq))
            return [int(s) for s in (await conn.execute(q)).scalars()]

    return gw.run(read())


def test_the_account_page_sends_redacted_prompts_only_and_logs_nothing(seeded: RunningGateway) -> None:
    client, _ = login(seeded)
    page = client.get(f"/console/accounts/{ACCOUNT}")
    assert page.status_code == 200 and 'id="sample-prompts"' in page.text
    text = page.text.lower()
    for prompt in (SECRET_PROMPT, OTHER_PROMPT):
        for word in words(prompt.lower()):
            if len(word) > 3:  # "for", "our", "to", "in": words of the page's own text too
                assert word not in text, word
    assert "18 words · numbers 1, names 1, quoted 1, URLs or e-mails 1" in page.text  # what the prompts carry
    assert "8 words · numbers 1" in page.text
    assert "Reveal prompts (logged)" in page.text
    assert admin_acts(seeded, "reveal_prompts") == []


def test_revealing_prompts_writes_one_audit_log_row_then_shows_them(seeded: RunningGateway) -> None:
    client, csrf = login(seeded)
    before = time.time()
    r = client.post(f"/console/accounts/{ACCOUNT}/reveal", data={"csrf_token": csrf, "reviewer": "ana"})
    assert r.status_code == 200, r.text
    assert str(escape(SECRET_PROMPT)) in r.text and OTHER_PROMPT in r.text
    assert 'id="prompts-revealed"' in r.text
    [row] = admin_acts(seeded, "reveal_prompts")
    assert row["action"] == "reveal_prompts" and row["subject"] == ACCOUNT and row["actor"] == "ana"
    assert row["session"] == hashlib.sha256(csrf.encode()).hexdigest()[:16]
    assert row["detail"] == {"requests": _seqs(seeded), "count": 2}
    assert before <= row["ts"] <= time.time()
    log = client.get("/console/audit").text
    assert "reveal_prompts" in log and f'href="/console/accounts/{ACCOUNT}"' in log and ">ana<" in log
    # without a reviewer name, the act is the admin credential's, as a review decision's is
    assert client.post(f"/console/accounts/{ACCOUNT}/reveal", data={"csrf_token": csrf}).status_code == 200
    assert [a["actor"] for a in admin_acts(seeded, "reveal_prompts")] == ["ana", "console"]


@pytest.mark.parametrize("sent", [None, "wrong-token"])
def test_a_reveal_without_the_csrf_token_is_refused_and_not_logged(seeded: RunningGateway, sent: str | None) -> None:
    client, _ = login(seeded)
    r = client.post(f"/console/accounts/{ACCOUNT}/reveal", data={"csrf_token": sent} if sent else {})
    assert r.status_code == 403 and "CSRF token" in r.text
    assert "4711" not in r.text and admin_acts(seeded, "reveal_prompts") == []


def test_a_reveal_without_a_session_is_refused_and_not_logged(seeded: RunningGateway) -> None:
    r = httpx.post(f"{seeded.base}/console/accounts/{ACCOUNT}/reveal", data={"csrf_token": "x"})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert "4711" not in r.text and admin_acts(seeded, "reveal_prompts") == []


def test_a_reveal_of_an_unknown_account_or_with_a_bad_reviewer_is_a_4xx(seeded: RunningGateway) -> None:
    client, csrf = login(seeded)
    r = client.post("/console/accounts/nobody-here/reveal", data={"csrf_token": csrf})
    assert r.status_code == 404 and "does not exist" in r.text
    r = client.post(f"/console/accounts/{ACCOUNT}/reveal", data={"csrf_token": csrf, "reviewer": "x" * 65})
    assert r.status_code == 400 and "at most 64 characters" in r.text and "4711" not in r.text
    assert admin_acts(seeded, "reveal_prompts") == []


def test_an_evidence_bundle_downloads_as_a_zip_that_verifies_and_is_logged(
    seeded: RunningGateway, tmp_path: Path
) -> None:
    from distillshield.evidence import verify_bundle

    client, csrf = login(seeded)
    r = client.post(f"/console/accounts/{ACCOUNT}/evidence", data={"csrf_token": csrf, "reviewer": "ana"})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["content-type"] == "application/zip"
    assert r.headers["content-disposition"] == f'attachment; filename="evidence-{ACCOUNT}.zip"'
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        zf.extractall(tmp_path)
    bundle = tmp_path / f"evidence-{ACCOUNT}"
    assert {"report.html", "manifest.json", "rows.jsonl"} <= {p.name for p in bundle.iterdir()}
    cited = [orjson.loads(line) for line in (bundle / "rows.jsonl").read_bytes().splitlines()]
    assert sorted(row["seq"] for row in cited) == sorted(_seqs(seeded))  # the account's two requests
    check = seeded.run(verify_bundle(bundle, seeded.state.store))
    assert check.ok, check.checks  # the rows are the log's, and the log still holds them
    [act] = admin_acts(seeded, "evidence_bundle")
    assert act["actor"] == "ana" and act["subject"] == ACCOUNT and act["via"] == "console"
    assert act["detail"]["sha256"] == hashlib.sha256(r.content).hexdigest() and act["detail"]["rows_cited"] == 2
    assert "evidence_bundle" in client.get("/console/audit").text


def test_an_evidence_bundle_without_the_csrf_token_or_for_no_account_is_refused_and_not_logged(
    seeded: RunningGateway,
) -> None:
    client, csrf = login(seeded)
    r = client.post(f"/console/accounts/{ACCOUNT}/evidence", data={})
    assert r.status_code == 403 and "CSRF token" in r.text and r.headers["content-type"].startswith("text/html")
    r = client.post("/console/accounts/nobody-here/evidence", data={"csrf_token": csrf})
    assert r.status_code == 404 and "does not exist" in r.text
    assert admin_acts(seeded, "evidence_bundle") == []
