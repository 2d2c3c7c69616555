"""bench/instructions.py: reading cachegrind's totals and turning two runs into a per-turn figure."""

from __future__ import annotations

import pytest

from bench.instructions import per_turn, total_instructions

CACHEGRIND_OUTPUT = """desc: I1 cache: ...
cmd: /usr/bin/python -m bench.floor --port 9200
events: Ir
fl=???
fn=0x0000000000001140
0 12
summary: 1758228721
"""


def test_total_instructions_is_the_summary_line() -> None:
    assert total_instructions(CACHEGRIND_OUTPUT) == 1_758_228_721


def test_an_output_without_a_summary_is_refused() -> None:
    with pytest.raises(ValueError, match="summary"):
        total_instructions("events: Ir\n")


def test_per_turn_cancels_what_both_runs_share() -> None:
    start_up = 900_000_000
    assert per_turn(start_up + 20 * 4_000_000, start_up + 120 * 4_000_000, 20, 120) == 4_000_000


def test_per_turn_needs_a_longer_second_run() -> None:
    with pytest.raises(ValueError, match="more turns"):
        per_turn(1, 2, 20, 20)
