"""Settings: ``config.yml`` + ``auth.yml`` + ``RATEWIRE_<SECTION>__<KEY>`` environment overrides.

The layout is the original guide's (``modules.websocket``, ``topics.rating``, ``jwt``) plus the
sections ratewire added. Every value is validated at start; a bad one stops the start with one
line that names where it came from (file or environment variable), the key and the problem.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ratewire import extras

ENV_PREFIX = "RATEWIRE_"
GUIDE_TOPIC_TEMPLATES = ["rating.global", "rating.game.{game_id}", "rating.user.{user_id}"]


class ConfigError(Exception):
    """A configuration problem, already phrased as the one line shown to the operator."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Role = Literal["all", "api", "stream"]


class ServerSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(8080, ge=0, le=65535)
    #: all: REST, relay and WebSockets; api: REST and relay; stream: WebSockets only.
    role: Role = "all"
    #: Processes sharing both ports on this host (SO_REUSEPORT).
    workers: int = Field(1, ge=1, le=256)
    #: Proxies (CIDRs) whose X-Forwarded-For / Forwarded headers are believed: the client
    #: address for limits and logs is then the one they report. Others: the peer address.
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP network (e.g. 10.0.0.0/8)") from None
        return value


class WebSocketModuleSettings(_Section):
    enabled: bool = True
    port: int = Field(8081, ge=0, le=65535)
    #: Browser origins (scheme://host[:port]) allowed to open WebSockets, on both endpoints;
    #: None: any. Requests without an Origin header (non-browser clients) are not affected.
    allowed_origins: list[str] | None = None


class ModulesSettings(_Section):
    websocket: WebSocketModuleSettings = WebSocketModuleSettings()


class TopicsSettings(_Section):
    rating: list[str] = Field(default_factory=lambda: list(GUIDE_TOPIC_TEMPLATES))

    @field_validator("rating")
    @classmethod
    def _only_the_three_rating_topics(cls, value: list[str]) -> list[str]:
        # The guide let operators list topic templates; ratewire publishes on exactly these three,
        # so anything else would silently never receive events.
        unknown = [t for t in value if t not in GUIDE_TOPIC_TEMPLATES]
        if unknown:
            raise ValueError(
                f"unknown topic template {unknown[0]!r}; allowed: {GUIDE_TOPIC_TEMPLATES}"
            )
        return value


#: ``none``: no database (only for ``server.role: stream``, which then reads history from Redis).
StorageBackend = Literal["memory", "sqlite", "postgresql", "mysql", "redis", "none"]


class StorageSettings(_Section):
    backend: StorageBackend = "sqlite"
    url: str | None = None
    #: SQLite's fsync policy in WAL mode. full: every commit is fsynced before its 2xx
    #: (survives a power cut). normal: a commit survives a crash of the process (SIGKILL
    #: included) but the last ones may be lost on power loss or an OS crash; no fsync per
    #: commit, so each write answers sooner.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    #: SQL backends: bring an older schema up to date at start (under a lock, once for all
    #: instances). false: refuse to start on one, naming ``ratewire db upgrade``.
    migrate: bool = True

    def resolved_url(self) -> str:
        """The database URL, with the backend's default when none is configured."""
        if self.url:
            return self.url
        return {
            "memory": "memory://",
            "sqlite": "sqlite:///./ratewire.db",
            "postgresql": "postgresql://127.0.0.1:5432/ratewire",
            "mysql": "mysql://root@127.0.0.1:3306/ratewire",
            "redis": "redis://127.0.0.1:6379/0",
            "none": "",
        }[self.backend]


BrokerBackend = Literal["local", "redis", "nats"]


