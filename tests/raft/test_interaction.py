"""Runs every ``testdata/*.txt`` interaction script (see ``interaction.py`` for the
format, and ``BOUTIQUE_REWRITE=1`` to regenerate expected outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    from .interaction import run_interaction_file  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # tests/raft is not a package: pytest put this directory on sys.path
    from interaction import run_interaction_file  # type: ignore[no-redef,unused-ignore]

TESTDATA = Path(__file__).parent / "testdata"
FILES = sorted(TESTDATA.glob("*.txt"))

KNOWN_CORE_BUGS: dict[str, str] = {}
"""Scripts whose expected output is the correct behaviour the core does not have yet.
They are strict xfails: once the bug is fixed they pass, and the xfail must go. They
are never rewritten by ``BOUTIQUE_REWRITE`` (that would bless the bug)."""


def _param(path: Path) -> object:
    reason = KNOWN_CORE_BUGS.get(path.stem)
    if reason is None:
        return pytest.param(path, id=path.stem)
    return pytest.param(
        path, id=path.stem, marks=pytest.mark.xfail(strict=True, reason=f"core bug: {reason}")
    )


def test_testdata_present() -> None:
    assert FILES, f"no interaction scripts in {TESTDATA}"
    assert set(KNOWN_CORE_BUGS) <= {p.stem for p in FILES}


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_interaction(path: Path) -> None:
    run_interaction_file(path, rewrite=False if path.stem in KNOWN_CORE_BUGS else None)
