"""One exception tree. ``retryable`` says whether trying the same work again may succeed."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    retryable = False
    #: Pipeline stage that failed, as recorded in dead letters.
    stage = "gateway"


class ConfigError(GatewayError):
    stage = "config"


class ParseError(GatewayError):
    """The bytes are not a readable HL7 v2 message."""

    stage = "parse"

    def __init__(self, message: str, *, segment: str = "MSH", field: int | None = None, code: str = "100"):
        super().__init__(message)
        self.segment = segment
        self.field = field
        #: HL7 table 0357 error code (100 segment sequence error, 102 data type error, ...).
        self.code = code


class CharsetError(ParseError):
    """The bytes are not valid in the character set MSH-18 declares."""


class MappingError(GatewayError):
    """The message cannot be converted (no mapping, or content the mapping cannot handle)."""

    stage = "convert"


class ValidationError(GatewayError):
    """The FHIR produced does not validate."""

    stage = "validate"


class DeliveryError(GatewayError):
    """Storing or sending the FHIR failed permanently (a conflict, a 4xx)."""

    stage = "deliver"


class TransientDeliveryError(DeliveryError):
    """Storing or sending failed in a way that may pass on retry (database busy, 5xx, timeout)."""

    retryable = True


class IntakeUnavailable(GatewayError):
    """The durable queue cannot take the message now; nothing was accepted."""

    stage = "intake"
    retryable = True


class RejectedAtIntake(GatewayError):
    """The MLLP listener answered AR/AE (or could not answer) and kept the raw message for operators."""

    stage = "intake"


class StageCrash(GatewayError):
    """An unexpected exception inside a stage (a bug or an environment fault), tagged with the stage."""

    def __init__(self, stage: str, exc: BaseException):
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.stage = stage


def is_retryable(exc: BaseException) -> bool:
    """Decide, in one place, whether an exception raised by a stage is worth another attempt."""
    if isinstance(exc, GatewayError):
        return exc.retryable
    # Unknown exceptions are bugs or environment faults; do not hammer, park them instead.
    return False


def stage_of(exc: BaseException, default: str = "process") -> str:
    return exc.stage if isinstance(exc, GatewayError) else default
