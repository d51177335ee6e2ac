"""The promises of the project layout: the README's commands are the ones CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .+?)\n```", text)


def test_readme_gives_the_two_commands():
    commands = _readme_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "torch==2.13.0" in main_job and main_job.endswith(".venv/bin/nfm")
    assert "torch==2.13.0" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines


def test_torch_is_installed_before_the_project_and_required_as_a_range():
    for command in _readme_commands():
        assert command.index("torch==2.13.0") < command.index("-e ")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'"torch>=[0-9.]+"', pyproject)
