"""The training skeleton every network's stage calls (:mod:`~wsss.training.loop`), its
health checks (:mod:`~wsss.training.health`) and the held-out scores they read
(:mod:`~wsss.training.held_out`)."""
