"""``make bench``: a fake model server, a floor app, a load generator and the orchestrator that runs them.

A benchmark, not a test suite: it measures chatcore against the least work a chat turn needs
and writes the figures to ``docs/performance.md``. Run it with ``python -m bench.run``.
"""
