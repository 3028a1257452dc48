"""The package as users meet it: entry points, README commands, CI script, sample folder size."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO, SAMPLES


def _readme_block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```\n<!-- /{marker} -->", text, re.S)
    assert match, f"README.md lacks the {marker} block"
    return match.group(1).strip()


def test_readme_has_both_setup_commands():
    assert "pytest" in _readme_block("test-command")
    assert "hesscli" in _readme_block("main-command")
    for command in (_readme_block("test-command"), _readme_block("main-command")):
        assert "pip install torch==2.13.0" in command


def test_ci_runs_the_readme_test_command():
    lines = (REPO / ".ci" / "run").read_text().splitlines()
    command = lines[lines.index("# README test command:") + 1]
    assert command == _readme_block("test-command")


def test_python_dash_m_and_exit_codes():
    run = subprocess.run(
        [sys.executable, "-m", "hesscli", "info", str(SAMPLES / "missing.pt")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.startswith("hesscli: error: checkpoint not found")
    assert run.stderr.count("\n") == 1


def test_sample_models_stay_small():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    assert total < 3_000_000


def test_hesscli_does_not_import_torchvision():
    code = "import sys, hesscli.cli.app; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
