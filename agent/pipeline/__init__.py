"""The pipeline: how a block of lines becomes committed messages.

prepare.py   the pure stage: a parsed record -> `Prepared` (ids, rules, templates, page)
blocks.py    blocks of lines -> decode, parse, prepare, count (pipeline thread and workers)
workers.py   worker processes running blocks.py for `run --once` and backfill
order.py     event-time order: the k-way merge, and tail mode's hold buffer (SPEC §1.4)
emit.py      the stateful stage: R6 time check, identity rules, message assembly
stats.py     the counters every stage adds to
core.py      `Pipeline`: builds the stages, fills a `records.Chunk`, commits it (SPEC §5.2)
tail.py      the daemon's tail loop: tailer -> pipeline -> commit, timers, SIGHUP reload
once.py      `run --once`: snapshot, merged read, delivery, summary
"""
