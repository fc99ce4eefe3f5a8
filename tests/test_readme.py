"""README stays true: its generated tables match the code, and its commands exist."""
import re
import subprocess
import sys

from services.config import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_generated_tables_are_current():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    import sync_readme_tables
    assert sync_readme_tables.render(README) == README, "run: python scripts/sync_readme_tables.py"


def test_two_setup_commands_are_make_targets_and_ci_calls_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make (\w+)", quick, re.M)
    assert commands == ["run", "test"]
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert all(re.search(rf"^{c}:", makefile, re.M) for c in commands)
    assert "make test" in (REPO_ROOT / ".ci" / "run").read_text()


def test_python_entry_points_named_in_readme_exist():
    for module in set(re.findall(r"python -m (services(?:\.\w+)*)", README)):
        path = REPO_ROOT / module.replace(".", "/")
        assert (path / "__main__.py").exists() or path.with_suffix(".py").exists(), module


def test_cli_help_runs():
    proc = subprocess.run([sys.executable, "-m", "services", "run", "--help"], cwd=REPO_ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--workflow" in proc.stdout
