"""The watermark end to end on the embedded model: a real gateway switches it on per account, the CLI
detects and attributes it, the suspect-model audit queries a loopback target, the Gumbel scheme
works through the same hook. Short generations only (the whole file takes a few seconds of model time).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from distillshield.cli import app
from distillshield.watermark.detect import Detector
from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.tokenizer import default_tokenizer
from tests.conftest import RunningGateway, make_settings, start_gateway

SECRET = "model-test-secret-0123456789abcdef"
MODEL = "smollm2-135m-instruct"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
runner = CliRunner()


@pytest.fixture(scope="module")
def wm_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    # One model thread: on a shared 2-core machine two threads spin at barriers and run ~10x slower.
    # kgw, off by default: these tests switch one account on (strong) and test the others plain
    gw = start_gateway(
        make_settings(
            tmp_path_factory.mktemp("wm"),
            watermark__secret=SECRET,
            watermark__scheme="kgw",
            watermark__mode="off",
            upstream__local__n_threads=1,
        )
    )
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def texts(wm_gateway: RunningGateway) -> dict[str, str]:
    """One watermarked answer (alice, strong) and one plain answer (bob), 96 tokens each, T=1."""
    wm_gateway.state.watermark.set("wm-alice", "strong")
    out = {}
    for account in ("wm-alice", "wm-bob"):
        client = openai.OpenAI(base_url=f"{wm_gateway.base}/v1", api_key=wm_gateway.create_key(account))
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=96, temperature=1.0, seed=7
        )
        out[account] = r.choices[0].message.content
    for other in ("wm-carol", "wm-dave"):
        wm_gateway.create_key(other)  # more candidate accounts in the store
    return out


@pytest.fixture(scope="module")
def config(wm_gateway: RunningGateway, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tmp_path_factory.mktemp("cfg") / "c.yaml"
    cfg.write_text(f"store:\n  url: {wm_gateway.settings.store.url}\nwatermark:\n  secret: {SECRET}\n  scheme: kgw\n")
    return cfg


def test_gateway_watermarks_only_the_accounts_switched_on(texts: dict[str, str], wm_gateway: RunningGateway) -> None:
    det = Detector(GreenListWatermark(0.25, 2.0, 1), default_tokenizer())
    ring = KeyRing(SECRET)
    alice = det.detect(texts["wm-alice"], ring.account("wm-alice"))
    assert alice.detected and alice.scored > 40, alice
    assert not det.detect(texts["wm-alice"], ring.account("wm-bob")).detected
    assert not det.detect(texts["wm-bob"], ring.account("wm-bob")).detected
    assert wm_gateway.state.watermark.mode_for("wm-bob") == "off"
    assert wm_gateway.state.watermark.applied >= 1


def test_cli_detects_and_attributes(texts: dict[str, str], config: Path, tmp_path: Path) -> None:
    f = tmp_path / "outputs.jsonl"
    f.write_text("\n".join(json.dumps({"id": a, "text": t}) for a, t in texts.items()) + "\n")
    r = runner.invoke(app, ["-c", str(config), "watermark", "detect", str(f), "--account", "wm-alice", "--json"])
    assert r.exit_code == 0, r.output
    res = {x["id"]: x["tests"][0] for x in json.loads(r.stdout)["results"]}
    assert res["wm-alice"]["detected"] and not res["wm-bob"]["detected"]
    r = runner.invoke(app, ["-c", str(config), "watermark", "detect", str(f), "--attribute", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    by_id = {x["id"]: x for x in out["results"]}
    assert out["keys_tested"] >= 4
    assert by_id["wm-alice"]["attributed"] == ["account:wm-alice"]
    assert by_id["wm-bob"]["attributed"] == []
    assert by_id["wm-alice"]["alpha"] == 1e-3 and by_id["wm-alice"]["secondary_alpha"] == 1e-6
    args = ["-c", str(config), "watermark", "detect", str(f), "--attribute"]
    bad = runner.invoke(app, [*args, "--secondary-alpha", "0"])
    assert bad.exit_code != 0 and "--secondary-alpha must be between 0 and 1" in str(bad.exception)  # main(): exit 2
    plain = runner.invoke(app, ["-c", str(config), "watermark", "detect", str(f), "--account", "wm-alice"])
    assert plain.exit_code == 0 and "wm-alice" in plain.stdout


def test_audit_queries_a_loopback_target(wm_gateway: RunningGateway, config: Path, tmp_path: Path) -> None:
    """The 'suspect' here is our own gateway serving a watermarked account: the audit finds that key."""
    wm_gateway.state.watermark.set("wm-suspect", "strong")
    key = wm_gateway.create_key("wm-suspect")
    probes = tmp_path / "probes.txt"
    probes.write_text("Describe a busy market in the morning.\nExplain why the sky is blue.\n")
    args = ["-c", str(config), "audit", "--target", f"{wm_gateway.base}/v1", "--api-key", key, "--prompts",
            str(probes), "--samples-per-prompt", "1", "--max-tokens", "64", "--json"]  # fmt: skip
    saved = tmp_path / "suspect.jsonl"
    r = runner.invoke(app, [*args, "--account", "wm-suspect", "--account", "wm-bob", "--save-samples", str(saved)])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["radioactive_for"] == ["account:wm-suspect"] and out["samples"] == 2
    assert out["results"][0]["key"] == "account:wm-suspect" and out["results"][0]["p_value"] < 1e-4
    # Offline, from the saved answers, scoring only contexts of what the log says we served that account.
    wm_gateway.flush_audit()
    r = runner.invoke(app, ["-c", str(config), "audit", "--samples", str(saved), "--account", "wm-suspect",
                            "--reference-from-log", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["filtered_by_reference"] and out["radioactive_for"] == ["account:wm-suspect"]
    # Probed with what the account itself asked (the log's prompts, each once), as a distilled model is audited.
    base = ["-c", str(config), "audit", "--target", f"{wm_gateway.base}/v1", "--api-key", key]
    r = runner.invoke(app, [*base, "--account", "wm-suspect", "--prompts-from-log", "--samples-per-prompt", "1",
                            "--max-tokens", "64", "--json"])  # fmt: skip
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["probes"] == {"prompts": 2, "from": "log"} and out["samples"] == 2
    assert out["radioactive_for"] == ["account:wm-suspect"]
    for extra in (["--account", "wm-nobody"], []):  # an account the log has no prompts for; no account at all
        r = runner.invoke(app, [*base, "--prompts-from-log", "--json", *extra])
        assert r.exit_code != 0
        assert ("holds no prompts for wm-nobody" if extra else "--prompts-from-log queries") in str(r.exception)


@pytest.mark.parametrize("scheme", ["gumbel", "tournament"])
def test_sampling_schemes_through_the_gateway(gateway_factory, scheme: str) -> None:
    """The keyed sampling schemes through the same hook: detected under the account's key only; an unseeded
    answer to a prompt differs from a seeded one under the tournament (it samples; Gumbel-max picks, but the
    answer's first h tokens are the sampler's, so its answers differ too); a request's seed makes either
    reproducible."""
    gw = gateway_factory(
        watermark__secret=SECRET, watermark__scheme=scheme, watermark__context_width=4, upstream__local__n_threads=1
    )
    gw.state.watermark.set("g-alice", "on")
    client = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.create_key("g-alice"))
    texts = [
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}], max_tokens=96, temperature=1.0, seed=seed
        )
        .choices[0]
        .message.content
        for seed in (3, 3, None)
    ]
    from distillshield.watermark.schemes import build_scheme

    tok = default_tokenizer()
    wm = build_scheme(scheme, context_width=4)
    ids = [tok.encode(t) for t in texts[::2]]
    assert wm.detect(KeyRing(SECRET).account("g-alice"), ids).detected
    assert not wm.detect(KeyRing(SECRET).account("g-bob"), ids).detected
    assert texts[0] == texts[1], texts  # the same seed again: reproducible, as unwatermarked sampling is
    if scheme == "tournament":
        assert texts[2] != texts[0], texts


def test_by_default_every_account_is_marked_and_logit_bias_and_logprobs_still_work(gateway_factory) -> None:
    """The default: an account nobody switched on is marked with the tournament (h=8). A request's logit_bias
    shapes what the keyed sampler draws from (a token pushed by +100 is the answer), and logprobs report the
    model's distribution, not only the one token the sampler kept."""
    from distillshield.watermark.tournament import TournamentWatermark

    gw = gateway_factory(watermark__secret=SECRET, upstream__local__n_threads=1)
    client = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.create_key("d-alice"))
    msg = [{"role": "user", "content": PROMPT}]
    texts = [
        client.chat.completions.create(model=MODEL, messages=msg, max_tokens=120, temperature=1.0, seed=s)
        .choices[0]
        .message.content
        for s in (1, 2)
    ]
    tok = default_tokenizer()
    ids = [tok.encode(t) for t in texts]
    assert TournamentWatermark(8).detect(KeyRing(SECRET).account("d-alice"), ids).detected
    assert not TournamentWatermark(8).detect(KeyRing(SECRET).account("d-bob"), ids).detected
    the = tok.encode(" the")[-1]
    forced = client.chat.completions.create(  # 16 tokens: the first 8 are the sampler's, the rest marked
        model=MODEL, messages=msg, max_tokens=16, temperature=1.0, seed=5, logit_bias={str(the): 100}
    )
    assert forced.choices[0].message.content.split() == ["the"] * 16, forced.choices[0].message.content
    r = client.chat.completions.create(
        model=MODEL, messages=msg, max_tokens=12, temperature=1.0, logprobs=True, top_logprobs=3
    )
    content = r.choices[0].logprobs.content
    assert content and all(len(e.top_logprobs) == 3 for e in content)
    assert all(alt.logprob > -50 for e in content for alt in e.top_logprobs), content  # not the suppressed -1e9


