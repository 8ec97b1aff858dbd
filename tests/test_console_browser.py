"""The analyst console end to end in a real headless Chromium (Debian's `chromium`, driven by Playwright).

An analyst logs in, finds a flagged account from the demo traffic, opens its page, confirms its review
item, sees the decision in the decision log, changes a limit that the account's next request meets and
switches the policy to shadow mode; the admin API's docs page works offline with the admin token.
Every page is saved as a screenshot under $DISTILLSHIELD_ARTEFACTS (default: the system temp directory's
distillshield-artefacts/console) for a person to look at; they are not part of the repository.

Without Chromium (or the playwright package) these tests skip with a message, except under
DISTILLSHIELD_REQUIRE_SERVICES=1 (CI), where a missing browser fails the run like a missing service.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_TOKEN, RunningGateway, make_settings, start_gateway
from tests.console_helpers import DEMO_HYDRA, Demo, admin_acts, seed_demo, seed_demo_hydra, send_traffic
from tests.fakes import FakeUpstream

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def _require_browser() -> str:
    """The Chromium executable; skips (or fails under CI) when it or Playwright is missing."""
    missing = None
    chromium = shutil.which("chromium")
    if chromium is None:
        missing = "Chromium is not installed (Debian: `apt-get install -y chromium`)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing = "the playwright package is not installed (`make install` installs it)"
    if missing is None:
        assert chromium is not None
        return chromium
    if os.environ.get("DISTILLSHIELD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{missing}; DISTILLSHIELD_REQUIRE_SERVICES=1 forbids skipping the browser tests")
    pytest.skip(f"{missing}; install it to run the console's browser tests")


@pytest.fixture(scope="module")
def artefacts() -> Path:
    where = Path(os.environ.get("DISTILLSHIELD_ARTEFACTS") or Path(tempfile.gettempdir()) / "distillshield-artefacts")
    out = where / "console"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, Demo]]:
    tmp = tmp_path_factory.mktemp("console-browser")
    gw = start_gateway(make_settings(tmp), upstream=FakeUpstream())
    try:
        demo = seed_demo(gw, tmp)
        send_traffic(gw, demo.flagged[:3] + demo.benign[1:3], 4)  # for the chart and the request timelines
        seed_demo_hydra(gw, demo)  # its members' traffic in the audit log: the cluster graph's links
        yield gw, demo
    finally:
        gw.stop()


@pytest.fixture
def page(browser: Any, demo_gateway: tuple[RunningGateway, Demo]) -> Iterator[Any]:
    """A logged-in page. Any request leaving the gateway (a CDN) is refused and fails the test, as do
    script errors and CSP violations in the browser's console."""
    gw, _ = demo_gateway
    context = browser.new_context(base_url=gw.base, viewport={"width": 1400, "height": 900})
    outside: list[str] = []
    errors: list[str] = []

    def only_the_gateway(route: Any) -> None:
        if route.request.url.startswith(gw.base + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_gateway)
    p = context.new_page()
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    yield p
    context.close()
    assert outside == [], f"the console fetched from outside the gateway: {outside}"
    assert errors == [], f"errors in the browser console: {errors}"


