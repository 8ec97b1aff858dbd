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

`--student transformer` (issue 15): a pretrained transformer student instead. The embedded
SmolLM2-135M-Instruct itself, de-quantised from its GGUF file into PyTorch by transformers, is fine-tuned
(every weight, AdamW, bf16 autocast on CPU, loss on the answer tokens only) on 200 chat answers of which a
share came from the `acct-attacker` account under the default watermark (the tournament, h=8, 8 rounds:
`student-attacker.jsonl`) and the rest unwatermarked (`student-plain.jsonl`, the other prompts): what an
attacker who distils into an open model of its own does. The audit then samples the student, as
`distillshield audit --target` would, on two probe sets: the attacker account's own prompts (the first 50:
a defender replays what the suspected account sent) and 100 prompts no student was trained on; each set is
tested alone and filtered to the contexts we served the account. The 0% student is tested under 200
unrelated keys (no key may reach p < 1e-3).

    .venv/bin/python benchmarks/watermark_corpus.py --corpora student-plain,student-attacker
    .venv/bin/python benchmarks/watermark_radioactivity.py --student transformer --json-out student.json
Needs torch, transformers and gguf (pip install torch==2.13.0 transformers gguf).
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

from distillshield.watermark.base import DEFAULT_MIN_P, DEFAULT_TOP_K, DEFAULT_TOP_P
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


TRANSFORMER_SHARES = (0.0, 0.05, 0.10, 0.25)


