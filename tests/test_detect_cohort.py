"""Accounts created together (detect/cohort.py) and how a campaign is judged with them (detect/campaign.py):
a wave of accounts is found against the deployment's own creation history, accounts that arrive one by one
are not a wave however many, and the creation time travels from the gateway's accounts table to the
detector (audit row, traffic record, observation)."""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from distillshield.detect.base import SignalScore
from distillshield.detect.campaign import GroupEvidence, campaign_call
from distillshield.detect.cohort import COHORT_LOGP, HOUR, born_in_waves, creation_cohort
from distillshield.detect.corpus import Extractor
from distillshield.detect.online import trusted_record
from distillshield.detect.wire import ObservationBatch
from distillshield.store.chain import CHAINED_FIELDS, canonical
from distillshield.store.export import record_to_row, row_to_record
from distillshield.traffic import TrafficRecord
from tests.conftest import RunningGateway

DAY = 24 * HOUR
NOW = 1_772_409_600.0


def history(rng: np.random.Generator, n: int = 800) -> np.ndarray:
    """A deployment's accounts signing up one by one over two years, more of them recently."""
    return NOW - np.exp(rng.uniform(np.log(5), np.log(700), n)) * DAY


def test_a_wave_of_accounts_stands_out_from_the_deployments_history() -> None:
    rng = np.random.default_rng(1)
    others = history(rng)
    wave = NOW - 20 * DAY + rng.uniform(0, 6 * HOUR, 60)  # bought in one afternoon
    cohort = creation_cohort(wave, others)
    assert cohort is not None and cohort.significant
    assert cohort.together == 60 and cohort.window_s <= 6 * HOUR and cohort.expected < 2
    assert "60 of the group's 60 accounts were created within" in cohort.describe()


def test_accounts_that_arrive_one_by_one_are_not_a_wave_however_many() -> None:
    rng = np.random.default_rng(2)
    others = history(rng)
    for size in (10, 60, 400):
        group = history(rng, size)  # drawn like everyone else's
        cohort = creation_cohort(group, others)
        assert cohort is not None and not cohort.significant, (size, cohort)
        assert cohort.logp < COHORT_LOGP / 2


def test_where_every_account_was_made_at_once_no_group_is_a_wave() -> None:
    """A deployment that imported all its accounts in one script run: the others fill the same window."""
    rng = np.random.default_rng(3)
    others = NOW - 3 * DAY + rng.uniform(0, HOUR, 500)
    group = NOW - 3 * DAY + rng.uniform(0, HOUR, 60)
    cohort = creation_cohort(group, others)
    assert cohort is not None and not cohort.significant


def test_several_waves_and_a_few_stragglers_still_make_a_cohort() -> None:
    rng = np.random.default_rng(4)
    others = history(rng)
    waves = np.concatenate([NOW - d * DAY + rng.uniform(0, 6 * HOUR, 25) for d in (40, 26, 12)])
    stragglers = history(rng, 10)
    cohort = creation_cohort(np.concatenate([waves, stragglers]), others)
    assert cohort is not None and cohort.significant and cohort.together >= 25


def test_a_member_created_on_a_day_of_its_own_is_not_in_the_waves() -> None:
    rng = np.random.default_rng(8)
    others = history(rng)
    waves = np.concatenate([NOW - d * DAY + rng.uniform(0, 6 * HOUR, 30) for d in (50, 35, 21)])
    loners = NOW - np.asarray([300.0, 90.0, 9.0]) * DAY  # honest accounts the grouping put with the campaign
    in_waves, found = born_in_waves(np.concatenate([waves, loners]), others)
    assert in_waves[:90].all() and not in_waves[90:].any()
    assert 1 <= len(found) <= 3 and all(c.significant for c in found)
    in_waves, found = born_in_waves(history(rng, 90), others)
    assert not in_waves.any() and found == []


def test_too_little_history_or_too_few_known_times_is_no_evidence() -> None:
    rng = np.random.default_rng(5)
    wave = NOW - 20 * DAY + rng.uniform(0, HOUR, 40)
    assert creation_cohort(wave, history(rng, 10)) is None  # a deployment with ten other accounts
    unknown = wave.copy()
    unknown[:20] = 0.0  # half the members' creation times are not in the log
    assert creation_cohort(unknown, history(rng)) is None
    assert creation_cohort(np.zeros(40), history(rng)) is None


def evidence(cot: float, rest: float, areas: float, cohort_size: int | None) -> GroupEvidence:
    rng = np.random.default_rng(6)
    others = history(rng)
    cohort, born = None, ()
    if cohort_size is not None:
        created = NOW - 30 * DAY + rng.uniform(0, 6 * HOUR, cohort_size)
        cohort = creation_cohort(created, others)
        in_waves, _ = born_in_waves(created, others)
        born = tuple(f"acct-{i}" for i in np.flatnonzero(in_waves))
    asked = 1200
    content = SignalScore("content", 0.45, "pooled prompts: not far from real users' prompts")
    return GroupEvidence(
        content, asked, int(cot * asked), areas, rest_asked=20_000, rest_reasoning=int(rest * 20_000),
        cohort=cohort, born=born,
    )  # fmt: skip


