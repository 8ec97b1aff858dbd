"""Radioactivity validation: do small students trained on our outputs carry the watermark, and does
the de-duplicated test tell them apart from students that never saw watermarked text?

Teacher data: the embedded model's completions (watermark_corpus.py): plain.jsonl (no watermark) and
attacker.jsonl (KGW gamma=0.25 delta=2 h=1 under the key of "acct-attacker"), the same prompts. For
each share s of watermarked data, a student's training set is the first s*N attacker completions
plus plain completions of the other prompts (N completions in all, every prompt once).

Student: a GRU language model trained from scratch on the teacher's token ids (fine-tuning a real
LM is out of reach on 2 CPU cores); its vocabulary is the teacher tokens seen in the data. After
training it samples completions, which are scored as the suspect's outputs.

Test: `radioactivity_test` (distinct (previous token, token) pairs, exact binomial p) under the
attacker's key; also with Sander et al.'s filter (only contexts that occur in what we served the
attacker account); calibration: the 0% students under 200 unrelated keys, with and without
de-duplication; and once through the CLI (`distillshield audit --samples`).

    .venv/bin/python benchmarks/watermark_radioactivity.py [--seeds 3] [--json-out radioactivity.json]
Needs torch (the `bench` extra: pip install torch==2.13.0 for the CPU build).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np
from watermark_common import ATTACKER, SECRET, bench_dir, machine, read_jsonl

from distillshield.watermark.keys import KeyRing
from distillshield.watermark.kgw import GreenListWatermark
from distillshield.watermark.radioactivity import radioactivity_test
from distillshield.watermark.tokenizer import default_tokenizer

SHARES = (0.0, 0.05, 0.10, 0.25, 0.5, 1.0)


def train_student(seqs: list[list[int]], vocab: np.ndarray, seed: int, epochs: int, hidden: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    index = {int(t): i + 2 for i, t in enumerate(vocab)}  # 0 = BOS, 1 = EOS
    stream: list[int] = []
    for s in seqs:
        stream += [0] + [index[t] for t in s] + [1]
    data = torch.tensor(stream, dtype=torch.long)
    win = 64
    n = (len(data) - 1) // win
    x = data[: n * win].view(n, win)
    y = data[1 : n * win + 1].view(n, win)

    class Student(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(len(vocab) + 2, 128)
            self.rnn = nn.GRU(128, hidden, batch_first=True)
            self.out = nn.Linear(hidden, len(vocab) + 2)

        def forward(self, inp: Any, state: Any = None) -> tuple[Any, Any]:
            h, state = self.rnn(self.emb(inp), state)
            return self.out(h), state

    model = Student()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n, 32):
            b = perm[i : i + 32]
            logits, _ = model(x[b])
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), y[b].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach().item() * len(b)
        losses.append(total / n)
    model.eval()
    return model, losses


def sample(model: Any, vocab: np.ndarray, n: int, length: int, seed: int) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(seed)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    with torch.no_grad():
        tok = torch.zeros(n, 1, dtype=torch.long)
        state = None
        for _ in range(length):
            logits, state = model(tok, state)
            probs = torch.softmax(logits[:, -1, :].float(), dim=-1)
            probs[:, 0] = 0  # never BOS again
            tok = torch.multinomial(probs, 1, generator=g)
            for i, t in enumerate(tok[:, 0].tolist()):
                if done[i]:
                    continue
                if t == 1:
                    done[i] = True
                else:
                    out[i].append(int(vocab[t - 2]))
    return [s for s in out if len(s) > 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--samples", type=int, default=400, help="student completions per student")
    ap.add_argument("--length", type=int, default=120, help="max tokens per student completion")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    tok = default_tokenizer()
    d = bench_dir()
    plain = {r["i"]: tok.encode(r["text"]) for r in read_jsonl(d / "plain.jsonl")}
    marked = {r["i"]: tok.encode(r["text"]) for r in read_jsonl(d / "attacker.jsonl")}
    common = sorted(set(plain) & set(marked))
    if len(common) < 20:
        sys.exit("run benchmarks/watermark_corpus.py first (plain and attacker corpora)")
    n_total = len(common)
    vocab = np.array(sorted({t for i in common for t in plain[i] + marked[i]}), dtype=np.int64)
    ring = KeyRing(SECRET)
    key = ring.account(ATTACKER)
    kgw = GreenListWatermark(0.25, 2.0, 1)
    served = [marked[i] for i in common]  # what the gateway served the attacker account
    others = [ring.account(f"unrelated-{i}") for i in range(200)]
    result: dict[str, Any] = {
        "machine": machine(), "teacher_completions": n_total,
        "teacher_tokens": {"plain": sum(len(plain[i]) for i in common),
                           "watermarked": sum(len(marked[i]) for i in common)},
        "student": {"type": "GRU LM from scratch", "embedding": 128, "hidden": args.hidden,
                    "vocab": int(len(vocab)) + 2, "epochs": args.epochs, "window": 64, "batch": 32,
                    "optimizer": "Adam 3e-3"},
        "student_samples": args.samples, "student_max_tokens": args.length, "runs": [],
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)
    cli_done = False
    for share in SHARES:
        k = round(share * n_total)
        for seed in range(args.seeds):
            seqs = [marked[i] for i in common[:k]] + [plain[i] for i in common[k:]]
            t = time.perf_counter()
            model, losses = train_student(seqs, vocab, seed, args.epochs, args.hidden)
            outs = sample(model, vocab, args.samples, args.length, seed + 100)
            dt = time.perf_counter() - t
            plain_test = radioactivity_test(kgw, key, outs)
            filt = radioactivity_test(kgw, key, outs, reference=served)
            run: dict[str, Any] = {
                "share": share, "seed": seed, "watermarked_completions": k, "train_loss": round(losses[-1], 3),
                "student_tokens": sum(map(len, outs)), "seconds": round(dt, 1),
                "dedup": plain_test.as_dict(), "filtered": filt.as_dict(),
            }  # fmt: skip
            if share == 0.0:
                ps = [radioactivity_test(kgw, o, outs).detection.p_value for o in others]
                nodedup = [kgw.detect(o, outs, dedup=False).p_value for o in others]
                run["calibration_200_unrelated_keys"] = {
                    "dedup_share_p_below_0.01": float(np.mean(np.array(ps) < 0.01)),
                    "dedup_min_p": min(ps),
                    "no_dedup_share_p_below_0.01": float(np.mean(np.array(nodedup) < 0.01)),
                    "no_dedup_min_p": min(nodedup),
                }
            if share == 0.05 and not cli_done:
                run["cli"] = cli_audit(tok, outs)
                cli_done = True
            result["runs"].append(run)
            print(json.dumps({x: run[x] for x in ("share", "seed", "train_loss", "student_tokens", "seconds")}
                             | {"p": run["dedup"]["p_value"], "log10_p": run["dedup"]["log10_p"],
                                "p_filtered": run["filtered"]["p_value"]}), flush=True)  # fmt: skip
    summary = {}
    for share in SHARES:
        rs = [r for r in result["runs"] if r["share"] == share]
        summary[str(share)] = {
            "median_log10_p": round(statistics.median(r["dedup"]["log10_p"] for r in rs), 2),
            "max_log10_p": round(max(r["dedup"]["log10_p"] for r in rs), 2),
            "median_log10_p_filtered": round(statistics.median(r["filtered"]["log10_p"] for r in rs), 2),
            "median_z": round(statistics.median(r["dedup"]["z"] for r in rs), 2),
        }
    result["summary"] = summary
    print(json.dumps(summary, indent=2))
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


def cli_audit(tok: Any, outs: list[list[int]]) -> dict[str, Any]:
    """The same audit through the command line, on the student's outputs as text."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "suspect_outputs.jsonl")
        with open(path, "w", encoding="utf-8") as fh:
            for s in outs:
                fh.write(json.dumps({"text": tok.decode(s)}) + "\n")
        env = {**os.environ, "DISTILLSHIELD_WATERMARK__SECRET": SECRET, "DISTILLSHIELD_CONFIG": ""}
        env.pop("DISTILLSHIELD_CONFIG")
        cmd = [sys.executable, "-m", "distillshield", "audit", "--samples", path, "--account", ATTACKER, "--json"]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=600)
        if r.returncode != 0:
            return {"error": r.stderr.strip()}
        out = json.loads(r.stdout)
        return {"command": "distillshield audit --samples suspect_outputs.jsonl --account acct-attacker --json",
                "p_value": out["results"][0]["p_value"], "log10_p": out["results"][0]["log10_p"],
                "radioactive_for": out["radioactive_for"]}  # fmt: skip


if __name__ == "__main__":
    main()
