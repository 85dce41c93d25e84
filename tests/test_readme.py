"""The README's copy-paste commands stay true: CI runs exactly the test command it shows."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    default, tests = _readme_commands()
    assert tests.endswith("python -m pytest -q")
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci_lines


def test_readme_default_command_targets_the_digits_family():
    default, _ = _readme_commands()
    target = default.rsplit(" ", 1)[-1]
    assert target == "reports/table_digits.csv"
    assert (ROOT / "config" / "digits.yaml").is_file()