def test_cli_errors_are_one_line(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from distillshield.cli import main

    f = tmp_path / "t.txt"
    f.write_text("hello")
    for args, needle in [
        (["watermark", "detect", str(f)], "name a key"),
        (["watermark", "detect", str(tmp_path / "missing.txt"), "--account", "a"], "does not exist"),
        (["audit", "--account", "a"], "exactly one of --samples"),
        (["evidence", "--verify", str(tmp_path)], "manifest.json is missing"),
    ]:
        monkeypatch.setattr("sys.argv", ["distillshield", "-c", str(config), *args])
        with pytest.raises(SystemExit) as exc:
            main()
        err = capsys.readouterr().err
        assert exc.value.code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_entropy_weights_strengthen_the_tournament_test_at_low_temperature(gateway_factory, tmp_path: Path) -> None:
    """At T=0.7 much of an answer is determined and carries no watermark; the CLI's entropy-weighted test
    (the default for the tournament) counts each token by how open the model's choice was after the record's
    prompt, so its z is higher than the unweighted one on the same texts, and a key that did not mark them
    still finds nothing."""
    gw = gateway_factory(
        watermark__secret=SECRET,
        watermark__scheme="tournament",
        watermark__context_width=4,
        upstream__local__n_threads=1,
    )
    gw.state.watermark.set("t-alice", "on")
    client = openai.OpenAI(base_url=f"{gw.base}/v1", api_key=gw.create_key("t-alice"))
    prompts = [PROMPT, "Explain how a refrigerator keeps food cold.", "Describe a walk through an autumn forest."]
    f = tmp_path / "answers.jsonl"
    with f.open("w") as fh:
        for i, prompt in enumerate(prompts):
            r = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=160, temperature=0.7, seed=11
            )
            fh.write(json.dumps({"id": f"t{i}", "prompt": prompt, "text": r.choices[0].message.content}) + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"store:\n  url: {gw.settings.store.url}\nwatermark:\n  secret: {SECRET}\n")
    base = ["-c", str(cfg), "watermark", "detect", str(f), "--scheme", "tournament", "--context-width", "4", "--json"]
    runs = {}
    for flag in ("--entropy-weights", "--no-entropy-weights"):
        r = runner.invoke(app, [*base, "--account", "t-alice", "--account", "t-bob", flag])
        assert r.exit_code == 0, r.output
        runs[flag] = json.loads(r.stdout)
    assert "T=1" in runs["--entropy-weights"]["weighting"] and runs["--no-entropy-weights"]["weighting"] is None
    z = {flag: [[t["z"] for t in res["tests"]] for res in out["results"]] for flag, out in runs.items()}
    detected = [[t["detected"] for t in res["tests"]] for res in runs["--entropy-weights"]["results"]]
    assert not any(d[1] for d in detected) and sum(d[0] for d in detected) >= 2, (detected, z)  # alice's key only
    weighted = np.mean([zs[0] for zs in z["--entropy-weights"]])
    plain = np.mean([zs[0] for zs in z["--no-entropy-weights"]])
    assert weighted > plain, z
    bad = runner.invoke(app, [*base, "--account", "t-alice", "--scheme", "kgw", "--entropy-weights"])
    assert bad.exit_code != 0 and "no entropy-weighted test" in str(bad.exception)
