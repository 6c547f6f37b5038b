"""Decide what `make setup` installs: keep the image's JupyterLab (and torch) when they already work.

    python -m helpers.setup_plan requirements.txt build/requirements-setup.txt

On AutoDL the JupyterLab serving the learner's page comes with the image;
upgrading it under a running server can break the page or its extensions. So,
as with torch, a JupyterLab that is importable and not too old is kept: its
line is left out of the requirements handed to pip. Only the standard library
is used, because this runs before anything else is installed.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

# Packages the image may already provide, with the oldest version the notebooks work with
# (ipywidgets 8's JupyterLab extension supports JupyterLab 3 and 4).
KEEP_IF_INSTALLED = {"jupyterlab": (3, 0)}


def installed_version(name: str) -> str | None:
    """The installed version of distribution ``name`` if its module can be imported, else None."""
    if importlib.util.find_spec(name) is None:
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text.split("+")[0])[:3])


def _requirement_name(line: str) -> str | None:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
    return match.group(1).lower().replace("_", "-") if match else None


def plan(
    lines: Iterable[str], version_of: Callable[[str], str | None] = installed_version
) -> tuple[list[str], list[str]]:
    """(requirement lines to install, notes on what is kept) for ``lines`` of a requirements file."""
    install, kept = [], []
    for line in lines:
        name = _requirement_name(line)
        minimum = KEEP_IF_INSTALLED.get(name or "")
        have = version_of(name) if minimum else None
        if minimum and have and _version_tuple(have) >= minimum:
            kept.append(f"{name} {have} already installed: keeping it (not upgrading the running JupyterLab)")
            continue
        install.append(line.rstrip("\n"))
    return install, kept


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m helpers.setup_plan REQUIREMENTS OUT", file=sys.stderr)
        return 2
    source, out = Path(args[0]), Path(args[1])
    install, kept = plan(source.read_text(encoding="utf-8").splitlines())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(install) + "\n", encoding="utf-8")
    for note in kept:
        print(note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
