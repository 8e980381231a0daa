"""Build hook: orchd's request path compiled with mypyc.

``orchd/front.py``, ``orchd/proxy.py``, ``orchd/upstream.py`` and the modules they call for
every request (``COMPILED``) are plain, fully typed Python; compiled to C extensions by mypyc
they take less CPU per proxied request (see docs/performance.md). mypyc type-checks them
first, so the build must see orchd's dependencies: build without isolation in an environment
that has them (the Makefile and the Dockerfile do). Where it cannot (an isolated build, no C
compiler) or with ``ORCHD_PURE=1``, they install as Python modules: the same behaviour,
slower. Everything else is in pyproject.toml.
"""

import os

from setuptools import setup

COMPILED = ["orchd/front.py", "orchd/http1.py", "orchd/edge_rules.py", "orchd/proxy.py",
            "orchd/upstream.py", "orchd/traffic.py", "orchd/log.py", "orchd/router.py",
            "orchd/balancer.py", "orchd/breaker.py", "orchd/target.py", "orchd/inflight.py",
            "orchd/auth/guard.py", "orchd/auth/gateway.py", "orchd/auth/jwt.py",
            "orchd/auth/ratelimit.py", "orchd/auth/cors.py"]


def _extensions() -> list:
    if os.environ.get("ORCHD_PURE"):
        return []
    try:
        # mypyc type-checks the modules against the dependencies: without them (an
        # isolated build), it would only fail after a minute of work.
        import aiohttp  # noqa: F401
        import httptools  # noqa: F401
        from mypyc.build import mypycify
    except ImportError:
        print("setup.py: mypyc or orchd's dependencies are not importable here: "
              "the request path installs as Python")
        return []
    try:
        extensions = mypycify(COMPILED, opt_level="3", group_name="orchd._compiled")
    except (SystemExit, Exception) as exc:  # mypyc exits on type errors
        print(f"setup.py: not compiling the request path ({exc!r}); it installs as Python")
        return []
    for ext in extensions:
        ext.optional = True  # a failed compile leaves the Python modules in place
    return extensions


setup(ext_modules=_extensions())
