"""Where starserve finds shared data, caches, and the files it ships."""

from __future__ import annotations

import os
from pathlib import Path

from starserve.errors import StarserveError

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
ASSETS_DIR = PACKAGE_DIR / "assets"


def data_dir() -> Path:
    """The third-party data folder (`../shared/data` beside the checkout by default).

    `STARSERVE_DATA_DIR` overrides it. Looked up beside the repository first, then beside the
    current directory, so both an editable install and a run from the project root work.
    """
    override = os.environ.get("STARSERVE_DATA_DIR")
    if override:
        path = Path(override)
        if not path.is_dir():
            raise StarserveError(f"STARSERVE_DATA_DIR={override}: no such directory")
        return path
    for base in (*REPO_ROOT.parents, Path.cwd().parent):
        candidate = base / "shared" / "data"
        if candidate.is_dir():
            return candidate.resolve()
    raise StarserveError(
        "shared data not found: expected ../shared/data beside the checkout "
        "(set STARSERVE_DATA_DIR to point elsewhere)"
    )


def cache_dir() -> Path:
    """Writable cache outside git (`STARSERVE_CACHE_DIR`, default `<repo>/cache`)."""
    path = Path(os.environ.get("STARSERVE_CACHE_DIR", REPO_ROOT / "cache"))
    path.mkdir(parents=True, exist_ok=True)
    return path
