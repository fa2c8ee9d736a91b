"""starserve: PD-disaggregated LLM serving with predictive decode rescheduling (STAR)."""

from starserve.hardware import apply_library_env

# Before anything imports torch: a forced STARSERVE_ISA level caps oneDNN/ATen/MKL as well.
apply_library_env()

__version__ = "0.1.0"
