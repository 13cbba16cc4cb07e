"""Privacy policy: pure functions, no I/O, no clock (SPEC §1-§3).

- :mod:`.numbers`: CLIR codes, emergency numbers and ``urn:service:sos``, E.164,
  masking for logs, ``allowed_cli`` patterns.
- :mod:`.decision`: the decision table of SPEC §3 (:func:`decide`) with its reason, and
  the refusals that follow from it (:func:`refusal`: 433, 500).
- :mod:`.headers`: which A-leg headers reach the B-leg, and the identities sipguard builds.
- :mod:`.body`: what of a body crosses: no location but to the emergency trunk, no
  caller identity in the SDP of a restricted call.
"""

from __future__ import annotations

from sipguard.policy.decision import (
    REASONS,
    CallFacts,
    Decision,
    Reason,
    Refusal,
    decide,
    facts_from,
    privacy_tokens,
    refusal,
    rpid_privacy,
)
from sipguard.policy.headers import (
    DEFAULT_ALLOWLIST,
    anonymous_from,
    copy_headers,
    presented_identity,
)
from sipguard.policy.numbers import (
    cli_matches,
    is_emergency,
    is_sos_urn,
    mask,
    split_clir_code,
    to_e164,
)

__all__ = [
    "DEFAULT_ALLOWLIST",
    "REASONS",
    "CallFacts",
    "Decision",
    "Reason",
    "Refusal",
    "anonymous_from",
    "cli_matches",
    "copy_headers",
    "decide",
    "facts_from",
    "is_emergency",
    "is_sos_urn",
    "mask",
    "presented_identity",
    "privacy_tokens",
    "refusal",
    "rpid_privacy",
    "split_clir_code",
    "to_e164",
]
