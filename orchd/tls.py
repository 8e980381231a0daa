"""TLS: the public port's certificates (loading, SNI choice, reload, facts) and the client
contexts orchd uses towards https upstreams (one per endpoint ``tls`` block, its files reread
when they are replaced on disk: ``UpstreamContext``).

The listener's context (``ServerTls.listener``) is made once, at start: the TLS versions,
the cipher suites, ALPN and client authentication it offers are fixed for the life of the
listening socket (a change needs a restart, see ``restart_keys``). Its ``sni_callback`` runs
for every handshake, with or without SNI, and switches the connection to the context of the
certificate the client asked for. Those per-certificate contexts live in one tuple that a
reload replaces in one assignment: new handshakes get the new certificates, connections
already open keep the certificate they were made with (OpenSSL copies it into each
connection). A pair that does not load (unreadable, encrypted or mismatched key, expired) is
not taken: the pair it would replace stays, and the error names the file.

Facts (``CertificateFacts``: subjects, not_after) are read with ``cryptography``; ``ssl``
does the rest. What it does not do: watch the files (``orchd.sources``), or decide when to
reload (``orchd.changes``).
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from orchd.log import config_logger
from orchd.model import CertificatePair, ServerTls, UpstreamTls

__all__ = (
    "CIPHERS_TLS12",
    "CertificateFacts",
    "TlsEdge",
    "TlsError",
    "UpstreamContext",
    "client_server_name",
    "client_ssl",
    "is_loopback",
    "key_path",
    "pair_problem",
    "restart_keys",
    "upstream_context",
    "upstream_problems",
)

# Mozilla's "intermediate" configuration for TLS 1.2 (ECDHE only: no DH parameters to
# manage); TLS 1.3 keeps OpenSSL's own suites, which are all strong.
CIPHERS_TLS12 = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))
ALPN = ("http/1.1",)
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL,
                "required": ssl.CERT_REQUIRED}


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; ``file`` names it."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(f"{file}: {message}")
        self.file = file
        self.message = message


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """What an operator watches of a certificate: its names and when it expires."""

    file: str
    subjects: tuple[str, ...]
    not_after: float  # epoch seconds
    serial: int

    def days_left(self, now: float | None = None) -> int:
        left = self.not_after - (time.time() if now is None else now)
        return math.floor(left / 86400)

    def as_dict(self, now: float | None = None) -> dict[str, object]:
        return {"file": self.file, "subjects": list(self.subjects),
                "not_after": self.not_after,
                "not_after_iso": datetime.datetime.fromtimestamp(
                    self.not_after, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "days_left": self.days_left(now), "serial": f"{self.serial:x}"}


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One certificate pair, loaded: its context (for the SNI switch) and its facts."""

    pair: CertificatePair
    context: ssl.SSLContext
    facts: CertificateFacts


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise TlsError(path, f"cannot read the file: {exc.strerror}") from None


