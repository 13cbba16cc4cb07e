"""sipguard: a SIP privacy gateway (B2BUA) for caller-ID privacy, emergency calls and CDRs."""

__version__ = "0.1.0"
