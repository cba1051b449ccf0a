"""Configuration of the serving tier (pydantic-settings, prefix ``FEDGUARD_SERVE_``).

One :class:`ServingSettings` per deployable (DESIGN.md §7.5): where to bind,
how big a request may be, which key is trusted to have signed the models and
which certificate terminates TLS. The CLI overrides fields from its options;
tests build an instance directly instead of touching the environment.

Request limits exist because the tier assumes hostile callers: a bounded body
and a bounded batch keep one request from holding a worker or memory hostage.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from lifecycle.errors import ConfigurationError

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_OBJECTION_STATUS = 403
DEFAULT_OBJECTION_MESSAGE = ("this subject has objected to automated processing by this model; "
                             "no prediction was made")
FiniteBound = Annotated[float, Field(allow_inf_nan=False)] | None


class OutputPolicy(BaseModel):
    """What a model's predict route returns besides the labels (see :mod:`serving.guards.outputs`).

    ``precision`` is the number of decimals scores are rounded to; ``null``
    (JSON) sends them at full precision, which only an explicit setting does.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    output_mode: Literal["label", "top-k", "probabilities"] = "label"
    top_k: int = Field(default=3, ge=1)
    precision: int | None = Field(default=2, ge=0, le=8)


LABELS_ONLY = OutputPolicy()
"""The policy of a model configured with none (frozen, so shared: built once, not per request)."""


