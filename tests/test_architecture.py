"""The package's shape: the math modules import no matplotlib, anywhere in the file (their pictures live in
``lmd_utils/viz/``, one module per step module)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lmd_utils"
MATH_MODULES = ("attention", "energy", "sampling", "per_box", "masks", "sam", "composition", "pipeline", "models", "config",
                "grammar", "gligen")


def _imported_modules(tree: ast.AST) -> list[str]:
    """Every module an ``import`` or ``from ... import`` names, at module level or inside any function or block."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("module", MATH_MODULES)
def test_math_modules_import_no_matplotlib(module):
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    drawing = [name for name in _imported_modules(tree) if name.split(".")[0] == "matplotlib"]
    assert not drawing, f"lmd_utils/{module}.py imports {drawing}: pictures belong in lmd_utils/viz/{module}.py"


def test_the_check_sees_imports_hidden_in_functions_and_type_checking_blocks():
    hidden = ast.parse("if TYPE_CHECKING:\n    from matplotlib.figure import Figure\n"
                       "def f():\n    import matplotlib.pyplot as plt\n")
    assert _imported_modules(hidden) == ["matplotlib.figure", "matplotlib.pyplot"]


def test_every_step_module_with_pictures_has_its_viz_module():
    viz = {p.stem for p in (PACKAGE / "viz").glob("*.py")} - {"__init__", "common"}
    assert viz <= {p.stem for p in PACKAGE.glob("*.py")}, "a viz module is named after its step module"


#: Modules allowed over ~500 lines, each because its docstring says why it is one piece.
ONE_PIECE = {"llm_layouts.py", "attention.py", "toyworld/benchmark.py", "masks.py"}  # masks: both routes share ObjectMask


def test_modules_stay_short_unless_they_say_why():
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > 550:
            assert path.relative_to(PACKAGE).as_posix() in ONE_PIECE, f"{path.relative_to(PACKAGE)} has {lines} lines: split it or say why"


def test_pipeline_reads_like_a_short_list_of_steps():
    assert len((PACKAGE / "pipeline.py").read_text(encoding="utf-8").splitlines()) <= 400
