"""systemd/install.sh, the service install of the README (issue 13), run for real in a temporary
root: `--root DIR` puts every path, the user database and the enabled unit under DIR, so nothing of
the machine running the tests changes. The example config is checked as the service sees it."""

from __future__ import annotations

import glob
import hashlib
import os
import pty
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers import run_trackd

SRC = Path(__file__).resolve().parents[1]
SCRIPT = SRC / "systemd" / "install.sh"
EXAMPLE = SRC / "config" / "trackd.example.yaml"
UNIT = SRC / "systemd" / "trackd.service"
KEY = "km-test-key-5f0c2a9e"
CRED = "etc/trackd/credentials/api_key"
CONFIG = "etc/trackd/trackd.yaml"
UNIT_DST = "etc/systemd/system/trackd.service"
WANTS = "etc/systemd/system/multi-user.target.wants/trackd.service"
#: A full install builds the venv and pip-installs the checkout: ~15-25 s on the team's machines.
INSTALL_TIMEOUT = 300

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("systemctl") is None,
    reason="installing (useradd --root, chown, systemctl --root) needs root and the shadow and "
    "systemd tools (CI runs as root on Debian 12)",
)


def _env() -> dict[str, str]:
    """The caller's environment without what would leak into the install or its `trackd check`."""
    drop = {"CREDENTIALS_DIRECTORY", "TRACKD_CONFIG", "NOTIFY_SOCKET", "PYTHONPATH"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def make_root(base: Path) -> Path:
    """A target system's skeleton: the user database (root and adm) that `useradd --root` edits,
    and systemd's own units that `systemd-analyze verify --root` resolves dependencies against."""
    root = base / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\nadm:x:4:\n")
    for name, text in {
        "shadow": "root:*:19000:0:99999:7:::\n",
        "gshadow": "root:*::\nadm:*::\n",
    }.items():
        (root / "etc" / name).write_text(text)
        (root / "etc" / name).chmod(0o600)
    system_units = Path("/usr/lib/systemd/system")
    if system_units.is_dir():
        shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    return root


def key_file(base: Path, text: str = KEY + "\n") -> Path:
    path = base / "km.key"
    path.write_text(text)
    path.chmod(0o600)
    return path


def install(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = INSTALL_TIMEOUT,
    script: Path = SCRIPT,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the script as a user would (bash, no terminal on stdin), its output captured."""
    return subprocess.run(
        [*prefix, "bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else _env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def dry_run(
    base: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`--dry-run` into a fresh root under `base`, with a key file: the plan for a clean system."""
    root = make_root(base)
    return install(
        "--dry-run", "--root", str(root), "--api-key-file", str(key_file(base)), *extra, env=env
    )


class _Reader(threading.Thread):
    """Collects what a file descriptor yields until EOF (or EIO: a terminal whose other side closed),
    and sets `seen` once `needle` has appeared."""

    def __init__(self, fd: int, needle: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.fd, self.needle, self.data, self.seen = fd, needle, bytearray(), threading.Event()

    def run(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            self.data += chunk
            if self.needle and self.needle in self.data:
                self.seen.set()
        self.seen.set()


def install_typing_the_key(*args: str, key: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run the script on a terminal (a pty as stdin), typing `key` at its prompt as a user would.
    Returns the result and what the terminal showed (where an echoed key would appear)."""
    master, slave = pty.openpty()
    with subprocess.Popen(
        ["bash", str(SCRIPT), *args],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        os.close(slave)
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _Reader(proc.stdout.fileno()), _Reader(proc.stderr.fileno(), b"(input hidden): ")
        terminal = _Reader(master)
        for reader in (out, err, terminal):
            reader.start()
        try:
            assert err.seen.wait(60) and b"(input hidden): " in err.data, bytes(out.data + err.data)
            os.write(master, key.encode() + b"\n")
            returncode = proc.wait(INSTALL_TIMEOUT)
            for reader in (out, err, terminal):
                reader.join(60)
        finally:
            proc.kill()
            os.close(master)
    result = subprocess.CompletedProcess(
        proc.args, returncode, out.data.decode(), err.data.decode()
    )
    return result, terminal.data.decode(errors="replace")


def snapshot(top: Path) -> dict[str, tuple[object, ...]]:
    """Every path under `top` with its type, mode, owner, size, mtime and content hash."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            digest: object = None
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                digest = os.readlink(path)
            out[str(path.relative_to(top))] = (
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_mtime_ns,
                digest,
            )
    return out


def group_members(root: Path, group: str) -> list[str] | None:
    for line in (root / "etc/group").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == group:
            return [m for m in fields[3].split(",") if m]
    return None


def passwd_entry(root: Path, user: str) -> list[str] | None:
    for line in (root / "etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == user:
            return fields
    return None


def headings(out: str) -> list[str]:
    return re.findall(r"^==> \d+\. (.*)$", out, re.M)


def commands(out: str) -> list[str]:
    return re.findall(r"^    \+ (.*)$", out, re.M)


def world_readable_copy() -> Path:
    """The script and the checkout files it looks for, where any user can read them (the
    checkout itself may sit under a directory only its owner can enter)."""
    base = Path(tempfile.mkdtemp(prefix="trackd-install-"))
    for rel in (
        "systemd/install.sh",
        "systemd/trackd.service",
        "config/trackd.example.yaml",
        "pyproject.toml",
        "setup.py",
        "README.md",
        "agent/cli.py",
    ):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SRC / rel, base / rel)
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return base


AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="dropping to nobody needs root and setpriv",
)


# ---- the script itself ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_script_is_shellcheck_clean() -> None:
    """`shellcheck` finds nothing in systemd/install.sh."""
    proc = subprocess.run(
        ["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unknown_option_is_a_usage_error() -> None:
    """A mistyped option exits 2 and names it, before anything else happens."""
    proc = install("--dry-rnu")
    assert proc.returncode == 2
    assert "unknown option '--dry-rnu'" in proc.stderr


# ---- --dry-run ----------------------------------------------------------------------------------


def test_dry_run_lists_every_step_with_its_command(tmp_path: Path) -> None:
    """--dry-run prints each step in order with the exact command it would run: user, venv and
    pip install, config, credential, check, unit, enable."""
    root = make_root(tmp_path)
    proc = install("--dry-run", "--root", str(root), "--api-key-file", str(key_file(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = headings(proc.stdout)
    assert [s.split(" ")[0:2] for s in steps] == [
        ["the", "system"],
        ["the", "virtualenv"],
        ["the", "config"],
        ["the", "API"],
        ["trackd", "check"],
        ["the", "unit"],
        ["enable", "trackd.service"],
    ]
    cmds = "\n".join(commands(proc.stdout))
    for expected in (
        f"useradd --root {root} --system --user-group --groups adm --home-dir /var/lib/trackd --no-create-home",
        f"-m venv {root}/opt/trackd",
        f"{root}/opt/trackd/bin/python -m pip install",
        f"install -m 0640 -o root -g trackd {EXAMPLE} {root}/{CONFIG}",
        f"install -d -m 0700 -o root -g root {root}/etc/trackd/credentials",
        f"install -m 0600 -o root -g root /dev/stdin {root}/{CRED}",
        f"env CREDENTIALS_DIRECTORY={root}/etc/trackd/credentials {root}/opt/trackd/bin/trackd -c {root}/{CONFIG} check",
        f"install -D -m 0644 {UNIT} {root}/{UNIT_DST}",
        f"systemctl --root={root} enable trackd.service",
    ):
        assert expected in cmds, expected
    assert proc.stdout.rstrip().endswith("dry run: nothing was changed.")


def test_dry_run_changes_nothing_on_disk(tmp_path: Path) -> None:
    """After --dry-run the target root is byte-for-byte as before and no build copy was made."""
    root = make_root(tmp_path)
    keyfile = key_file(tmp_path)
    (tmp_path / "tmp").mkdir()  # where the build copy would go
    before = snapshot(tmp_path)
    env = {**_env(), "TMPDIR": str(tmp_path / "tmp")}
    proc = install("--dry-run", "--root", str(root), "--api-key-file", str(keyfile), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"mktemp -d {tmp_path}/tmp/trackd-build.XXXXXX" in commands(proc.stdout)
    assert snapshot(tmp_path) == before


def test_dry_run_on_this_machine_shows_the_systemctl_steps_and_touches_nothing(
    tmp_path: Path,
) -> None:
    """Without --root, the plan is daemon-reload then enable --now, and /opt, /etc and the user
    database stay as they were."""
    watched = [
        Path("/opt/trackd"),
        Path("/etc/trackd"),
        Path("/" + UNIT_DST),
        Path("/etc/passwd"),
        Path("/etc/group"),
    ]

    def state() -> list[object]:
        return [snapshot(p) if p.is_dir() else (p.exists() and p.read_bytes()) for p in watched]

    before = state()
    proc = install("--dry-run", "--api-key-file", str(key_file(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cmds = commands(proc.stdout)
    assert cmds.index("systemctl daemon-reload") < cmds.index(
        "systemctl enable --now trackd.service"
    )
    assert (
        "useradd --system --user-group --groups adm" in "\n".join(cmds)
        or "exists and is in group adm" in proc.stdout
    )
    assert state() == before


@needs_setpriv
def test_dry_run_works_without_root_and_says_a_real_run_needs_it(tmp_path: Path) -> None:
    """As an unprivileged user --dry-run still prints the whole plan, noting that installing needs root."""
    copy = world_readable_copy()
    try:
        proc = install(
            "--dry-run", "--no-systemctl", script=copy / "systemd/install.sh", prefix=AS_NOBODY
        )
    finally:
        shutil.rmtree(copy)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note: this needs root" in proc.stdout and "sudo" in proc.stdout
    assert len(headings(proc.stdout)) == 7


# ---- refusals: each says what to do, and nothing changes ---------------------------------------


def _assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr
    assert "nothing was changed" in proc.stderr
    assert headings(proc.stdout) == []
    assert "Traceback" not in proc.stderr


@needs_setpriv
def test_install_as_a_normal_user_is_refused(tmp_path: Path) -> None:
    """Without root the install stops before any step, telling to use sudo."""
    copy = world_readable_copy()
    try:
        proc = install("--no-systemctl", script=copy / "systemd/install.sh", prefix=AS_NOBODY)
    finally:
        shutil.rmtree(copy)
    _assert_refused(proc, "error: this needs root", "sudo make install-service")


def _older_python() -> str | None:
    """A real interpreter older than 3.11: pyenv's builds, else one on PATH (not a pyenv shim,
    which fails for a version it has not selected)."""
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3")))
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.[6-9].*/bin/python3")))
    for minor in range(10, 5, -1):
        path = shutil.which(f"python3.{minor}")
        if path and "/shims/" not in path:
            found.append(path)
    return found[0] if found else None


def test_python_older_than_3_11_is_refused(tmp_path: Path) -> None:
    """A real Python 3.10 (or older) is refused, naming its version and how to pass another."""
    old = _older_python()
    if old is None:
        pytest.skip("no Python older than 3.11 on this machine")
    proc = dry_run(tmp_path, "--python", old)
    _assert_refused(
        proc, "trackd needs Python >= 3.11", f"{old} is 3.", "--python /path/to/python3.11"
    )


def test_python_without_venv_module_is_refused(tmp_path: Path) -> None:
    """A Python whose ensurepip cannot be imported (Debian without python3-venv) is refused with
    the package to install."""
    shadow = tmp_path / "shadow"
    (shadow / "ensurepip").mkdir(parents=True)
    (shadow / "ensurepip/__init__.py").write_text(
        "raise ImportError('ensurepip is not available')\n"
    )
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    proc = dry_run(tmp_path, "--python", python, env={**_env(), "PYTHONPATH": str(shadow)})
    _assert_refused(proc, "has no working venv/ensurepip module", "apt-get install python3-venv")


def test_missing_python_is_refused(tmp_path: Path) -> None:
    """--python naming no file is refused, saying so."""
    proc = dry_run(tmp_path, "--python", str(tmp_path / "python3"))
    _assert_refused(proc, f"there is no Python at {tmp_path / 'python3'}")


def test_python_the_service_cannot_see_is_refused(tmp_path: Path) -> None:
    """An interpreter under /root or /home (pyenv, say) is refused: the unit's ProtectHome=yes hides it."""
    base = os.path.realpath(sys.base_prefix)
    if not base.startswith(("/root/", "/home/")):
        pytest.skip(f"the test interpreter's base {base} is not under /root or /home")
    proc = dry_run(tmp_path, "--python", sys.executable)
    _assert_refused(
        proc, "which the service cannot see", "ProtectHome=yes", "--python /usr/bin/python3"
    )


def test_empty_api_key_file_is_refused(tmp_path: Path) -> None:
    """An --api-key-file with nothing in it is refused before anything is installed."""
    root = make_root(tmp_path)
    proc = install(
        "--dry-run", "--root", str(root), "--api-key-file", str(key_file(tmp_path, "\n"))
    )
    _assert_refused(proc, "is empty: put the Kissmetrics API key in it")


@needs_root
def test_no_api_key_and_no_terminal_is_refused(tmp_path: Path) -> None:
    """With no credential yet, no --api-key-file and no terminal to ask on, the install stops at
    once, pointing to --api-key-file, and leaves the root as it was."""
    root = make_root(tmp_path)
    before = snapshot(root)
    proc = install("--root", str(root), "--no-systemctl")
    _assert_refused(proc, "no terminal to ask for the API key on: pass --api-key-file FILE")
    assert snapshot(root) == before


def test_uninstall_leaves_an_opt_trackd_it_did_not_make(tmp_path: Path) -> None:
    """--uninstall never deletes a /opt/trackd that is not a virtualenv; it says so and exits 1."""
    root = make_root(tmp_path)
    (root / "opt/trackd").mkdir(parents=True)
    (root / "opt/trackd/data").write_text("someone's\n")
    proc = install("--uninstall", "--root", str(root), "--no-systemctl")
    assert proc.returncode == 1
    assert "is not a virtualenv (no pyvenv.cfg)" in proc.stderr
    assert (root / "opt/trackd/data").read_text() == "someone's\n"


# ---- a real install into a temporary root -------------------------------------------------------


@dataclass(frozen=True)
class Installed:
    root: Path
    proc: subprocess.CompletedProcess[str]
    terminal: str


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """One full install (user, venv, pip install of this checkout, config, key typed at the
    prompt, check, unit, systemctl --root enable) into a fresh root; the tests below inspect it."""
    base = tmp_path_factory.mktemp("install")
    root = make_root(base)
    proc, terminal = install_typing_the_key("--root", str(root), key=KEY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield Installed(root, proc, terminal)


def installed_version(installed: Installed) -> subprocess.CompletedProcess[str]:
    """`trackd --version` of the installed venv."""
    return subprocess.run(
        [str(installed.root / "opt/trackd/bin/trackd"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_install_builds_a_working_venv(installed: Installed) -> None:
    """/opt/trackd is a virtualenv whose trackd runs, with the README the unit's Documentation= names."""
    proc = installed_version(installed)
    assert proc.returncode == 0 and proc.stdout.startswith("trackd "), proc.stdout + proc.stderr
    assert (installed.root / "opt/trackd/README.md").read_bytes() == (
        SRC / "README.md"
    ).read_bytes()


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
@pytest.mark.skipif(
    shutil.which("gcc") is None or not Path(sysconfig.get_paths()["include"], "Python.h").exists(),
    reason="no C compiler or Python headers here: the install goes on without the kernel",
)
def test_install_builds_the_native_kernel_where_it_can(installed: Installed) -> None:
    """With gcc and the Python headers the installed trackd runs the native block kernel: the
    build copy has setup.py, and no extension copied from the checkout stands in for it (the
    build's own is the venv's)."""
    proc = installed_version(installed)
    assert proc.stdout.strip().endswith(", native block kernel)"), proc.stdout + proc.stderr
    site = installed.root / "opt/trackd/lib"
    built = list(site.glob("python3*/site-packages/agent/_kernel.*.so"))
    assert len(built) == 1, built


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_install_copies_the_example_config_readable_by_the_service_only(
    installed: Installed,
) -> None:
    """/etc/trackd/trackd.yaml is the example, 0640 root:trackd."""
    config = installed.root / CONFIG
    assert config.read_bytes() == EXAMPLE.read_bytes()
    st = config.stat()
    trackd = passwd_entry(installed.root, "trackd")
    assert trackd is not None
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, int(trackd[3]))
    assert stat.S_IMODE((installed.root / "etc/trackd").stat().st_mode) == 0o755


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_install_stores_the_key_as_the_root_only_credential_the_unit_loads(
    installed: Installed,
) -> None:
    """The key typed at the prompt lands in the file the unit's LoadCredential=api_key: names,
    0600 root in a 0700 directory, and is neither echoed on the terminal nor printed."""
    unit = (installed.root / UNIT_DST).read_text()
    m = re.search(r"^LoadCredential=api_key:(/\S+)$", unit, re.M)
    assert m is not None and m.group(1) == "/" + CRED
    cred = installed.root / CRED
    assert cred.read_text() == KEY + "\n"
    assert (stat.S_IMODE(cred.stat().st_mode), cred.stat().st_uid) == (0o600, 0)
    assert stat.S_IMODE(cred.parent.stat().st_mode) == 0o700
    assert KEY not in installed.proc.stdout + installed.proc.stderr + installed.terminal


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_install_creates_the_trackd_system_user_in_adm(installed: Installed) -> None:
    """trackd is a system user (uid < 1000) with no login shell, home /var/lib/trackd (not
    created: StateDirectory= makes it), its own group, and a member of adm."""
    entry = passwd_entry(installed.root, "trackd")
    assert entry is not None
    assert int(entry[2]) < 1000
    assert entry[5] == "/var/lib/trackd" and entry[6].endswith("/nologin")
    assert group_members(installed.root, "adm") == ["trackd"]
    assert group_members(installed.root, "trackd") == []
    assert not (installed.root / "var/lib/trackd").exists()


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_install_installs_and_enables_the_unit(installed: Installed) -> None:
    """The unit is the shipped one, and `systemctl --root` enabled it for multi-user.target."""
    assert (installed.root / UNIT_DST).read_bytes() == UNIT.read_bytes()
    assert os.readlink(installed.root / WANTS) == "/" + UNIT_DST


@needs_root
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_installed_unit_passes_systemd_analyze_verify(installed: Installed) -> None:
    """`systemd-analyze verify --root` of the unit as installed: its commands exist, no unknown
    key or bad value (verify reports those as warnings, so any output fails)."""
    proc = subprocess.run(
        ["systemd-analyze", "verify", f"--root={installed.root}", "trackd.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout + proc.stderr == ""


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_installed_config_passes_check_with_the_credential(installed: Installed) -> None:
    """The installed trackd accepts the installed config given the credential directory, as the
    unit's ExecStartPre= check sees it."""
    proc = subprocess.run(
        [
            str(installed.root / "opt/trackd/bin/trackd"),
            "-c",
            str(installed.root / CONFIG),
            "check",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**_env(), "CREDENTIALS_DIRECTORY": str(installed.root / "etc/trackd/credentials")},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sink: kissmetrics" in proc.stdout


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_install_removes_its_build_copy(installed: Installed) -> None:
    """pip builds from a temporary copy of the checkout, which is gone afterwards."""
    m = re.search(r"^    -> (/\S*/trackd-build\.\S+)$", installed.proc.stdout, re.M)
    assert m is not None, installed.proc.stdout
    assert not Path(m.group(1)).exists()


def _copy_root(installed: Installed, base: Path) -> Path:
    root = base / "copy"
    shutil.copytree(installed.root, root, symlinks=True)
    (root / "var/lib/trackd").mkdir(parents=True)
    (root / "var/lib/trackd/state.db").write_text("state\n")
    return root


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_uninstall_keeps_config_key_state_and_user(installed: Installed, tmp_path: Path) -> None:
    """--uninstall disables and removes the unit and the venv; config, key, state and user stay."""
    root = _copy_root(installed, tmp_path)
    proc = install("--uninstall", "--root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (root / UNIT_DST).exists() and not (root / WANTS).is_symlink()
    assert not (root / "opt/trackd").exists()
    assert (root / CONFIG).read_bytes() == EXAMPLE.read_bytes()
    assert (root / CRED).read_text() == KEY + "\n"
    assert (root / "var/lib/trackd/state.db").read_text() == "state\n"
    assert passwd_entry(root, "trackd") is not None


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_uninstall_purge_removes_config_key_state_and_user(
    installed: Installed, tmp_path: Path
) -> None:
    """--uninstall --purge also removes /etc/trackd, /var/lib/trackd, the user and its group."""
    root = _copy_root(installed, tmp_path)
    proc = install("--uninstall", "--purge", "--root", str(root))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (root / "etc/trackd").exists() and not (root / "var/lib/trackd").exists()
    assert not (root / "opt/trackd").exists() and not (root / UNIT_DST).exists()
    assert passwd_entry(root, "trackd") is None
    assert group_members(root, "trackd") is None and group_members(root, "adm") == []


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_reinstall_keeps_the_config_and_key_and_upgrades_the_venv(
    installed: Installed, tmp_path: Path
) -> None:
    """Run again over an install whose config and key were changed (an upgrade): both are kept
    byte for byte, no key is asked for, and the rebuilt venv's trackd runs."""
    root = _copy_root(installed, tmp_path)
    mine = "# mine\nsink: {type: file, path: '-'}\n"
    (root / CONFIG).write_text(mine)
    (root / CRED).write_text("old-key\n")
    proc = install("--root", str(root), "--no-systemctl")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (root / CONFIG).read_text() == mine
    assert (root / CRED).read_text() == "old-key\n"
    assert "exists: kept as it is (never overwritten)" in proc.stdout
    assert "exists: kept (pass --api-key-file FILE to replace it)" in proc.stdout
    version = subprocess.run(
        [str(root / "opt/trackd/bin/trackd"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert version.returncode == 0, version.stdout + version.stderr


@needs_root
@pytest.mark.timeout(INSTALL_TIMEOUT)
def test_config_failing_check_stops_before_the_unit(installed: Installed, tmp_path: Path) -> None:
    """A config that `trackd check` rejects (here one from the old README steps, whose key came
    from ${KM_API_KEY}) ends the run with exit 3 at the check, naming the file and the fix: the
    unit and its enablement are not touched and the config is left as it was."""
    root = _copy_root(installed, tmp_path)
    old = "sink:\n  type: kissmetrics\n  api_key: ${KM_API_KEY}\n"
    (root / CONFIG).write_text(old)
    unit_before = snapshot(root / "etc/systemd")
    proc = install("--root", str(root), "--api-key-file", str(key_file(tmp_path, "km-new-key\n")))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "environment variable KM_API_KEY is not set" in proc.stderr
    assert f"{root / CONFIG} does not pass 'trackd check'" in proc.stderr
    assert "delete that api_key: line, and trackd uses the credential" in proc.stderr
    assert headings(proc.stdout)[-1].startswith("trackd check")
    assert snapshot(root / "etc/systemd") == unit_before
    assert (root / CONFIG).read_text() == old
    assert (root / CRED).read_text() == "km-new-key\n"  # --api-key-file replaces the key


# ---- the example config and the Makefile --------------------------------------------------------


def test_example_config_passes_check_with_the_service_credential(tmp_path: Path) -> None:
    """config/trackd.example.yaml, unedited, passes `trackd check` given the api_key credential
    the unit loads; its sink exists in this version and holds no literal secret."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "api_key").write_text(KEY + "\n")
    proc = run_trackd("-c", str(EXAMPLE), "check", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config OK" in proc.stdout and "sink: kissmetrics" in proc.stdout
    sink = yaml.safe_load(EXAMPLE.read_text())["sink"]
    assert not {"api_key", "write_key", "token"} & set(sink)
    assert KEY not in proc.stdout + proc.stderr


def test_make_install_service_runs_the_script(tmp_path: Path) -> None:
    """`make install-service ARGS=…` is the script: its dry run prints the same plan."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    root = make_root(tmp_path)
    args = f"--dry-run --root {root} --api-key-file {key_file(tmp_path)}"
    proc = subprocess.run(
        ["make", "-s", "-C", str(SRC), "install-service", f"ARGS={args}"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    direct = install(*args.split())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert commands(proc.stdout) == commands(direct.stdout) != []


def test_file_sink_config_ignores_the_installed_api_key_credential(tmp_path: Path) -> None:
    """The api_key credential the unit always loads does not break a config that ships to a file
    (it used to be injected as `sink.api_key`, an unknown key there: `check` exit 3)."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "api_key").write_text(KEY + "\n")
    config = tmp_path / "trackd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nsink: {{type: file, path: '-'}}\n")
    proc = run_trackd("-c", str(config), "check", env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
