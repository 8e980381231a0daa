"""What the gateway's checks (design section 12) cost on the proxy path: one orchd with
endpoints that differ only in their checks, all forwarding to the same nginx backend.

Rows (one orchd process, so every row pays the same for everything else):

* ``none``: no ``auth``, ``rate_limit`` or ``cors`` (the route has no guard);
* ``jwt``: ``auth.jwt`` RS256 against a JWK Set file, one token reused by every request,
  as clients do: after the first request it is a hit of the verified-token cache;
* ``jwt, every token new``: 8,192 distinct tokens sent in turn (twice the cache), so every
  request is a cache miss: one RS256 verification each;
* ``api_key``: ``auth.api_key``, a consumer's key made through ``POST /consumers``;
* ``rate_limit``: a bucket per client address with a rate it never reaches.

Same set-up as bench/throughput.py (whose process helpers it reuses): orchd alone on CPU 0,
wrk and the backend on CPU 1, rounds interleaved and medians reported; req/s and orchd's
CPU time per request, each row against ``none`` of the same run. The access log is off, so
the checks are a larger share of each request than in production.

Then, in this process on CPU 0 (orchd idle): one RS256 verification (a cache miss) and a
cache hit through ``JwtValidator.verify``; the credential check per request
(``Guard.known``, which the proxy asks first) for a cached JWT and for an API key; the
rate limiter's path per request (``Guard.passage`` + ``Guard.limit``) with one key and
with a full table of keys;
and the memory of a full limiter and of a full token cache (tracemalloc).

orchd runs from this file's tree (``python -m orchd`` with it first on the path): build the
request path there first (``python setup.py build_ext --inplace``); the report says
whether it ran compiled.

Usage: python bench/auth.py [--quick] [--rounds N] [--duration S] [--connections C]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import timeit
import tracemalloc
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa
from throughput import (
    LOAD_CPU,
    PROXY_CPU,
    PY,
    ROOT,
    SIZE_LABEL,
    Bench,
    Proc,
    Result,
    fmt_us,
    free_port,
    loadavg,
    parse_wrk,
)

BODY = "small"  # the per-request cost shows most on small bodies
ISSUER = "https://id.bench.test/"
MISS_TOKENS = 8192  # distinct tokens of the cache-miss row: twice the cache (CACHE_SIZE)
REPEAT = 5  # in-process figures: the best of this many runs


@dataclass
class AuthRow:
    label: str
    endpoint: str
    header: str | None = None
    script: Path | None = None  # wrk Lua script (the cache-miss row)
    results: list[Result] = field(default_factory=list)


def compiled(root: Path) -> str:
    """Whether orchd in ``root`` runs compiled (mypyc's extension of the proxy)."""
    if list((root / "orchd").glob("proxy.*.so")):
        return "compiled (mypyc)"
    return "pure Python: build_ext --inplace first"


def mint(key: rsa.RSAPrivateKey, n: int = 0, **extra: str) -> str:
    now = int(time.time())
    return pyjwt.encode({"iss": ISSUER, "aud": "bench", "sub": f"user-{n}", "iat": now,
                         "exp": now + 3600, "scope": "read", **extra}, key,
                        algorithm="RS256", headers={"kid": "bench-1"})


def jwks_file(path: Path, key: rsa.RSAPrivateKey) -> None:
    jwk = json.loads(pyjwt.get_algorithm_by_name("RS256").to_jwk(key.public_key()))
    path.write_text(json.dumps({"keys": [{**jwk, "kid": "bench-1", "alg": "RS256",
                                          "use": "sig"}]}))


def start_orchd(bench: Bench, backend: int, jwks: Path) -> tuple[Proc, int]:
    port = free_port()
    d = bench.tmp / "orchd-auth"
    d.mkdir()
    config = d / "orchestrator.yaml"
    up = f"http://127.0.0.1:{backend}"
    jwt = (f"{{issuer: '{ISSUER}', audiences: [bench], jwks_file: '{jwks}', "
           "algorithms: [RS256]}")
    config.write_text(f"""server:
  access_log: false
log_level: WARNING
health_check:
  enabled: false
endpoints:
  - {{name: none, url: '{up}', methods: [GET], timeout: 10}}
  - {{name: jwt, url: '{up}', methods: [GET], timeout: 10, auth: {{jwt: {jwt}}}}}
  - {{name: key, url: '{up}', methods: [GET], timeout: 10, auth: {{api_key: {{}}}}}}
  - {{name: limited, url: '{up}', methods: [GET], timeout: 10,
     rate_limit: {{rate: 1000000, key: client_ip}}}}
""")
    argv = [str(PY), "-m", "orchd", "--config", str(config), "--port", str(port),
            "--state-dir", str(d / "state"), "--control-socket", str(d / "s.sock")]
    proc = bench.spawn("orchd-auth", PROXY_CPU, argv, env={"PYTHONPATH": str(ROOT)})
    bench.wait_http(proc, f"http://127.0.0.1:{port}/health/ready")
    return proc, port


def api_key(port: int) -> str:
    """A consumer and its key, made through the admin routes (loopback, no admin token)."""
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as r:
            doc: dict[str, Any] = json.load(r)
            return doc

    post("/consumers", {"name": "bench"})
    return str(post("/consumers/bench/keys", {})["key"])


def miss_script(path: Path, tokens: list[str]) -> Path:
    """A wrk script that sends ``tokens`` in turn, one per request."""
    quoted = ",\n".join(f'"{t}"' for t in tokens)
    path.write_text(f"""local tokens = {{
{quoted}
}}
local i = 0
request = function()
  i = i % #tokens + 1
  wrk.headers["Authorization"] = "Bearer " .. tokens[i]
  return wrk.format(nil)
end
""")
    return path


def wrk(bench: Bench, url: str, row: AuthRow, seconds: float, connections: int,
        proc: Proc) -> Result:
    extra = ["-H", row.header] if row.header is not None else []
    if row.script is not None:
        extra = ["-s", str(row.script)]
    argv = bench.taskset(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s",
                                    "--latency", "--timeout", "5s", *extra, url])
    before = proc.cpu_seconds()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    res = parse_wrk(out)
    if res.requests:
        res.cpu_us = (proc.cpu_seconds() - before) * 1e6 / res.requests
    return res