class BrokerSettings(_Section):
    backend: BrokerBackend = "local"
    #: redis://... for Redis; nats://host:port (several, comma-separated, for a NATS cluster;
    #: tls:// for TLS; nats://user:password@host or nats://token@host) for NATS. Default: the
    #: backend's usual local address.
    url: str | None = None
    #: Names in the broker start with it (Redis keys, NATS streams, subjects and buckets):
    #: clusters sharing one Redis or one NATS need different prefixes.
    prefix: str = Field("ratewire", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    #: How long the relay lease outlives its holder: failover time after a crash.
    lease_seconds: float = Field(2.0, ge=0.3, le=60)
    #: NATS: how many events the JetStream stream keeps (what an instance without a database
    #: can replay to a resuming subscriber); older ones are discarded.
    max_events: int = Field(100_000, ge=100)
    #: NATS: JetStream replicas of the stream and buckets (3 on a three-node NATS cluster).
    replicas: int = Field(1, ge=1, le=5)
    #: NATS: where JetStream keeps the event stream. file: it survives a NATS restart.
    #: memory: no disk writes per event (on a disk shared with the database they lengthen its
    #: commits); a NATS restart empties it and the lease holder republishes the outbox.
    stream_storage: Literal["file", "memory"] = "file"
    #: NATS: a .creds file (JWT and NKey seed) to authenticate with.
    credentials_file: str | None = None
    #: NATS: an NKey seed file to authenticate with.
    nkey_seed_file: str | None = None
    #: NATS over TLS: the CA bundle that signed the servers' certificates (default: the
    #: system's), and this client's certificate and key where the servers verify clients.
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def resolved_url(self) -> str:
        """The broker's address, with the backend's default when none is configured."""
        if self.url:
            return self.url
        return {
            "local": "",
            "redis": "redis://127.0.0.1:6379/0",
            "nats": "nats://127.0.0.1:4222",
        }[self.backend]

    @property
    def clustered(self) -> bool:
        """Whether events leave the process (a broker every instance shares)."""
        return self.backend != "local"


class TlsSettings(_Section):
    cert: str | None = None
    key: str | None = None


class LimitsSettings(_Section):
    ws_connections_per_ip_per_second: float = Field(10, gt=0)
    #: Open WebSocket connections one client IP may hold at once; over: HTTP 429.
    ws_connections_per_ip: int = Field(100, ge=1)
    #: Open WebSocket connections one token ``sub`` may hold at once on this instance; over:
    #: HTTP 429 (token in the upgrade request) or close 4008 (token in an auth frame).
    ws_connections_per_user: int = Field(20, ge=1)
    ws_messages_per_client_per_second: float = Field(20, gt=0)
    rest_requests_per_client_per_minute: float = Field(600, gt=0)
    max_message_bytes: int = Field(65536, ge=128)
    #: WebSocket connections this process holds at most (None: derived from the open-files
    #: limit, keeping a reserve for REST and backends); over it: HTTP 503 with Retry-After.
    max_connections: int | None = Field(None, ge=1)
    #: Topics one connection may hold at once; over: an error frame too_many_subscriptions.
    max_subscriptions_per_connection: int = Field(100, ge=1)
    #: A connection refused at accept (429/503) that has not sent its request head by then is
    #: closed, so half-open sockets cannot pile up.
    handshake_timeout_seconds: float = Field(10, gt=0)
    max_body_bytes: int = Field(65536, ge=128)
    send_buffer_bytes: int = Field(1_048_576, ge=1024)
    auth_timeout_seconds: float = Field(5, gt=0)
    ping_interval_seconds: float = Field(20, gt=0)
    #: A Server-Sent Events stream with nothing to send writes a comment this often, so
    #: proxies and browsers do not take it for dead.
    sse_heartbeat_seconds: float = Field(15, gt=0)


class HistorySettings(_Section):
    """How much of each topic's history is kept for ``since`` resume and the events endpoint."""

    max_events_per_topic: int = Field(10_000, ge=1)
    max_age_seconds: float = Field(86_400, gt=0)
    prune_interval_seconds: float = Field(60, gt=0)


class RatingsSettings(_Section):
    """The Bayesian prior used for ``bayesianMean`` and the top-games ranking."""

    bayesian_prior_mean: float = Field(3.0, ge=1, le=5)
    bayesian_prior_weight: float = Field(10, ge=0)
    #: Game summaries kept in memory (an LRU, see ratewire.services.summaries); 0: no cache.
    summary_cache_size: int = Field(10_000, ge=0)


JwtAlgorithm = Literal["HS256", "HS384", "HS512", "RS256", "ES256"]


class JwtKeySettings(_Section):
    """One key of ``jwt.keys``: tokens whose header names ``kid`` are verified with it, with
    ``algorithm`` and no other (so a token cannot pick the algorithm its key is used with)."""

    kid: str = Field(min_length=1, max_length=128)
    algorithm: JwtAlgorithm = "HS256"
    #: HS* keys: the shared secret (32 bytes at least).
    secret: str | None = None
    #: RS256/ES256: the PEM public key, inline or in a file (verify-only, e.g. an identity
    #: provider's key).
    public_key: str | None = None
    public_key_file: str | None = None
    #: RS256/ES256: a PEM private key file, if ratewire itself should sign with this key.
    private_key_file: str | None = None

    @model_validator(mode="after")
    def _material_matches_algorithm(self) -> JwtKeySettings:
        if self.algorithm.startswith("HS"):
            if not self.secret:
                raise ValueError(f"key {self.kid!r}: {self.algorithm} needs a secret")
            if self.public_key or self.public_key_file or self.private_key_file:
                raise ValueError(f"key {self.kid!r}: {self.algorithm} takes a secret, not PEM keys")
        else:
            if self.secret:
                raise ValueError(f"key {self.kid!r}: {self.algorithm} takes PEM keys, not a secret")
            if not (self.public_key or self.public_key_file or self.private_key_file):
                raise ValueError(
                    f"key {self.kid!r}: {self.algorithm} needs public_key, public_key_file "
                    "or private_key_file"
                )
        return self


class JwtSettings(_Section):
    #: The guide's single shared secret (tokens without ``kid``). None: none configured
    #: (``serve --dev`` then generates one; see ratewire.security.dev_secret).
    secret: str | None = None
    algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    #: Several keys at once, for rotation without downtime: listed newest first; the first one
    #: that can sign signs new tokens, every one of them verifies tokens naming its kid.
    keys: list[JwtKeySettings] = Field(default_factory=list)
    expiry_seconds: int = Field(900, gt=0)
    #: Tokens living longer than this (exp - iat, or exp - now without iat) are refused
    #: everywhere: a stolen token stays useful for minutes, not years.
    max_ttl_seconds: int = Field(900, gt=0)
    #: The same bound for read-only tokens (scope ``ratings:read`` alone), which may live
    #: longer: a dashboard left open on a wall screen stays signed in for as long as its token
    #: lives (``ratewire token dashboard --scope ratings:read --ttl 86400``). None: as
    #: max_ttl_seconds. Revocation still ends such a token at once.
    max_read_only_ttl_seconds: int | None = Field(None, gt=0)
    leeway_seconds: float = Field(5, ge=0)

    @field_validator("keys")
    @classmethod
    def _unique_kids(cls, value: list[JwtKeySettings]) -> list[JwtKeySettings]:
        kids = [key.kid for key in value]
        for kid in kids:
            if kids.count(kid) > 1:
                raise ValueError(f"kid {kid!r} is listed twice")
        return value


class AuditSettings(_Section):
    """The audit log (see ratewire.audit)."""

    enabled: bool = True
    #: HMAC key of the chain (32+ bytes; keep it out of the database's reach, e.g. in auth.yml
    #: or RATEWIRE_AUDIT__KEY). None: a plain SHA-256 chain, which a database writer could
    #: recompute after an edit (the start warns).
    key: str | None = None
    #: Entries older than this are pruned (the chain stays verifiable from a checkpoint);
    #: 0 keeps everything.
    retention_days: float = Field(365, ge=0)
    #: How often buffered connection and authentication entries are written.
    flush_seconds: float = Field(0.2, gt=0, le=10)


class WebhooksSettings(_Section):
    """Outbound webhooks (see ratewire.webhooks): delivery, retries and what URLs may be."""

    enabled: bool = True
    #: Waits between attempts of one event after a failure, in seconds (each with +-20%
    #: jitter); after the last one the webhook is marked failing. As JSON in the environment:
    #: RATEWIRE_WEBHOOKS__RETRY_SCHEDULE_SECONDS='[5, 30, 120]'.
    retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [5.0, 30.0, 120.0, 600.0, 3600.0, 21600.0], min_length=1
    )
    #: Plain http:// URLs (https only by default).
    allow_insecure_http: bool = False
    #: Loopback, private, link-local and metadata addresses (refused by default, at
    #: registration and again at every connection, against DNS rebinding).
    allow_private_networks: bool = False
    connect_timeout_seconds: float = Field(5, gt=0)
    #: The whole request, answer included.
    timeout_seconds: float = Field(10, gt=0)
    #: One instance delivers a webhook at a time; a dead one's webhooks move after this.
    lease_seconds: float = Field(5, gt=0)

    @field_validator("retry_schedule_seconds")
    @classmethod
    def _non_negative(cls, schedule: list[float]) -> list[float]:
        if any(wait < 0 for wait in schedule):
            raise ValueError("waits must be >= 0 seconds")
        return schedule


