"""One name per command: ``changeseg NAME``, ``jobs/NAME.py`` and ``NAME_main`` agree."""

from __future__ import annotations

import ast
from pathlib import Path

from changeseg import cli

JOBS = Path(__file__).resolve().parents[2] / "jobs"
# Former script names kept for existing ``ray job submit`` commands.
ALIASES = {"batch_score": "score", "prepare_dataset": "prepare"}
# Commands run in place, never submitted as jobs.
NO_JOB = {"export", "serve"}


def _entry_point(script: Path) -> str:
    """The ``changeseg.cli`` entry point a job script imports."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "changeseg.cli":
            return node.names[0].name
    raise AssertionError(f"{script.name} does not call a changeseg.cli entry point")


def test_each_job_script_runs_the_command_of_its_name():
    for script in sorted(JOBS.glob("*.py")):
        command = ALIASES.get(script.stem, script.stem)
        assert command in cli.COMMANDS, f"jobs/{script.name} names no changeseg command"
        assert _entry_point(script) == f"{command}_main", script.name
        assert getattr(cli, f"{command}_main").__name__ == f"{command}_main"


def test_each_command_has_a_job_script():
    missing = sorted(set(cli.COMMANDS) - NO_JOB - {p.stem for p in JOBS.glob("*.py")})
    assert not missing, f"commands without jobs/NAME.py: {missing}"
