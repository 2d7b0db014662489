"""Sinks: where messages go once committed to the outbox (SPEC §4)."""