def load_transformer() -> tuple[Any, Any]:
    """The embedded model as a PyTorch model (de-quantised from its GGUF file) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from distillshield.gateway.upstream.local import default_model_path

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = default_model_path()
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype="float32")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The chat template around one user turn, up to the assistant's first token (as the teacher saw it)."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)  # a mapping in transformers 5, a list before


def finetune(
    model: Any, examples: list[tuple[list[int], list[int]]], *, seed: int, epochs: int, lr: float, batch: int
) -> list[float]:
    """Fine-tune every weight on (prompt ids, answer ids) pairs, loss on the answer tokens only."""
    import torch

    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(examples), generator=g).tolist()
        total = count = 0.0
        for i in range(0, len(order), batch):
            rows = [examples[j] for j in order[i : i + batch]]
            width = max(len(p) + len(a) for p, a in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)
            y = torch.full((len(rows), width), -100, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for r, (p, a) in enumerate(rows):
                seq = p + a
                x[r, : len(seq)] = torch.tensor(seq)
                y[r, len(p) : len(seq)] = torch.tensor(a)  # the model learns the answers, not the prompts
                mask[r, : len(seq)] = 1
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(input_ids=x, attention_mask=mask, labels=y)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n = int((y[:, 1:] != -100).sum())
            total += float(out.loss.detach()) * n
            count += n
        losses.append(total / max(count, 1))
    model.eval()
    return losses


def generate(
    model: Any, tokenizer: Any, prompts_: list[list[int]], *, seed: int, length: int, batch: int = 25
) -> list[list[int]]:
    """Sample one answer per prompt at T = 1 with the teacher's sampler settings (top-k 40, top-p 0.95,
    min-p 0.05); the answer's token ids without the end-of-turn token."""
    import torch

    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    out: list[list[int]] = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for i in range(0, len(prompts_), batch):
            chunk = prompts_[i : i + batch]
            width = max(map(len, chunk))
            x = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, p in enumerate(chunk):
                x[r, width - len(p) :] = torch.tensor(p)
                mask[r, width - len(p) :] = 1
            gen = model.generate(
                input_ids=x, attention_mask=mask, do_sample=True, temperature=1.0, top_k=DEFAULT_TOP_K,
                top_p=DEFAULT_TOP_P, min_p=DEFAULT_MIN_P, max_new_tokens=length, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
            for row in gen[:, width:].tolist():
                ids = []
                for t in row:
                    if t == eos or t == tokenizer.pad_token_id:
                        break
                    ids.append(int(t))
                out.append(ids)
    return out


def transformer_main(args: argparse.Namespace) -> None:
    import torch
    from watermark_common import SCHEMES, prompts

    torch.set_num_threads(int(os.environ.get("DISTILLSHIELD_BENCH_THREADS", "2")))
    tok = default_tokenizer()
    d = bench_dir()
    plain = {r["i"]: r for r in read_jsonl(d / "student-plain.jsonl")}
    marked = {r["i"]: r for r in read_jsonl(d / "student-attacker.jsonl")}
    common = sorted(set(plain) & set(marked))[: args.answers]
    if len(common) < min(100, args.answers):
        sys.exit("run: benchmarks/watermark_corpus.py --corpora student-plain,student-attacker")
    scheme = SCHEMES["tournament-h8"]
    ring = KeyRing(SECRET)
    key = ring.account(ATTACKER)
    others = [ring.account(f"unrelated-{i}") for i in range(200)]
    model, hf_tok = load_transformer()
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    eot = hf_tok.eos_token_id
    p_ids = {i: prompt_ids(hf_tok, plain[i]["prompt"]) for i in common}
    ans = {("plain", i): tok.encode(plain[i]["text"]) for i in common}
    ans |= {("marked", i): tok.encode(marked[i]["text"]) for i in common}
    served = [ans[("marked", i)] for i in common]  # every answer the gateway served the attacker account
    own = common[: args.replay_prompts]  # the account's own prompts, replayed by the defender
    unrelated_prompts = prompts(args.unrelated_offset + args.unrelated)[args.unrelated_offset :]
    probes = {
        "own prompts": [p_ids[i] for i in own for _ in range(args.samples_per_prompt)],
        "unrelated prompts": [prompt_ids(hf_tok, p) for p in unrelated_prompts],
    }
    result: dict[str, Any] = {
        "machine": machine(), "scheme": "tournament h=8, 8 rounds (the default)", "teacher_answers": len(common),
        "teacher_tokens": {"plain": sum(len(ans[("plain", i)]) for i in common),
                           "watermarked": sum(len(ans[("marked", i)]) for i in common)},
        "student": {"type": "SmolLM2-135M-Instruct (the teacher's own weights, de-quantised), full fine-tune",
                    "epochs": args.epochs, "lr": args.lr, "batch": args.batch, "optimizer": "AdamW, bf16 autocast"},
        "probes": {k: len(v) for k, v in probes.items()}, "student_max_tokens": args.length, "runs": [],
    }  # fmt: skip
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}), flush=True)
    for share in args.shares:
        k = round(share * len(common))
        for seed in range(args.seeds):
            model.load_state_dict(base)
            examples = [(p_ids[i], ans[("marked" if n < k else "plain", i)] + [eot]) for n, i in enumerate(common)]
            t = time.perf_counter()
            losses = finetune(model, examples, seed=seed, epochs=args.epochs, lr=args.lr, batch=args.batch)
            t_train = time.perf_counter() - t
            outs = {
                name: generate(model, hf_tok, ps, seed=seed + 100, length=args.length) for name, ps in probes.items()
            }
            run: dict[str, Any] = {
                "share": share, "seed": seed, "watermarked_answers": k, "train_loss": [round(x, 3) for x in losses],
                "train_seconds": round(t_train, 1), "seconds": round(time.perf_counter() - t, 1), "tests": {},
            }  # fmt: skip
            for name, o in outs.items():
                run["tests"][name] = {
                    "student_tokens": sum(map(len, o)),
                    "dedup": radioactivity_test(scheme, key, o).as_dict(),
                    "filtered": radioactivity_test(scheme, key, o, reference=served).as_dict(),
                }
                if share == 0.0:
                    ps = np.array([radioactivity_test(scheme, other, o).detection.p_value for other in others])
                    run["tests"][name]["calibration_200_unrelated_keys"] = {
                        "share_p_below_0.01": float(np.mean(ps < 0.01)),
                        "share_p_below_0.001": float(np.mean(ps < 1e-3)),
                        "min_p": float(ps.min()),
                    }
            result["runs"].append(run)
            print(json.dumps({x: run[x] for x in ("share", "seed", "train_loss", "seconds")}
                             | {n: (v["dedup"]["log10_p"], v["filtered"]["log10_p"]) for n, v in run["tests"].items()}),
                  flush=True)  # fmt: skip
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(result, fh, indent=2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=None, help="students per share (default: gru 3, transformer 1)")
    ap.add_argument("--epochs", type=int, default=None, help="default: gru 15, transformer 2")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--samples", type=int, default=400, help="student completions per student")
    ap.add_argument(
        "--length", type=int, default=None, help="max tokens per student completion (default: gru 120, transformer 160)"
    )
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--student", choices=("gru", "transformer"), default="gru")
    ap.add_argument("--shares", type=float, nargs="+", default=list(TRANSFORMER_SHARES), help="transformer: shares")
    ap.add_argument("--answers", type=int, default=200, help="transformer: teacher answers to train on")
    ap.add_argument("--lr", type=float, default=1e-4, help="transformer: learning rate")
    ap.add_argument("--batch", type=int, default=8, help="transformer: answers per step")
    ap.add_argument("--replay-prompts", type=int, default=50, help="transformer: the account's prompts replayed")
    ap.add_argument("--samples-per-prompt", type=int, default=2, help="transformer: samples per replayed prompt")
    ap.add_argument("--unrelated", type=int, default=100, help="transformer: probe prompts never trained on")
    ap.add_argument("--unrelated-offset", type=int, default=250, help="transformer: the first of them")
    args = ap.parse_args()
    # The two students' defaults differ (a GRU from scratch needs many epochs; a fine-tune costs ~10 min each).
    defaults = {"gru": (3, 15, 120), "transformer": (1, 2, 160)}[args.student]
    for name, value in zip(("seeds", "epochs", "length"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.student == "transformer":
        transformer_main(args)
        return
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
