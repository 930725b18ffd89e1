"""Dynamic weighting policies; importing this package registers them with `pipeline.sampling`."""

from . import bandit, doremi, dro, learned, schedules  # noqa: F401
