"""The analyst console over plain HTTP: login, sessions, CSRF, pagination, review decisions, limits."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from distillshield.gateway.app import build_app
from tests.conftest import ADMIN_TOKEN, RunningGateway, make_settings
from tests.console_helpers import csrf_of, login, seed_demo, send_traffic
from tests.fakes import FakeUpstream


def _chat(gw: RunningGateway, key: str) -> httpx.Response:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    return httpx.post(f"{gw.base}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {key}"})


def _set_cookie_headers(r: httpx.Response) -> list[str]:
    return r.headers.get_list("set-cookie")


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/console/", "/console/accounts", "/console/review", "/console/audit", "/console/clusters", "/console/watermark"],
)
def test_pages_send_a_visitor_without_a_session_to_the_login_page(fake_gateway: RunningGateway, path: str) -> None:
    r = httpx.get(fake_gateway.base + path)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login?next=")


def test_actions_without_a_session_change_nothing(fake_gateway: RunningGateway) -> None:
    fake_gateway.create_key("acme-1")
    r = httpx.post(f"{fake_gateway.base}/console/accounts/acme-1/suspend", data={"csrf_token": "x"})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert fake_gateway.admin("GET", "/accounts/acme-1").json()["status"] == "active"


def test_login_with_the_admin_token_sets_an_http_only_strict_session_cookie(fake_gateway: RunningGateway) -> None:
    client = httpx.Client(base_url=fake_gateway.base, follow_redirects=False)
    form = client.get("/console/login?next=/console/review")
    assert form.status_code == 200 and 'type="password"' in form.text
    r = client.post(
        "/console/login", data={"csrf_token": csrf_of(form.text), "token": ADMIN_TOKEN, "next": "/console/review"}
    )
    assert r.status_code == 303 and r.headers["location"] == "/console/review"
    session = next(c for c in _set_cookie_headers(r) if c.startswith("ds_console="))
    attrs = {a.strip().lower() for a in session.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/console"} <= attrs
    assert "secure" not in attrs  # plain HTTP on loopback: a Secure cookie would never come back
    assert client.get("/console/review").status_code == 200


def test_a_wrong_token_is_refused_and_sets_no_session(fake_gateway: RunningGateway) -> None:
    client = httpx.Client(base_url=fake_gateway.base, follow_redirects=False)
    form = client.get("/console/login")
    r = client.post("/console/login", data={"csrf_token": csrf_of(form.text), "token": "not-the-token"})
    assert r.status_code == 401 and "That is not the admin token." in r.text
    assert not any(c.startswith("ds_console=") for c in _set_cookie_headers(r))
    assert client.get("/console/").status_code == 303


def test_login_attempts_are_limited_per_address_before_the_token_is_checked(gateway_factory: Any) -> None:
    gw = gateway_factory({"upstream": FakeUpstream()}, admin__console_login_rpm=3)
    client = httpx.Client(base_url=gw.base, follow_redirects=False)
    for _ in range(3):
        form = client.get("/console/login")
        guess = client.post("/console/login", data={"csrf_token": csrf_of(form.text), "token": "guess"})
        assert guess.status_code == 401
    form = client.get("/console/login")
    r = client.post("/console/login", data={"csrf_token": csrf_of(form.text), "token": ADMIN_TOKEN})
    assert r.status_code == 429 and "Too many login attempts from 127.0.0.1" in r.text  # the right token too
    assert int(r.headers["retry-after"]) >= 1
    assert not any(c.startswith("ds_console=") for c in _set_cookie_headers(r))
    assert client.get("/console/").status_code == 303  # no session


def test_a_login_without_the_form_csrf_token_is_refused(fake_gateway: RunningGateway) -> None:
    r = httpx.post(f"{fake_gateway.base}/console/login", data={"token": ADMIN_TOKEN})
    assert r.status_code == 403 and "expired" in r.text
    assert not any(c.startswith("ds_console=") for c in _set_cookie_headers(r))


def test_a_forged_session_cookie_is_not_a_session(fake_gateway: RunningGateway) -> None:
    r = httpx.get(f"{fake_gateway.base}/console/", cookies={"ds_console": "eyJjc3JmIjoieCJ9.forged.sig"})
    assert r.status_code == 303


def test_the_session_cookie_is_secure_over_https(tmp_path: Path) -> None:
    app = build_app(make_settings(tmp_path), [], upstream=FakeUpstream())
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        form = client.get("/console/login")
        r = client.post("/console/login", data={"csrf_token": csrf_of(form.text), "token": ADMIN_TOKEN})
        assert r.status_code == 303
        session = next(c for c in r.headers.get_list("set-cookie") if c.startswith("ds_console="))
        assert "secure" in {a.strip().lower() for a in session.split(";")}


def test_logout_ends_the_session(fake_gateway: RunningGateway) -> None:
    client, csrf = login(fake_gateway)
    r = client.post("/console/logout", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert client.get("/console/").status_code == 303


def test_the_console_is_disabled_without_an_admin_token(gateway_factory: Any) -> None:
    from tests.fakes import FakeUpstream

    gw = gateway_factory({"upstream": FakeUpstream()}, admin__token=None)
    r = httpx.get(f"{gw.base}/console/login")
    assert r.status_code == 403 and "admin.token_sha256" in r.text


# -- CSRF -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", [None, "wrong-token"])
def test_an_action_without_the_session_csrf_token_is_refused(fake_gateway: RunningGateway, sent: str | None) -> None:
    fake_gateway.create_key("acme-2")
    client, _csrf = login(fake_gateway)
    data = {"rpm": "1"} | ({"csrf_token": sent} if sent else {})
    r = client.post("/console/accounts/acme-2/limits", data=data)
    assert r.status_code == 403 and "CSRF token" in r.text
    assert fake_gateway.admin("GET", "/accounts/acme-2").json()["limits"] is None


def test_the_csrf_token_may_come_in_the_htmx_header(fake_gateway: RunningGateway) -> None:
    fake_gateway.create_key("acme-3")
    client, csrf = login(fake_gateway)
    r = client.post("/console/accounts/acme-3/suspend", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 303
    assert fake_gateway.admin("GET", "/accounts/acme-3").json()["status"] == "suspended"


# -- pages ----------------------------------------------------------------------------------------


def test_pages_load_only_the_console_s_own_assets(fake_gateway: RunningGateway) -> None:
    client, _ = login(fake_gateway)
    page = client.get("/console/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', page.text)
    assert {"/console/static/htmx.min.js", "/console/static/uPlot.iife.min.js"} <= set(assets)
    assert all(a.startswith("/console/static/") for a in assets)
    for a in assets:
        assert httpx.get(fake_gateway.base + a).status_code == 200  # no session needed for static files


def test_the_admin_api_docs_page_loads_swagger_ui_from_the_package(fake_gateway: RunningGateway) -> None:
    page = httpx.get(f"{fake_gateway.base}/admin/docs")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["static/swagger-ui-bundle.js", "static/swagger-ui.css"]  # relative: /admin/static/
    for a in assets:
        assert httpx.get(f"{fake_gateway.base}/admin/{a}").status_code == 200


def test_accounts_are_paginated_and_searched_on_the_server(fake_gateway: RunningGateway) -> None:
    for i in range(120):
        fake_gateway.run(fake_gateway.state.store.create_account(f"pager-{i:03d}", "org-pager" if i % 2 else "org-b"))
    client, _ = login(fake_gateway)
    ids = re.compile(r'<td class="id"><a href="/console/accounts/[^"]+">([^<]+)</a>')
    first = client.get("/console/accounts", params={"sort": "id", "dir": "asc"})
    assert ids.findall(first.text) == [f"pager-{i:03d}" for i in range(50)]
    assert "1–50 of 120" in first.text and "page 1 of 3" in first.text
    last = client.get("/console/accounts", params={"sort": "id", "dir": "asc", "page": "3"})
    assert ids.findall(last.text) == [f"pager-{i:03d}" for i in range(100, 120)]
    found = client.get("/console/accounts", params={"sort": "id", "q": "ORG-PAGER"})
    assert "1–50 of 60" in found.text
    assert all(int(x.split("-")[1]) % 2 for x in ids.findall(found.text))


def test_flagged_accounts_list_riskiest_first_with_full_ids_and_every_reason(
    fake_gateway: RunningGateway, tmp_path: Path
) -> None:
    demo = seed_demo(fake_gateway, tmp_path)
    client, _ = login(fake_gateway)
    listing = client.get("/console/accounts", params={"verdict": "extraction"})
    top = demo.flagged[0]
    assert f">{top}</a>" in listing.text
    page = client.get(f"/console/accounts/{top}")
    entry = next(a for a in demo.report["accounts"] if a["account_id"] == top)
    for reason in entry["reasons"]:
        assert str(escape(reason["detail"])) in page.text  # whole, not cut


def test_overview_counts_verdicts_and_open_review_items(fake_gateway: RunningGateway, tmp_path: Path) -> None:
    demo = seed_demo(fake_gateway, tmp_path)
    client, _ = login(fake_gateway)
    page = client.get("/console/").text
    n_extraction = sum(1 for a in demo.report["accounts"] if a["verdict"] == "extraction")
    assert f'<span class="n" id="n-extraction">{n_extraction}</span>' in page
    open_items = fake_gateway.admin("GET", "/review", params={"status": "open"}).json()["items"]
    assert open_items and f'<span class="n" id="n-open-review">{len(open_items)}</span>' in page
    assert 'id="traffic-data"' in page


@pytest.mark.parametrize("path", ["/console/accounts/nobody-here", "/console/review/account:nobody-here"])
def test_an_unknown_account_or_review_item_is_a_404_page(fake_gateway: RunningGateway, path: str) -> None:
    client, _ = login(fake_gateway)
    r = client.get(path)
    assert r.status_code == 404 and "nobody-here" in r.text and "does not exist" in r.text


@pytest.mark.parametrize(
    ("path", "param"),
    [("/console/accounts", "page"), ("/console/review", "page"), ("/console/clusters", "page"),
     ("/console/audit", "page"), ("/console/audit", "apage")],
)  # fmt: skip
def test_a_bad_page_number_is_a_400_naming_the_parameter(fake_gateway: RunningGateway, path: str, param: str) -> None:
    client, _ = login(fake_gateway)
    assert client.get(path, params={param: "2"}).status_code == 200  # a page past the last is a page, not an error
    for bad in ("abc", "0", "-3", "1.5"):
        r = client.get(path, params={param: bad})
        assert r.status_code == 400 and f"?{param}= must be a page number" in r.text, (path, param, bad)


def test_every_template_and_asset_ships_in_the_wheel() -> None:
    import fnmatch
    import tomllib

    import distillshield.console

    root = Path(distillshield.console.__file__).parent.parent
    declared = tomllib.loads((root.parent.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    files = [f.relative_to(root).as_posix() for d in ("templates", "static") for f in (root / "console" / d).iterdir()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in declared["distillshield"]) for f in files)


def _traffic_chart(client: httpx.Client) -> dict[str, list[int]]:
    page = client.get("/console/").text
    m = re.search(r'<script type="application/json" id="traffic-data">(.*?)</script>', page, re.S)
    assert m, "no chart data in the overview"
    return json.loads(m.group(1))


def test_the_overview_chart_counts_requests_and_refusals_per_hour(fake_gateway: RunningGateway) -> None:
    client, _ = login(fake_gateway)
    before = _traffic_chart(client)
    assert len(before["t"]) == 24 and sum(before["requests"]) == 0
    key = fake_gateway.create_key("acme-7", limits={"rpm": 2})
    statuses = [_chat(fake_gateway, key).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    fake_gateway.flush_audit()
    after = _traffic_chart(client)  # the current hour is read again on every load
    assert after["requests"][-1] == 3 and after["refused"][-1] == 1
    assert after["t"][-1] <= time.time() < after["t"][-1] + 3600


def test_the_overview_shows_requests_per_day_and_the_event_backlog(fake_gateway: RunningGateway) -> None:
    client, _ = login(fake_gateway)
    key = fake_gateway.create_key("acme-8")  # an administrative act too: not counted as a request
    assert [_chat(fake_gateway, key).status_code for _ in range(2)] == [200, 200]
    fake_gateway.flush_audit()
    page = client.get("/console/").text
    daily = json.loads(re.search(r'id="daily-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert len(daily["t"]) == 14 and daily["requests"][-1] == 2 and sum(daily["requests"]) == 2
    assert daily["t"][-1] <= time.time() < daily["t"][-1] + 86400
    assert 'id="audit-queue">0<' in page and 'id="spooled">0<' in page
    assert "none: this gateway writes the audit log itself" in page  # the embedded default: no stream


# -- actions --------------------------------------------------------------------------------------


def test_a_review_decision_is_recorded_like_the_admin_api_s_and_applied(
    fake_gateway: RunningGateway, tmp_path: Path
) -> None:
    demo = seed_demo(fake_gateway, tmp_path)
    account = demo.flagged[0]
    client, csrf = login(fake_gateway)
    item = client.get(f"/console/review/account:{account}")
    assert item.status_code == 200 and "Confirm" in item.text
    item_id = fake_gateway.admin("GET", f"/review/account:{account}").json()["item"]["id"]
    r = client.post(
        f"/console/review/{item_id}/decide",
        data={"csrf_token": csrf, "decision": "confirm", "reviewer": "ana", "note": "templated CoT harvesting"},
    )
    assert r.status_code == 303 and r.headers["location"] == f"/console/review/{item_id}"
    # the same record the admin API's decide endpoint writes, and the gateway's policy applies it at once
    detail = fake_gateway.admin("GET", f"/review/{item_id}").json()
    assert detail["item"]["status"] == "confirmed"
    assert [(d["decision"], d["reviewer"], d["note"]) for d in detail["decisions"]] == [
        ("confirm", "ana", "templated CoT harvesting")
    ]
    assert fake_gateway.state.policy.live(account)["review"]["state"] == "confirmed"
    log = client.get("/console/audit").text
    assert "templated CoT harvesting" in log and account in log


def test_an_unknown_decision_is_refused(fake_gateway: RunningGateway, tmp_path: Path) -> None:
    demo = seed_demo(fake_gateway, tmp_path)
    client, csrf = login(fake_gateway)
    r = client.post(f"/console/review/account:{demo.flagged[0]}/decide", data={"csrf_token": csrf, "decision": "ban"})
    assert r.status_code == 400 and escape("unknown decision 'ban'") in r.text


def test_changed_limits_apply_to_the_account_s_next_request(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("acme-4")
    client, csrf = login(fake_gateway)
    r = client.post("/console/accounts/acme-4/limits", data={"csrf_token": csrf, "rpm": "1", "tpm": ""})
    assert r.status_code == 303
    assert fake_gateway.admin("GET", "/accounts/acme-4").json()["limits"] == {"rpm": 1}
    assert _chat(fake_gateway, key).status_code == 200
    assert _chat(fake_gateway, key).status_code == 429


def test_invalid_limits_are_refused_with_a_message(fake_gateway: RunningGateway) -> None:
    fake_gateway.create_key("acme-5")
    client, csrf = login(fake_gateway)
    r = client.post("/console/accounts/acme-5/limits", data={"csrf_token": csrf, "rpm": "0"})
    assert r.status_code == 400 and "at least 1" in r.text
    assert fake_gateway.admin("GET", "/accounts/acme-5").json()["limits"] is None


def test_the_admin_api_changes_limits_through_the_same_function(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("acme-6")
    r = fake_gateway.admin("POST", "/accounts/acme-6/limits", json={"rpm": 1})
    assert r.status_code == 200 and r.json() == {"id": "acme-6", "limits": {"rpm": 1}}
    assert _chat(fake_gateway, key).status_code == 200
    assert _chat(fake_gateway, key).status_code == 429
    missing = fake_gateway.admin("POST", "/accounts/nobody/limits", json={"rpm": 1})
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


# -- PostgreSQL -----------------------------------------------------------------------------------


def test_every_page_reads_postgresql_too(gateway_factory: Any, pg_database: str, tmp_path: Path) -> None:
    gw = gateway_factory({"upstream": FakeUpstream()}, store__url=pg_database)
    demo = seed_demo(gw, tmp_path)
    send_traffic(gw, demo.benign[:2], 2)
    client, csrf = login(gw)
    for params in ({"sort": "volume"}, {"sort": "org", "q": "ORG_"}, {"verdict": "extraction"}, {"sort": "tier"}):
        r = client.get("/console/accounts", params=params)
        assert r.status_code == 200, (params, r.text)
    assert f">{demo.benign[0]}</a>" in client.get("/console/accounts", params={"sort": "volume"}).text
    assert client.get("/console/").status_code == 200
    assert client.get("/console/review").status_code == 200
    account = client.get(f"/console/accounts/{demo.benign[0]}")  # its risk history
    assert account.status_code == 200 and 'data-chart="account-risk"' in account.text
    timeline = client.get(f"/console/accounts/{demo.benign[0]}/timeline")  # its request timeline and CoT share
    assert timeline.status_code == 200 and 'data-chart="account-requests"' in timeline.text
    report = {"accounts": [{**a, "cluster_id": "cl_pg"} for a in demo.report["accounts"][:3]]}
    assert gw.admin("POST", "/risk", json=report).status_code == 200
    assert "cl_pg" in client.get("/console/clusters").text
    assert client.get("/console/clusters/cl_pg").status_code == 200
    r = client.post(
        f"/console/review/account:{demo.flagged[0]}/decide",
        data={"csrf_token": csrf, "decision": "clear", "note": "ok"},
    )
    assert r.status_code == 303
    assert demo.flagged[0] in client.get("/console/audit").text
    revealed = client.post(f"/console/accounts/{demo.benign[0]}/reveal", data={"csrf_token": csrf})
    assert revealed.status_code == 200 and 'id="prompts-revealed"' in revealed.text
    assert "reveal_prompts" in client.get("/console/audit").text  # an analyst action, written and read back
    replay = client.get("/console/policy", params={"rule": gw.admin("GET", "/policy").json()["rules"][0]["name"]})
    assert replay.status_code == 200 and 'id="replay-accounts"' in replay.text


def test_the_policy_page_shows_the_rules_and_reloads_into_shadow_mode(fake_gateway: RunningGateway) -> None:
    client, csrf = login(fake_gateway)
    page = client.get("/console/policy")
    rules = fake_gateway.admin("GET", "/policy").json()["rules"]
    assert page.status_code == 200 and rules and all(escape(r["name"]) in page.text for r in rules)
    r = client.post("/console/policy/reload", data={"csrf_token": csrf, "mode": "shadow"})
    assert r.status_code == 303
    assert fake_gateway.admin("GET", "/policy").json()["mode"] == "shadow"
    bad = client.post("/console/policy/reload", data={"csrf_token": csrf, "mode": "off"})
    assert bad.status_code == 400 and fake_gateway.admin("GET", "/policy").json()["mode"] == "shadow"