class ConsumersSettings(_Section):
    """Durable consumers (see ratewire.services.consumers)."""

    #: A consumer no member touched (joined, fetched, acked) for this long is deleted with
    #: its position; 0 keeps them forever.
    retention_days: float = Field(7, ge=0)


class LogSettings(_Section):
    """What the server's log lines look like."""

    #: auto: a short human line when stderr is a terminal, JSON lines otherwise; json; human.
    format: Literal["auto", "json", "human"] = "auto"


class McpSettings(_Section):
    """``ratewire mcp --http``: the MCP server as an OAuth 2.1 resource server (every request
    carries a ratewire JWT; see docs/client.md, "MCP over HTTP")."""

    #: The MCP endpoint's URL as agents reach it (the resource of RFC 9728's metadata and of
    #: the 401's ``resource_metadata``); None: ``http[s]://HOST:PORT/mcp`` as served.
    public_url: str | None = None
    #: Authorization servers that issue tokens for it, named in the metadata (an identity
    #: provider's issuer URL); empty: ratewire's own REST URL, whose tokens `ratewire token`
    #: mints.
    authorization_servers: list[str] = Field(default_factory=list)
    #: Host headers accepted (DNS-rebinding protection), e.g. a proxy's public name
    #: ("mcp.example.com", "mcp.example.com:*"); None: the bound address and localhost.
    allowed_hosts: list[str] | None = None
    #: Origin headers accepted from browsers; None: http(s)://localhost and the bound address.
    allowed_origins: list[str] | None = None
    #: True when a proxy in front terminates TLS: allows binding beyond loopback without
    #: ``tls.cert``.
    tls_terminated_by_proxy: bool = False