def test_a_wave_asking_for_reasoning_beyond_the_service_over_a_sweep_is_a_campaign() -> None:
    called = campaign_call(evidence(cot=0.30, rest=0.13, areas=7.5, cohort_size=200))
    assert called is not None
    score, why, by_waves = called
    assert 0.5 <= score < 0.8 and by_waves
    assert "200 of them were created in waves" in why and "of the group's 200 accounts were created within" in why
    assert "30% of their 1200 classified prompts ask for the model's reasoning against 13%" in why


@pytest.mark.parametrize(
    ("cot", "rest", "areas", "cohort_size", "why_not"),
    [
        (0.30, 0.13, 7.5, None, "no creation times: the same prompts are not a campaign"),
        (0.30, 0.25, 7.5, 200, "asks for reasoning about as often as the rest of the service"),
        (0.30, 0.13, 2.5, 200, "a course enrolled together stays in its syllabus's few areas"),
        (0.04, 0.13, 12.0, 200, "a company's roll-out: created together, asks ordinary things"),
    ],
)
def test_a_wave_alone_or_reasoning_alone_is_not_a_campaign(
    cot: float, rest: float, areas: float, cohort_size: int | None, why_not: str
) -> None:
    assert campaign_call(evidence(cot, rest, areas, cohort_size)) is None, why_not


def record(created: float | None) -> TrafficRecord:
    return TrafficRecord(
        ts=NOW, account_id="acct_1", endpoint="/v1/chat/completions", org_id="org_1", key_id="key_1",
        request={"model": "m", "messages": [{"role": "user", "content": "hello there"}]}, account_created_at=created,
    )  # fmt: skip


def test_the_creation_time_travels_from_the_log_to_the_detector() -> None:
    rec = record(NOW - 12 * DAY)
    row = record_to_row(rec) | {"seq": 1}
    back = row_to_record(row)
    assert back is not None and back.account_created_at == NOW - 12 * DAY
    again = TrafficRecord.model_validate(orjson.loads(rec.to_json()))
    assert again.account_created_at == NOW - 12 * DAY
    # the gateway's own rows, read without validation (detect/online.py), and the extraction shards' wire
    online = trusted_record(row)
    assert online is not None and online.account_created_at == NOW - 12 * DAY
    extractor = Extractor(None, None)
    obs = list(extractor.extract([rec, record(None)]))
    assert [o.account_created for o in obs] == [NOW - 12 * DAY, 0.0]
    decoded = ObservationBatch.from_fields(ObservationBatch(0, 1, "1-0", obs).to_fields()).observations
    assert [o.account_created for o in decoded] == [NOW - 12 * DAY, 0.0]


def test_a_negative_creation_time_is_refused() -> None:
    with pytest.raises(ValueError, match="account_created_at"):
        record(-5.0)


def test_the_creation_time_is_under_the_hash_only_when_set() -> None:
    """Rows written before the column existed keep their hashes; a set creation time cannot be edited unseen."""
    row = {k: None for k in CHAINED_FIELDS} | {"seq": 1, "ts": 1.0, "request_id": "r", "endpoint": "/v1/x"}
    before = orjson.dumps(
        {k: row[k] for k in CHAINED_FIELDS if k not in ("batch_id", "account_created_at")},
        option=orjson.OPT_SORT_KEYS,
    )
    assert canonical(row) == before
    assert canonical(row | {"account_created_at": 12.5}) != canonical(row | {"account_created_at": 13.5})


def test_classes_of_the_same_size_differ_only_by_how_their_accounts_were_born() -> None:
    """The same class of 40, once signing up one by one and once in an afternoon: only the second is a wave."""
    rng = random.Random(7)
    nprng = np.random.default_rng(7)
    others = history(nprng)
    one_by_one = np.asarray([NOW - rng.uniform(20, 400) * DAY for _ in range(40)])
    afternoon = np.asarray([NOW - 30 * DAY + rng.uniform(0, 4 * HOUR) for _ in range(40)])
    a, b = creation_cohort(one_by_one, others), creation_cohort(afternoon, others)
    assert a is not None and b is not None
    assert not a.significant and b.significant


