"""Build hook: trackd's native block kernel and its hot modules compiled with mypyc where it
can, pure Python otherwise.

Everything else about the package is in pyproject.toml. Both are optional, like PyYAML's libyaml:

- the native block kernel (`agent/_kernel.c`, see agent/pipeline/kernel.py) is built by every
  install that has a C compiler and the Python headers, editable ones too (it hides no .py);
  when it cannot compile, the install goes on without it and says so;
- a regular install from an environment that has mypy and trackd's dependencies
  (`pip install --no-build-isolation .`) also compiles `agent.native.MODULES` with mypyc; an
  editable install (`make install`: a compiled module would hide edits to its .py) or a build
  without mypy installs them as Python and says why.

`TRACKD_PURE=1` builds neither. `trackd --version` tells what runs.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _say(text: str) -> None:
    print(f"trackd build: {text}", file=sys.stderr)


KERNEL = Extension("agent._kernel", ["agent/_kernel.c"], extra_compile_args=["-O3"])


class OptionalMypyc(build_ext):
    """Build the native kernel and compile `agent.native.MODULES` when it can; otherwise leave
    them out (the kernel) or as Python (the modules)."""

    def finalize_options(self) -> None:
        self._pure = self._why_pure()
        self._kernel = not os.environ.get("TRACKD_PURE")
        self.distribution.ext_modules = []
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
        if self._kernel:
            self.distribution.ext_modules.append(KERNEL)
        self.extensions = self.distribution.ext_modules
        super().finalize_options()

    def run(self) -> None:
        if self._kernel:
            self._build_kernel()
        if self._pure:
            _say(f"the hot modules stay pure Python ({self._pure})")
            return
        self.extensions = [e for e in self.extensions if e is not KERNEL]
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 (no C compiler or headers: pure Python still works)
            for out in self.get_outputs():
                if not Path(out).name.startswith("_kernel."):
                    Path(out).unlink(missing_ok=True)
            _say(f"compiling failed ({exc}); the hot modules stay pure Python")
            return
        _say(f"compiled the {self._count} hot modules with mypyc")

    def _build_kernel(self) -> None:
        # build_ext.run replaces `compiler` (a name) with the compiler object it made: the
        # mypyc run after this one must start from the name again.
        saved, compiler = self.extensions, self.compiler
        self.extensions = [KERNEL]
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 (no C compiler or headers: pure Python still works)
            _say(f"the native block kernel could not be built ({exc}); the pure path does its work")
        else:
            _say("built the native block kernel (agent/_kernel.c)")
        finally:
            self.extensions, self.compiler = saved, compiler

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
