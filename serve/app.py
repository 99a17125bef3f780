"""Ray Serve entry point (import path ``serve.app:app`` in serve/config.yaml).

The application lives in :mod:`changeseg.serving`; ``args`` of the Serve config are
changeseg config sections (``serve``, ``tracking``, ``storage``), validated by the
project's one schema.
"""

from changeseg.serving import build_app


def app(args: dict):
    return build_app(args)