def check(row: AuthRow, url: str) -> None:
    headers = {}
    if row.header is not None:
        name, _, value = row.header.partition(": ")
        headers[name] = value
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        if r.status != 200:
            raise SystemExit(f"{row.label}: {url} answered {r.status}")


# -- in-process figures


def jwt_costs(jwks: Path, key: rsa.RSAPrivateKey, misses: int = 1000,
              hits: int = 100_000) -> tuple[float, float, float, float]:
    """Microseconds of ``JwtValidator.verify``, a miss (the RS256 verification, the claims
    checked, the answer cached) and a hit; and of what a miss is made of: ``jwt.decode``
    alone and the RSA signature check alone. Each the best of ``REPEAT`` runs."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    from orchd.auth.jwks import JwksFile
    from orchd.auth.jwt import JwtValidator
    from orchd.model import JwtSettings

    settings = JwtSettings(issuer=ISSUER, audiences=("bench",), jwks_file=str(jwks))
    tokens = [mint(key, n) for n in range(misses)]
    public = key.public_key()

    async def verify_all(validator: JwtValidator, batch: list[str]) -> float:
        started = time.perf_counter()
        for token in batch:
            await validator.verify(token)
        return time.perf_counter() - started

    async def measure() -> tuple[float, float]:
        source = JwksFile(str(jwks))
        source.load()
        miss = min([await verify_all(JwtValidator(settings, source, cache_size=misses),
                                     tokens) for _ in range(REPEAT)])
        validator = JwtValidator(settings, source)
        hot = [tokens[0]] * hits
        hit = min([await verify_all(validator, hot) for _ in range(REPEAT)])
        return 1e6 * miss / misses, 1e6 * hit / hits

    miss, hit = asyncio.run(measure())
    token = tokens[0]
    decode = min(timeit.repeat(lambda: pyjwt.decode(token, public, algorithms=["RS256"],
                                                    issuer=ISSUER, audience="bench"),
                               number=misses, repeat=REPEAT))
    signed, _, signature = token.rpartition(".")
    raw = pyjwt.utils.base64url_decode(signature)
    rsa_seconds = min(timeit.repeat(
        lambda: public.verify(raw, signed.encode(), padding.PKCS1v15(), hashes.SHA256()),
        number=misses, repeat=REPEAT))
    return miss, hit, 1e6 * decode / misses, 1e6 * rsa_seconds / misses


def credential_costs(jwks: Path, key: rsa.RSAPrivateKey,
                     samples: int = 100_000) -> tuple[float, float]:
    """Microseconds of the credential check per request as the proxy makes it for a
    credential already accepted (``Guard.passage`` and ``Guard.known``: the credential
    read, found, its kept identity and forwarding): a cached JWT, and an API key (a
    SHA-256 and a dictionary lookup)."""
    from multidict import CIMultiDict

    from orchd.auth.gateway import build_authenticator
    from orchd.auth.guard import Counters, Guard
    from orchd.auth.jwks import JwksAnswer, JwksRegistry
    from orchd.auth.keys import new_key
    from orchd.model import AuthSettings
    from orchd.store.consumers import ConsumerDirectory, ConsumerRecord, KeyRecord

    made = new_key()
    consumers = ConsumerDirectory()
    consumers.put_consumer(ConsumerRecord("bench", 0.0))
    consumers.put_key("bench", KeyRecord(made.key_id, made.prefix, made.hash, 0.0))

    async def no_fetch(url: str) -> JwksAnswer:
        raise AssertionError(url)

    registry = JwksRegistry(no_fetch)

    def guard(block: dict[str, Any]) -> Guard:
        authenticator = build_authenticator(AuthSettings.from_dict(block), registry,
                                            consumers)
        return Guard("bench", ("GET",), authenticator, None, None, Counters())

    jwt_guard = guard({"jwt": {"issuer": ISSUER, "audiences": ["bench"],
                               "jwks_file": str(jwks), "algorithms": ["RS256"]}})
    key_guard = guard({"api_key": {}})
    jwt_headers = CIMultiDict({"Host": "127.0.0.1", "Authorization": f"Bearer {mint(key)}"})
    key_headers = CIMultiDict({"Host": "127.0.0.1", "X-API-Key": made.key})

    async def per_request(g: Guard, headers: CIMultiDict[str]) -> float:
        await g.authenticate(g.passage(None), "127.0.0.1", headers, None)  # fills the cache
        if not g.known(g.passage(None), headers, None):
            raise AssertionError("the credential was not kept")
        best = float("inf")
        for _ in range(REPEAT):
            started = time.perf_counter()
            for _ in range(samples):
                g.known(g.passage(None), headers, None)
            best = min(best, time.perf_counter() - started)
        return 1e6 * best / samples

    async def measure() -> tuple[float, float]:
        return (await per_request(jwt_guard, jwt_headers),
                await per_request(key_guard, key_headers))

    return asyncio.run(measure())


def limiter_costs(samples: int = 200_000) -> tuple[float, float, float]:
    """Microseconds of the limiter's path per request (``Guard.passage`` and
    ``Guard.limit``: the bucket key, the token, the ``RateLimit-*`` fields): one client;
    clients spread over a full table (``MAX_KEYS``, least recently used evicted); and
    ``RateLimiter.take`` alone."""
    from multidict import CIMultiDict

    from orchd.auth.guard import Counters, Guard
    from orchd.auth.ratelimit import MAX_KEYS, RateLimiter
    from orchd.model import RateLimitSettings

    settings = RateLimitSettings(rate=1_000_000, burst=1_000_000)
    headers = CIMultiDict({"Host": "127.0.0.1", "User-Agent": "wrk"})

    def guard() -> Guard:
        return Guard("limited", ("GET",), None, RateLimiter(settings), None, Counters())

    one = guard()
    seconds = min(timeit.repeat(
        lambda: one.limit(one.passage(None), "127.0.0.1", headers, None), number=samples,
        repeat=REPEAT))
    many = guard()
    ips = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(2 * MAX_KEYS)]
    for ip in ips[:MAX_KEYS]:
        many.limit(many.passage(None), ip, headers, None)
    spread = ips * (REPEAT * samples // len(ips) + 1)
    it = iter(spread)
    spread_seconds = min(timeit.repeat(
        lambda: many.limit(many.passage(None), next(it), headers, None), number=samples,
        repeat=REPEAT))
    limiter = RateLimiter(settings)
    clock = time.monotonic
    take_seconds = min(timeit.repeat(lambda: limiter.take("ip:127.0.0.1", clock()),
                                     number=samples, repeat=REPEAT))
    return (1e6 * seconds / samples, 1e6 * spread_seconds / samples,
            1e6 * take_seconds / samples)


def memory_bounds(key: rsa.RSAPrivateKey, jwks: Path) -> dict[str, float]:
    """MiB of a full limiter (``MAX_KEYS`` buckets) and of a full token cache
    (``CACHE_SIZE`` verified tokens), with keys and tokens like the bench's and with the
    longest ones orchd keeps (a 256-character header value; a token of
    ``MAX_TOKEN_LENGTH`` characters, its claims making up the length)."""
    from orchd.auth.jwks import JwksFile
    from orchd.auth.jwt import CACHE_SIZE, MAX_TOKEN_LENGTH, JwtValidator
    from orchd.auth.ratelimit import MAX_KEYS, RateLimiter
    from orchd.model import JwtSettings, RateLimitSettings

    source = JwksFile(str(jwks))
    source.load()
    settings = JwtSettings(issuer=ISSUER, audiences=("bench",), jwks_file=str(jwks))
    pad = MAX_TOKEN_LENGTH - len(mint(key))
    pad = pad * 3 // 4 - 16  # base64url: 4 characters for 3 bytes, and the JSON around

    def limiter(key_of: Any) -> float:
        base = tracemalloc.get_traced_memory()[0]
        lim = RateLimiter(RateLimitSettings(rate=10, burst=10))
        for i in range(MAX_KEYS):
            lim.take(key_of(i), 0.0)
        assert len(lim) == MAX_KEYS
        return (tracemalloc.get_traced_memory()[0] - base) / 2**20

    def cache(extra: dict[str, str]) -> float:
        base = tracemalloc.get_traced_memory()[0]
        validator = JwtValidator(settings, source)

        async def fill() -> None:  # each token made here: the cache's copy is counted
            for n in range(CACHE_SIZE):
                token = mint(key, n, **extra)
                assert len(token) <= MAX_TOKEN_LENGTH
                await validator.verify(token)

        asyncio.run(fill())
        assert len(validator) == CACHE_SIZE
        return (tracemalloc.get_traced_memory()[0] - base) / 2**20

    tracemalloc.start()
    try:
        return {
            "limiter": limiter(lambda i: f"ip:2001:db8::{i:x}:{i:x}"),
            "limiter_worst": limiter(lambda i: f"header:{i:08x}" + "x" * 248),
            "cache": cache({}),
            "cache_worst": cache({"pad": "x" * pad}),
            "token": len(mint(key)),
            "token_worst": len(mint(key, 0, pad="x" * pad)),
        }
    finally:
        tracemalloc.stop()


def pinned(fn: Any, *args: Any) -> Any:
    """Run ``fn`` on the proxy's CPU (orchd idle), as orchd would."""
    before = os.sched_getaffinity(0)
    if PROXY_CPU in before:
        os.sched_setaffinity(0, {PROXY_CPU})
    try:
        return fn(*args)
    finally:
        os.sched_setaffinity(0, before)


