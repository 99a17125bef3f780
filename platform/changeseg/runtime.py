"""Ray start-up shared by fine-tuning, batch scoring and serving.

A private local instance is started with token authentication (Ray's default) and
without the dashboard unless ``ray.dashboard`` asks for it (then on 127.0.0.1 only). Ray Train's placement-group cleaner polls the State API, which the
dashboard serves, and logs a warning every second when it is absent; Ray Train workers
also log every ``ray.train.report`` payload at INFO, and Ray Data logs every dataset
execution. :func:`quiet_ray_loggers` keeps these out of the console (they stay in
Ray's log files), so users read our progress lines and real errors. Ray Train's own
INFO lines are kept off the console by the trainer's ``LoggingConfig``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import socket
import threading
import warnings

import ray

from changeseg.config import Config

__all__ = ["free_port", "init_ray", "local_num_cpus", "quiet_ray_loggers"]

# Ray loggers whose routine output drowns the console: (logger name, level kept).
_NOISY_RAY_LOGGERS = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "ray.train.v2._internal.execution.context": logging.WARNING,
}
_CLEANER_THREAD = "PlacementGroupCleanerMonitor"


def _quiet_cleaner_thread(default_hook):
    """A threading.excepthook that logs the placement-group cleaner's failure to reach the
    State API at DEBUG instead of printing its traceback to the console."""

    def hook(args):
        if args.thread is not None and args.thread.name == _CLEANER_THREAD:
            logging.getLogger(__name__).debug("placement group cleaner stopped", exc_info=args.exc_value)
            return
        default_hook(args)

    hook.quiets_cleaner = True
    return hook


def _not_progress_notice(record: logging.LogRecord) -> bool:
    """Drops Ray Data's "Progress bars disabled" notice (we disable them on purpose)."""
    return not str(record.msg).startswith("Progress bars disabled")


def quiet_ray_loggers() -> None:
    """Keep Ray's routine output off the console of this process; it stays in Ray's log
    files. Runs in the driver and, as the worker setup hook, in every worker.

    Ray Data's console handler is raised to WARNING (its file handler keeps INFO);
    some Ray modules name their logger after ``__file__``, so both names are covered.
    """
    import ray.data  # noqa: F401  (configures the ray.data loggers; raise them afterwards)
    from ray.util.annotations import RayDeprecationWarning

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ != "SessionFileHandler":
            handler.setLevel(logging.WARNING)
            handler.addFilter(_not_progress_notice)
    for name, level in _NOISY_RAY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            logging.getLogger(spec.origin).setLevel(level)
    # Deprecations inside Ray's own modules are not actionable by our users.
    warnings.filterwarnings("ignore", category=RayDeprecationWarning)
    if not getattr(threading.excepthook, "quiets_cleaner", False):
        threading.excepthook = _quiet_cleaner_thread(threading.excepthook)


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
    if ray.is_initialized():
        return
    quiet_ray_loggers()
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(
            address="local",
            num_cpus=local_num_cpus(cfg),
            include_dashboard=cfg.ray.dashboard,
            dashboard_host="127.0.0.1",
            runtime_env={"worker_process_setup_hook": "changeseg.runtime.quiet_ray_loggers"},
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (local Serve, the local stack, tests)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
