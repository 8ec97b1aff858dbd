"""OpenAI embeddings shapes: validate /v1/embeddings, and the answer as the official SDK parses it.

`client.embeddings.create(model=..., input="..." | [...], encoding_format="float" | "base64", dimensions=...)`.
The SDK sends `encoding_format: "base64"` when the caller names none and decodes the vectors itself (little-endian
float32), so both encodings are served. The upstream gets the body as validated (`POST /embeddings` on an HTTP
upstream); the embedded model computes the vectors in-process (upstream/local.py).

Inputs are text: token-id arrays (which OpenAI also takes) are refused, because detection reads the texts an
account embeds (what it covers, how it spreads over the population's topics) and token ids of some other
tokenizer are no text.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from distillshield.gateway.errors import UpstreamError, bad_request
from distillshield.gateway.protocols.openai import _int, _model, _type_name
from distillshield.gateway.upstream.base import GenRequest

MAX_INPUTS = 2048  # inputs per request, as OpenAI's API
MAX_DIMENSIONS = 65_536
ENCODINGS = ("float", "base64")
KNOWN = frozenset(("model", "input", "encoding_format", "dimensions", "user"))
_TOKEN_IDS = (
    "token-id arrays are not accepted here: send the text (detection reads the texts an account embeds). "
    "LangChain's OpenAIEmbeddings sends token ids unless check_embedding_ctx_length=False"
)


def _token_ids(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, list) and bool(v) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
    )


def _inputs(body: dict[str, Any]) -> list[str]:
    given = body.get("input")
    if given is None:
        raise bad_request("'input' is required", "input", code="missing_required_parameter")
    if isinstance(given, str):
        if not given:
            raise bad_request("'input' must not be an empty string", "input")
        return [given]
    if not isinstance(given, list):
        raise bad_request(f"'input' must be a string or an array of strings, got {_type_name(given)}", "input")
    if not given:
        raise bad_request("'input' must hold at least one string", "input")
    if len(given) > MAX_INPUTS:
        raise bad_request(f"'input' may hold at most {MAX_INPUTS} strings, got {len(given)}", "input")
    if _token_ids(given):
        raise bad_request(f"'input' is an array of token ids; {_TOKEN_IDS}", "input", code="unsupported_parameter")
    for i, text in enumerate(given):
        at = f"input[{i}]"
        if _token_ids(text):
            raise bad_request(f"'{at}' is an array of token ids; {_TOKEN_IDS}", at, code="unsupported_parameter")
        if not isinstance(text, str):
            raise bad_request(f"'{at}' must be a string, got {_type_name(text)}", at)
        if not text:
            raise bad_request(f"'{at}' must not be an empty string", at)
    return given


def parse_embeddings(body: dict[str, Any]) -> GenRequest:
    """Validate an embeddings body. The GenRequest's prompt text is the inputs joined by newlines (what the
    token reservation and detection read); it generates nothing (max_tokens 0)."""
    for name in body:
        if name not in KNOWN:
            raise bad_request(f"Unknown parameter: '{name}'.", name, code="unknown_parameter")
    model = _model(body)
    inputs = _inputs(body)
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in ENCODINGS:
        raise bad_request(
            f"'encoding_format' must be 'float' or 'base64', got {str(encoding)[:40]!r}", "encoding_format"
        )
    _int(body, "dimensions", 1, MAX_DIMENSIONS)
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request(f"'user' must be a string, got {_type_name(user)}", "user")
    upstream = {k: v for k, v in body.items() if v is not None}
    return GenRequest("embeddings", upstream, model, False, 0, "\n".join(inputs), n=len(inputs))


def input_texts(body: dict[str, Any]) -> list[str]:
    """The inputs of a validated embeddings body, as a list (one string is a list of one)."""
    given = body["input"]
    return [given] if isinstance(given, str) else list(given)


def embedding_list(vectors: np.ndarray, body: dict[str, Any], model: str, prompt_tokens: int) -> dict[str, Any]:
    """An embeddings answer in OpenAI's shape from the model's vectors (one row per input): L2-normalised,
    shortened to `dimensions` (the first d components, normalised again, as OpenAI's text-embedding-3 models
    do), each a list of floats or base64 of little-endian float32 per `encoding_format`. For in-process
    upstreams; raises UpstreamError (400) when `dimensions` exceeds the model's."""
    vecs = np.asarray(vectors, dtype=np.float32)
    native = vecs.shape[1]
    dims = body.get("dimensions")
    if dims is not None:
        if dims > native:
            raise UpstreamError(
                400, f"'dimensions' must be at most {native} for model '{model}' (its embedding size), got {dims}"
            )
        vecs = vecs[:, :dims]
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs = vecs / np.where(norms > 0, norms, 1.0)
    b64 = body.get("encoding_format") == "base64"
    little = vecs.astype("<f4")
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(row.tobytes()).decode("ascii") if b64 else row.tolist(),
        }
        for i, row in enumerate(little)
    ]
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}


def answer(resp: dict[str, Any], gen: GenRequest, prompt_tokens: int) -> dict[str, Any]:
    """The client's answer from the upstream's: its vectors in input order, the requested model name and the
    settled usage. Raises UpstreamError (502) when the upstream's answer is not one vector per input."""
    data = resp.get("data")
    if not isinstance(data, list) or len(data) != gen.n or not all(isinstance(d, dict) for d in data):
        got = f"{len(data)} items" if isinstance(data, list) else _type_name(data)
        raise UpstreamError(
            502, "the model server answered with a malformed embeddings list", f"expected {gen.n} embeddings, got {got}"
        )
    ordered = sorted(data, key=lambda d: d.get("index") if isinstance(d.get("index"), int) else 0)
    usage = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    return {"object": "list", "data": ordered, "model": gen.model, "usage": usage}


def upstream_tokens(resp: dict[str, Any]) -> int | None:
    """The upstream's count of input tokens, when it reported one."""
    usage = resp.get("usage")
    v = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None
