"""Where the run is: steps, stage, tokens, skipped steps. Saved in every checkpoint; the schedules
and the curriculum are pure functions of these counters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Counters:
    step: int = 0  # optimizer steps done in the whole run (skipped ones included)
    stage: int = 0  # index of the current stage
    stage_step: int = 0  # optimizer steps done in the current stage
    tokens: int = 0  # target tokens trained on, all ranks
    skipped_steps: int = 0  # steps whose update was skipped (non-finite loss or gradient)
    bad_in_a_row: int = 0
    finished: bool = False
