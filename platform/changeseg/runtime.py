"""Ray start-up shared by fine-tuning, batch scoring and serving.

A private local instance is started without the dashboard (nothing listens beyond
Ray's own ports). Ray Train's placement-group cleaner polls the State API, which the
dashboard serves, and logs a warning every second when it is absent; Ray Train workers
also log every ``ray.train.report`` payload at INFO. :func:`quiet_ray_loggers` keeps
both out of the console (they stay in Ray's log files), so users read our progress
lines and real errors.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os

from changeseg.config import Config

__all__ = ["init_ray", "local_num_cpus", "quiet_ray_loggers"]

# Ray loggers whose routine output drowns the console: (module, level kept).
_NOISY_RAY_MODULES = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.train.v2._internal.execution.context": logging.WARNING,
}


def quiet_ray_loggers() -> None:
    """Raise the level of Ray's noisy loggers in this process (also the worker setup hook).

    Some Ray modules name their logger after ``__file__`` instead of ``__name__``; both
    names are covered.
    """
    for module, level in _NOISY_RAY_MODULES.items():
        logging.getLogger(module).setLevel(level)
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            logging.getLogger(spec.origin).setLevel(level)


def local_num_cpus(cfg: Config) -> int:
    """Logical CPUs for a local Ray instance.

    The train workers hold their CPUs for the whole run; Ray Data needs slots of its
    own to read and augment, or its tasks wait forever behind the workers. So a small
    machine is oversubscribed by two logical CPUs rather than deadlocked.
    """
    if cfg.ray.num_cpus:
        return cfg.ray.num_cpus
    workers = math.ceil(cfg.train.num_workers * cfg.train.cpus_per_worker)
    return max(os.cpu_count() or 1, workers + 2)


def init_ray(cfg: Config) -> None:
    """Attach to ``ray.address`` / ``$RAY_ADDRESS`` (``auto`` finds a local ``ray start``),
    else start a private local instance."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(
            address="local",
            num_cpus=local_num_cpus(cfg),
            include_dashboard=False,
            runtime_env={"worker_process_setup_hook": "changeseg.runtime.quiet_ray_loggers"},
        )