class Settings(_Section):
    """Everything ratewire reads at start."""

    server: ServerSettings = ServerSettings()
    modules: ModulesSettings = ModulesSettings()
    topics: TopicsSettings = TopicsSettings()
    storage: StorageSettings = StorageSettings()
    broker: BrokerSettings = BrokerSettings()
    tls: TlsSettings = TlsSettings()
    limits: LimitsSettings = LimitsSettings()
    history: HistorySettings = HistorySettings()
    ratings: RatingsSettings = RatingsSettings()
    jwt: JwtSettings = JwtSettings()
    audit: AuditSettings = AuditSettings()
    webhooks: WebhooksSettings = WebhooksSettings()
    consumers: ConsumersSettings = ConsumersSettings()
    mcp: McpSettings = McpSettings()
    log: LogSettings = LogSettings()

    def overridden(
        self,
        *,
        role: str | None = None,
        workers: int | None = None,
        host: str | None = None,
        port: int | None = None,
        ws_port: int | None = None,
        migrate: bool | None = None,
    ) -> Settings:
        """These settings with a command line's overrides (None: not given). A given host
        counts as configured (it joins ``server.model_fields_set``)."""
        server = {"role": role or self.server.role, "workers": workers or self.server.workers}
        if host is not None:
            server["host"] = host
        if port is not None:
            server["port"] = port
        changed = self.model_copy(update={"server": self.server.model_copy(update=server)})
        if ws_port is not None:
            module = changed.modules.websocket.model_copy(update={"port": ws_port})
            modules = changed.modules.model_copy(update={"websocket": module})
            changed = changed.model_copy(update={"modules": modules})
        if migrate is not None:
            storage = changed.storage.model_copy(update={"migrate": migrate})
            changed = changed.model_copy(update={"storage": storage})
        return changed

    def on_loopback_unless_host_set(self) -> Settings:
        """For a trial (``--dev``): listen on 127.0.0.1 unless ``server.host`` was set."""
        if "host" in self.server.model_fields_set:
            return self
        server = self.server.model_copy(update={"host": "127.0.0.1"})
        return self.model_copy(update={"server": server})

    def deployment_problem(self) -> str | None:
        """Why this combination of role, workers and backends cannot work, or None."""
        role, broker, storage = self.server.role, self.broker.backend, self.storage.backend
        if role != "all" and broker == "local":
            return (
                f"server.role: {role!r} needs broker.backend: redis or nats "
                "(with a local broker events never leave the process)"
            )
        if broker == "nats" and "." in self.broker.prefix:
            return (
                f"broker.prefix {self.broker.prefix!r}: NATS names may not contain '.' "
                "(use letters, digits, '_' and '-')"
            )
        if self.broker.tls_key_file and not self.broker.tls_cert_file:
            return "broker.tls_key_file needs broker.tls_cert_file (the certificate it signs)"
        if storage == "none" and role != "stream":
            return f"storage.backend: 'none' is only for server.role: 'stream' (not {role!r})"
        if self.server.workers > 1 and storage == "memory":
            return (
                "server.workers > 1 needs a shared storage.backend (sqlite, postgresql, mysql); "
                "memory storage lives inside one process"
            )
        for extra, setting in self.needed_extras():
            try:
                extras.require(extra, setting)
            except extras.MissingExtra as exc:
                return str(exc)
        return None

    def needed_extras(self) -> list[tuple[str, str]]:
        """The package extras these settings need (see :mod:`ratewire.extras`), each with the
        setting that asks for it."""
        needed: list[tuple[str, str]] = []
        if self.storage.backend in ("postgresql", "mysql", "redis"):
            needed.append((self.storage.backend, f"storage.backend: {self.storage.backend}"))
        if self.broker.backend in ("redis", "nats"):
            needed.append((self.broker.backend, f"broker.backend: {self.broker.backend}"))
        return needed


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: must be a mapping of sections, got {type(loaded).__name__}")
    return loaded


