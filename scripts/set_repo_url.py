"""Point the repository at a fork: ``python scripts/set_repo_url.py OWNER/NAME``.

The repository's URL lives in one place, ``[project.urls] Repository`` in ``pyproject.toml``.  The README's Colab
badges, ``notebooks/README.md`` and every notebook's badge and Colab set-up cell repeat it (a notebook on Colab
cannot read ``pyproject.toml`` before it has installed the package); this script rewrites all of them from the
current value to ``https://github.com/OWNER/NAME``, and ``tests/test_packaging.py`` checks that they agree.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")
URL_LINE = re.compile(r'^Repository = "https://github\.com/([^"]+)"$', re.M)


def current_slug(root: Path = ROOT) -> str:
    m = URL_LINE.search((root / "pyproject.toml").read_text(encoding="utf-8"))
    if not m:
        raise SystemExit("error: pyproject.toml has no [project.urls] line 'Repository = \"https://github.com/...\"'")
    return m.group(1)


def files_naming_the_repository(root: Path = ROOT) -> list[Path]:
    return [root / "pyproject.toml", root / "README.md", root / "notebooks" / "README.md",
            *sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))]


def set_slug(new: str, root: Path = ROOT) -> list[Path]:
    """Rewrite every mention of the current ``OWNER/NAME`` as ``new``; returns the files changed."""
    if not SLUG.match(new):
        raise SystemExit(f"error: {new!r} is not OWNER/NAME (e.g. my-course/lmd-from-scratch)")
    old = current_slug(root)
    changed = []
    for path in files_naming_the_repository(root):
        text = path.read_text(encoding="utf-8")
        # github.com/OLD (clone and install URLs) and colab.../github/OLD (badges); the Colab folder name follows
        updated = text.replace(f"github.com/{old}", f"github.com/{new}").replace(f"github/{old}/", f"github/{new}/")
        updated = updated.replace(f"`{old}`", f"`{new}`")
        if updated != text:
            path.write_text(updated, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slug", help="OWNER/NAME of the GitHub repository")
    args = parser.parse_args(argv)
    changed = set_slug(args.slug)
    for path in changed:
        print(f"rewrote {path.relative_to(ROOT)}")
    print(f"repository: https://github.com/{args.slug} ({len(changed)} files)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
