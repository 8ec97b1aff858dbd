"""Authentication: 401 for missing, malformed, unknown and revoked keys; 403 for suspended accounts."""

from __future__ import annotations

import httpx
import pytest

from distillshield.store.database import hash_secret
from tests.conftest import RunningGateway

BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def post(gw: RunningGateway, headers: dict[str, str], path: str = "/v1/chat/completions") -> httpx.Response:
    return httpx.post(f"{gw.base}{path}", json=BODY, headers=headers, timeout=30)


def test_valid_key_as_bearer_and_as_x_api_key(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("alice")
    assert post(fake_gateway, {"authorization": f"Bearer {key}"}).status_code == 200
    assert post(fake_gateway, {"x-api-key": key}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"authorization": "Basic Zm9vOmJhcg=="}, "missing_api_key"),
        ({"authorization": "Bearer sk-not-ours"}, "invalid_api_key"),
        ({"authorization": "Bearer ds-kdoesnotexist-00"}, "invalid_api_key"),
    ],
)
def test_missing_or_unknown_key_is_401(fake_gateway: RunningGateway, headers: dict[str, str], code: str) -> None:
    r = post(fake_gateway, headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code


def test_right_key_id_wrong_secret_is_401(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("alice")
    forged = key.rsplit("-", 1)[0] + "-" + "0" * 48
    r = post(fake_gateway, {"authorization": f"Bearer {forged}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_revoked_key_is_401_immediately(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("bob")
    assert post(fake_gateway, {"authorization": f"Bearer {key}"}).status_code == 200  # now cached
    key_id = key.split("-")[1]
    assert fake_gateway.admin("DELETE", f"/keys/{key_id}").status_code == 200
    r = post(fake_gateway, {"authorization": f"Bearer {key}"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"


def test_anthropic_endpoint_401_has_anthropic_error_shape(fake_gateway: RunningGateway) -> None:
    r = httpx.post(
        f"{fake_gateway.base}/v1/messages",
        json={"model": "fake-model", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert r.status_code == 401
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"


def test_suspended_account_is_403_and_activation_restores(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("carol")
    assert fake_gateway.admin("POST", "/accounts/carol/suspend").status_code == 200
    r = post(fake_gateway, {"authorization": f"Bearer {key}"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "account_suspended"
    assert fake_gateway.admin("POST", "/accounts/carol/activate").status_code == 200
    assert post(fake_gateway, {"authorization": f"Bearer {key}"}).status_code == 200


def test_keys_are_stored_only_as_salted_hashes(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("dave")
    key_id, secret = key.split("-")[1:]

    async def load():
        return await fake_gateway.state.store.load_key_context(key_id)

    ctx = fake_gateway.run(load())
    assert secret not in repr(ctx.key.__dict__)
    assert ctx.key.secret_hash == hash_secret(ctx.key.salt, secret)
    other = fake_gateway.create_key("dave")
    ctx2 = fake_gateway.run(fake_gateway.state.store.load_key_context(other.split("-")[1]))
    assert ctx2.key.salt != ctx.key.salt


def test_admin_api_needs_its_own_token(fake_gateway: RunningGateway) -> None:
    key = fake_gateway.create_key("erin")
    assert httpx.get(f"{fake_gateway.base}/admin/accounts", timeout=10).status_code == 401
    r = httpx.get(f"{fake_gateway.base}/admin/accounts", headers={"authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 401  # an API key is not an admin credential
    assert fake_gateway.admin("GET", "/accounts").status_code == 200


def test_admin_api_disabled_without_token(gateway_factory) -> None:
    from tests.fakes import FakeUpstream

    gw = gateway_factory({"upstream": FakeUpstream()}, admin__token=None)
    r = httpx.get(f"{gw.base}/admin/accounts", headers={"authorization": "Bearer anything"}, timeout=10)
    assert r.status_code == 403 and "disabled" in r.json()["detail"]


def test_admin_spec_and_metrics_need_a_credential(gateway_factory) -> None:
    import hashlib

    from tests.conftest import ADMIN_TOKEN
    from tests.fakes import FakeUpstream

    scrape = "scraper-token"
    gw = gateway_factory(
        {"upstream": FakeUpstream()}, admin__metrics_token_sha256=hashlib.sha256(scrape.encode()).hexdigest()
    )
    key = gw.create_key("frank")
    bearer = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    # the admin API's spec: only with the admin token, and it declares that token's scheme
    assert httpx.get(f"{gw.base}/admin/openapi.json", timeout=10).status_code == 401
    spec = httpx.get(f"{gw.base}/admin/openapi.json", headers=bearer, timeout=10).json()
    assert spec["components"]["securitySchemes"]["adminBearer"]["scheme"] == "bearer"
    assert spec["servers"] == [{"url": "/admin"}] and "/accounts" in spec["paths"]
    page = httpx.get(f"{gw.base}/admin/docs", timeout=10)  # a page that asks for the token; no data in it
    assert page.status_code == 200 and 'id="token"' in page.text and "/accounts" not in page.text
    # /metrics: the metrics token or the admin token; not an API key, not nothing
    for headers, status in (({}, 401), ({"authorization": f"Bearer {key}"}, 401),
                            ({"authorization": f"Bearer {scrape}"}, 200), (bearer, 200)):  # fmt: skip
        r = httpx.get(f"{gw.base}/metrics", headers=headers, timeout=10)
        assert r.status_code == status, headers
        if status == 401:
            assert "metrics token" in r.json()["error"]["message"]
        else:
            assert "distillshield_requests_total" in r.text


def test_metrics_can_be_declared_public(gateway_factory) -> None:
    from tests.fakes import FakeUpstream

    gw = gateway_factory({"upstream": FakeUpstream()}, admin__public_metrics=True)
    assert httpx.get(f"{gw.base}/metrics", timeout=10).status_code == 200
    closed = gateway_factory({"upstream": FakeUpstream()}, admin__token=None)
    r = httpx.get(f"{closed.base}/metrics", timeout=10)
    assert r.status_code == 403 and "admin.metrics_token_sha256" in r.json()["error"]["message"]