def _merge(
    target: dict[str, Any],
    source: Mapping[str, Any],
    origin: str,
    origins: dict[tuple[str, ...], str],
    prefix: tuple[str, ...] = (),
) -> None:
    for key, value in source.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value, origin, origins, path)
        else:
            target[key] = dict(value) if isinstance(value, Mapping) else value
        origins[path] = origin


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    overrides = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if len(path) < 2 or not all(path):
            continue  # RATEWIRE_FOO (no section) is not ours to interpret
        try:
            value: Any = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            value = environ[name]
        nested: dict[str, Any] = {path[-1]: value}
        for part in reversed(path[:-1]):
            nested = {part: nested}
        overrides.append((f"environment {name}", nested))
    return overrides


def _origin_of(loc: tuple[str, ...], origins: Mapping[tuple[str, ...], str]) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origins:
            return origins[loc[:end]]
    return "defaults"


def load_settings(
    config_path: str | Path | None = None,
    auth_path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate settings.

    Explicit paths must exist; without them ``./config.yml`` and ``./auth.yml`` are read when
    present. Environment variables override both files. Raises :class:`ConfigError` with one
    line naming the source, the key and the problem.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {}
    for given, default_name in ((config_path, "config.yml"), (auth_path, "auth.yml")):
        path = Path(given) if given is not None else Path(default_name)
        if given is None and not path.exists():
            continue
        if not path.exists():
            raise ConfigError(f"{path}: file not found")
        _merge(merged, _read_yaml(path), str(path), origins)
    for origin, override in _env_overrides(environ):
        _merge(merged, override, origin, origins)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in error and error["type"] not in ("missing",):
            message = f"{message} (got {error['input']!r})"
        raise ConfigError(f"{_origin_of(loc, origins)}: {key}: {message}") from None
