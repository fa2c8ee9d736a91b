"""starserve: PD-disaggregated LLM serving with predictive decode rescheduling (STAR)."""

__version__ = "0.1.0"
