"""Frozen configuration values built from validated documents.

Nothing here does I/O or validation: ``orchd.loader`` validates a document against the JSON
Schemas and then calls the ``from_dict`` constructors below.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from orchd.client_ip import AddressRule, Networks, parse_networks

__all__ = (
    "DEFAULT_METHODS",
    "IDEMPOTENT_METHODS",
    "ApiKeySettings",
    "AuthSettings",
    "BreakerSettings",
    "CertificatePair",
    "Config",
    "CorsSettings",
    "EndpointSpec",
    "FallbackResponse",
    "HealthSettings",
    "JwtSettings",
    "RateLimitSettings",
    "RegistrySettings",
    "ServerSettings",
    "ServerTls",
    "UpstreamTls",
)

_T = TypeVar("_T")

DEFAULT_METHODS = ("GET",)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True)
class CertificatePair:
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class ServerTls:
    """``server.tls``: HTTPS on the public port (orchd.tls serves it)."""

    certificates: tuple[CertificatePair, ...]
    min_version: str = "1.2"
    client_ca_file: str | None = None
    client_auth: str = "none"  # none | optional | required

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerTls:
        return cls(
            certificates=tuple(CertificatePair(str(c["cert_file"]), str(c["key_file"]))
                               for c in data["certificates"]),
            min_version=str(data.get("min_version", "1.2")),
            client_ca_file=data.get("client_ca_file"),
            client_auth=str(data.get("client_auth", "none")),
        )


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """An endpoint's ``tls``: how orchd speaks TLS to its https upstream."""

    ca_file: str | None = None
    verify: bool = True
    server_name: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpstreamTls:
        return cls(ca_file=data.get("ca_file"), verify=bool(data.get("verify", True)),
                   server_name=data.get("server_name"), cert_file=data.get("cert_file"),
                   key_file=data.get("key_file"))


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Boot settings: a change to host, port or control_socket needs a restart."""

    host: str = "127.0.0.1"
    port: int = 8000
    control_socket: str | None = "/run/orchd/orchd.sock"
    socket_group: str | int | None = None
    state_dir: str = "/var/lib/orchd"
    admin_token: str = ""
    shutdown_timeout: float = 30.0
    max_body_size: int = 10 * 1024 * 1024
    access_log: bool = True
    log_format: str = "text"
    log_file: str | None = None
    metrics: bool = True
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    send_timeout: float = 60.0
    max_connections: int = 4096
    max_streams: int = 1024
    max_streams_per_client: int = 16
    max_header_count: int = 100
    max_header_size: int = 32768
    max_url_length: int = 8192
    allowed_upstreams: tuple[str, ...] | None = None
    reuse_port: bool = False
    workers: int | str = 1  # N, or "auto": see worker_count()
    tls: ServerTls | None = None  # its certificates reload; the rest needs a restart
    redirect_http_port: int | None = None
    trusted_proxies: Networks = ()  # peers whose X-Forwarded-* and PROXY header are believed
    proxy_protocol: bool = False  # peers in trusted_proxies open with a PROXY header

    RESTART_KEYS = ("host", "port", "control_socket", "socket_group", "state_dir", "log_file",
                    "metrics", "reuse_port", "redirect_http_port", "workers")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServerSettings:
        kwargs = dict(data)
        if kwargs.get("admin_token") is None:
            kwargs["admin_token"] = ""
        if kwargs.get("control_socket") == "":
            kwargs["control_socket"] = None
        if kwargs.get("allowed_upstreams") is not None:
            kwargs["allowed_upstreams"] = tuple(kwargs["allowed_upstreams"])
        kwargs["tls"] = _optional(ServerTls.from_dict, kwargs.get("tls"))
        kwargs["trusted_proxies"] = parse_networks(kwargs.get("trusted_proxies") or ())
        return cls(**kwargs)

    def worker_count(self) -> int:
        """``workers`` as a number: ``auto`` is the CPUs this process may run on."""
        if self.workers == "auto":
            return max(1, len(os.sched_getaffinity(0)))
        return int(self.workers)

    def __repr__(self) -> str:  # never show the token
        token = "<set>" if self.admin_token else "<unset>"
        return f"ServerSettings(host={self.host!r}, port={self.port}, admin_token={token})"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    enabled: bool = True
    interval: float = 30.0
    timeout: float = 10.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthSettings:
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "interval": self.interval,
            "timeout": self.timeout,
            "healthy_threshold": self.healthy_threshold,
            "unhealthy_threshold": self.unhealthy_threshold,
        }


@dataclass(frozen=True, slots=True)
class FallbackResponse:
    status: int = 503
    headers: tuple[tuple[str, str], ...] = ()
    body: Any = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FallbackResponse:
        headers = tuple((str(k), str(v)) for k, v in (data.get("headers") or {}).items())
        return cls(status=int(data.get("status", 503)), headers=headers, body=data.get("body"))

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "headers": dict(self.headers), "body": self.body}


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    failure_threshold: int = 5
    reset_timeout: float = 60.0
    half_open_max_calls: int = 3
    fallback_response: FallbackResponse | None = None

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], base: BreakerSettings | None = None
    ) -> BreakerSettings:
        """Build from a document; keys it lacks come from ``base`` (the global block)."""
        out = base if base is not None else cls()
        kwargs: dict[str, Any] = {}
        for key in ("failure_threshold", "reset_timeout", "half_open_max_calls"):
            if key in data:
                kwargs[key] = data[key]
        if "fallback_response" in data:
            fb = data["fallback_response"]
            kwargs["fallback_response"] = None if fb is None else FallbackResponse.from_dict(fb)
        return replace(out, **kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {
            "failure_threshold": self.failure_threshold,
            "reset_timeout": self.reset_timeout,
            "half_open_max_calls": self.half_open_max_calls,
            "fallback_response": (
                self.fallback_response.as_dict() if self.fallback_response else None
            ),
        }


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    store: str = "file"
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_prefix: str = "/orchd/"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistrySettings:
        etcd = data.get("etcd") or {}
        return cls(
            store=data.get("store", "file"),
            etcd_endpoints=tuple(etcd.get("endpoints", ("http://127.0.0.1:2379",))),
            etcd_prefix=etcd.get("prefix", "/orchd/"),
        )


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """``auth.jwt``: what a bearer token must be to pass (orchd.auth.jwt checks it)."""

    issuer: str
    audiences: tuple[str, ...] | None = None
    jwks_url: str | None = None
    jwks_file: str | None = None
    secret: str | None = field(default=None, repr=False)  # HS*: from ${VAR} in the file
    algorithms: tuple[str, ...] = ("RS256",)
    leeway: float = 30.0
    required_scopes: tuple[str, ...] = ()
    claims_to_headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JwtSettings:
        audiences = data.get("audiences")
        return cls(
            issuer=str(data["issuer"]),
            audiences=None if audiences is None else tuple(audiences),
            jwks_url=data.get("jwks_url"),
            jwks_file=data.get("jwks_file"),
            secret=data.get("secret"),
            algorithms=tuple(data.get("algorithms") or ("RS256",)),
            leeway=float(data.get("leeway", 30.0)),
            required_scopes=tuple(data.get("required_scopes") or ()),
            claims_to_headers=tuple((str(k), str(v)) for k, v in
                                    (data.get("claims_to_headers") or {}).items()),
        )


@dataclass(frozen=True, slots=True)
class ApiKeySettings:
    """``auth.api_key``: where a consumer's key is read from (``query``: a parameter name,
    ``api_key`` for ``true``, or None)."""

    header: str = "X-API-Key"
    query: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ApiKeySettings:
        query = data.get("query", False)
        return cls(header=str(data.get("header", "X-API-Key")),
                   query="api_key" if query is True else (query or None))


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """``auth``: the gateway checks the credential itself (either one passes)."""

    jwt: JwtSettings | None = None
    api_key: ApiKeySettings | None = None
    anonymous: bool = False
    hide_credentials: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthSettings:
        jwt, api_key = data.get("jwt"), data.get("api_key")
        return cls(
            jwt=None if jwt is None else JwtSettings.from_dict(jwt),
            api_key=None if api_key is None else ApiKeySettings.from_dict(api_key),
            anonymous=bool(data.get("anonymous", False)),
            hide_credentials=bool(data.get("hide_credentials", False)),
        )


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """``rate_limit``: a token bucket of ``burst`` tokens, ``rate`` added per ``per`` s."""

    rate: float
    per: float = 1.0
    burst: int = 0  # 0 in a document: the default, ``rate`` rounded up
    key: str = "client_ip"  # client_ip | consumer | endpoint | header:NAME | claim:NAME
    scope: str = "instance"  # instance | cluster

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateLimitSettings:
        rate = float(data["rate"])
        burst = data.get("burst")
        return cls(rate=rate, per=float(data.get("per", 1.0)),
                   burst=int(burst) if burst is not None else max(1, math.ceil(rate)),
                   key=str(data.get("key", "client_ip")),
                   scope=str(data.get("scope", "instance")))


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """``cors``: which origins' pages may call the endpoint (orchd.auth.cors answers)."""

    allow_origins: tuple[str, ...]
    allow_methods: tuple[str, ...] | None = None  # None: the endpoint's methods
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int = 600

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CorsSettings:
        methods = data.get("allow_methods")
        return cls(
            allow_origins=tuple(data["allow_origins"]),
            allow_methods=None if methods is None else tuple(m.upper() for m in methods),
            allow_headers=tuple(data.get("allow_headers") or ()),
            expose_headers=tuple(data.get("expose_headers") or ()),
            allow_credentials=bool(data.get("allow_credentials", False)),
            max_age=int(data.get("max_age", 600)),
        )


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """One endpoint as configured. ``document`` is the validated mapping it came from."""

    name: str
    urls: tuple[str, ...]
    version: str | None = None
    methods: tuple[str, ...] = DEFAULT_METHODS
    auth_type: str = "none"
    require_auth: bool = False
    disabled: bool = False
    timeout: float = 30.0
    retries: int = 1
    health_check_path: str | None = None
    breaker_overrides: Mapping[str, Any] = field(default_factory=dict)
    ttl: float | None = None
    auth: AuthSettings | None = None
    rate_limit: RateLimitSettings | None = None
    cors: CorsSettings | None = None
    tls: UpstreamTls | None = None
    addresses: AddressRule | None = None  # ip_allow and ip_deny; None when both are empty
    document: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EndpointSpec:
        urls = tuple(data["urls"]) if "urls" in data else (data["url"],)
        return cls(
            name=data["name"],
            urls=tuple(u.rstrip("/") if u.count("/") > 2 else u for u in urls),
            version=data.get("version"),
            methods=tuple(m.upper() for m in data.get("methods", DEFAULT_METHODS)),
            auth_type=data.get("auth_type", "none"),
            require_auth=bool(data.get("require_auth", False)),
            disabled=bool(data.get("disabled", False)),
            timeout=float(data.get("timeout", 30.0)),
            retries=int(data.get("retries", 1)),
            health_check_path=data.get("health_check_path"),
            breaker_overrides=dict(data.get("circuit_breaker") or {}),
            ttl=data.get("ttl"),
            auth=_optional(AuthSettings.from_dict, data.get("auth")),
            rate_limit=_optional(RateLimitSettings.from_dict, data.get("rate_limit")),
            cors=_optional(CorsSettings.from_dict, data.get("cors")),
            tls=_optional(UpstreamTls.from_dict, data.get("tls")),
            addresses=_address_rule(data.get("ip_allow"), data.get("ip_deny")),
            document=dict(data),
        )

    @property
    def url(self) -> str:
        return self.urls[0]

    def as_document(self) -> dict[str, Any]:
        """The mapping that rebuilds this spec (what the store keeps)."""
        doc = dict(self.document)
        doc.pop("description", None)
        return doc

    def public_document(self) -> dict[str, Any]:
        """``as_document`` with the JWT secret masked: what an answer may show."""
        doc = self.as_document()
        auth = doc.get("auth")
        jwt = auth.get("jwt") if isinstance(auth, Mapping) else None
        if isinstance(jwt, Mapping) and "secret" in jwt:
            doc["auth"] = {**auth, "jwt": {**jwt, "secret": "<set>"}}  # type: ignore[dict-item]
        return doc


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file, validated."""

    server: ServerSettings = field(default_factory=ServerSettings)
    log_level: str = "INFO"
    endpoints: tuple[EndpointSpec, ...] = ()
    health_check: HealthSettings = field(default_factory=HealthSettings)
    circuit_breaker: BreakerSettings = field(default_factory=BreakerSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    path: str | None = None
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], path: str | None = None, warnings: tuple[str, ...] = ()
    ) -> Config:
        return cls(
            server=ServerSettings.from_dict(data.get("server") or {}),
            log_level=str(data.get("log_level", "INFO")).upper(),
            endpoints=tuple(EndpointSpec.from_dict(e) for e in data.get("endpoints") or ()),
            health_check=HealthSettings.from_dict(data.get("health_check") or {}),
            circuit_breaker=BreakerSettings.from_dict(data.get("circuit_breaker") or {}),
            registry=RegistrySettings.from_dict(data.get("registry") or {}),
            path=path,
            warnings=warnings,
        )


def _optional(build: Callable[[Mapping[str, Any]], _T], data: Any) -> _T | None:
    return None if data is None else build(data)


def _address_rule(allow: Any, deny: Any) -> AddressRule | None:
    """An endpoint's ``ip_allow`` and ``ip_deny``, parsed once; None when both are empty."""
    if not allow and not deny:
        return None
    return AddressRule(parse_networks(allow or ()), parse_networks(deny or ()))
