"""Settings read from the environment once, at start-up, and validated with clear messages."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, TypeVar

from chatcore.adapters.providers.transport_choices import PROVIDER_HTTP, ProviderHttp
from chatcore.model import BusyPolicy
from chatcore.usage import TokenBudget

LLMChoice = Literal["offline", "openai", "anthropic"]
LLM_CHOICES: tuple[LLMChoice, ...] = ("offline", "openai", "anthropic")
_Choice = TypeVar("_Choice", bound=str)
LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")
BUSY_POLICIES: tuple[str, ...] = tuple(policy.value for policy in BusyPolicy)
MIN_SECRET_BYTES = 32
RateLimitUnit = Literal["second", "minute", "hour", "day"]
RATE_LIMIT_UNITS: tuple[RateLimitUnit, ...] = ("second", "minute", "hour", "day")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
JWKS_ALGORITHMS = ("EdDSA", "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
"""What BETTER_AUTH_ALGORITHMS may list: asymmetric signatures only (never ``none`` or an HMAC on the JWKS path)."""


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names the variable and never its secret value."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``requests`` requests per ``unit`` for each authenticated user (``CHATCORE_RATE_LIMIT=30/minute``)."""

    requests: int
    unit: RateLimitUnit

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError("a rate limit allows at least 1 request")
        if self.unit not in RATE_LIMIT_UNITS:
            raise ValueError(f"the unit must be one of {', '.join(RATE_LIMIT_UNITS)}")

    def __str__(self) -> str:
        return f"{self.requests}/{self.unit}"

    @classmethod
    def parse(cls, text: str | None) -> RateLimit | None:
        """``N/second|minute|hour|day``; empty, ``0``, ``0/<unit>`` or ``off`` mean no limit. ValueError otherwise."""
        value = (text or "").strip().lower()
        if value in ("", "0", "off"):
            return None
        count, slash, unit = value.partition("/")
        count, unit = count.strip(), unit.strip()
        if not slash or not count.isdigit() or unit not in RATE_LIMIT_UNITS:
            raise ValueError(f"must look like 30/minute (N/{'|'.join(RATE_LIMIT_UNITS)}), or off; not {text!r}")
        requests = int(count)
        return None if requests == 0 else cls(requests, unit)


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a deployment. ``from_env`` documents the variable behind each field."""

    database_url: str | None = None
    db_pool_size: int = 30
    db_max_overflow: int = 0
    """Overflow connections are closed as soon as they are given back, so under bursty load every burst pays a new
    PostgreSQL backend and handshake (measured: 16% of a 2-core machine at 200 concurrent turns); a fixed pool
    is cheaper. A turn holds a connection only for its two statements, so 30 serve hundreds of concurrent turns."""
    db_pool_timeout_seconds: float = 10.0
    db_schema: str | None = None
    """PostgreSQL schema for chatcore's tables and its version table (CHATCORE_DB_SCHEMA); None: the default."""

    auth_secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_audience: str | None = None
    auth_leeway_seconds: float = 30.0
    jwt_algorithms: tuple[str, ...] = ("EdDSA", "ES256", "RS256", "PS256")
    """The algorithms a JWKS token may use, whatever its header says (BETTER_AUTH_ALGORITHMS)."""

    llm: LLMChoice = "offline"
    model: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    openai_base_url: str | None = None
    anthropic_api_key: str | None = field(default=None, repr=False)
    anthropic_base_url: str | None = None
    max_tokens: int = 1024
    temperature: float | None = None
    llm_timeout_seconds: float = 60.0
    llm_max_retries: int = 2
    llm_http: ProviderHttp = "aiohttp"
    """What sends the provider SDKs' requests (CHATCORE_LLM_HTTP): aiohttp, or httpx2's own transport."""
    offline_word_delay_seconds: float | None = None
    """Seconds between the offline agent's streamed words (CHATCORE_OFFLINE_WORD_DELAY); None: 0.02 under --dev
    (so the chat page visibly streams), else 0."""

    history_limit: int = 50
    context_tokens: int = 24_000
    max_tool_steps: int = 8
    tool_timeout_seconds: float = 30.0
    system_prompt: str | None = None
    todo_tools: bool = True
    """Whether the server mounts the todo toolset (CHATCORE_TODO_TOOLS); off, the model has only the MCP servers'
    tools, and the default prompt is the domain's generic one."""
    mcp_servers: str | None = field(default=None, repr=False)
    mcp_call_timeout_seconds: float = 30.0
    approval_tools: tuple[str, ...] = ()
    """Tools whose calls wait for the user's approval (CHATCORE_APPROVAL_TOOLS), besides those that declare it."""
    approval_ttl_seconds: float = 86_400.0
    """Pending calls older than this are denied as expired the next time their conversation is touched."""

    lease_seconds: float = 120.0
    """How long a turn holds its conversation between heartbeats; a crashed replica's turn frees it after this."""
    turn_wait_seconds: float = 30.0
    """How long a turn waits for a busy conversation (or a running twin with its Idempotency-Key) before 409."""
    busy_policy: BusyPolicy = BusyPolicy.WAIT
    """CHATCORE_BUSY_POLICY: what a chat request without ``if_busy`` does on a busy conversation."""
    idempotency_ttl_seconds: float = 86_400.0
    shutdown_grace_seconds: float = 30.0
    """On SIGTERM, how long in-flight turns may take to finish before they are cancelled."""
    event_retention_seconds: float = 7 * 86_400.0
    """How long a finished turn's events are kept (CHATCORE_EVENT_RETENTION, e.g. ``7d``, ``12h``, ``90s``)."""
    janitor: bool = True
    """Whether ``chatcore serve`` deletes what expired by itself (CHATCORE_JANITOR); ``chatcore gc`` does it anyway."""
    janitor_interval_seconds: float = 60.0

    prices_path: str | None = None
    """CHATCORE_PRICES: a TOML or JSON file of USD per million tokens per model (``entrypoints/prices.py``)."""
    user_token_budget: TokenBudget | None = None
    """CHATCORE_USER_TOKEN_BUDGET: input + output tokens per user per calendar hour, day or month (UTC)."""
    max_turn_tokens: int | None = None
    """CHATCORE_MAX_TURN_TOKENS: a turn that has used this many tokens stops its tool loop."""

    max_body_bytes: int = 256 * 1024
    cors_origins: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    redis_url: str | None = field(default=None, repr=False)
    redis_namespace: str = "chatcore"
    log_level: str = "INFO"
    log_format: LogFormat | None = None
    """None: JSON unless stdout is a terminal."""
    access_log: bool = False
    """uvicorn's line per HTTP request; off by default because every chat turn writes its own ``chat_turn`` line."""
    otlp_traces_endpoint: str | None = None
    """Where OpenTelemetry spans go (OTLP/HTTP); None: no tracing, and no OpenTelemetry SDK loaded."""
    dev_mode: bool = False

    @property
    def has_token_verifier(self) -> bool:
        return bool(self.auth_secret or self.jwks_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        defaults = cls()
        openai_key = reader.text("OPENAI_API_KEY")
        anthropic_key = reader.text("ANTHROPIC_API_KEY")
        default_llm: LLMChoice = "openai" if openai_key else "anthropic" if anthropic_key else "offline"
        llm = reader.text("CHATCORE_LLM") or default_llm
        if llm not in LLM_CHOICES:
            raise ConfigurationError(f"CHATCORE_LLM must be one of {', '.join(LLM_CHOICES)}, not {llm!r}")
        if llm == "openai" and not openai_key and not reader.text("OPENAI_BASE_URL"):
            raise ConfigurationError("CHATCORE_LLM=openai needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)")
        if llm == "anthropic" and not anthropic_key and not reader.text("ANTHROPIC_BASE_URL"):
            raise ConfigurationError("CHATCORE_LLM=anthropic needs ANTHROPIC_API_KEY")
        try:
            rate_limit = RateLimit.parse(reader.text("CHATCORE_RATE_LIMIT"))
        except ValueError as error:
            raise ConfigurationError(f"CHATCORE_RATE_LIMIT {error}") from None
        jwt_algorithms = tuple(a.strip() for a in (reader.text("BETTER_AUTH_ALGORITHMS") or "").split(",") if a.strip())
        if unknown := [a for a in jwt_algorithms if a not in JWKS_ALGORITHMS]:
            raise ConfigurationError(
                f"BETTER_AUTH_ALGORITHMS may list {', '.join(JWKS_ALGORITHMS)}; not {', '.join(unknown)}"
            )
        try:
            user_token_budget = TokenBudget.parse(reader.text("CHATCORE_USER_TOKEN_BUDGET"))
        except ValueError as error:
            raise ConfigurationError(f"CHATCORE_USER_TOKEN_BUDGET {error}") from None
        prices_path = reader.text("CHATCORE_PRICES")
        if prices_path is not None:
            from chatcore.entrypoints.prices import load_prices

            try:
                load_prices(prices_path)
            except ValueError as error:
                raise ConfigurationError(f"CHATCORE_PRICES: {error}") from None
        redis_url = reader.text("CHATCORE_REDIS_URL")
        if redis_url and not redis_url.startswith(REDIS_SCHEMES):
            raise ConfigurationError(f"CHATCORE_REDIS_URL must start with {', '.join(REDIS_SCHEMES)}")
        settings = cls(
            database_url=reader.text("DATABASE_URL"),
            db_pool_size=reader.integer("CHATCORE_DB_POOL_SIZE", defaults.db_pool_size, minimum=1),
            db_max_overflow=reader.integer("CHATCORE_DB_MAX_OVERFLOW", defaults.db_max_overflow, minimum=0),
            db_pool_timeout_seconds=reader.number("CHATCORE_DB_POOL_TIMEOUT", defaults.db_pool_timeout_seconds),
            db_schema=reader.text("CHATCORE_DB_SCHEMA"),
            auth_secret=reader.text("BETTER_AUTH_SECRET"),
            jwks_url=reader.text("BETTER_AUTH_JWKS_URL"),
            auth_issuer=reader.text("BETTER_AUTH_ISSUER"),
            auth_audience=reader.text("BETTER_AUTH_AUDIENCE"),
            auth_leeway_seconds=reader.number("CHATCORE_AUTH_LEEWAY", defaults.auth_leeway_seconds, minimum=0),
            jwt_algorithms=jwt_algorithms or defaults.jwt_algorithms,
            llm=llm,  # checked against LLM_CHOICES above
            model=reader.text("CHATCORE_MODEL"),
            openai_api_key=openai_key,
            openai_base_url=reader.text("OPENAI_BASE_URL"),
            anthropic_api_key=anthropic_key,
            anthropic_base_url=reader.text("ANTHROPIC_BASE_URL"),
            max_tokens=reader.integer("CHATCORE_MAX_TOKENS", defaults.max_tokens, minimum=1),
            temperature=reader.optional_number("CHATCORE_TEMPERATURE"),
            llm_timeout_seconds=reader.number("CHATCORE_LLM_TIMEOUT", defaults.llm_timeout_seconds),
            llm_max_retries=reader.integer("CHATCORE_LLM_MAX_RETRIES", defaults.llm_max_retries, minimum=0),
            llm_http=reader.choice("CHATCORE_LLM_HTTP", PROVIDER_HTTP) or defaults.llm_http,
            offline_word_delay_seconds=reader.optional_number("CHATCORE_OFFLINE_WORD_DELAY"),
            history_limit=reader.integer("CHATCORE_HISTORY_LIMIT", defaults.history_limit, minimum=1),
            context_tokens=reader.integer("CHATCORE_CONTEXT_TOKENS", defaults.context_tokens, minimum=256),
            max_tool_steps=reader.integer("CHATCORE_MAX_TOOL_STEPS", defaults.max_tool_steps, minimum=1),
            tool_timeout_seconds=reader.number("CHATCORE_TOOL_TIMEOUT", defaults.tool_timeout_seconds),
            system_prompt=reader.text("CHATCORE_SYSTEM_PROMPT"),
            todo_tools=reader.switch("CHATCORE_TODO_TOOLS", defaults.todo_tools),
            mcp_servers=reader.text("CHATCORE_MCP_SERVERS"),
            mcp_call_timeout_seconds=reader.number("CHATCORE_MCP_TIMEOUT", defaults.mcp_call_timeout_seconds),
            approval_tools=reader.names("CHATCORE_APPROVAL_TOOLS"),
            approval_ttl_seconds=reader.number("CHATCORE_APPROVAL_TTL", defaults.approval_ttl_seconds, minimum=1),
            lease_seconds=reader.number("CHATCORE_LEASE_SECONDS", defaults.lease_seconds, minimum=1),
            turn_wait_seconds=reader.number("CHATCORE_TURN_WAIT_SECONDS", defaults.turn_wait_seconds),
            busy_policy=BusyPolicy(reader.choice("CHATCORE_BUSY_POLICY", BUSY_POLICIES) or defaults.busy_policy),
            idempotency_ttl_seconds=reader.number(
                "CHATCORE_IDEMPOTENCY_TTL", defaults.idempotency_ttl_seconds, minimum=1
            ),
            shutdown_grace_seconds=reader.number("CHATCORE_SHUTDOWN_GRACE", defaults.shutdown_grace_seconds),
            event_retention_seconds=reader.duration("CHATCORE_EVENT_RETENTION", defaults.event_retention_seconds),
            janitor=reader.switch("CHATCORE_JANITOR", defaults.janitor),
            janitor_interval_seconds=reader.duration("CHATCORE_JANITOR_INTERVAL", defaults.janitor_interval_seconds),
            prices_path=prices_path,
            user_token_budget=user_token_budget,
            max_turn_tokens=reader.optional_integer("CHATCORE_MAX_TURN_TOKENS", minimum=1),
            max_body_bytes=reader.integer("CHATCORE_MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1024),
            cors_origins=tuple(o.strip() for o in (reader.text("CHATCORE_CORS_ORIGINS") or "").split(",") if o.strip()),
            rate_limit=rate_limit,
            redis_url=redis_url,
            redis_namespace=reader.text("CHATCORE_REDIS_NAMESPACE") or defaults.redis_namespace,
            log_level=(reader.text("CHATCORE_LOG_LEVEL") or defaults.log_level).upper(),
            log_format=reader.choice("CHATCORE_LOG_FORMAT", LOG_FORMATS),
            access_log=reader.flag("CHATCORE_ACCESS_LOG"),
            otlp_traces_endpoint=reader.otlp_traces_endpoint(),
            dev_mode=reader.flag("CHATCORE_DEV"),
        )
        if settings.auth_secret and len(settings.auth_secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"BETTER_AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes (RFC 7518 asks 256 bits for HS256); "
                "generate one with `openssl rand -base64 32`"
            )
        if settings.db_schema:
            from chatcore.adapters.sqlalchemy.engine import check_schema

            try:
                check_schema(settings.db_schema, settings.database_url or "")
            except ValueError as error:
                raise ConfigurationError(f"CHATCORE_DB_SCHEMA: {error}") from None
        if (settings.offline_word_delay_seconds or 0) < 0:
            raise ConfigurationError("CHATCORE_OFFLINE_WORD_DELAY must not be negative")
        if settings.mcp_servers:
            from chatcore.adapters.mcp.config import parse_mcp_servers

            try:
                parse_mcp_servers(settings.mcp_servers)
            except ValueError as error:
                raise ConfigurationError(f"CHATCORE_MCP_SERVERS: {error}") from None
        return settings

    def describe(self) -> dict[str, object]:
        """The settings as safe to print: secrets shown only as set or not."""
        secret_fields = {"auth_secret", "openai_api_key", "anthropic_api_key", "mcp_servers"}
        shown: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            shown[f.name] = ("<set>" if value else None) if f.name in secret_fields else value
        if self.database_url:
            shown["database_url"] = _redact_url(self.database_url)
        if self.redis_url:
            shown["redis_url"] = _redact_url(self.redis_url)
        if self.rate_limit:
            shown["rate_limit"] = str(self.rate_limit)
        if self.user_token_budget:
            shown["user_token_budget"] = str(self.user_token_budget)
        return shown


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@dataclass(frozen=True, slots=True)
class _Reader:
    env: Mapping[str, str]

    def text(self, name: str) -> str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def names(self, name: str) -> tuple[str, ...]:
        """A comma-separated list of names, blanks dropped, each once, in the order given."""
        return tuple(dict.fromkeys(n.strip() for n in (self.text(name) or "").split(",") if n.strip()))

    def integer(self, name: str, default: int, *, minimum: int | None = None) -> int:
        value = self.optional_integer(name, minimum=minimum)
        return default if value is None else value

    def optional_integer(self, name: str, *, minimum: int | None = None) -> int | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a whole number, not {raw!r}") from None
        if minimum is not None and value < minimum:
            raise ConfigurationError(f"{name} must be at least {minimum}, not {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.optional_number(name)
        if value is None:
            return default
        if value < minimum:
            raise ConfigurationError(f"{name} must be at least {minimum:g}, not {value:g}")
        return value

    def optional_number(self, name: str) -> float | None:
        raw = self.text(name)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{name} must be a number, not {raw!r}") from None

    def choice(self, name: str, choices: tuple[_Choice, ...]) -> _Choice | None:
        """One of ``choices`` (case-insensitive), or None when unset."""
        value = (self.text(name) or "").lower()
        if not value:
            return None
        for choice in choices:
            if choice == value:
                return choice
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, not {value!r}")

    def otlp_traces_endpoint(self) -> str | None:
        """OpenTelemetry's own variables: the traces URL as given, or the base URL with ``/v1/traces``."""
        if self.flag("OTEL_SDK_DISABLED"):
            return None
        if traces := self.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            return traces
        if base := self.text("OTEL_EXPORTER_OTLP_ENDPOINT"):
            return base.rstrip("/") + "/v1/traces"
        return None

    def flag(self, name: str) -> bool:
        return (self.text(name) or "").lower() in _TRUE

    def switch(self, name: str, default: bool) -> bool:
        """A flag that is on (or off) unless set otherwise; a value that is neither is an error, not a guess."""
        value = (self.text(name) or "").lower()
        if not value:
            return default
        if value not in _TRUE | _FALSE:
            raise ConfigurationError(f"{name} must be true or false, not {value!r}")
        return value in _TRUE

    def duration(self, name: str, default: float) -> float:
        """Seconds from ``90s``, ``15m``, ``12h``, ``7d`` or a plain number of seconds; more than zero."""
        raw = self.text(name)
        if raw is None:
            return default
        number, unit = raw[:-1], raw[-1].lower()
        if unit.isdigit() or unit == ".":
            number, unit = raw, "s"
        try:
            seconds = float(number) * _DURATION_UNITS[unit]
        except (KeyError, ValueError):
            raise ConfigurationError(f"{name} must look like 90s, 15m, 12h or 7d, not {raw!r}") from None
        if not seconds > 0 or seconds == float("inf"):
            raise ConfigurationError(f"{name} must be more than zero, not {raw!r}")
        return seconds


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0}
