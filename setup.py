"""Build hook: orchd's request path compiled with mypyc.

``orchd/front.py``, ``orchd/proxy.py`` and ``orchd/upstream.py`` are plain, fully typed
Python; compiled to C extensions by mypyc they take less CPU per proxied request (see
docs/performance.md). Without a C compiler, or with ``ORCHD_PURE=1``, they install as Python
modules: the same behaviour, slower. Everything else is in pyproject.toml.
"""

import os

from setuptools import setup

COMPILED = ["orchd/front.py", "orchd/proxy.py", "orchd/upstream.py"]


def _extensions() -> list:
    if os.environ.get("ORCHD_PURE"):
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        return []
    extensions = mypycify(COMPILED, opt_level="3", group_name="orchd._compiled")
    for ext in extensions:
        ext.optional = True  # a failed compile leaves the Python modules in place
    return extensions


setup(ext_modules=_extensions())
