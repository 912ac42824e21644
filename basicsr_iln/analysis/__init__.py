"""Training-dynamics analysis (feature magnitudes, channel entropy, norm parameters); see dynamics.py."""
from .dynamics import JSONL_NAME, build_dynamics_recorder, parse_analysis_options, summarize  # noqa: F401
