"""`trackd` commands -> exit codes (0 ok, 1 runtime failure, 2 usage error, 3 config/startup).

    trackd [-c CONFIG] COMMAND [--json]      (-c also after the command)

The config is `-c`, else $TRACKD_CONFIG, else /etc/trackd/trackd.yaml. Logs go to stderr; stdout
carries command output (and messages, for the `-` file sink).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import resource
import sys
import traceback
from collections.abc import Callable
from typing import Any

import orjson
import structlog

from agent import __version__
from agent.config import Config, config_path_from, load_config
from agent.config.units import parse_duration
from agent.errors import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RUNTIME,
    EXIT_USAGE,
    ConfigError,
    TrackdError,
)
from agent.ops.logging import setup_logging

EPILOG = """\
exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 invalid config or startup failure.
The config file is -c PATH, else $TRACKD_CONFIG, else /etc/trackd/trackd.yaml.
TRACKD_KERNEL=0 reads every line the pure-Python way, without the native block kernel
(trackd --version says whether it runs).
Docs: README.md; the full contract: SPEC.md."""


class _Version(argparse.Action):
    """`trackd --version`: the version, the build (compiled or pure Python) and whether the
    native block kernel runs, looked up only when asked."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        from agent import native

        print(f"trackd {__version__} ({native.describe()})")
        parser.exit()


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_arg_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        metavar="CONFIG",
        help="config file (default: $TRACKD_CONFIG, else /etc/trackd/trackd.yaml)",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    parser = argparse.ArgumentParser(
        prog="trackd",
        description="Server-side analytics agent: tails access and application logs, resolves "
        "every hit to a person, and ships events to Kissmetrics, a Segment-compatible API or a "
        "file.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    parser.add_argument(
        "--version",
        action=_Version,
        nargs=0,
        help="print the version, whether the hot modules run compiled and whether the native "
        "block kernel runs, then exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "run",
        parents=[common],
        help="run the agent in the foreground (systemd runs this)",
        description="Tail the configured sources and ship events until stopped (SIGTERM/SIGINT "
        "drain and exit 0; SIGHUP reloads). With --once: read every matched file up to its "
        "current size, deliver the outbox, print a one-line summary to stderr and exit. Large "
        "--once reads parse in worker processes (environment: TRACKD_WORKERS=N forces N, 0 none).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="read what is there now, deliver it, exit (0; 1 if a matched file could not be "
        "opened, reading stopped early, or delivery did not finish)",
    )
    p.add_argument(
        "--deliver-timeout",
        type=_duration,
        default=300.0,
        metavar="DURATION",
        help="with --once: how long to keep delivering before giving up (default 5m)",
    )

    p = sub.add_parser(
        "backfill",
        parents=[common],
        help="replay old (rotated, compressed) logs with their original times",
        description="Replay old log files — plain, .gz, .bz2 or .xz (detected by content) — "
        "merged by event time, oldest first, with their original timestamps, through the same "
        "pipeline as `run`; then deliver what was enqueued. Each file goes to the source whose "
        "paths (or their rotated forms: NAME.N, NAME-*, and .gz/.bz2/.xz of those) match it, "
        "else to the single --source given. Resumable after Ctrl-C or kill -9, and idempotent "
        "with what `run` or an earlier backfill already read (files are recognised by content). "
        "A progress bar on a terminal, progress log lines otherwise, a summary at the end. "
        "Without a daemon it takes the state lock and reads itself; while `trackd run` runs, "
        "the job is handed to the daemon through the state database (it reads the files between "
        "its live chunks, as the user it runs as) and this command follows its progress — "
        "Ctrl-C stops following, the job goes on; running the same backfill again follows it. "
        "Large reads parse in worker processes (TRACKD_WORKERS=N).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", metavar="FILE_OR_GLOB", help="files or globs to replay")
    p.add_argument(
        "--source", action="append", default=[], metavar="NAME", help="source for unmatched files"
    )
    p.add_argument("--since", metavar="T", help="skip events before T (ISO 8601, UTC by default)")
    p.add_argument("--until", metavar="T", help="skip events at or after T (ISO 8601)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="parse and resolve in memory, print the summary and a sample of messages; "
        "change no state, send nothing",
    )
    p.add_argument(
        "--deliver-timeout",
        type=_duration,
        default=300.0,
        metavar="DURATION",
        help="how long to keep delivering after reading before giving up (default 5m)",
    )

    p = sub.add_parser(
        "check",
        parents=[common],
        help="validate the config and test-parse sample lines",
        description="Validate the config (every error at once, each with its YAML path and "
        "line), warn about literal secrets and globs matching nothing, and test-parse sample "
        "lines of each source: match rate, the first unparsed lines with reasons, and the fields "
        "of the first parsed line (cookie values masked). Exit 0 when valid, 3 when not.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--sample",
        metavar="FILE",
        help="test-parse this file (plain, .gz, .bz2 or .xz) instead of each source's own files",
    )

    sub.add_parser(
        "status",
        parents=[common],
        help="positions, lag, outbox, deliveries, dead letters, identities",
        description="Show file positions and lag, outbox depth and oldest age, dead letters and "
        "identity counts. Reads the state read-only: works while `run` runs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    p = sub.add_parser(
        "identity",
        parents=[common],
        help="what an identifier resolves to",
        description="The person an identifier resolves to: identifiers, epochs, bindings over "
        "time, aliases sent, conflicts.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("id", metavar="ID", help="a device id (km_ai), named id (km_ni, email) or epoch")

    p = sub.add_parser(
        "deadletters",
        parents=[common],
        help="list, retry or drop messages the endpoint refused",
        description="Messages an HTTP endpoint refused for good (or that kept failing for "
        "sink.retry.max_age) are kept as dead letters with the reason: list them, send them "
        "again (back into the outbox, same messageId), or drop them. Works while `run` runs: "
        "the daemon applies the change within a second or two.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["list", "retry", "drop"], help="what to do")
    p.add_argument(
        "ids", nargs="*", type=int, metavar="ID", help="dead letter ids from `list` (default: all)"
    )
    p.add_argument(
        "--limit", type=int, default=100, metavar="N", help="with list: show at most N (100)"
    )

    p = sub.add_parser(
        "forget",
        parents=[common],
        help="erase an identifier's person (erasure requests)",
        description="Remove an identifier's person — devices, epochs, bindings, sessions, named "
        "ids and the aliases recorded for them — from the identity graph (the state database, "
        "or the shared Redis with identity.store: redis://…, then for every host), and their "
        "undelivered messages and dead letters from the outbox; print what was removed. Their "
        "later hits start as a new person. Works while `run` runs: the daemon applies it "
        "between two chunks. Exit 0 when done (also for an id trackd does not know), 1 when it "
        "could not be done (Redis unreachable, or the daemon did not answer in 30s).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "id",
        metavar="ID",
        help="a device id (km_ai), epoch (D~k) or named id (km_ni, email; matched as intake "
        "normalises it)",
    )
    return parser


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _output(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """A command's result on stdout: JSON with --json, else its text."""
    if as_json:
        _print_json(data)
    else:
        print(render(data))


def _load(args: argparse.Namespace) -> Config:
    return load_config(config_path_from(getattr(args, "config", None)))


def _cmd_check(args: argparse.Namespace, as_json: bool) -> int:
    from agent.commands import check

    try:
        config = load_config(config_path_from(getattr(args, "config", None)), check_files=True)
    except ConfigError as exc:
        if as_json:
            _print_json(
                {
                    "valid": False,
                    "errors": [
                        {"path": i.path, "line": i.line, "file": i.file, "message": i.message}
                        for i in exc.issues
                    ],
                }
            )
        else:
            print(f"config invalid ({len(exc.issues)} problem(s)):", file=sys.stderr)
            for issue in exc.issues:
                print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        reports = check.check_sources(config, args.sample, strict_sample=True)
    except check.SampleError as exc:
        if as_json:
            _print_json({"valid": True, "config": config.config_path, "sample_error": str(exc)})
        print(f"trackd check: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    warnings = check.config_warnings(config, reports)
    if as_json:
        _print_json(
            {
                "valid": True,
                "config": config.config_path,
                "sources": [r.as_dict() for r in reports],
                "warnings": warnings,
            }
        )
    else:
        print(check.render_text(config, reports, warnings))
    return EXIT_OK


def _cmd_status(args: argparse.Namespace, as_json: bool) -> int:
    from agent.commands import status

    data = status.collect(_load(args))
    if as_json:
        _print_json(data)
    else:
        print(status.render_text(data))
    return EXIT_OK


def _cmd_identity(args: argparse.Namespace, as_json: bool) -> int:
    from agent.commands import identity

    data = identity.collect(_load(args), args.id)
    _output(data, as_json, identity.render_text)
    return EXIT_OK if data["known"] else EXIT_RUNTIME


def _cmd_deadletters(args: argparse.Namespace, as_json: bool) -> int:
    from agent.commands import deadletters

    config = _load(args)
    if args.action == "list":
        data = deadletters.listing(config, args.limit)
        if as_json:
            _print_json(data)
        else:
            print(deadletters.render_list(data))
        return EXIT_OK
    result = deadletters.act(config, args.action, list(args.ids) or None)
    if as_json:
        _print_json(result)
    else:
        print(deadletters.render_act(args.action, result))
    return EXIT_OK if result["applied"] else EXIT_RUNTIME


def _cmd_forget(args: argparse.Namespace, as_json: bool) -> int:
    from agent.commands import forget

    result = forget.run(_load(args), args.id)
    _output(result, as_json, forget.render)
    return EXIT_OK if result["applied"] else EXIT_RUNTIME


def _cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    setup_logging(config.log.level, config.log.format)
    from agent import supervisor

    _tune_gc()
    _raise_fd_limit()

    if args.once:
        from agent.pipeline import once

        as_json = bool(getattr(args, "json", False))
        return asyncio.run(once.run_once_config(config, args.deliver_timeout, as_json=as_json))
    if getattr(args, "json", False):
        print(
            "trackd run: --json works with --once only (the daemon writes its log as JSON lines "
            "when stderr is no terminal, or with log.format: json)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return asyncio.run(supervisor.run_daemon(config))


def _cmd_backfill(args: argparse.Namespace) -> int:
    from agent.pipeline import backfill
    from agent.sources.history import UsageError

    config = _load(args)
    setup_logging(config.log.level, config.log.format)
    try:
        opts = backfill.Options(
            patterns=tuple(args.files),
            sources=tuple(args.source),
            since=backfill.parse_time("--since", args.since) if args.since else None,
            until=backfill.parse_time("--until", args.until) if args.until else None,
            dry_run=args.dry_run,
            deliver_timeout=args.deliver_timeout,
            as_json=bool(getattr(args, "json", False)),
        )
        if opts.since is not None and opts.until is not None and opts.since >= opts.until:
            raise UsageError(f"--since {args.since} is not before --until {args.until}")
        _tune_gc()
        _raise_fd_limit()
        return backfill.run_backfill(config, opts)
    except UsageError as exc:
        print(f"trackd backfill: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _tune_gc() -> None:
    """The pipeline allocates many short-lived, acyclic objects per line; collecting them is
    reference counting's job. Fewer cyclic-GC passes (and none over start-up objects) save ~10%
    of run time (bench/run_once.py)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _raise_fd_limit() -> None:
    """Lift the soft descriptor limit to the hard one, as log shippers do: a soft limit of
    1024 (the usual default) is below the files a backfill of hourly logs or a `run --once`
    over many files holds open. The daemon's tailing still caps itself (`default_max_open`)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _not_yet(command: str) -> int:
    print(
        f"trackd {command}: not supported yet by this version of trackd "
        "(see README.md, 'What works today')",
        file=sys.stderr,
    )
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    as_json = bool(getattr(args, "json", False))
    setup_logging("info", "auto")
    log = structlog.get_logger("trackd")
    try:
        if args.command == "check":
            return _cmd_check(args, as_json)
        if args.command == "status":
            return _cmd_status(args, as_json)
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "identity":
            return _cmd_identity(args, as_json)
        if args.command == "deadletters":
            return _cmd_deadletters(args, as_json)
        if args.command == "backfill":
            return _cmd_backfill(args)
        if args.command == "forget":
            return _cmd_forget(args, as_json)
        return _not_yet(args.command)
    except ConfigError as exc:
        print(f"config invalid ({len(exc.issues)} problem(s)):", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_CONFIG
    except TrackdError as exc:
        log.error("fatal", error=str(exc), exit_code=exc.exit_code)
        print(f"trackd: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_RUNTIME
    except BrokenPipeError:
        # The reader of stdout went away (`trackd check --json | head`): nothing to report to.
        _silence_stdout()
        return EXIT_RUNTIME
    except BaseExceptionGroup as group:
        # A task of the supervisor's TaskGroup failed: report our own error plainly.
        first = _first_trackd_error(group)
        if first is None:
            return _unexpected(args, group, _first_leaf(group))
        log.error("fatal", error=str(first), exit_code=first.exit_code)
        print(f"trackd: {first}", file=sys.stderr)
        return first.exit_code
    except Exception as exc:  # noqa: BLE001 - the one top-level handler: any surprise is one line
        return _unexpected(args, exc, exc)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of the closed pipe does not
    raise once more (Python's documented handling of SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    finally:
        os.close(devnull)


def _unexpected(args: argparse.Namespace, raised: BaseException, exc: BaseException) -> int:
    """An error trackd did not foresee: one line on stderr (what failed, where, what to try),
    exit 1; the traceback too when TRACKD_DEBUG=1 or the config says `log.level: debug`."""
    if _debug_wanted(args):
        traceback.print_exception(raised, file=sys.stderr)
    detail = " ".join(str(exc).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    what = type(exc).__name__ + (f": {detail}" if detail else "")
    print(
        f"trackd {args.command}: unexpected error {what}{_where(exc)}; this is a fault trackd "
        "does not handle yet: run it again with TRACKD_DEBUG=1 (or log.level: debug) to see the "
        "traceback, and report it with that output",
        file=sys.stderr,
    )
    return EXIT_RUNTIME


def _debug_wanted(args: argparse.Namespace) -> bool:
    if os.environ.get("TRACKD_DEBUG", "") not in ("", "0"):
        return True
    try:
        return _load(args).log.level == "debug"
    except Exception:  # noqa: BLE001 - the config may be what failed; no traceback then
        return False


def _where(exc: BaseException) -> str:
    """` (at agent/x.py:12 in f)`: the innermost frame of trackd's own code, if any."""
    package = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(package)]
    if not frames:
        return ""
    frame = frames[-1]
    rel = os.path.relpath(frame.filename, os.path.dirname(package))
    return f" (at {rel}:{frame.lineno} in {frame.name})"


def _first_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _first_trackd_error(group: BaseExceptionGroup[BaseException]) -> TrackdError | None:
    for exc in group.exceptions:
        if isinstance(exc, TrackdError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_trackd_error(exc)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    raise SystemExit(main())
