"""The console's clusters (list, graph, members) and an account's charts, over plain HTTP."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx

from distillshield.console.clusters import MAX_NODES
from distillshield.contracts import AccountRisk
from tests.conftest import RunningGateway
from tests.console_helpers import login, seed_demo, send_traffic

NODE = re.compile(r'<a href="/console/accounts/[^"]+" class="node" data-account="([^"]+)">')
EDGE = re.compile(r'<g class="edge" data-a="([^"]+)" data-b="([^"]+)">')
STRAND = re.compile(r'<line class="edge-(\w+)"')


def _json_block(html: str, element_id: str) -> dict:
    # a page's own data: a JSON script block; a fragment htmx loads into a page: a hidden <pre>
    opening = rf'<(?:script type="application/json"|pre hidden) id="{element_id}">'
    m = re.search(opening + r"(.*?)</(?:script|pre)>", html, re.S)
    assert m, f"no {element_id} in the page"
    return json.loads(m.group(1))


CLUSTER = "cl_crafted"
# Three accounts of one hydra wrap varied questions in one instruction template, from the same client, in the
# same hours; two of them share an IP range. A fourth member shares nothing with them in its requests.
TEMPLATE = "You are a careful annotator. Solve the task below and explain every step of your reasoning: {q}"
HYDRA = {
    "hy-a": ("203.0.113.5", "hydra-client/1.0", "org-a", TEMPLATE, 0),
    "hy-b": ("203.0.113.77", "hydra-client/1.0", "org-b", TEMPLATE, 0),
    "hy-c": ("198.51.100.9", "hydra-client/1.0", "org-c", TEMPLATE, 0),
    "hy-d": ("192.0.2.1", "Mozilla/5.0 (X11; Linux x86_64)", "org-d", "{q}", -5),
}
QUESTIONS = [
    "what is the capital of France",
    "integrate x squared from zero to one",
    "why is the sky blue on a clear day",
    "list three prime numbers greater than fifty",
    "explain how a hash table resolves collisions",
    "translate good morning into Spanish please",
    "what does the mitochondria do in a cell",
    "how many legs does a spider usually have",
]


def _seed_crafted_cluster(gw: RunningGateway) -> dict[str, float]:
    """The four accounts in the store, their requests in the audit log, and a report that puts them in one
    cluster (loaded as an analyst would, so the cluster is queued for review). Returns each one's first request."""
    import uuid

    hour = (int(time.time()) // 3600 - 3) * 3600
    rows, first = [], {}
    for aid, (ip, ua, org, template, shift_h) in HYDRA.items():
        assert gw.admin("POST", "/accounts", json={"id": aid, "org_id": org}).status_code == 201
        for i, q in enumerate(QUESTIONS):
            ts = hour + shift_h * 3600 + i * 600 + 7.0
            first.setdefault(aid, ts)
            body = {"model": "m", "messages": [{"role": "user", "content": template.format(q=q)}]}
            rows.append(
                {"ts": ts, "request_id": uuid.uuid4().hex, "account_id": aid, "org_id": org, "key_id": None,
                 "ip": ip, "user_agent": ua, "endpoint": "/v1/chat/completions", "model": "m", "stream": False,
                 "status": 200, "latency_ms": 5.0, "request": json.dumps(body), "response_text": "ok",
                 "finish_reason": "stop", "prompt_tokens": 20, "completion_tokens": 5, "decision": None, "error": None}
            )  # fmt: skip
    rows.sort(key=lambda r: r["ts"])
    gw.run(gw.state.store.append_audit(rows))
    detail = f"member of cluster {CLUSTER}: 4 accounts share prompt templates (e.g. 'you are a careful annotator')"
    report = {
        "accounts": [
            {"account_id": aid, "risk": 0.9 - i / 10, "verdict": "extraction" if i < 3 else "suspicious",
             "cluster_id": CLUSTER, "reasons": [{"signal": "coordination", "score": 0.8, "detail": detail}]}
            for i, aid in enumerate(HYDRA)
        ]
    }  # fmt: skip
    r = gw.admin("POST", "/risk", json=report)
    assert r.status_code == 200 and r.json()["flagged"] == 4, r.text
    return first


def _links(html: str) -> dict[frozenset[str], set[str]]:
    """The page's link table: {pair: kinds}."""
    out = {}
    table = html.split('<table class="links">', 1)[1].split("</table>", 1)[0] if '<table class="links">' in html else ""
    for row in re.findall(r"<tr>(.*?)</tr>", table, re.S)[1:]:
        pair = re.findall(r'href="/console/accounts/([^"]+)"', row)
        kinds = set(re.findall(r"<strong>([^<]+)</strong>", row))
        out[frozenset(pair)] = kinds
    return out


# -- clusters -------------------------------------------------------------------------------------


def test_an_empty_store_has_no_clusters_and_an_unknown_cluster_is_a_404(fake_gateway: RunningGateway) -> None:
    client, _ = login(fake_gateway)
    r = client.get("/console/clusters")
    assert r.status_code == 200 and "No clusters" in r.text
    missing = client.get("/console/clusters/cl_nobody")
    assert missing.status_code == 404 and "cl_nobody" in missing.text and "does not exist" in missing.text


def test_the_clusters_page_lists_a_cluster_with_its_members_and_review_item(fake_gateway: RunningGateway) -> None:
    _seed_crafted_cluster(fake_gateway)
    client, _ = login(fake_gateway)
    page = client.get("/console/clusters")
    assert page.status_code == 200
    row = re.search(rf'<a href="/console/clusters/{CLUSTER}">.*?</tr>', page.text, re.S)
    assert row, page.text
    cells = re.findall(r'<td class="num">([^<]+)</td>', row.group(0))
    assert cells[:2] == ["4", "4"]  # members, flagged
    item = fake_gateway.admin("GET", f"/review/cluster:{CLUSTER}").json()["item"]
    assert f'href="/console/review/{item["id"]}"' in row.group(0)
    # the cluster id links to the cluster page from the accounts list and the review queue
    assert f'href="/console/clusters/{CLUSTER}"' in client.get("/console/accounts", params={"sort": "cluster"}).text
    assert f'href="/console/clusters/{CLUSTER}"' in client.get("/console/review").text


def test_the_cluster_graph_links_members_by_what_their_requests_share(fake_gateway: RunningGateway) -> None:
    first = _seed_crafted_cluster(fake_gateway)
    client, _ = login(fake_gateway)
    page = client.get(f"/console/clusters/{CLUSTER}")
    assert page.status_code == 200, page.text
    html = page.text
    assert set(NODE.findall(html)) == set(HYDRA)  # every member is a node, no one else is
    drawn = {frozenset(p) for p in EDGE.findall(html)}
    assert drawn == {frozenset(p) for p in (("hy-a", "hy-b"), ("hy-a", "hy-c"), ("hy-b", "hy-c"))}  # not hy-d
    assert sorted(STRAND.findall(html)) == sorted(["template", "ip", "ua", "timing"] + ["template", "ua", "timing"] * 2)
    links = _links(html)
    assert set(links) == {frozenset(p) for p in (("hy-a", "hy-b"), ("hy-a", "hy-c"), ("hy-b", "hy-c"))}
    assert links[frozenset(("hy-a", "hy-b"))] == {
        "shared prompt template", "shared IP range", "same user agent", "timing"
    }  # fmt: skip
    assert links[frozenset(("hy-a", "hy-c"))] == {"shared prompt template", "same user agent", "timing"}
    assert "203.0.113.0/24" in html and "you are a careful annotator" in html
    # why: the detector's reason in full, and the links each member has; when: its first request, when queued
    assert html.count("member of cluster cl_crafted: 4 accounts share prompt templates") == 5  # summary + 4 members
    assert "no link found in its audit rows" in html  # hy-d
    for aid, ts in first.items():
        assert f'<a href="/console/accounts/{aid}">{aid}</a>' in html
        assert time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) in html
    queued = fake_gateway.admin("GET", "/review/account:hy-a").json()["item"]["created_at"]
    assert time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(queued)) + ' <span class="muted">(queued' in html


