"""Build hook: trackd's hot modules compiled with mypyc where it can, pure Python otherwise.

Everything else about the package is in pyproject.toml. The compiled build is optional, like
PyYAML's libyaml: a regular install from an environment that has mypy and trackd's dependencies
(`pip install --no-build-isolation .`) compiles `agent.native.MODULES`; an editable install
(`make install`: a compiled module would hide edits to its .py), `TRACKD_PURE=1`, or a build
without mypy or a C compiler installs them as Python and says why. `trackd --version` tells
which one runs.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _say(text: str) -> None:
    print(f"trackd build: {text}", file=sys.stderr)


class OptionalMypyc(build_ext):
    """Compile `agent.native.MODULES` when it can; otherwise leave them as Python."""

    def finalize_options(self) -> None:
        self._pure = self._why_pure()
        if not self._pure:
            modules: list[str] = runpy.run_path(str(HERE / "agent" / "native.py"))["MODULES"]
            self._count = len(modules)
            paths = [str(Path(*m.split(".")).with_suffix(".py")) for m in modules]
            cwd = os.getcwd()
            os.chdir(HERE)  # mypycify takes paths relative to the project, writes build/ there
            try:
                from mypyc.build import mypycify

                self.distribution.ext_modules = mypycify(paths, opt_level="3", group_name="trackd")
            except (Exception, SystemExit) as exc:  # noqa: BLE001 (mypy exits on a type error)
                self._pure = f"mypyc could not translate them: {exc}"
            finally:
                os.chdir(cwd)
        super().finalize_options()

    def run(self) -> None:
        if self._pure:
            _say(f"the hot modules stay pure Python ({self._pure})")
            return
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 (no C compiler or headers: pure Python still works)
            for out in self.get_outputs():
                Path(out).unlink(missing_ok=True)
            _say(f"compiling failed ({exc}); the hot modules stay pure Python")
            return
        _say(f"compiled the {self._count} hot modules with mypyc")

    def _why_pure(self) -> str:
        if os.environ.get("TRACKD_PURE"):
            return "TRACKD_PURE is set"
        if getattr(self, "editable_mode", False):
            return "an editable install: a compiled module would hide edits to its .py"
        try:
            import mypyc.build  # noqa: F401
        except ImportError:
            return "mypy is not installed where the build runs: see README, 'Compiled build'"
        return ""


class _AlwaysBuildExt(Distribution):
    """Run build_ext on every build: it decides then whether there is anything to compile."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_ext": OptionalMypyc}, distclass=_AlwaysBuildExt)
