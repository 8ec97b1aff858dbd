"""The console's watermark lookup: text the gateway watermarked for one account is attributed to it, plain
text to nobody; bad input is refused with a message. The watermarked text is generated as the watermark
tests do (tests/test_watermark_model.py): the embedded model through a real gateway with the account's
watermark switched on. The browser test drives the page in headless Chromium.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from distillshield.console.watermark import MAX_UPLOAD_BYTES
from tests.conftest import ADMIN_TOKEN, RunningGateway, make_settings, start_gateway
from tests.console_helpers import admin_acts, login
from tests.test_console_browser import CHROMIUM_ARGS, _require_browser
from tests.test_console_browser import artefacts as artefacts  # a fixture, shared

SECRET = "console-wm-secret-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
NAMED = re.compile(r'<p class="wm-named">Attributed to:(.*?)</p>', re.S)


@pytest.fixture(scope="module")
def wm_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # One model thread: on a shared 2-core machine two threads spin at barriers and run ~10x slower.
    gw = start_gateway(
        # mode off: these tests switch single accounts on (every account is marked by default)
        make_settings(
            tmp_path_factory.mktemp("console-wm"),
            watermark__secret=SECRET,
            upstream__local__n_threads=1,
            watermark__mode="off",
        )
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def texts(wm_gateway: RunningGateway) -> dict[str, str]:
    """One watermarked answer (wm-alice, strong) and one plain answer (wm-bob), 96 tokens each, T=1; two more
    accounts in the store as candidates."""
    wm_gateway.state.watermark.set("wm-alice", "strong")
    out = {}
    for account in ("wm-alice", "wm-bob"):
        client = openai.OpenAI(base_url=f"{wm_gateway.base}/v1", api_key=wm_gateway.create_key(account))
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=96, temperature=1.0, seed=7
        )
        out[account] = r.choices[0].message.content or ""
    for other in ("wm-carol", "wm-dave"):
        wm_gateway.create_key(other)
    return out


def _results(html: str) -> list[str]:
    """Each result block of the page, in order."""
    return html.split('<div class="wm-result">')[1:]


def test_pasted_watermarked_text_is_attributed_to_its_account_and_plain_text_to_nobody(
    wm_gateway: RunningGateway, texts: dict[str, str]
) -> None:
    client, csrf = login(wm_gateway)
    page = client.get("/console/watermark")
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text
    r = client.post("/console/watermark", data={"csrf_token": csrf, "text": texts["wm-alice"]})
    assert r.status_code == 200, r.text
    [alice] = _results(r.text)
    named = NAMED.search(alice)
    assert named and re.findall(r'href="/console/accounts/([^"]+)"', named.group(1)) == ["wm-alice"]
    z = re.search(r'account wm-alice</a></td>\s*<td class="num">([-\d.]+)</td>', alice)
    assert z and float(z.group(1)) >= 4.0  # its z-score, in the candidates table
    assert "4 keys tested (4 accounts, 0 clusters)" in r.text
    plain = client.post("/console/watermark", data={"csrf_token": csrf, "text": texts["wm-bob"]})
    assert plain.status_code == 200
    assert "Attributed to nobody" in plain.text and NAMED.search(plain.text) is None


def test_an_uploaded_jsonl_file_is_attributed_text_by_text(wm_gateway: RunningGateway, texts: dict[str, str]) -> None:
    client, csrf = login(wm_gateway)
    leaked = "\n".join(json.dumps({"id": f"leak-{a}", "text": t}) for a, t in texts.items()) + "\n"
    r = client.post(
        "/console/watermark",
        data={"csrf_token": csrf},
        files={"file": ("leaked.jsonl", leaked.encode(), "application/x-ndjson")},
    )
    assert r.status_code == 200, r.text
    by_id = {re.search(r'<span class="id">([^<]+)</span>', b).group(1): b for b in _results(r.text)}  # type: ignore[union-attr]
    assert set(by_id) == {"leak-wm-alice", "leak-wm-bob"}
    named = NAMED.search(by_id["leak-wm-alice"])
    assert named and "/console/accounts/wm-alice" in named.group(1)
    assert "Attributed to nobody" in by_id["leak-wm-bob"]


def _lookups(gw: RunningGateway) -> list[dict[str, Any]]:
    return admin_acts(gw, "watermark_lookup")


def test_a_lookup_is_recorded_with_its_size_and_the_accounts_it_named(
    wm_gateway: RunningGateway, texts: dict[str, str]
) -> None:
    import hashlib
    import time

    client, csrf = login(wm_gateway)
    before = len(_lookups(wm_gateway))
    leaked = "\n".join(json.dumps({"text": t}) for t in texts.values()) + "\n"
    start = time.time()
    r = client.post(
        "/console/watermark",
        data={"csrf_token": csrf, "reviewer": "ana"},
        files={"file": ("leaked.jsonl", leaked.encode(), "application/x-ndjson")},
    )
    assert r.status_code == 200, r.text
    rows = _lookups(wm_gateway)
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["actor"] == "ana" and row["session"] == hashlib.sha256(csrf.encode()).hexdigest()[:16]
    assert row["subject"] == "wm-alice" and start <= row["ts"] <= time.time()
    assert row["detail"] == {
        "texts": 2,
        "bytes": len(leaked.encode()),
        "file": "leaked.jsonl",
        "pooled": False,
        "keys_tested": 4,
        "attributed": ["account:wm-alice"],
        "attributed_total": 1,
    }
    assert texts["wm-alice"][:40] not in str(row)  # the size of what was looked up, not the text
    log = client.get("/console/audit").text
    assert "watermark_lookup" in log and "attributed to: account:wm-alice" in log
    refused = client.post("/console/watermark", data={"csrf_token": csrf, "text": "  "})
    assert refused.status_code == 400 and len(_lookups(wm_gateway)) == before + 1  # nothing looked up


def test_bad_input_is_refused_with_a_message(wm_gateway: RunningGateway) -> None:
    client, csrf = login(wm_gateway)
    empty = client.post("/console/watermark", data={"csrf_token": csrf, "text": "   "})
    assert empty.status_code == 400 and "paste a text or choose a file" in empty.text
    bad = b'{"text": "fine"}\n{"text": "broken"\n'
    r = client.post(
        "/console/watermark", data={"csrf_token": csrf}, files={"file": ("leaked.jsonl", bad, "application/x-ndjson")}
    )
    assert r.status_code == 400 and "leaked.jsonl:2: not valid JSON" in r.text
    no_text = client.post(
        "/console/watermark",
        data={"csrf_token": csrf},
        files={"file": ("out.jsonl", b'{"id": 1, "prompt": "x"}\n', "application/x-ndjson")},
    )
    assert no_text.status_code == 400 and "out.jsonl:1: no text field" in no_text.text
    big = client.post(
        "/console/watermark",
        data={"csrf_token": csrf},
        files={"file": ("huge.txt", b"a" * (MAX_UPLOAD_BYTES + 1), "text/plain")},
    )
    assert big.status_code == 413 and "larger than 2 MiB" in big.text


def test_a_lookup_too_large_to_test_at_once_is_refused(
    wm_gateway: RunningGateway, texts: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillshield.console import watermark

    monkeypatch.setattr(watermark, "MAX_KEY_TESTS", 7)  # two texts under the store's 4 accounts' keys: 8 tests
    client, csrf = login(wm_gateway)
    two = b'{"text": "one leaked answer"}\n{"text": "another leaked answer"}\n'
    r = client.post("/console/watermark", data={"csrf_token": csrf}, files={"file": ("two.jsonl", two, "text/plain")})
    assert r.status_code == 413 and "key tests" in r.text and "pool" in r.text
    pooled = client.post(
        "/console/watermark", data={"csrf_token": csrf, "pool": "1"}, files={"file": ("two.jsonl", two, "text/plain")}
    )
    assert pooled.status_code == 200 and "all texts, pooled" in pooled.text


def test_a_lookup_needs_the_session_s_csrf_token(wm_gateway: RunningGateway) -> None:
    client, _ = login(wm_gateway)
    r = client.post("/console/watermark", files={"file": ("a.txt", b"some text", "text/plain")})
    assert r.status_code == 403 and "CSRF token" in r.text
    anonymous = httpx.post(f"{wm_gateway.base}/console/watermark", data={"text": "x"})
    assert anonymous.status_code == 303 and anonymous.headers["location"] == "/console/login"


def test_without_a_watermark_secret_the_page_says_so(fake_gateway: RunningGateway) -> None:
    fake_gateway.create_key("someone")
    client, csrf = login(fake_gateway)
    page = client.get("/console/watermark")
    assert page.status_code == 200 and 'id="wm-disabled"' in page.text
    r = client.post("/console/watermark", data={"csrf_token": csrf, "text": "a leaked answer"})
    assert r.status_code == 409 and "no watermark secret is configured" in r.text


# -- in a browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wm_browser() -> Iterator[Any]:
    chromium = _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def test_an_analyst_looks_up_leaked_text_in_the_browser(
    wm_browser: Any, wm_gateway: RunningGateway, texts: dict[str, str], artefacts: Path, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    context = wm_browser.new_context(base_url=wm_gateway.base, viewport={"width": 1400, "height": 900})
    outside: list[str] = []
    errors: list[str] = []

    def only_the_gateway(route: Any) -> None:
        if route.request.url.startswith(wm_gateway.base + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_gateway)
    page = context.new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto("/console/")
        page.get_by_label("Admin token").fill(ADMIN_TOKEN)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        page.get_by_role("link", name="Watermark lookup").click()
        expect(page.get_by_role("heading", name="Watermark lookup")).to_be_visible()
        leaked = tmp_path / "leaked.jsonl"
        leaked.write_text("\n".join(json.dumps({"id": f"leak-{a}", "text": t}) for a, t in texts.items()) + "\n")
        page.locator("#wm-file").set_input_files(str(leaked))
        page.get_by_role("button", name="Look up").click()
        expect(page.locator(".wm-named")).to_have_count(1)
        expect(page.locator(".wm-named")).to_contain_text("wm-alice")
        expect(page.locator(".wm-nobody")).to_have_count(1)
        page.screenshot(path=artefacts / "13-watermark-lookup.png", full_page=True)
        page.locator(".wm-named a").first.click()
        expect(page.locator("#account-id")).to_have_text("wm-alice")
    finally:
        context.close()
    assert outside == [], f"the console fetched from outside the gateway: {outside}"
    assert errors == [], f"errors in the browser console: {errors}"


def test_the_console_s_evidence_bundle_tests_the_account_s_served_answers_for_its_watermark(
    wm_gateway: RunningGateway, texts: dict[str, str], tmp_path: Path
) -> None:
    import io
    import zipfile

    wm_gateway.flush_audit()
    client, csrf = login(wm_gateway)
    found = {}
    for account in ("wm-alice", "wm-bob"):
        r = client.post(f"/console/accounts/{account}/evidence", data={"csrf_token": csrf})
        assert r.status_code == 200, r.text[:300]
        with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
            zf.extractall(tmp_path / account)
        ev = json.loads((tmp_path / account / f"evidence-{account}" / "evidence.json").read_text())
        [served] = ev["watermark"]["served"]
        assert served["key"] == f"account:{account}" and served["responses"] >= 1, served
        found[account] = served
    assert found["wm-alice"]["detected"] and found["wm-alice"]["z"] >= 4.0  # served under its own key
    assert not found["wm-bob"]["detected"]  # served plain