def _facts(path: str, pem: bytes, now: float) -> CertificateFacts:
    try:
        cert = x509.load_pem_x509_certificate(pem)  # the first: the leaf
    except ValueError:
        raise TlsError(path, "is not a PEM certificate") from None
    subjects: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        subjects += san.get_values_for_type(x509.DNSName)
        subjects += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    if not subjects:
        subjects += [str(a.value) for a in cert.subject.get_attributes_for_oid(
            NameOID.COMMON_NAME)]
    not_after = cert.not_valid_after_utc.timestamp()
    if not_after <= now:
        raise TlsError(path, f"the certificate expired on "
                             f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC")
    return CertificateFacts(path, tuple(subjects), not_after, cert.serial_number)


def _check_key(path: str, pem: bytes) -> None:
    """An encrypted key is refused with its own message (ssl would ask for a password)."""
    if b"ENCRYPTED" in pem:
        raise TlsError(path, "the private key is encrypted: orchd needs it unencrypted "
                             "(protect it with file permissions)")
    try:
        serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(path, f"is not a PEM private key ({exc})") from None


def _base_context(settings: ServerTls) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[settings.min_version]
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    # One TLS 1.3 session ticket per handshake, as Go's server (Caddy) sends, not OpenSSL's
    # two: each costs ~17 µs of a ~275 µs server handshake (ECDSA P-256, measured in memory
    # with this context), and a client resuming gets a fresh one each time.
    ctx.num_tickets = 1
    ctx.set_alpn_protocols(list(ALPN))
    if settings.client_ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=settings.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(settings.client_ca_file,
                           f"cannot load the CA certificates: {_why(exc)}") from None
    ctx.verify_mode = _CLIENT_AUTH[settings.client_auth]
    return ctx


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def _load(pair: CertificatePair, settings: ServerTls, now: float) -> _Loaded:
    cert_pem = _read(pair.cert_file)
    facts = _facts(pair.cert_file, cert_pem, now)
    _check_key(pair.key_file, _read(pair.key_file))
    ctx = _base_context(settings)
    try:
        ctx.load_cert_chain(pair.cert_file, pair.key_file)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or exc.reason == "KEY_VALUES_MISMATCH":
            raise TlsError(pair.key_file, f"the key does not match {pair.cert_file}") from None
        raise TlsError(pair.cert_file, f"cannot load the pair: {_why(exc)}") from None
    except OSError as exc:
        raise TlsError(pair.cert_file, f"cannot load the pair: {_why(exc)}") from None
    return _Loaded(pair, ctx, facts)


def pair_problem(pair: CertificatePair, settings: ServerTls) -> TlsError | None:
    """Why the pair cannot be served (the loader's check), or None."""
    try:
        _load(pair, settings, time.time())
    except TlsError as exc:
        return exc
    return None


def _matches(pattern: str, name: str) -> bool:
    if pattern == name:
        return True
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


class TlsEdge:
    """The public listener's TLS: one listening context, the certificates it switches to."""

    def __init__(self, settings: ServerTls) -> None:
        """Load every pair; raises ``TlsError`` (orchd cannot serve HTTPS without them)."""
        self.settings = settings
        now = time.time()
        self._loaded = tuple(_load(p, settings, now) for p in settings.certificates)
        self.listener = _base_context(settings)
        default = settings.certificates[0]
        self.listener.load_cert_chain(default.cert_file, default.key_file)
        self.listener.sni_callback = self._on_sni
        self.handshakes = 0

    def _on_sni(self, conn: ssl.SSLObject | ssl.SSLSocket, name: str | None,
                _ctx: ssl.SSLContext) -> None:
        self.handshakes += 1
        conn.context = self.choose(name).context

    def choose(self, name: str | None) -> _Loaded:
        """The pair for the name a client asked for: an exact subject, then a wildcard
        one, else the first pair."""
        loaded = self._loaded
        if name:
            name = name.lower().rstrip(".")
            for item in loaded:
                if name in item.facts.subjects:
                    return item
            for item in loaded:
                if any(_matches(s.lower(), name) for s in item.facts.subjects):
                    return item
        return loaded[0]

    def reload(self, settings: ServerTls) -> list[TlsError]:
        """Reread every pair of ``settings.certificates``; swap in those that load. A pair
        that fails keeps its previous version (same files) if there was one. Only the
        certificate list is taken from ``settings`` (see ``restart_keys``)."""
        now = time.time()
        running = self.settings
        listening = ServerTls(certificates=settings.certificates,
                              min_version=running.min_version,
                              client_ca_file=running.client_ca_file,
                              client_auth=running.client_auth)
        old = {item.pair: item for item in self._loaded}
        errors: list[TlsError] = []
        out: list[_Loaded] = []
        for pair in settings.certificates:
            try:
                out.append(_load(pair, listening, now))
            except TlsError as exc:
                errors.append(exc)
                if pair in old:
                    out.append(old[pair])
        if out:
            self._loaded = tuple(out)  # one assignment: the next handshake sees it whole
            self.settings = listening
        return errors

    def files(self) -> list[str]:
        """Every file a reload reads (for the watcher)."""
        out = [f for item in self.settings.certificates for f in (item.cert_file, item.key_file)]
        return out

    @property
    def facts(self) -> list[CertificateFacts]:
        return [item.facts for item in self._loaded]

    def status(self, now: float | None = None) -> dict[str, object]:
        return {"certificates": [f.as_dict(now) for f in self.facts],
                "min_version": self.settings.min_version,
                "client_auth": self.settings.client_auth}


def key_path(settings: ServerTls, file: str) -> str:
    """The config key that names ``file`` (for errors)."""
    for i, pair in enumerate(settings.certificates):
        for key in ("cert_file", "key_file"):
            if getattr(pair, key) == file:
                return f"server.tls.certificates[{i}].{key}"
    return "server.tls"


def restart_keys(running: ServerTls | None, wanted: ServerTls | None) -> list[str]:
    """The ``server.tls`` keys whose change only a restart applies: whether there is TLS at
    all, and what the listening context offers. The certificates reload without one."""
    if (running is None) != (wanted is None):
        return ["server.tls"]
    if running is None or wanted is None:
        return []
    return [f"server.tls.{k}" for k in ("min_version", "client_ca_file", "client_auth")
            if getattr(running, k) != getattr(wanted, k)]


# -- towards upstreams


# How often a new upstream connection may look at its files again (a stat each).
RECHECK = 1.0
_CACHED = 256  # tls blocks kept (targets and their blocks come and go with registrations)


def _build_upstream(tls: UpstreamTls) -> ssl.SSLContext:
    """A client context made from an endpoint's ``tls`` block and its files as they are now;
    raises ``TlsError`` naming a file that does not load."""
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(tls.ca_file, f"cannot load the CA certificates: {_why(exc)}") \
                from None
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        _check_key(tls.key_file, _read(tls.key_file))
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(tls.cert_file, f"cannot load the client certificate: "
                                          f"{_why(exc)}") from None
    return ctx


_Stamp = tuple[int, int, int, int] | None


def _stamps(tls: UpstreamTls) -> tuple[_Stamp, ...]:
    """What tells a file replaced at the same path (rename, symlink swap, rewrite): its
    device, inode, size and modification time; None for a file that cannot be seen."""
    out: list[_Stamp] = []
    for path in (tls.ca_file, tls.cert_file, tls.key_file):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class UpstreamContext(ssl.SSLContext):
    """The client context of one endpoint ``tls`` block, whose files are reread when they
    change on disk: a CA bundle or client certificate replaced at the same path is used by
    new connections without a change to the block.

    The object stays the same for the life of the block (the upstream pool and aiohttp key
    their connections by it); every connection it makes (``wrap_bio``, ``wrap_socket``) is
    made by the context last built from the files (``current``). ``refresh`` rebuilds that
    one when a file's stamp changed: at every config load (``upstream_problems``, so SIGHUP,
    ``orchctl reload`` and ``POST /config/reload`` reread them and report a file that does
    not load), and on a new connection at most every ``RECHECK`` seconds (a file replaced
    between reloads). A rebuild that fails keeps the previous context. Connections already
    open are untouched."""

    tls: UpstreamTls
    current: ssl.SSLContext

    def __new__(cls, tls: UpstreamTls) -> UpstreamContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, tls: UpstreamTls) -> None:
        """Load the files now; raises ``TlsError`` if one does not load."""
        self.tls = tls
        self._stamps = _stamps(tls)
        self.current = _build_upstream(tls)
        self._checked = time.monotonic()
        self._failed: tuple[_Stamp, ...] | None = None  # stamps of a load that failed
        self._lock = threading.Lock()
        # The same choices on this object, for whoever reads them off the context.
        self.minimum_version = ssl.TLSVersion.TLSv1_2
        self.check_hostname = self.current.check_hostname
        self.verify_mode = self.current.verify_mode

    def refresh(self, wait: bool = True) -> TlsError | None:
        """Rebuild ``current`` if a file changed since it was built; the error of a file
        that does not load (the previous context stays), else None. ``wait=False`` gives
        up at once when another thread is rebuilding."""
        self._checked = time.monotonic()
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            stamps = _stamps(self.tls)
            if stamps == self._stamps:
                return None
            try:
                fresh = _build_upstream(self.tls)
            except TlsError as exc:
                if stamps != self._failed:
                    self._failed = stamps
                    config_logger.error("%s; connections to the upstream keep using the "
                                        "previous file", exc)
                return exc
            self.current = fresh  # one assignment: the next connection uses it
            self._stamps, self._failed = stamps, None
            config_logger.info("upstream tls files reread: %s", ", ".join(
                f for f in (self.tls.ca_file, self.tls.cert_file, self.tls.key_file) if f))
            return None
        finally:
            self._lock.release()

    def _fresh(self) -> ssl.SSLContext:
        if time.monotonic() - self._checked >= RECHECK:
            self.refresh(wait=False)
        return self.current

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return self._fresh().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                      session)

    def wrap_socket(self, sock: socket.socket, server_side: bool = False,
                    do_handshake_on_connect: bool = True, suppress_ragged_eofs: bool = True,
                    server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        return self._fresh().wrap_socket(sock, server_side, do_handshake_on_connect,
                                         suppress_ragged_eofs, server_hostname, session)


@lru_cache(maxsize=1)
def _system_trust() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


_UPSTREAM: dict[UpstreamTls, UpstreamContext] = {}


def upstream_context(tls: UpstreamTls | None) -> ssl.SSLContext:
    """The client context for an endpoint's ``tls`` block: one per block, its files reread
    when they change (``UpstreamContext``); without a block, the system's trust anchors.
    Raises ``TlsError`` naming a file that does not load."""
    if tls is None:
        return _system_trust()
    ctx = _UPSTREAM.get(tls)
    if ctx is None:
        ctx = UpstreamContext(tls)
        if len(_UPSTREAM) >= _CACHED:
            del _UPSTREAM[next(iter(_UPSTREAM))]
        _UPSTREAM[tls] = ctx
    return ctx


def upstream_problems(tls: UpstreamTls) -> list[tuple[str, TlsError]]:
    """(key, error) for each file of an endpoint's ``tls`` that does not load, read as it
    is on disk now (a config load rereads the files of a block in use)."""
    try:
        cached = tls in _UPSTREAM
        ctx = upstream_context(tls)
        if cached and isinstance(ctx, UpstreamContext):
            failed = ctx.refresh()
            if failed is not None:
                raise failed
    except TlsError as exc:
        key = next((k for k in ("ca_file", "cert_file", "key_file")
                    if getattr(tls, k) == exc.file), "ca_file")
        return [(key, exc)]
    return []


def is_loopback(host: str) -> bool:
    """Whether a listen address reaches this machine only."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_ssl(tls: UpstreamTls | None) -> ssl.SSLContext | bool:
    """``ssl=`` for one aiohttp client request (a WebSocket upgrade, a health probe) to an
    endpoint's upstream: its ``tls`` context, or True (aiohttp's default verification)."""
    return True if tls is None else upstream_context(tls)


def client_server_name(tls: UpstreamTls | None) -> str | None:
    """``server_hostname=`` for the same request: ``tls.server_name``, or None (the URL's)."""
    return None if tls is None else tls.server_name
