"""The pure stage (`Preparer`): what it decides per hit, seen through `run --once`'s output."""

from __future__ import annotations

from pathlib import Path

import orjson

from agent.config.load import load_config
from agent.parse import build_parser
from agent.pipeline.prepare import Preparer
from agent.records import FileRef
from tests.helpers import access_line, make_config, read_messages, run_trackd

BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


class TestBots:
    def test_rules_see_bot_hits_page_views_do_not(self, tmp_path: Path) -> None:
        """SPEC §3.2 applies the bot filter to page views only: a `POST /signup` from a crawler's
        agent still matches its rule (a track), while the crawler's GET is no page view."""
        log = tmp_path / "access.log"
        log.write_text(
            access_line(1, ua=BOT).replace("/p/1", "/signup")
            + access_line(2, ua=BOT, method="POST").replace("/p/2", "/signup")
        )
        rules = [
            {
                "name": "signup",
                "source": "web",
                "match": {"method": "POST", "path": "/signup"},
                "event": "Signed Up",
            }
        ]
        cfg = make_config(tmp_path, paths=[str(log)], extra={"events": {"rules": rules}})
        proc = run_trackd("run", "--once", "-c", str(cfg))
        assert proc.returncode == 0, proc.stderr
        got = [
            (m["type"], m.get("event"), m["context"]["source"]["offset"])
            for m in read_messages(tmp_path / "out.jsonl")
        ]
        second = len(access_line(1, ua=BOT).replace("/p/1", "/signup"))
        assert got == [("track", "Signed Up", second)]


class TestReload:
    def test_a_new_base_url_reaches_the_encoded_page(self, tmp_path: Path) -> None:
        """SIGHUP with a source's `base_url` changed: the next hit's page URL uses the new
        one, not a page encoding cached under the old one."""
        log = tmp_path / "access.log"
        log.write_text(access_line(1))
        line = access_line(1).rstrip("\n")
        config = load_config(str(make_config(tmp_path, paths=[str(log)])))
        old = config.sources[0].model_copy(update={"base_url": "https://old.example"})
        new = config.sources[0].model_copy(update={"base_url": "https://new.example"})
        config = config.model_copy(update={"sources": (old,)})
        preparer = Preparer(config, b"secret")
        rec = build_parser(old)(line)
        ref = FileRef(1, "web", str(log), "0" * 64)

        def url() -> str:
            p = preparer.prepare(ref, 0, len(line) + 1, line.encode(), rec)
            assert p is not None and p.page is not None
            return str(orjson.loads(p.page)["url"])

        assert url() == "https://old.example/p/1"
        preparer.reload_sources((new,))
        assert url() == "https://new.example/p/1"
