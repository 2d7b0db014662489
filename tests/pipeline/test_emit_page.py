"""The emitter's one-format page message (`Emitter._page`, the hot path of hits no rule matched)
is byte for byte what the general assembly (`Emitter._assemble`: `message_bytes`, `_context`) gives,
for every kind of attribution: named, device, derived, contested, with and without hashed ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config.load import load_config
from agent.identity.memory_store import MemoryIdentityStore
from agent.identity.resolver import Attribution, Resolver
from agent.parse import build_parser
from agent.pipeline.emit import Emitter
from agent.pipeline.prepare import Preparer
from agent.pipeline.stats import PipelineStats
from agent.records import FileRef
from tests.helpers import access_line, make_config

ATTRIBUTIONS = [
    Attribution("dev1abc", "ann@x.com", "named", False),
    Attribution(None, "ann@x.com", "named", False),
    Attribution("dev1abc~2", None, "device", True),
    Attribution("d-0123456789", None, "derived", False),
    Attribution(None, None, "none", False),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("hash_named", [False, "sha256"])
def test_page_message_matches_the_general_assembly(tmp_path: Path, hash_named: bool | str) -> None:
    """For each attribution (and hashed or plain userIds), the fast page bytes equal the
    general path's; consecutive hits reuse the encoded timestamp without changing the bytes."""
    log = tmp_path / "access.log"
    log.write_text(access_line(1))
    line = access_line(1).rstrip("\n")
    config = load_config(
        str(make_config(tmp_path, paths=[str(log)], extra={"privacy": {"hash_named": hash_named}}))
    )
    preparer = Preparer(config, b"secret")
    p = preparer.prepare(
        FileRef(1, "web", str(log), "0" * 64),
        0,
        len(line) + 1,
        line.encode(),
        build_parser(config.sources[0])(line),
    )
    assert p is not None and p.is_page and p.page is not None and p.page_id is not None
    emitter = Emitter(
        config, preparer, Resolver(MemoryIdentityStore()), b"secret", PipelineStats(), {}
    )
    for attribution in ATTRIBUTIONS * 2:
        emitter._assemble(p, attribution, [], [])  # the general path, rules or not
        assert emitter._page(p, attribution) == emitter.chunk.messages[-1]
