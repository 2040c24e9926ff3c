"""The README's commands are the ones CI runs."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _shell_blocks(text: str) -> list:
    blocks, inside = [], None
    for line in text.splitlines():
        if line.startswith("```"):
            if inside is None and line.strip() == "```bash":
                inside = []
            elif inside is not None:
                blocks.append("\n".join(inside).strip())
                inside = None
        elif inside is not None:
            inside.append(line)
    return blocks


def test_ci_runs_the_readme_test_command():
    readme = _shell_blocks((ROOT / "README.md").read_text())
    test_command = next(block for block in readme if "pytest" in block)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_main_job_runs_lgd_run():
    readme = _shell_blocks((ROOT / "README.md").read_text())
    assert any(block.endswith("lgd run") and "pip install" in block for block in readme)