def test_a_cluster_without_audit_rows_still_draws_its_members(fake_gateway: RunningGateway) -> None:
    report = {
        "accounts": [
            {"account_id": f"quiet-{i}", "risk": 0.7, "verdict": "suspicious", "cluster_id": "cl_quiet", "reasons": []}
            for i in range(3)
        ]
    }
    assert fake_gateway.admin("POST", "/risk", json=report).status_code == 200
    client, _ = login(fake_gateway)
    page = client.get("/console/clusters/cl_quiet")
    assert page.status_code == 200
    assert set(NODE.findall(page.text)) == {"quiet-0", "quiet-1", "quiet-2"}
    assert EDGE.findall(page.text) == [] and "No links between members" in page.text


def test_a_large_cluster_draws_its_riskiest_members_and_pages_the_rest(fake_gateway: RunningGateway) -> None:
    n = MAX_NODES + 15
    risks = [AccountRisk(f"big-{i:03d}", round(0.3 + i / (2 * n), 4), "suspicious", "cl_big") for i in range(n)]
    fake_gateway.state.risk.update_many(risks)
    client, _ = login(fake_gateway)
    page = client.get("/console/clusters/cl_big")
    assert page.status_code == 200
    drawn = NODE.findall(page.text)
    assert len(drawn) == MAX_NODES and set(drawn) == {f"big-{i:03d}" for i in range(n - MAX_NODES, n)}
    assert f"the graph draws the {MAX_NODES} riskiest" in page.text
    assert "1–50 of 75" in page.text
    second = client.get("/console/clusters/cl_big", params={"page": "2"})
    assert "51–75 of 75" in second.text and ">big-000</a>" in second.text