class QuotaOverride(BaseModel):
    """Per-model or per-key quota limits; a field left out keeps the broader value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rate: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    burst: int | None = Field(default=None, ge=1)
    daily_budget: int | None = Field(default=None, ge=0)


class ServingSettings(BaseSettings):
    """Settings of ``fedguard serve`` and :func:`serving.app.create_app`.

    Attributes
    ----------
    host, port
        Where uvicorn binds. Loopback by default: exposing the API is a
        deliberate act, and a non-loopback bind without TLS prints a warning.
    max_instances
        Most instances one predict request may carry (422 beyond it).
    max_body_bytes
        Largest request body accepted (413 beyond it), checked while the body
        streams in, before it is parsed.
    public_key
        PEM public key trusted to have signed served models; ``None`` trusts
        the registry's own signing key (``FEDGUARD_HOME/keys``).
    ssl_certfile, ssl_keyfile
        Passed to uvicorn to terminate TLS in-process; the gRPC port uses them too.
    grpc_port
        Port of the Open Inference Protocol's gRPC service
        (:mod:`serving.protocols.v2.grpc.server`), on ``host``, in the same
        process; ``None`` (the default) serves no gRPC. ``0`` picks a free
        port (logged). Without TLS it may bind only to loopback.
    quota_backend
        ``memory`` (per process, the default) or ``redis`` (shared by replicas).
    redis_url, quota_prefix
        Where the Redis backend keeps its counters.
    quota_rate, quota_burst, quota_daily_budget
        Default limits of every (key, model) pair: requests per second,
        requests back to back, instances predicted per UTC day.
    model_quotas, key_quotas
        Overrides by model name and by key id (JSON objects in the
        environment, e.g. ``{"demo": {"daily_budget": 500}}``); a key's
        override wins over its model's.
    outputs
        Output policy by model name (a JSON object in the environment, e.g.
        ``{"demo": {"output_mode": "top-k", "top_k": 2, "precision": 3}}``);
        a model not listed returns labels only.
    drift_window, drift_min_instances
        Live window of the drift monitor (about the last ``drift_window``
        instances per model, kept as bin counts) and how many it needs before
        it scores (PSI and KS are noisy on a few instances).
    drift_psi_threshold, drift_ks_threshold
        A feature (or the predicted-class distribution) whose PSI or binned
        KS distance exceeds these raises the model's drift alert.
    extraction_guard
        Whether per-key extraction signals are tracked and acted on.
    extraction_window_seconds, extraction_min_queries
        Window of the per-(key, model) signals and the instances it needs
        before a key can be judged.
    extraction_max_rate, extraction_max_cells, extraction_max_boundary_share
        Thresholds of the three signals: instances per second over the
        window, distinct cells of the coarse grid visited, and the share of
        instances whose top-two probability margin is below
        ``extraction_boundary_margin``.
    extraction_grid_bins
        Quantile bins per feature of the coarse grid (from the reference).
    extraction_min_signals
        How many signals must cross their threshold for a key to be throttled.
    extraction_throttle_rate, extraction_throttle_burst, extraction_throttle_seconds
        The lowered limits a flagged key gets, and for how long.
    environment
        The named environment this server serves (``fedguard serve --env``):
        the deployments, promotions and subject exceptions of that environment
        only. ``default`` is the environment of every deployment that names none.
    deploy_refresh_seconds
        How often a replica re-reads the deployment state from the registry
        (one single-row-per-model query): a kill or a rollout reaches every
        replica within this interval plus one request.
    kill_error_rate, kill_min_requests, kill_window_seconds
        Automatic cut-out: when at least ``kill_min_requests`` predictions of a
        model in the last ``kill_window_seconds`` include a share of failures
        (model errors, 500s) of ``kill_error_rate`` or more, the replica trips
        the kill switch for every replica (source ``error-rate``); ``null``
        turns the cut-out off.
    kill_on_drift
        Whether a model's drift alert (see ``drift_psi_threshold``) trips its
        kill switch like the error-rate cut-out does (source ``drift``). Off by
        default: drift means the world changed, not that the model broke, so
        cutting traffic on it is the operator's call.
    kill_pins
        Version to pin per model when the cut-out trips (a JSON object, e.g.
        ``{"demo": 3}``): it must be signed and verify, else the model answers
        503. A model not listed answers 503.
    shadow_max_pending
        Most shadow predictions queued behind live traffic; past it, copies
        are dropped (and counted) rather than slowing answers.
    feature_ranges
        Inclusive ``[min, max]`` per model and feature (a JSON object in the
        environment, e.g. ``{"demo": {"f0": [0, 50], "f3": [null, 10]}}``;
        ``null`` leaves a side open); a value outside is refused with 422
        (:mod:`serving.guards.ranges`).
    auth_cache_seconds
        How long a server trusts a key it authenticated before asking the
        registry again (:mod:`serving.guards.keycache`): the bound on how late a
        revocation made elsewhere reaches this server. ``0`` asks every time.
    objection_status, objection_message
        The answer to a predict request whose ``subject_id`` objected to the
        model in this environment (``fedguard objections add``): a 4xx status
        (403 by default; 451 is another fit, RFC 7725) and the message the
        caller reads (code ``objection``). The model never sees the request.
    onnx_threads
        ONNX Runtime's intra-op threads per loaded model version (1 by
        default: request-sized batches gain nothing from a thread pool; the
        server scales by workers and replicas).
    access_log
        Whether ``fedguard serve`` writes the access log (one line per request
        to stderr, :mod:`serving.metrics`); on by default.
    console
        Whether the app serves the operator console under ``/console``
        (:mod:`serving.console`); on by default.
    console_secret
        The key that signs console session cookies and CSRF tokens (at least
        32 characters). Unset: a random one per process, so sessions end when
        the server restarts; set it when several workers or replicas share
        one address, so that a session signed by one is accepted by another.
    console_session_minutes
        How long a console sign-in lasts (8 hours by default).
    """

    model_config = SettingsConfigDict(env_prefix="FEDGUARD_SERVE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    max_instances: int = Field(default=1024, ge=1, le=1_000_000)
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    public_key: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    quota_backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    quota_prefix: str = "fedguard:quota:"
    quota_rate: float = Field(default=10.0, gt=0, allow_inf_nan=False)
    quota_burst: int = Field(default=20, ge=1)
    quota_daily_budget: int = Field(default=100_000, ge=0)
    model_quotas: dict[str, QuotaOverride] = Field(default_factory=dict)
    key_quotas: dict[str, QuotaOverride] = Field(default_factory=dict)
    outputs: dict[str, OutputPolicy] = Field(default_factory=dict)
    drift_window: int = Field(default=1000, ge=10, le=10_000_000)
    drift_min_instances: int = Field(default=200, ge=1)
    drift_psi_threshold: float = Field(default=0.25, gt=0, allow_inf_nan=False)
    drift_ks_threshold: float = Field(default=0.2, gt=0, le=1)
    extraction_guard: bool = True
    extraction_window_seconds: float = Field(default=300.0, gt=0, allow_inf_nan=False)
    extraction_min_queries: int = Field(default=1000, ge=1)
    extraction_max_rate: float = Field(default=20.0, gt=0, allow_inf_nan=False)
    extraction_max_cells: int = Field(default=500, ge=1)
    extraction_grid_bins: int = Field(default=4, ge=2, le=64)
    extraction_boundary_margin: float = Field(default=0.1, gt=0, le=1)
    extraction_max_boundary_share: float = Field(default=0.5, gt=0, le=1)
    extraction_min_signals: int = Field(default=2, ge=1, le=3)
    extraction_throttle_rate: float = Field(default=0.1, gt=0, allow_inf_nan=False)
    extraction_throttle_burst: int = Field(default=1, ge=1)
    extraction_throttle_seconds: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    environment: str = Field(default="default", pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    deploy_refresh_seconds: float = Field(default=0.25, gt=0, le=0.9)
    kill_error_rate: float | None = Field(default=0.5, gt=0, le=1)
    kill_min_requests: int = Field(default=20, ge=1)
    kill_window_seconds: float = Field(default=60.0, gt=0)
    kill_on_drift: bool = False
    kill_pins: dict[str, int] = Field(default_factory=dict)
    shadow_max_pending: int = Field(default=32, ge=1)
    feature_ranges: dict[str, dict[str, tuple[FiniteBound, FiniteBound]]] = Field(default_factory=dict)
    auth_cache_seconds: float = Field(default=1.0, ge=0, le=60, allow_inf_nan=False)
    objection_status: int = Field(default=DEFAULT_OBJECTION_STATUS, ge=400, le=499)
    objection_message: str = Field(default=DEFAULT_OBJECTION_MESSAGE, min_length=1, max_length=512)
    onnx_threads: int = Field(default=1, ge=1, le=256)
    access_log: bool = True
    console: bool = True
    console_secret: SecretStr | None = Field(default=None, min_length=32)
    console_session_minutes: int = Field(default=480, ge=1, le=7 * 24 * 60)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServingSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the certificate it belongs to)")
        return self

    @model_validator(mode="after")
    def _ordered_ranges(self) -> ServingSettings:
        for model, features in self.feature_ranges.items():
            for feature, (low, high) in features.items():
                if low is not None and high is not None and low > high:
                    raise ValueError(f"the range of {model}.{feature} has min {low:g} above max {high:g}")
        return self

    @property
    def tls(self) -> bool:
        """Whether uvicorn terminates TLS itself."""
        return self.ssl_certfile is not None

    def output_policy(self, model: str) -> OutputPolicy:
        """The output policy of ``model`` (labels only unless configured)."""
        return self.outputs.get(model) or LABELS_ONLY

    def check_files(self) -> None:
        """Fail early, with the path, if a configured key or certificate is missing.

        Raises
        ------
        ConfigurationError
            Naming the missing file.
        """
        for label, path in (
            ("public key", self.public_key),
            ("TLS certificate", self.ssl_certfile),
            ("TLS key", self.ssl_keyfile),
        ):
            if path is not None and not path.is_file():
                raise ConfigurationError(f"{label} '{path}' does not exist; pass an existing file")


@lru_cache(maxsize=1)
def get_serving_settings() -> ServingSettings:
    """Return the process-wide serving settings (cached; tests clear the cache)."""
    return build_settings()


def build_settings(**overrides: Any) -> ServingSettings:
    """Settings from the environment, with the non-``None`` ``overrides`` on top.

    The CLI passes its options here, so an option left out falls back to
    ``FEDGUARD_SERVE_*`` and then to the default.

    Raises
    ------
    ConfigurationError
        A value (from an option or the environment) is invalid; pydantic's
        error is translated so the CLI maps it to exit code 2.
    """
    try:
        return ServingSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        where = (
            f" {field} (option --{field.replace('_', '-')} or FEDGUARD_SERVE_{field.upper()})" if field else "s"
        )
        raise ConfigurationError(f"invalid serving setting{where}: {first['msg']}") from exc
