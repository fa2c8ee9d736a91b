"""Imported before any test module: `starserve` first, so a forced STARSERVE_ISA level caps the
math libraries (oneDNN, ATen, MKL) before torch is loaded, exactly as the CLI does."""

import starserve  # noqa: F401