def test_a_cluster_s_graph_is_drawn_once_while_its_pages_are_read_and_again_when_stale(
    fake_gateway: RunningGateway,
) -> None:
    from distillshield.console.clusters import ClusterGraphs, cluster_detail

    _seed_crafted_cluster(fake_gateway)
    graphs = ClusterGraphs()
    first = fake_gateway.run(cluster_detail(fake_gateway.state, CLUSTER, graphs=graphs))
    again = fake_gateway.run(cluster_detail(fake_gateway.state, CLUSTER, page=2, graphs=graphs))
    assert first is not None and again is not None and graphs.computed == 1  # the second page reused the graph
    assert first["edges"] == again["edges"] and first["nodes"] == again["nodes"] and len(first["edges"]) == 3
    uncached = fake_gateway.run(cluster_detail(fake_gateway.state, CLUSTER))
    assert uncached is not None and uncached["edges"] == first["edges"]  # the same graph as drawn afresh
    graphs.TTL_S = 0.0  # past its time: drawn again
    fake_gateway.run(cluster_detail(fake_gateway.state, CLUSTER, graphs=graphs))
    assert graphs.computed == 2


# -- an account's charts --------------------------------------------------------------------------


def test_the_account_timeline_counts_requests_refusals_and_tokens_per_hour(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("chart-1", limits={"rpm": 2})
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    headers = {"authorization": f"Bearer {key}"}
    statuses = [
        httpx.post(f"{fake_gateway.base}/v1/chat/completions", json=body, headers=headers).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    fake_gateway.flush_audit()
    client, _ = login(fake_gateway)
    html = client.get("/console/accounts/chart-1/timeline").text
    t = _json_block(html, "account-requests-data")
    assert len(t["t"]) == 7 * 24 and t["t"][-1] <= time.time() < t["t"][-1] + 3600
    assert t["requests"][-1] == 3 and t["refused"][-1] == 1 and sum(t["requests"][:-1]) == 0
    assert t["prompt_tokens"][-1] > 0 and t["completion_tokens"][-1] > 0
    assert 'data-chart="account-requests"' in html
    for path in ("/console/accounts/chart-1-nothing", "/console/accounts/chart-1-nothing/timeline"):
        assert client.get(path).status_code == 404  # unknown: the 404 page, not an empty chart


def test_an_account_without_traffic_or_risk_says_so(fake_gateway: RunningGateway) -> None:
    fake_gateway.create_key("chart-quiet")
    client, _ = login(fake_gateway)
    html = client.get("/console/accounts/chart-quiet").text
    assert 'id="account-risk-empty"' in html
    assert 'id="account-requests-empty"' in client.get("/console/accounts/chart-quiet/timeline").text
    assert _json_block(html, "account-risk-data")["t"] == []


def test_risk_over_time_comes_from_the_policy_s_decisions_and_the_risk_board(
    fake_gateway: RunningGateway, tmp_path: Path
) -> None:
    demo = seed_demo(fake_gateway, tmp_path)
    target = demo.flagged[0]
    send_traffic(fake_gateway, [target], 2)
    client, _ = login(fake_gateway)
    html = client.get(f"/console/accounts/{target}").text
    r = _json_block(html, "account-risk-data")
    board = fake_gateway.state.risk.get(target)
    assert board is not None
    [current] = [p for p in r["points"] if p["source"] == "risk board (report)"]  # when the report set it
    assert current["ts"] == board.updated_at and round(current["risk"], 4) == round(board.risk, 4)
    assert r["t"] == sorted(r["t"]) and len(r["t"]) == len(r["risk"]) == len(r["points"])
    assert r["from_policy"] >= 1  # the policy recorded the risk it acted on in this hour's audit rows
    policy_points = [p for p in r["points"] if p["source"] == "policy"]
    assert policy_points and policy_points[-1]["verdict"] == board.verdict
    assert 'data-chart="account-risk"' in html
    assert "queued for review" in html  # the review item's history is listed under the chart