def test_the_gateway_writes_the_accounts_creation_time_into_its_log(fake_gateway: RunningGateway) -> None:
    gw = fake_gateway
    born = time.time() - 20 * DAY  # an account brought over from another system keeps its creation time
    key = gw.create_key("migrated", created_at=born)
    r = httpx.post(
        f"{gw.base}/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
        json={"model": "fake-model", "max_tokens": 8, "messages": [{"role": "user", "content": "hello"}]},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    gw.flush_audit()

    async def rows() -> list[dict[str, Any]]:
        return [r async for r in gw.state.store.iter_audit() if r["account_id"] == "migrated"]

    (row,) = gw.run(rows())
    assert row["account_created_at"] == pytest.approx(born)
    exported = row_to_record(row)
    assert exported is not None and exported.account_created_at == pytest.approx(born)
    assert gw.run(gw.state.store.verify_chain()).ok
    assert gw.admin("GET", "/accounts/migrated").json()["created_at"] == pytest.approx(born)


def test_the_admin_api_refuses_a_creation_time_in_the_future(fake_gateway: RunningGateway) -> None:
    r = fake_gateway.admin("POST", "/accounts", json={"id": "later", "created_at": time.time() + 86_400})
    assert r.status_code == 422 and "created_at is in the future" in r.text
    r = fake_gateway.admin("POST", "/accounts", json={"id": "later", "created_at": -1})
    assert r.status_code == 422 and "created_at" in r.text
    assert fake_gateway.admin("GET", "/accounts/later").status_code == 404  # nothing half-made


def test_online_detection_reads_the_creation_time_from_the_gateways_rows() -> None:
    """The gateway's detector and batch analysis hold the same creation time per account (what the campaign
    judgement compares), from audit rows and from traffic records of the same requests."""
    import asyncio

    from distillshield.detect.analyze import analyze_records
    from distillshield.detect.online import DetectionExtension

    rng = random.Random(3)
    records = []
    for i in range(40):
        born = None if i % 5 == 0 else NOW - rng.uniform(1, 300) * DAY
        for j in range(3):
            rec = record(born).model_copy(update={"account_id": f"acct_{i}", "ts": NOW + i * 60 + j})
            records.append(rec)
    engines: list[Any] = []
    analyze_records(records, on_engine=engines.append)
    batch = {a: s.created_at for a, s in engines[0].accounts.items()}
    ext = DetectionExtension(recluster_every=500)
    ext._load()
    ext.queue.extend(record_to_row(r) | {"request_id": f"r{k}", "seq": k} for k, r in enumerate(records))
    asyncio.run(ext.run_once())
    asyncio.run(ext.flush())
    assert ext.engine is not None
    online = {a: s.created_at for a, s in ext.engine.accounts.items()}
    assert online == batch and len(batch) == 40
    assert sum(v == 0.0 for v in batch.values()) == 8  # no creation time in the log: unknown, not made up


def test_the_cohort_evidence_can_be_switched_off() -> None:
    """`--no-cohorts` / `detection.cohorts: false`: groups are judged without their creation waves."""
    from distillshield.config import Settings
    from distillshield.detect.analyze import analyze_records
    from distillshield.detect.campaign import group_evidence
    from distillshield.detect.online import detection_extension

    rng = np.random.default_rng(9)
    records = []
    for i in range(80):
        born = NOW - 20 * DAY + rng.uniform(0, HOUR) if i < 20 else NOW - rng.uniform(5, 600) * DAY
        records.append(record(float(born)).model_copy(update={"account_id": f"acct_{i}", "ts": NOW + i}))
    members = [f"acct_{i}" for i in range(20)]
    for cohorts in (True, False):
        engines: list[Any] = []
        an = analyze_records(records, on_engine=engines.append, cohorts=cohorts)
        assert an.report["summary"]["cohorts"] is cohorts
        engine = engines[0]
        assert engine.campaigns.cohorts is cohorts
        ev = group_evidence(members, engine.accounts, engine.population, cohorts=engine.campaigns.cohorts)
        assert (ev.cohort is not None and ev.cohort.significant and len(ev.born) == 20) is cohorts
    ext = detection_extension(Settings.model_validate({"detection": {"cohorts": False}}))
    assert ext is not None and ext.cohorts is False


def test_analyze_no_cohorts_on_the_command_line(tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from distillshield.cli import app

    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\n".join(record(NOW - 3 * DAY).model_copy(update={"ts": NOW + i}).to_json() for i in range(5)))
    for flag, expected in (("--cohorts", True), ("--no-cohorts", False)):
        out = tmp_path / f"r{expected}.json"
        r = CliRunner().invoke(app, ["analyze", str(path), "--out", str(out), flag, "--json"])
        assert r.exit_code == 0, r.output
        assert orjson.loads(out.read_bytes())["summary"]["cohorts"] is expected


def test_a_groups_rest_of_the_service_is_every_other_account() -> None:
    """ServiceCounts (built once per grouping run): a group's own counts, the rest's counts and the creation
    history the waves are judged on are exactly the members' and the non-members', whichever group is asked."""
    from types import SimpleNamespace

    from distillshield.detect.campaign import ServiceCounts

    accounts: dict[str, Any] = {
        f"a{i}": SimpleNamespace(
            cot=SimpleNamespace(n=10 + i, either_hits=i % 4),
            created_at=float(1000 * i),
            behaviour=SimpleNamespace(first_ts=float(50 * i)),
        )
        for i in range(12)
    }
    service = ServiceCounts.of(accounts)  # type: ignore[arg-type]
    assert service.span == 550.0
    for members in (["a0", "a5", "a11"], ["a3"], [f"a{i}" for i in range(11)]):
        rest = service.outside(members)
        others = [a for k, a in accounts.items() if k not in members]
        assert int(service.asked[rest].sum()) == sum(a.cot.n for a in others)
        assert int(service.reasoning[~rest].sum()) == sum(accounts[m].cot.either_hits for m in members)
        assert service.created[rest].tolist() == [a.created_at for a in others]