# -- the run


def run(args: argparse.Namespace) -> int:
    bench = Bench(args)
    try:
        print(f"load average at start: {loadavg()}", flush=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwks = bench.tmp / "jwks.json"
        jwks_file(jwks, key)
        backend = bench.start_backend().port
        proc, port = start_orchd(bench, backend, jwks)
        token = mint(key)
        script = miss_script(bench.tmp / "miss.lua", [mint(key, n) for n in range(MISS_TOKENS)])
        rows = [AuthRow("none", "none"),
                AuthRow("jwt RS256, one token (cache hit)", "jwt",
                        f"Authorization: Bearer {token}"),
                AuthRow("api_key", "key", f"X-API-Key: {api_key(port)}"),
                AuthRow("rate_limit, never reached", "limited"),
                AuthRow("jwt RS256, every token new (cache miss)", "jwt", script=script)]
        base = f"http://127.0.0.1:{port}/orchestrator"
        for row in rows:
            url = f"{base}/{row.endpoint}/{BODY}"
            if row.script is None:
                check(row, url)
            wrk(bench, url, row, 2, args.connections, proc)  # warm up
        for rnd in range(args.rounds):
            order = rows if rnd % 2 == 0 else list(reversed(rows))
            for row in order:
                res = wrk(bench, f"{base}/{row.endpoint}/{BODY}", row, args.duration,
                          args.connections, proc)
                row.results.append(res)
                print(f"round {rnd + 1}: {row.label}: {res.rps:,.0f} req/s, "
                      f"{res.cpu_us or 0:.0f} µs CPU/request, p50 {fmt_us(res.p50_us)}",
                      file=sys.stderr, flush=True)
        rss = proc.rss_kib()
        proc.stop()
        print(report(rows, args, rss))
        miss, hit, decode, rsa_us = pinned(jwt_costs, jwks, key)
        jwt_check, key_check = pinned(credential_costs, jwks, key)
        one, spread, take = pinned(limiter_costs)
        mem = memory_bounds(key, jwks)
        print(f"""
In process, on CPU {PROXY_CPU}, best of {REPEAT} runs:

* JwtValidator.verify, cache miss (RS256, 2048-bit key: the signature and the claims
  checked, the answer cached): {miss:.1f} µs, of which jwt.decode {decode:.1f} µs, of which
  the RSA signature check {rsa_us:.1f} µs; cache hit: {hit:.2f} µs
* credential check per request (Guard.passage + Guard.known: a credential already
  accepted, its identity and forwarding kept): {jwt_check:.2f} µs for a cached JWT,
  {key_check:.2f} µs for an API key
* rate limiter per request (Guard.passage + Guard.limit: the key, the token, the
  RateLimit-* fields): {one:.2f} µs with one client, {spread:.2f} µs with clients spread
  over a full table (the least recently used evicted); RateLimiter.take alone: {take:.2f} µs
* memory per endpoint, full (tracemalloc): limiter, 65,536 buckets: {mem['limiter']:.1f} MiB
  with IPv6 address keys, {mem['limiter_worst']:.1f} MiB with 256-character header values;
  token cache, 4,096 tokens: {mem['cache']:.1f} MiB with the bench's ({mem['token']:.0f}
  characters), {mem['cache_worst']:.1f} MiB with tokens of {mem['token_worst']:.0f}
  characters (the longest accepted: 8,192)""")
        failed = [r.label for r in rows if any(x.errors or x.non2xx for x in r.results)]
        for label in failed:
            print(f"ERRORS: {label}", file=sys.stderr)
        return 1 if failed else 0
    finally:
        bench.cleanup()


def report(rows: list[AuthRow], args: argparse.Namespace, rss_kib: int) -> str:
    none = rows[0]
    rps0 = statistics.median(r.rps for r in none.results)
    cpu0 = statistics.median(r.cpu_us or 0.0 for r in none.results)
    lines = [
        f"orchd ({compiled(ROOT)}), 1 core, body {SIZE_LABEL[BODY]}, access log off, "
        f"wrk -c{args.connections}, {args.rounds} interleaved rounds of {args.duration:g} s, "
        f"medians; load average {loadavg()}; orchd RSS at the end {rss_kib / 1024:.0f} MiB",
        "",
        "| endpoint checks | req/s | vs none | CPU per request | added CPU | p50 | p99 "
        "| errors / non-2xx |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        rps = statistics.median(r.rps for r in row.results)
        cpu = statistics.median(r.cpu_us or 0.0 for r in row.results)
        bad = sum(r.errors for r in row.results), sum(r.non2xx for r in row.results)
        lines.append(
            f"| {row.label} | {rps:,.0f} | {rps / rps0:.2f} | {cpu:.1f} µs | "
            f"{'-' if row is none else f'{cpu - cpu0:+.1f} µs'} "
            f"| {fmt_us(statistics.median(r.p50_us for r in row.results))} "
            f"| {fmt_us(statistics.median(r.p99_us for r in row.results))} "
            f"| {bad[0]} / {bad[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="one short round and the in-process figures: a smoke check")
    p.add_argument("--rounds", type=int, default=5,
                   help="interleaved rounds (5: the rows' ratios are the point)")
    p.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=64)
    args = p.parse_args()
    sys.path.insert(1, str(ROOT))  # the in-process figures: this tree's orchd
    if args.quick:
        args.rounds, args.duration = 1, 2
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing: run `make bench-deps` (as root)")
    sys.exit(run(args))


if __name__ == "__main__":
    main()
