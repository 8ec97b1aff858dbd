"""Does the embedded model run on this machine? `python -m distillshield.gateway.upstream.llama_check`.

`make install` runs it after installing llama-cpp-python, in a process of its own: a llama.cpp build can crash
outright (SIGSEGV, SIGILL) on a CPU it was not built for: a wheel pip cached on another machine, or a native
build whose AMX kernels a virtual machine does not let the process use (seen on 2026-12-04: every decode of
llama-cpp-python 0.3.35 and 0.3.36 built with -DGGML_NATIVE=ON crashed on a Xeon with AMX; the portable build
runs). The Makefile rebuilds llama-cpp-python once, without pip's cache, when this exits non-zero.

Exit status 0: the model loaded and generated; 1: it could not (one line on stderr says why). A crash of the
library itself kills the process with its signal, which the caller sees as a non-zero status too.
"""

from __future__ import annotations

import sys


def main() -> int:
    from distillshield.gateway.upstream.local import default_model_path

    try:
        from llama_cpp import Llama

        path = default_model_path()
        model = Llama(model_path=str(path), n_ctx=256, n_threads=2, seed=0, verbose=False)
        out = model.create_completion("The capital of France is", max_tokens=2, temperature=0.0)
    except Exception as exc:  # noqa: BLE001 - any failure means the embedded model cannot serve here
        print(f"llama_check: the embedded model does not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    text = out["choices"][0]["text"] if isinstance(out, dict) else ""
    print(f"llama_check: the embedded model runs ({path.name}; generated {text!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
