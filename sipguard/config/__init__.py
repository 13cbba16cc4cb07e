"""Configuration: the immutable values (:mod:`.model`) and the YAML loader (:mod:`.loader`).

Only the model is re-exported here. Import the loader as ``sipguard.config.loader``: it
reads YAML and uses :mod:`sipguard.policy.numbers` (which itself imports the model), so
importing it from this package would make every user of the model load both.
"""

from __future__ import annotations

from sipguard.config.model import (
    DEFAULT_LISTEN,
    CdrConfig,
    ClirCodes,
    Config,
    Limits,
    Listen,
    Metrics,
    Numbering,
    RtpEngine,
    SipTimers,
    Trunk,
    TrunkLimits,
)

__all__ = [
    "DEFAULT_LISTEN",
    "CdrConfig",
    "ClirCodes",
    "Config",
    "Limits",
    "Listen",
    "Metrics",
    "Numbering",
    "RtpEngine",
    "SipTimers",
    "Trunk",
    "TrunkLimits",
]