def _log_in(page: Any, artefacts: Path | None = None) -> None:
    from playwright.sync_api import expect

    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login"))
    if artefacts is not None:
        page.screenshot(path=artefacts / "01-login.png", full_page=True)
    page.get_by_label("Admin token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def _htmx_settled(page: Any) -> None:
    """Waits until htmx has bound the page it swapped in.

    The console's links are boosted (`hx-boost`): a click swaps the new page into the body, and htmx binds
    the new page's triggers (the account search's `input` trigger) only when the swap settles, some
    milliseconds after the new heading is already visible. Typing in that window sends nothing. htmx marks
    the swapped target with its settling class (and, before it, the swapping class) until then; the page's
    first load has bound everything before the `load` event.
    """
    page.wait_for_load_state("load")
    page.wait_for_function(
        "() => !document.body.classList.contains('htmx-swapping') && !document.body.classList.contains('htmx-settling')"
    )


def test_an_analyst_logs_in_and_sees_the_overview(page: Any, artefacts: Path, demo_gateway: Any) -> None:
    from playwright.sync_api import expect

    _, demo = demo_gateway
    _log_in(page, artefacts)
    n_extraction = sum(1 for a in demo.report["accounts"] if a["verdict"] == "extraction")
    expect(page.locator("#n-extraction")).to_have_text(str(n_extraction))
    expect(page.locator("#traffic-chart canvas")).to_have_count(1)  # uPlot drew the charts
    expect(page.locator("#daily-chart canvas")).to_have_count(1)
    page.screenshot(path=artefacts / "02-overview.png", full_page=True)


def test_an_analyst_finds_a_flagged_account_and_opens_its_page(page: Any, artefacts: Path, demo_gateway: Any) -> None:
    from playwright.sync_api import expect

    _, demo = demo_gateway
    target = demo.flagged[0]
    _log_in(page)
    page.get_by_role("link", name="Accounts", exact=True).click()
    expect(page.get_by_role("heading", name="Accounts")).to_be_visible()
    _htmx_settled(page)  # the boosted link swapped the page in; htmx binds the search box only when it settles
    page.locator("#q").fill(target[:10])  # htmx searches as the analyst types
    expect(page).to_have_url(re.compile(r"[?&]q="))
    page.screenshot(path=artefacts / "03-accounts.png", full_page=True)
    page.get_by_role("link", name=target, exact=True).click()
    expect(page.locator("#account-id")).to_have_text(target)  # the whole id, not cut
    gw, _ = demo_gateway
    board = next(a for a in gw.admin("GET", "/risk").json()["accounts"] if a["account_id"] == target)
    assert board["reasons"]
    for reason in board["reasons"]:  # what the policy acts on
        expect(page.get_by_text(reason["detail"], exact=True)).to_be_visible()
    page.screenshot(path=artefacts / "04-account.png", full_page=True)


def test_an_analyst_confirms_a_review_item_and_sees_it_in_the_decision_log(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    gw, demo = demo_gateway
    target = demo.flagged[1]
    _log_in(page)
    page.get_by_role("link", name="Review queue").click()
    expect(page.get_by_role("heading", name="Review queue")).to_be_visible()
    page.screenshot(path=artefacts / "05-review-queue.png", full_page=True)
    page.get_by_role("link", name=f"account:{target}", exact=True).click()
    expect(page.locator("#item-status")).to_have_text("open")
    page.get_by_label("Reviewer").fill("ana")
    page.get_by_label("Note").fill("same task template as the hydra cluster")
    page.screenshot(path=artefacts / "06-review-item.png", full_page=True)
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#item-status")).to_have_text("confirmed")
    page.get_by_role("link", name="Decision log").click()
    row = page.locator("table.decision-log tbody tr").first
    expect(row).to_contain_text(target)
    expect(row).to_contain_text("confirm")
    expect(row).to_contain_text("same task template as the hydra cluster")
    # ... and as a row of the hash-chained audit log, listed on the same page
    act = page.locator("table.admin-log tbody tr").filter(has_text=f"account:{target}").first
    expect(act).to_contain_text("review_decision")
    expect(act).to_contain_text("ana")
    page.screenshot(path=artefacts / "07-decision-log.png", full_page=True)
    assert gw.state.policy.live(target)["review"]["state"] == "confirmed"  # applied in the gateway at once
    [row] = [a for a in admin_acts(gw, "review_decision") if a["subject"] == f"account:{target}"]
    assert row["actor"] == "ana" and row["detail"]["decision"] == "confirm" and row["via"] == "console"
    assert gw.run(gw.state.store.verify_chain()).ok


def test_an_analyst_changes_a_limit_and_the_next_request_meets_it(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    gw, demo = demo_gateway
    target = demo.benign[0]
    key = gw.create_key(target)
    _log_in(page)
    page.goto(f"/console/accounts/{target}")
    page.locator("#limit-rpm").fill("1")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_role("status")).to_have_text("Done: limits.")
    expect(page.locator("#effective-rpm")).to_have_text("1")
    page.screenshot(path=artefacts / "08-account-limits.png", full_page=True)
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    headers = {"authorization": f"Bearer {key}"}
    assert httpx.post(f"{gw.base}/v1/chat/completions", json=body, headers=headers).status_code == 200
    assert httpx.post(f"{gw.base}/v1/chat/completions", json=body, headers=headers).status_code == 429


def test_the_admin_api_docs_work_offline_and_try_it_out_sends_the_admin_token(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    _, demo = demo_gateway
    page.goto("/admin/docs")
    page.locator("#token").fill(ADMIN_TOKEN)
    page.get_by_role("button", name="Load the API").click()
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("DistillShield admin API")
    page.locator(".opblock-get .opblock-summary-path", has_text=re.compile(r"^/accounts$")).first.click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()
    expect(page.locator(".live-responses-table tr.response .response-col_status").first).to_have_text("200")
    expect(page.locator(".live-responses-table tr.response .response-col_description").first).to_contain_text(
        demo.flagged[0]
    )
    page.screenshot(path=artefacts / "09-admin-api-docs.png", full_page=True)


def test_an_analyst_switches_the_policy_to_shadow_mode_and_back(page: Any, artefacts: Path, demo_gateway: Any) -> None:
    from playwright.sync_api import expect

    gw, _ = demo_gateway
    _log_in(page)
    page.get_by_role("link", name="Policy").click()
    expect(page.locator("#policy-mode")).to_contain_text("enforce")
    page.get_by_label("Mode").select_option("shadow")
    page.get_by_role("button", name="Reload the policy file").click()
    expect(page.locator("#policy-mode")).to_contain_text("shadow")
    assert gw.admin("GET", "/policy").json()["mode"] == "shadow"
    page.screenshot(path=artefacts / "10-policy.png", full_page=True)
    page.get_by_label("Mode").select_option("enforce")
    page.get_by_role("button", name="Reload the policy file").click()
    expect(page.locator("#policy-mode")).to_contain_text("enforce")


def test_an_analyst_opens_the_hydra_cluster_and_follows_a_node_to_its_account(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    gw, _ = demo_gateway
    members = sorted(gw.state.risk.cluster_members(DEMO_HYDRA))
    _log_in(page)
    page.get_by_role("link", name="Clusters").click()
    expect(page.get_by_role("heading", name="Clusters")).to_be_visible()
    page.screenshot(path=artefacts / "11-clusters.png", full_page=True)
    page.get_by_role("link", name=DEMO_HYDRA, exact=True).click()
    expect(page.locator("#cluster-id")).to_have_text(DEMO_HYDRA)
    graph = page.locator("#cluster-graph")
    expect(graph).to_be_visible()
    expect(graph.locator("a.node")).to_have_count(len(members))
    assert graph.locator("g.edge").count() > 0  # links recomputed from the members' audit rows
    box = graph.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 300  # drawn, not collapsed
    page.screenshot(path=artefacts / "12-cluster-graph.png", full_page=True)
    member = members[0]
    graph.locator(f'a.node[data-account="{member}"] circle').click()
    expect(page.locator("#account-id")).to_have_text(member)


def test_the_account_page_draws_its_request_timeline_cot_share_and_risk_over_time(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    _, demo = demo_gateway
    target = demo.flagged[2]  # sent requests by the fixture, so the policy recorded its risk
    _log_in(page)
    page.goto(f"/console/accounts/{target}")
    expect(page.locator("#account-id")).to_have_text(target)
    expect(page.locator("#account-requests-chart canvas")).to_have_count(1)  # uPlot drew both charts
    expect(page.locator("#account-risk-chart canvas")).to_have_count(1)
    expect(page.locator("#account-requests-chart .u-legend")).to_contain_text("tokens")
    expect(page.locator("#account-cot-chart canvas")).to_have_count(1)  # and the CoT share beside them
    expect(page.locator("#account-cot-chart .u-legend")).to_contain_text("sampled")
    expect(page.locator("#verdict-history")).to_be_visible()
    page.locator("#account-requests-chart").scroll_into_view_if_needed()
    page.screenshot(path=artefacts / "14-account-charts.png", full_page=True)


def test_an_analyst_reveals_an_account_s_prompts_and_the_reveal_is_logged(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    _, demo = demo_gateway
    target = demo.flagged[2]  # with requests in the audit log
    _log_in(page)
    page.goto(f"/console/accounts/{target}")
    expect(page.locator("#sample-prompts td.prompt").first).to_contain_text("template")
    redacted = page.locator("#sample-prompts").inner_text()
    page.get_by_role("button", name="Reveal prompts (logged)").click()
    expect(page.locator("#prompts-revealed")).to_be_visible()
    prompt = page.locator("#sample-prompts td.prompt").first.inner_text()
    assert prompt and not prompt.startswith("template") and prompt[:60] not in redacted
    page.locator("#sample-prompts").scroll_into_view_if_needed()
    page.screenshot(path=artefacts / "15-account-prompts-revealed.png", full_page=True)
    page.goto("/console/audit")
    expect(page.locator("table.admin-log")).to_contain_text("reveal_prompts")


def test_the_policy_page_shows_what_each_rule_would_have_done(page: Any, artefacts: Path, demo_gateway: Any) -> None:
    from playwright.sync_api import expect

    gw, _ = demo_gateway
    first = gw.admin("GET", "/policy").json()["rules"][0]["name"]
    _log_in(page)
    page.goto(f"/console/policy?rule={first}")
    expect(page.locator("#replay")).to_contain_text("would have done in the last 24 h")
    expect(page.locator("#replay-accounts")).to_contain_text(first)
    page.screenshot(path=artefacts / "16-policy-replay.png", full_page=True)


def test_an_analyst_pins_a_countermeasure_on_an_account_and_lifts_it(
    page: Any, artefacts: Path, demo_gateway: Any
) -> None:
    from playwright.sync_api import expect

    gw, demo = demo_gateway
    target = demo.benign[1]
    _log_in(page)
    page.goto(f"/console/accounts/{target}")
    expect(page.locator("#pins-none")).to_be_visible()
    page.locator("#pin-action").select_option("throttle")
    page.locator("#pin-factor").fill("0.05")
    page.locator("form.pin select[name=expires]").select_option("24h")
    page.locator("#pin-note").fill("reported by a partner")
    page.locator("form.pin input[name=reviewer]").fill("ana")
    page.locator("#pin-submit").click()
    expect(page.get_by_role("status")).to_contain_text("pinned")
    row = page.locator("table.pins tbody tr").first
    expect(row).to_contain_text("throttle")
    expect(row).to_contain_text("reported by a partner")
    expect(row.locator(".pin-state")).to_have_text("active")
    assert gw.state.policy is not None
    assert [p["action"] for p in gw.state.policy.live(target)["pins"]] == ["throttle"]  # applied at once
    page.screenshot(path=artefacts / "17-account-pinned.png", full_page=True)
    row.get_by_role("button", name="Lift").click()
    expect(page.get_by_role("status")).to_contain_text("lifted")
    expect(page.locator("table.pins tbody tr").first.locator(".pin-state")).to_contain_text("lifted by console")
    assert gw.state.policy.live(target)["pins"] == []
    acts = [a for a in admin_acts(gw) if a["subject"] == target and a["action"].startswith("countermeasure_")]
    assert [(a["action"], a["actor"]) for a in acts] == [("countermeasure_pinned", "ana"),
                                                        ("countermeasure_lifted", "console")]  # fmt: skip
