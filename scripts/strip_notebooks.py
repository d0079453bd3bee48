#!/usr/bin/env python3
"""Strip outputs from notebooks, so git only ever holds the source of the series (notebooks/README.md).

    python scripts/strip_notebooks.py                   # strip notebooks/*.ipynb in place
    python scripts/strip_notebooks.py A.ipynb B.ipynb   # strip these
    python scripts/strip_notebooks.py --check           # exit 1 and list the notebooks that still hold outputs
    python scripts/strip_notebooks.py --stdin           # stdin → stdout (the git "clean" filter, .gitattributes)

Removes outputs and execution counts, keeps only the cell metadata an author sets on purpose (tags, hidden or
read-only flags) and, of the notebook metadata, the kernel spec and the language name, so that running a
notebook, or opening it in Colab or VS Code, leaves nothing to commit.  Stripping is idempotent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
CELL_METADATA_KEPT = ("tags", "jupyter", "editable", "deletable")


def strip_notebook(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` without outputs, execution counts or volatile metadata (modified in place and returned)."""
    for cell in nb.cells:
        cell.metadata = nbformat.from_dict({k: v for k, v in cell.metadata.items() if k in CELL_METADATA_KEPT})
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    kept = {}
    if "kernelspec" in nb.metadata:
        kept["kernelspec"] = nb.metadata.kernelspec
    language = nb.metadata.get("language_info", {}).get("name")
    if language:
        kept["language_info"] = {"name": language}
    nb.metadata = nbformat.from_dict(kept)
    return nb


def is_stripped(nb: nbformat.NotebookNode) -> bool:
    """Whether stripping would change nothing."""
    return strip_notebook(nbformat.from_dict(nb)) == nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook has outputs")
    parser.add_argument("--stdin", action="store_true", help="read one notebook on stdin, write it to stdout")
    args = parser.parse_args(argv)

    if args.stdin:
        nb = nbformat.reads(sys.stdin.read(), as_version=4)
        sys.stdout.write(nbformat.writes(strip_notebook(nb)) + "\n")
        return 0
    paths = args.paths or sorted((ROOT / "notebooks").glob("*.ipynb"))
    dirty = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        if is_stripped(nb):
            continue
        dirty.append(path)
        if not args.check:
            nbformat.write(strip_notebook(nb), path)
    verb = "still hold outputs (run: python scripts/strip_notebooks.py)" if args.check else "stripped"
    for path in dirty:
        print(f"{path}: {verb}", file=sys.stderr)
    return 1 if args.check and dirty else 0


if __name__ == "__main__":
    sys.exit(main())
