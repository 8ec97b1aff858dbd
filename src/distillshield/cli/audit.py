"""`distillshield audit`: was a suspect model trained on our watermarked outputs? (radioactivity)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from distillshield.cli.common import CliError, console, err_console, print_json, progress, with_store
from distillshield.cli.watermark import candidate_keys, fmt_p, setup
from distillshield.store import Store
from distillshield.watermark.attribution import CORRECTIONS
from distillshield.watermark.radioactivity import (
    DEFAULT_PROBES,
    query_target,
    radioactivity_attribution,
    radioactivity_test,
)
from distillshield.watermark.texts import TextsError, read_texts


def audit_command(
    samples: Path = typer.Option(None, "--samples", "-s", help="the suspect's outputs: JSONL (a text per line)"),
    target: str = typer.Option(None, "--target", help="OpenAI-compatible base URL of the suspect (ends in /v1)"),
    model: str = typer.Option(None, help="model name at --target (default: the first it lists)"),
    api_key: str = typer.Option(None, "--api-key", envvar="DISTILLSHIELD_AUDIT_API_KEY", help="bearer for --target"),
    prompts_file: Path = typer.Option(None, "--prompts", help="probe prompts, one per line (default: 32 built in)"),
    prompts_log: bool = typer.Option(
        False, "--prompts-from-log", help="probe with the prompts the audit log holds for --account (what it sent)"
    ),
    max_probes: int = typer.Option(200, min=1, help="--prompts-from-log: at most this many distinct prompts"),
    samples_per_prompt: int = typer.Option(2, min=1, help="completions asked per probe prompt"),
    max_tokens: int = typer.Option(256, min=8, help="max_tokens per probe completion"),
    temperature: float = typer.Option(1.0, min=0.0, help="sampling temperature for the probes"),
    save_samples: Path = typer.Option(None, "--save-samples", help="write the suspect's answers here (JSONL)"),
    account: list[str] = typer.Option(None, "--account", "-a", help="test this account's key (repeatable)"),
    cluster: list[str] = typer.Option(None, "--cluster", help="test this cluster's key (repeatable)"),
    attribute_mode: bool = typer.Option(False, "--attribute", help="test every account key (store or --accounts)"),
    accounts_file: Path = typer.Option(None, "--accounts", help="candidate account ids, one per line"),
    reference: Path = typer.Option(
        None, "--reference", help="texts we served the suspected accounts: score only contexts that occur in them"
    ),
    reference_log: bool = typer.Option(
        False, "--reference-from-log", help="like --reference, with the answers the audit log holds for --account"
    ),
    correction: str = typer.Option("holm", help=f"with several keys: {' | '.join(CORRECTIONS)}"),
    alpha: float = typer.Option(0.001, help="significance level (family-wise with several keys)"),
    scheme: str = typer.Option(None, help="kgw | gumbel | tournament (default: watermark.scheme)"),
    gamma: float = typer.Option(None, help="kgw green share (default: watermark.gamma)"),
    context_width: int = typer.Option(None, help="default: watermark.context_width"),
    tokenizer: Path = typer.Option(None, help="GGUF file of the tokenizer our outputs were generated with"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
) -> None:  # fmt: skip
    """Suspect-model audit (Sander et al. 2024): pool the suspect's outputs, score each distinct
    (context, token) pair once, and test for our watermark under each key: a small p-value means the
    suspect learnt from text we watermarked for that account.

    Probe a suspect with what the account asked (--prompts-from-log), scoring what we served it (--reference-from-log).

    Example: distillshield audit --samples suspect_outputs.jsonl --attribute --json

    Example: distillshield audit --target URL --account acct_1 --prompts-from-log --reference-from-log --json
    """
    if (samples is None) == (target is None):
        raise CliError("give exactly one of --samples FILE (the suspect's outputs) or --target URL")
    if prompts_log and (target is None or prompts_file is not None or not account):
        raise CliError(
            "--prompts-from-log queries a --target with the prompts of the --account IDs (not with --prompts)"
        )
    if correction not in CORRECTIONS:
        raise CliError(f"--correction must be one of {', '.join(CORRECTIONS)}, got {correction!r}")
    if not (account or cluster or attribute_mode):
        raise CliError("name the key(s) to test: --account ID, --cluster ID, or --attribute for every account")
    wm = setup(scheme, gamma, context_width, None, tokenizer)
    keys = candidate_keys(wm.keys, account, cluster, accounts_file, everyone=attribute_mode)
    if not keys:
        raise CliError("no candidate keys: the store has no accounts; pass --accounts FILE or --account ID")

    probed: dict[str, Any] | None = None  # what the suspect was asked (--target only)
    if samples is not None:
        try:
            texts = [t.text for t in read_texts(samples)]
        except TextsError as exc:
            raise CliError(str(exc)) from None
        source = str(samples)
    else:
        probes = DEFAULT_PROBES
        if prompts_log:
            probes = _logged_prompts(list(account), max_probes)
            if not probes:
                raise CliError(f"the audit log holds no prompts for {', '.join(account)}")
        elif prompts_file is not None:
            if not prompts_file.is_file():
                raise CliError(f"prompts file {prompts_file} does not exist or is not a file")
            probes = [ln.strip() for ln in prompts_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        with progress() as bar:
            task = bar.add_task("querying the suspect", total=len(probes) * samples_per_prompt)
            try:
                texts = query_target(
                    target,
                    probes,
                    model=model,
                    api_key=api_key,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    samples_per_prompt=samples_per_prompt,
                    on_done=lambda: bar.advance(task),
                )
            except ValueError as exc:
                bar.live.transient = True
                raise CliError(str(exc)) from None
        source = target
        probed = {"prompts": len(probes), "from": "log" if prompts_log else "file" if prompts_file else "built-in"}
        if save_samples is not None:
            with open(save_samples, "w", encoding="utf-8") as fh:
                for t in texts:
                    fh.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    if not any(t.strip() for t in texts):
        raise CliError(f"{source} gave no text to test")

    seqs = [wm.tokenizer.encode(t) for t in texts]
    ref = None
    if reference is not None:
        try:
            ref = [wm.tokenizer.encode(t.text) for t in read_texts(reference)]
        except TextsError as exc:
            raise CliError(str(exc)) from None
    if reference_log:
        if not account:
            raise CliError("--reference-from-log needs the suspected accounts: --account ID")
        served = _served_texts(list(account))
        if not served:
            raise CliError(f"the audit log holds no answers for {', '.join(account)}")
        ref = (ref or []) + [wm.tokenizer.encode(t) for t in served]

    if len(keys) > 1 and ref is None:
        a = radioactivity_attribution(wm.scheme, keys, seqs, correction=correction, alpha=alpha)
        rows = [c.as_dict() for c in a.ranked]
        named = [c.label for c in a.attributed]
    else:
        rows, named = [], []
        results = [radioactivity_test(wm.scheme, k, seqs, reference=ref, alpha=alpha) for k in keys]
        adj = _adjust([r.detection.log10_p for r in results], correction)
        for r, la in sorted(zip(results, adj, strict=True), key=lambda x: x[0].detection.log10_p):
            d = r.as_dict()
            d["log10_p_adjusted"] = round(la, 4)
            d["p_adjusted"] = 10.0**la if la > -320 else 0.0
            rows.append(d)
            if d["p_adjusted"] < alpha:
                named.append(d["key"])
    out = {
        "source": source,
        "probes": probed,
        "samples": len(texts),
        "tokens": int(sum(len(s) for s in seqs)),
        "scheme": wm.scheme.name,
        "keys_tested": len(keys),
        "correction": correction,
        "alpha": alpha,
        "filtered_by_reference": ref is not None,
        "radioactive_for": named,
        "results": rows[:20] if len(rows) > 20 else rows,
    }
    if as_json:
        print_json(out)
        return
    t = Table("key", "scored pairs", "z", "p-value", f"p ({correction})", "verdict")
    for r in rows[:10]:
        t.add_row(
            escape(r["key"]),
            str(r["scored"]),
            f"{r['z']:.2f}",
            fmt_p(r["p_value"], r["log10_p"]),
            fmt_p(r["p_adjusted"], r["log10_p_adjusted"]),
            "[red]trained on our outputs[/red]" if r["key"] in named else "no evidence",
        )
    console.print(t)
    err_console.print(
        f"{len(texts)} samples, {out['tokens']} tokens from {escape(source)}; {len(keys)} key(s) tested, alpha {alpha}"
    )


def _logged_prompts(accounts: list[str], limit: int, page: int = 1000) -> list[str]:
    """The distinct last user turns of the requests these accounts were answered, oldest first, at most `limit`
    (the log is read a page at a time and no further than needed: a busy account has millions of rows)."""
    import sqlalchemy as sa

    from distillshield.detect.text import request_texts
    from distillshield.store.tables import audit_log

    async def go(store: Store) -> list[str]:
        prompts: dict[str, None] = {}
        last = -1
        async with store.engine.connect() as conn:
            while len(prompts) < limit:
                q = (
                    sa.select(audit_log.c.seq, audit_log.c.endpoint, audit_log.c.request)
                    .where(
                        audit_log.c.account_id.in_(accounts),
                        audit_log.c.response_text.is_not(None),
                        audit_log.c.seq > last,
                    )
                    .order_by(audit_log.c.seq)
                    .limit(page)
                )
                rows = (await conn.execute(q)).all()
                for seq, endpoint, body in rows:
                    last = seq
                    try:
                        req = json.loads(body) if body else None
                    except ValueError:
                        continue  # a row logged without its body (or cut short) has no prompt to replay
                    user = request_texts(endpoint, req)[0].strip() if isinstance(req, dict) else ""
                    if user:
                        prompts.setdefault(user, None)
                        if len(prompts) >= limit:
                            break
                if len(rows) < page:
                    break
        return list(prompts)

    return with_store(go)


def _served_texts(accounts: list[str]) -> list[str]:
    """The answers the audit log holds for these accounts."""
    import sqlalchemy as sa

    from distillshield.store.tables import audit_log

    async def go(store: Store) -> list[str]:
        q = sa.select(audit_log.c.response_text).where(
            audit_log.c.account_id.in_(accounts), audit_log.c.response_text.is_not(None)
        )
        async with store.engine.connect() as conn:
            return [r[0] for r in (await conn.execute(q)).all() if r[0]]

    return with_store(go)


def _adjust(log10_ps: list[float], correction: str) -> list[float]:
    from distillshield.watermark.stats import bonferroni_log10, holm_log10

    return holm_log10(log10_ps) if correction == "holm" else bonferroni_log10(log10_ps)


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
