"""README's set-up commands and .ci/run stay in step.

CI installs the project exactly as the README's second command says and runs
its test command; this test fails when one of them changes without the other.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up\s+```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a '## Set-up' section with a bash block"
    return [
        line.strip()
        for line in block.group(1).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_readme_has_install_and_test_commands() -> None:
    install, tests = _setup_commands()[:2]
    assert "pip install" in install
    assert "caffesolve train configs/lenet_solver.prototxt" in install
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    tests = _setup_commands()[1]
    for part in tests.split("&&"):
        words = part.split()
        assert words, tests
        if words[0] == "pip":  # .ci/run calls it as `python -m pip ... -q`
            wanted = "python -m pip install -q " + " ".join(words[2:])
        else:
            wanted = part.strip()
        assert wanted in ci, f".ci/run does not run `{part.strip()}`"


def _layer_table_rows() -> list[str]:
    """The first cell of every row of the README's layer tables (those whose
    header is `Type | Supported | Differences from Caffe`), backticks off."""
    rows = []
    table = False
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|"):
            table = False
        elif [c.lower() for c in cells[:2]] == ["type", "supported"]:
            table = True
        elif table and not set(cells[0]) <= set("-: "):
            rows.append(cells[0].strip("`"))
    return rows


def test_layer_tables_list_every_registered_layer() -> None:
    """Each type caffesolve registers in caffesolve.layers.LAYERS (not the
    test layers some tests add) has one row in the README's layer tables,
    and each row names one of them."""
    from caffesolve.layers import LAYERS

    ours = {t for t, cls in LAYERS.items() if cls.__module__.startswith("caffesolve.")}
    rows = _layer_table_rows()
    repeated = sorted({r for r in rows if rows.count(r) > 1})
    assert not repeated, f"layer types with more than one README row: {repeated}"
    assert sorted(ours - set(rows)) == [], "registered, not in the README"
    assert sorted(set(rows) - ours) == [], "in the README, not registered"
