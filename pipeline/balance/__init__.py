"""Balancing: samplers and weighting policies over translation directions, one registry.

Importing the package registers every kind (static ones and the dynamic policies), so
`pipeline.balance.static.build_sampler` and `check_sampling` see them all."""

from pipeline.balance import bandit, doremi, dro, learned, schedules, static  # noqa: F401
