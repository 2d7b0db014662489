"""`trackd run` as a daemon: tails appended lines, drains on SIGTERM and exits 0."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import (
    access_line,
    committed_length,
    free_port,
    http_get,
    make_config,
    page_seqs,
    read_messages,
    running_daemon,
    trackd_cmd,
    wait_for_seqs,
    wait_until,
    write_access_log,
)
from tests.sources.tailing import Agent, assert_exactly_once


def test_daemon_tails_appends_and_drains_on_sigterm(tmp_path: Path) -> None:
    """Lines appended while running are delivered; SIGTERM exits 0 with nothing lost."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 10)
    cfg = make_config(tmp_path, paths=[str(log)])
    proc = subprocess.Popen(
        trackd_cmd("run", "-c", str(cfg)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_for_seqs(tmp_path / "out.jsonl", 10, 20) == list(range(10))
        write_access_log(log, 10, 15)
        assert wait_for_seqs(tmp_path / "out.jsonl", 25, 20) == list(range(25))
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert '"event":"drained"' in stderr


def test_file_appearing_later_is_read_from_its_start(tmp_path: Path) -> None:
    """A file matching the glob after the first start is read from offset 0 (start_at: end
    applies only to files present at the very first start)."""
    cfg = make_config(tmp_path, paths=[str(tmp_path / "logs" / "*.log")], extra={"start_at": "end"})
    (tmp_path / "logs").mkdir()
    with running_daemon(cfg, tmp_path) as daemon:
        write_access_log(tmp_path / "logs" / "new.log", 0, 7)
        assert wait_for_seqs(tmp_path / "out.jsonl", 7, 20) == list(range(7))
        daemon.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in daemon.notify.wait_for("STOPPING=1", 20)
        assert daemon.proc.wait(timeout=30) == 0


def test_metrics_endpoint_exports_every_metric_from_start(tmp_path: Path) -> None:
    """/metrics lists the SPEC's metrics (labelled ones initialised to 0) and counts lines;
    /healthz answers 200."""
    port = free_port()
    log = tmp_path / "access.log"
    write_access_log(log, 0, 12)
    cfg = make_config(
        tmp_path, paths=[str(log)], extra={"metrics": {"listen": f"127.0.0.1:{port}"}}
    )
    with running_daemon(cfg, tmp_path) as daemon:
        assert wait_for_seqs(tmp_path / "out.jsonl", 12, 20) == list(range(12))
        status, body = http_get(port, "/metrics")
        assert status == 200
        assert http_get(port, "/healthz")[0] == 200
        assert daemon.stop() == 0
    for name in (
        "trackd_lines_total",
        "trackd_lines_skipped_total",
        "trackd_messages_total",
        "trackd_sent_total",
        "trackd_send_failures_total",
        "trackd_outbox_messages",
        "trackd_outbox_oldest_seconds",
        "trackd_identities",
        "trackd_aliases_total",
        "trackd_identity_conflicts_total",
        "trackd_dead_letters_total",
        "trackd_truncation_gap_lines_total",
        "trackd_identity_junk_total",
        "trackd_km_collapsed_total",
        "trackd_identity_degraded_total",
        "trackd_dropped_total",
    ):
        assert f"\n{name}" in body, name
    assert 'trackd_lines_total{source="web"} 12.0' in body
    assert 'trackd_lines_skipped_total{reason="future",source="web"} 0.0' in body
    assert 'trackd_messages_total{type="page"} 12.0' in body
    assert 'trackd_dropped_total{reason="rotated_hold"} 0.0' in body


def test_watchdog_pings_while_the_pipeline_steps(tmp_path: Path) -> None:
    """With WATCHDOG_USEC set, an idle daemon keeps sending WATCHDOG=1."""
    cfg = make_config(tmp_path, paths=[str(tmp_path / "none.log")])
    with running_daemon(cfg, tmp_path, env={"WATCHDOG_USEC": "1000000"}) as daemon:
        assert "WATCHDOG=1" in daemon.notify.wait_for("WATCHDOG=1", 5)
        assert "WATCHDOG=1" in daemon.notify.wait_for("WATCHDOG=1", 5)  # and again, 0.5 s on
        assert daemon.stop() == 0


@pytest.mark.timeout(120)
def test_sigterm_with_a_backlog_commits_and_exits_then_the_rest_follows(tmp_path: Path) -> None:
    """S29: SIGTERM while a 300k-line backlog is being read: exit 0 within shutdown_timeout with
    the backlog unfinished; what was delivered is the file's head, each line once, and committed;
    the next start delivers the rest exactly once."""
    log = tmp_path / "access.log"
    write_access_log(log, 0, 10)
    total = 10 + 300_000
    backlog = memoryview("".join(access_line(seq) for seq in range(10, total)).encode())
    agent = Agent(tmp_path, [str(log)], {"shutdown_timeout": "20s"}).start()
    try:
        agent.wait_seqs(10)  # tailing the file
        # The backlog (60 MB) lands in one write() and SIGTERM follows it at once: no machine
        # reads and delivers 300k lines between the two, so SIGTERM always finds work left.
        fd = os.open(log, os.O_WRONLY | os.O_APPEND)
        try:
            while backlog:
                backlog = backlog[os.write(fd, backlog) :]
        finally:
            os.close(fd)
        started = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - started < 20, "not stopped within shutdown_timeout"
        assert '"event":"drained"' in agent.stderr()
        first = agent.seqs()
        assert len(first) < total, "SIGTERM did not stop the reading"
        assert first == list(range(len(first))), "the delivered part is not the file's head"
        assert committed_length(agent.state, agent.out) == agent.out.stat().st_size
        agent.start()
        assert_exactly_once(agent.wait_seqs(total, timeout=90), range(total))
    finally:
        agent.close()


@pytest.mark.timeout(90)
def test_sighup_adds_and_removes_globs_without_touching_other_files(tmp_path: Path) -> None:
    """S30: SIGHUP with a glob removed and one added: the files of the removed glob are closed
    (positions kept), the new glob's files are read from 0, a file matched before and after is
    neither reopened nor re-read; the sink file is reopened (moved away by its own rotation); an
    invalid config is logged and the running one kept."""
    dirs = {name: tmp_path / name for name in ("a", "b", "c")}
    for i, d in enumerate(dirs.values()):
        d.mkdir()
        write_access_log(d / "x.log", i * 1000, 100)
    agent = Agent(tmp_path, [str(dirs["a"] / "*.log"), str(dirs["b"] / "*.log")]).start()
    try:
        agent.wait_seqs(200)
        cfg = yaml.safe_load(agent.cfg.read_text())
        cfg["sources"][0]["paths"] = [str(dirs["b"] / "*.log"), str(dirs["c"] / "*.log")]
        agent.cfg.write_text(yaml.safe_dump(cfg))
        os.replace(agent.out, tmp_path / "out.jsonl.1")
        agent.hup()
        wait_until(lambda: '"event":"config_reloaded"' in agent.stderr(), 10, "the reload")
        write_access_log(dirs["a"] / "x.log", 100, 10)  # no longer watched
        write_access_log(dirs["b"] / "x.log", 1100, 10)
        agent.wait_seqs(110)  # c's 100 lines from 0, then b's 10 new ones
        agent.cfg.write_text("sources: [ {name: web, kind: nope} ]\n")
        agent.hup()
        wait_until(lambda: '"event":"reload_failed"' in agent.stderr(), 10, "the rejection")
        write_access_log(dirs["b"] / "x.log", 1110, 5)
        seqs = page_seqs(read_messages(tmp_path / "out.jsonl.1")) + agent.wait_seqs(115)
        expected = {*range(100), *range(1000, 1115), *range(2000, 2100)}
        assert_exactly_once(seqs, expected)
        log_text = agent.stderr()
        assert log_text.count(f'"path":"{dirs["b"] / "x.log"}"') == 1  # opened once, never again
        assert '"event":"file_unwatched"' in log_text
        assert '"event":"sink_reopened"' in log_text
        assert agent.stop() == 0
    finally:
        agent.close()
