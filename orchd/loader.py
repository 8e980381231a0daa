"""YAML text -> ``${VAR}`` expansion -> JSON Schema validation -> frozen ``Config``.

Every error names the key path (``endpoints[1].url``) and, for a file, the line it is on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource
from yarl import URL

from orchd.client_ip import network_problem
from orchd.errors import ConfigError, FieldError
from orchd.log import escape_controls
from orchd.model import Config, EndpointSpec, ServerTls, UpstreamTls
from orchd.schema import SCHEMA_NAMES, load_schema
from orchd.tls import pair_problem, upstream_problems
from orchd.upstream_policy import UpstreamPolicy

__all__ = (
    "Document",
    "load_config",
    "parse_config",
    "parse_yaml",
    "validate_endpoint",
    "validate_registration",
)

PathTuple = tuple[str | int, ...]

_MAX_DEPTH = 64  # nesting levels in a configuration document
_MAX_NODES = 200_000  # values in it, aliases expanded
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

# Keys the original Orchestrator API documented but ignored: accepted, with a warning.
_IGNORED_KEYS: tuple[tuple[PathTuple, str], ...] = (
    (("endpoints", -1, "description"), "is ignored"),
    (("circuit_breaker", "fallback_strategy"), "is ignored; use fallback_response"),
    (("endpoints", -1, "circuit_breaker", "fallback_strategy"),
     "is ignored; use fallback_response"),
    (("metrics",), "is ignored; /metrics is served unless server.metrics is false"),
    (("endpoints", -1, "ttl"),
     "is ignored: a ttl applies to API registrations, not to the file's endpoints"),
)


def format_path(path: Sequence[str | int]) -> str:
    """``("endpoints", 1, "url")`` -> ``endpoints[1].url``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            part = escape_controls(part)  # a key is input too: it cannot break a log line
            out += f".{part}" if out else part
    return out


@dataclass(frozen=True, slots=True)
class Document:
    """A parsed document and the line of every key and list item in it."""

    data: Any
    lines: Mapping[PathTuple, int]
    from_env: frozenset[PathTuple] = frozenset()  # values that came from ``${VAR}``
    notes: tuple[str, ...] = ()  # warnings of the parse itself

    def line_of(self, path: Sequence[str | int]) -> int | None:
        key = tuple(path)
        while key:
            if key in self.lines:
                return self.lines[key]
            key = key[:-1]
        return self.lines.get((), None)


# ---------------------------------------------------------------- YAML with line numbers


class _Constructor(yaml.SafeLoader):
    pass


def _expand(value: str, path: PathTuple, env: Mapping[str, str] | None,
            errors: list[FieldError], notes: list[str], line: int) -> str:
    """``${VAR}`` and ``${VAR:-default}`` in ``value``. Without ``env`` (a document sent to
    the API), nothing is read from the environment: a default stands in, else an empty
    value, and a note says so; the answer can then tell nothing of the daemon's environment."""
    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if env is None:
            notes.append(f"{format_path(path)} (line {line}): ${{{name}}} is not expanded in a "
                         "document sent to the API; validated with "
                         + ("its default" if default is not None else "an empty value"))
            return default or ""
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        errors.append(FieldError(format_path(path),
                                 f"environment variable {name} is not set", line))
        return ""

    return _ENV_RE.sub(sub, value)


