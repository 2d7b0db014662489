"""Which of trackd's hot modules run compiled, and which as Python.

A regular install (`pip install .` with mypy present, see setup.py) compiles the modules below
with mypyc; an editable install, `TRACKD_PURE=1`, or a machine without mypy or a C compiler gets
the same modules as Python. Both run the same source, so output is byte-identical (CI checks
that with `bench/equivalence.py` and the pipeline, parse and identity tests on both).

This module imports nothing from trackd and looks nothing up when loaded: setup.py reads
`MODULES` from it before trackd is importable.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

#: The modules the per-line path runs through (read, parse, prepare, resolve, encode).
#: Left out on purpose: `agent.identity.lru` (mypyc cannot compile an OrderedDict subclass) and
#: `agent.parse.layout` (config-time only; its FormatError is subclassed by Python modules).
MODULES: tuple[str, ...] = (
    "agent.events.messages",
    "agent.events.msgid",
    "agent.events.pageviews",
    "agent.events.urls",
    "agent.identity.clientip",
    "agent.identity.derived",
    "agent.identity.normalize",
    "agent.identity.resolver",
    "agent.parse.cookies",
    "agent.parse.fields",
    "agent.parse.request",
    "agent.parse.timefmt",
    "agent.pipeline.blocks",
    "agent.pipeline.emit",
    "agent.pipeline.prepare",
)


def compiled_modules() -> list[str]:
    """The modules of `MODULES` this installation loads from a compiled extension."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    out: list[str] = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            out.append(name)
    return out


def is_compiled() -> bool:
    """Whether any of `MODULES` loads from a compiled extension here."""
    return bool(compiled_modules())


def build() -> str:
    """`compiled (mypyc, 15 of 15 hot modules)`, or `pure Python`."""
    done = compiled_modules()
    if not done:
        return "pure Python"
    return f"compiled (mypyc, {len(done)} of {len(MODULES)} hot modules)"


def kernel_switched_off() -> bool:
    """`TRACKD_KERNEL=0`: every line the pure-Python way (agent/pipeline/kernel.py asks too)."""
    return os.environ.get("TRACKD_KERNEL", "").strip() == "0"


def kernel() -> str:
    """Whether the native block kernel (agent/_kernel.c, agent/pipeline/kernel.py) runs."""
    if kernel_switched_off():
        return "native block kernel off (TRACKD_KERNEL=0)"
    if importlib.util.find_spec("agent._kernel") is None:
        return "no native block kernel"
    return "native block kernel"


def describe() -> str:
    """The build and the kernel, for `trackd --version`: `pure Python, native block kernel`."""
    return f"{build()}, {kernel()}"
