"""The install-time check of the embedded model (gateway/upstream/llama_check.py): it runs the model in a process
of its own and says so; where the model cannot be found it fails with one line, not a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_the_check_runs_the_embedded_model() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "distillshield.gateway.upstream.llama_check"], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "the embedded model runs (SmolLM2-135M-Instruct.Q4_1.gguf; generated" in r.stdout


def test_the_check_fails_in_one_line_without_the_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from distillshield.gateway.upstream import llama_check, local

    def missing() -> object:
        raise FileNotFoundError("the embedded model is not installed")

    monkeypatch.setattr(local, "default_model_path", missing)
    assert llama_check.main() == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not run: FileNotFoundError: the embedded model is not installed" in err
