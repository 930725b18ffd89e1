"""Logged throughput counts training steps only."""

import time

from pipeline.train.progress import Progress


def test_time_outside_the_steps_is_not_training_time():
    meter = Progress(total_steps=10, enabled=False)
    meter.start(0)
    meter.tick(0.25)
    time.sleep(0.2)  # an evaluation, a checkpoint, a stage end's decoding and report
    meter.tick(0.5)
    # before: lap() returned the wall time since the last lap, evaluations and stage ends included
    assert meter.lap(2) == (0.75, 2)
    time.sleep(0.1)
    meter.start(2)  # a new stage opens: nothing of the old one carries over
    meter.tick(0.125)
    assert meter.lap(3) == (0.125, 1)