def parse_yaml(text: str, env: Mapping[str, str] | None = None, *,
               expand_env: bool = True) -> Document:
    """Parse YAML, expand ``${VAR}`` / ``${VAR:-default}`` in scalars, record lines.

    ``env`` defaults to the process environment; with ``expand_env=False`` (a document that
    came over the API) no variable is read: see ``_expand``."""
    use_env: Mapping[str, str] | None = None
    if expand_env:
        use_env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=_Constructor)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or str(exc)
        if exc.context:
            problem = f"{exc.context}, {problem}"
        raise ConfigError([FieldError("", f"YAML syntax error: {problem}", line)]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([FieldError("", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise ConfigError([FieldError("", "YAML error: the document is nested too "
                                          "deeply")]) from None
    if root is None:
        return Document({}, {(): 1})
    constructor = _Constructor("")
    lines: dict[PathTuple, int] = {}
    errors: list[FieldError] = []
    notes: list[str] = []
    from_env: set[PathTuple] = set()
    budget = [_MAX_NODES]  # aliases can make a small text a huge tree ("billion laughs")
    open_nodes: set[int] = set()  # an alias to one of its own ancestors never ends

    def build(node: yaml.Node, path: PathTuple) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or len(path) > _MAX_DEPTH:
            why = "too deeply nested" if len(path) > _MAX_DEPTH else \
                f"larger than {_MAX_NODES} values once its aliases are expanded"
            raise ConfigError([FieldError(format_path(path), f"the document is {why}",
                                          node.start_mark.line + 1)])
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in open_nodes:
                raise ConfigError([FieldError(format_path(path), "an alias refers to a node "
                                              "that contains it (a recursive structure)",
                                              node.start_mark.line + 1)])
            open_nodes.add(id(node))
            try:
                return build_collection(node, path)
            finally:
                open_nodes.discard(id(node))
        return build_scalar(node, path)

    def build_collection(node: yaml.Node, path: PathTuple) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            constructor.flatten_mapping(node)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = constructor.construct_object(key_node, deep=True)
                if not isinstance(key, str | int | float | bool) or key is None:
                    errors.append(FieldError(format_path(path), "mapping keys must be scalars",
                                             key_node.start_mark.line + 1))
                    continue
                key = str(key) if not isinstance(key, str) else key
                if key in out:
                    errors.append(FieldError(format_path((*path, key)), "duplicate key",
                                             key_node.start_mark.line + 1))
                lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*path, key))
            return out
        return [build(item, (*path, i)) for i, item in enumerate(node.value)]

    def build_scalar(node: yaml.Node, path: PathTuple) -> Any:
        lines.setdefault(path, node.start_mark.line + 1)
        value = constructor.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            expanded = _expand(value, path, use_env, errors, notes, node.start_mark.line + 1)
            if expanded != value:
                from_env.add(path)
            if isinstance(node, yaml.ScalarNode) and node.style is None:
                try:  # a plain scalar takes the type of what it expanded to: ${PORT:-8000}
                    resolved = yaml.safe_load(expanded) if expanded.strip() else ""
                except yaml.YAMLError:
                    resolved = expanded
                if isinstance(resolved, str | int | float | bool) or resolved is None:
                    return resolved
            return expanded
        return value

    try:
        data = build(root, ())
    except yaml.YAMLError as exc:
        raise ConfigError([FieldError("", f"YAML error: {exc}")]) from None
    except RecursionError:
        raise ConfigError([FieldError("", "YAML error: the document is nested too "
                                          "deeply")]) from None
    if errors:
        raise ConfigError(errors)
    return Document(data, lines, frozenset(from_env), tuple(notes))


# ---------------------------------------------------------------- JSON Schema validation


@cache
def _registry() -> Registry:
    resources = [
        (load_schema(n)["$id"], Resource.from_contents(load_schema(n))) for n in SCHEMA_NAMES
    ]
    return Registry().with_resources(resources)


_format_checker = FormatChecker()


@_format_checker.checks("http-url", raises=ValueError)
def _is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        url = URL(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(str(exc)) from None
    if url.scheme not in ("http", "https") or not url.host or url.user or url.password:
        return False
    if url.query_string or url.fragment or any(c.isspace() for c in value):
        return False
    try:
        url.port  # noqa: B018 - raises on an invalid port
    except ValueError:
        return False
    return True


@_format_checker.checks("cidr", raises=ValueError)
def _is_cidr(value: object) -> bool:
    if not isinstance(value, str):
        return True
    problem = network_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return True


@cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        load_schema(name), registry=_registry(), format_checker=_format_checker
    )


def _message(error: jsonschema.ValidationError) -> tuple[PathTuple, str]:
    path: PathTuple = tuple(error.absolute_path)
    kind, inst = error.validator, error.instance
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    if kind == "format" and error.validator_value == "http-url":
        return path, f"{inst!r} is not an http(s) URL (scheme://host[:port][/path])"
    if kind == "format" and error.validator_value == "cidr":
        why = f": {error.cause}" if error.cause is not None else ""
        return path, (f"{inst!r} is not a CIDR range (an address, or address/prefix such as "
                      f"10.0.0.0/8 or fd00::/8){why}")
    if kind == "anyOf" and isinstance(inst, dict) and "name" in schema.get("required", []):
        return path, "needs 'url' (one upstream) or 'urls' (several targets)"
    if kind == "oneOf" and isinstance(schema.get("x-expects"), str):
        return path, f"{inst!r} is not {schema['x-expects']}"
    if kind == "not" and isinstance(inst, dict):
        return path, "'url' and 'urls' cannot both be set; use 'urls' for several targets"
    if kind == "pattern" and path and path[-1] == "name":
        return path, f"{inst!r} is not a valid name (1-64 of A-Z a-z 0-9 _ -)"
    if kind == "required":
        return path, error.message.replace("is a required property", "is required")
    if kind == "type":
        want = error.validator_value
        want_s = " or ".join(want) if isinstance(want, list) else want
        return path, f"{inst!r} is not of type {want_s}"
    if kind == "enum":
        choices = ", ".join(json.dumps(c) for c in error.validator_value)  # type: ignore[union-attr]
        return path, f"{inst!r} is not one of {choices}"
    if kind == "pattern" and isinstance(schema.get("description"), str):
        # A pattern that says in words what it allows (header names and values).
        if "propertyNames" in error.schema_path:
            return path, f"the header name {inst!r} {schema['description']}"
        return path, f"{inst!r} {schema['description']}"
    return path, error.message


def _errors(name: str, doc: Document, prefix: PathTuple = ()) -> list[FieldError]:
    out: list[FieldError] = []
    errors = sorted(_validator(name).iter_errors(doc.data),
                    key=lambda e: [str(p) for p in e.absolute_path])
    for error in errors:
        for path, msg in _messages(error):
            line = doc.line_of(path) if doc.lines else None
            if path in doc.from_env and isinstance(error.instance, str | int | float | bool):
                # Never echo what came from the environment (a secret, most likely).
                msg = msg.replace(repr(error.instance), "the value from the environment")
            out.append(FieldError(format_path((*prefix, *path)), msg, line))
    return out


def _messages(error: jsonschema.ValidationError) -> list[tuple[PathTuple, str]]:
    """One message per problem: an object with several unknown keys names each of them."""
    inst = error.instance
    schema: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties" and isinstance(inst, dict):
        path: PathTuple = tuple(error.absolute_path)
        allowed = set(schema.get("properties", {}))
        known = ", ".join(sorted(allowed))
        extra = sorted((k for k in inst if k not in allowed), key=str)
        if extra:
            return [((*path, k), f"unknown key {k!r} (known keys: {known})") for k in extra]
    return [_message(error)]


def _duplicate_names(endpoints: Sequence[Any], doc: Document) -> list[FieldError]:
    out: list[FieldError] = []
    seen: dict[str, int] = {}
    for i, ep in enumerate(endpoints):
        if not isinstance(ep, dict) or not isinstance(ep.get("name"), str):
            continue
        name = ep["name"]
        if name in seen:
            out.append(FieldError(
                format_path(("endpoints", i, "name")),
                f"duplicate endpoint name {name!r} (first at endpoints[{seen[name]}])",
                doc.line_of(("endpoints", i, "name"))))
        else:
            seen[name] = i
    return out


def _warnings(data: Any, doc: Document) -> list[str]:
    out: list[str] = []
    if not isinstance(data, dict):
        return out
    for pattern, why in _IGNORED_KEYS:
        for path in _expand_pattern(data, pattern):
            line = doc.line_of(path)
            out.append(f"{format_path(path)} (line {line}): {why}")
    return out


def _expand_pattern(data: Any, pattern: PathTuple, done: PathTuple = ()) -> list[PathTuple]:
    if not pattern:
        return [done]
    head, rest = pattern[0], pattern[1:]
    if head == -1:
        if not isinstance(data, list):
            return []
        return [p for i, item in enumerate(data) for p in _expand_pattern(item, rest, (*done, i))]
    if isinstance(data, dict) and head in data:
        return _expand_pattern(data[head], rest, (*done, head))
    return []


def _upstream_policy_errors(data: dict[str, Any], doc: Document) -> list[FieldError]:
    """Every endpoint URL the file's ``server.allowed_upstreams`` refuses."""
    server = data.get("server") or {}
    rules = server.get("allowed_upstreams")
    # The file's own listen address (flags and the environment may move it: the daemon's
    # own check catches that at registration and connect time).
    own = ((str(server.get("host", "127.0.0.1")), int(server.get("port", 8000))),)
    try:
        policy = UpstreamPolicy(rules, own)
    except ValueError as exc:
        where: PathTuple = ("server", "allowed_upstreams")
        return [FieldError(format_path(where), str(exc), doc.line_of(where))]
    out: list[FieldError] = []
    for i, ep in enumerate(data.get("endpoints") or ()):
        urls = [("urls", j, u) for j, u in enumerate(ep["urls"])] if "urls" in ep \
            else [("url", None, ep["url"])]
        for key, j, url in urls:
            reason = policy.check(url)
            if reason is not None:
                path: PathTuple = ("endpoints", i, key) if j is None else ("endpoints", i, key, j)
                out.append(FieldError(format_path(path), reason, doc.line_of(path)))
    return out


def _proxy_warnings(server: Mapping[str, Any], doc: Document) -> list[str]:
    if server.get("proxy_protocol") is True and not server.get("trusted_proxies"):
        where = ("server", "proxy_protocol")
        return [f"{format_path(where)} (line {doc.line_of(where)}): true, but "
                "server.trusted_proxies is empty: no peer may send a PROXY header"]
    return []


def _server_tls_errors(server: Mapping[str, Any], doc: Document) -> list[FieldError]:
    """``server.tls`` beyond its schema: client_auth needs a CA, and every file loads."""
    tls = server.get("tls")
    if not tls:
        if server.get("redirect_http_port") is not None:
            where: PathTuple = ("server", "redirect_http_port")
            return [FieldError(format_path(where), "needs server.tls (it redirects to https)",
                               doc.line_of(where))]
        return []
    if tls.get("client_auth", "none") != "none" and not tls.get("client_ca_file"):
        where = ("server", "tls", "client_auth")
        return [FieldError(format_path(where),
                           f"{tls['client_auth']!r} needs client_ca_file (the CA that signs "
                           "client certificates)", doc.line_of(where))]
    settings = ServerTls.from_dict(tls)
    out: list[FieldError] = []
    plain = replace(settings, client_ca_file=None, client_auth="none")
    for i, pair in enumerate(settings.certificates):
        problem = pair_problem(pair, plain)
        if problem is not None:
            key = "key_file" if problem.file == pair.key_file else "cert_file"
            where = ("server", "tls", "certificates", i, key)
            out.append(FieldError(format_path(where), str(problem), doc.line_of(where)))
    if settings.client_ca_file is not None and not out:
        problem = pair_problem(settings.certificates[0], settings)
        if problem is not None:
            where = ("server", "tls", "client_ca_file")
            out.append(FieldError(format_path(where), str(problem), doc.line_of(where)))
    return out


def _endpoint_tls_errors(endpoint: Mapping[str, Any], doc: Document,
                         prefix: PathTuple) -> list[FieldError]:
    """An endpoint's ``tls``: cert_file and key_file go together, and every file loads."""
    tls = endpoint.get("tls")
    if not isinstance(tls, Mapping):
        return []
    where: PathTuple = (*prefix, "tls")
    if (tls.get("cert_file") is None) != (tls.get("key_file") is None):
        missing = "key_file" if tls.get("key_file") is None else "cert_file"
        return [FieldError(format_path((*where, missing)),
                           "is needed too: cert_file and key_file go together (the client "
                           "certificate and its key)", doc.line_of(where))]
    return [FieldError(format_path((*where, key)), str(problem), doc.line_of((*where, key)))
            for key, problem in upstream_problems(UpstreamTls.from_dict(tls))]


def _tls_warnings(data: Mapping[str, Any], doc: Document) -> list[str]:
    out = []
    for i, ep in enumerate(data.get("endpoints") or ()):
        if (ep.get("tls") or {}).get("verify") is False:
            where = ("endpoints", i, "tls", "verify")
            out.append(f"{format_path(where)} (line {doc.line_of(where)}): false: the "
                       "upstream's certificate is not verified, so anyone on the path can "
                       "read and change the traffic")
    return out


def _tls_errors(data: Mapping[str, Any], doc: Document) -> list[FieldError]:
    out = _server_tls_errors(data.get("server") or {}, doc)
    for i, ep in enumerate(data.get("endpoints") or ()):
        out += _endpoint_tls_errors(ep, doc, ("endpoints", i))
    return out


def _rate_limit_scope_errors(data: Mapping[str, Any], doc: Document) -> list[FieldError]:
    """``rate_limit.scope: cluster`` counts the instances sharing an etcd store: with the
    file store there are none to share with."""
    if (data.get("registry") or {}).get("store", "file") == "etcd":
        return []
    out = []
    for i, ep in enumerate(data.get("endpoints") or ()):
        if (ep.get("rate_limit") or {}).get("scope") == "cluster":
            where = ("endpoints", i, "rate_limit", "scope")
            out.append(FieldError(format_path(where), "cluster needs registry.store: etcd "
                                  "(the instances that share the rate are counted there); "
                                  "use instance with the file store", doc.line_of(where)))
    return out


def parse_config(text: str, path: str | None = None,
                 env: Mapping[str, str] | None = None, *, expand_env: bool = True,
                 show_env_values: bool = False) -> Config:
    """Validate a whole configuration document; raise ``ConfigError`` with every error.

    ``expand_env=False`` for a document that did not come from orchd's own file. Errors never
    quote a value that came from the environment (it may be a secret, and the daemon's errors
    reach its log and ``last_reload``), unless ``show_env_values`` (an offline check, on the
    operator's own terminal)."""
    try:
        doc = parse_yaml(text, env, expand_env=expand_env)
    except ConfigError as exc:
        raise ConfigError(exc.errors, path) from None
    if show_env_values:
        doc = Document(doc.data, doc.lines, frozenset(), doc.notes)
    data = doc.data
    if data is None:
        data = {}
        doc = Document({}, doc.lines, doc.from_env, doc.notes)
    if not isinstance(data, dict):
        raise ConfigError([FieldError("", "the document must be a mapping of keys", 1)], path)
    errors = _errors("config", doc)
    endpoints = data.get("endpoints") or []
    if isinstance(endpoints, list):
        errors += _duplicate_names(endpoints, doc)
    if not errors:
        errors += _upstream_policy_errors(data, doc)
        errors += _tls_errors(data, doc)
        errors += _rate_limit_scope_errors(data, doc)
    if errors:
        raise ConfigError(errors, path)
    return Config.from_dict(data, path=path,
                            warnings=(*doc.notes, *_warnings(data, doc),
                                      *_tls_warnings(data, doc),
                                      *_proxy_warnings(data.get("server") or {}, doc)))


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *,
                show_env_values: bool = False) -> Config:
    """Read and validate a configuration file (see ``parse_config``)."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except OSError as exc:
        raise ConfigError([FieldError("", f"cannot read the file: {exc.strerror}")],
                          str(p)) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError("", f"the file is not UTF-8 text: {exc.reason}")],
                          str(p)) from None
    return parse_config(text, str(p), env, show_env_values=show_env_values)


def validate_endpoint(data: Any, prefix: PathTuple = ()) -> EndpointSpec:
    """Validate one endpoint mapping (an API body's ``config``)."""
    doc = Document(data, {})
    errors = _errors("endpoint", doc, prefix) or _endpoint_tls_errors(data, doc, prefix)
    if errors:
        raise ConfigError(errors)
    return EndpointSpec.from_dict(data)


def validate_registration(body: Any) -> EndpointSpec:
    """Validate a ``{"config": {...}}`` registration body."""
    doc = Document(body, {})
    errors = _errors("registration", doc) or _endpoint_tls_errors(body["config"], doc,
                                                                   ("config",))
    if not errors:
        jwt = ((body["config"].get("auth") or {}).get("jwt") or {})
        if "secret" in jwt:
            # The API stores what it is sent and never expands ${VAR}: a secret would be kept
            # in clear in the registry store.
            errors.append(FieldError("config.auth.jwt.secret", "an HS secret can be set only "
                                     "in the configuration file, from the environment "
                                     "(secret: ${VAR}); use a JWKS for API registrations"))
    if errors:
        raise ConfigError(errors)
    return EndpointSpec.from_dict(body["config"])
