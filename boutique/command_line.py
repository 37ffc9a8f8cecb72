"""What every command of boutique shares on its command line: ``--version``, and help
text written as plain text (module docstrings carry reStructuredText markup).

Nothing here parses flags or starts anything.
"""

from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed version of boutique (``unknown`` when run from a bare checkout)."""
    try:
        return version("boutique")
    except PackageNotFoundError:
        return "unknown"


def add_version(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` a ``--version`` flag printing ``<prog> <version>``."""
    parser.add_argument("--version", action="version", version=f"{parser.prog} {package_version()}")


def plain(text: str | None) -> str:
    """``text`` without the double backticks that mark code in docstrings."""
    return (text or "").replace("``", "")
