"""`python -m agent` is the same as the `trackd` console script."""

from __future__ import annotations

from agent.cli import main

raise SystemExit(main())
