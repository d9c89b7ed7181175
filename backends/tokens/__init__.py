"""A bearer-token gate (short-lived JWTs, a token endpoint, a token command) in front of an
HTTP service such as a real ``mlflow server``; ``python -m backends.tokens issue|serve``."""

from backends.tokens.service import (
    REASONS,
    GateStats,
    TokenGate,
    TokenGateError,
    TokenRejected,
    sign_jwt,
    verify_jwt,
)

__all__ = ["REASONS", "GateStats", "TokenGate", "TokenGateError", "TokenRejected", "sign_jwt",
           "verify_jwt"]
