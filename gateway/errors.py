"""One exception tree, and one failure policy per exception class.

A failure either belongs to the message or to the infrastructure:

* ``PERMANENT``: the message's fault (unreadable, unmappable, invalid FHIR, refused by a server,
  too old): a dead letter at once;
* ``RETRY``: may pass on another attempt (a remote server's 5xx, a blip): tried again with backoff
  a bounded number of times, then a dead letter;
* ``OUTAGE``: a dependency of the gateway (the database, Redis, the disk) does not answer. Not the
  message's fault: the worker holds the message and waits for the dependency, however long,
  without counting an attempt (gateway/services/outages.py).

``policy_of`` decides for any exception, ours or a library's; it is the only place that does.
Exception texts never quote message content (names, identifiers, dates, free text): they name
segment and field positions, so they can go to logs and dead letters as they are.
"""

from __future__ import annotations

import enum
import os
import traceback

from gateway.stages import Stage


class Policy(enum.Enum):
    PERMANENT = "permanent"
    RETRY = "retry"
    OUTAGE = "outage"


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    policy = Policy.PERMANENT
    #: Pipeline stage that failed, as recorded in dead letters (gateway/stages.py; a remote sink's
    #: is ``deliver:<name>``).
    stage: str = Stage.GATEWAY

    @property
    def retryable(self) -> bool:
        return self.policy is not Policy.PERMANENT

    def safe_text(self) -> str:
        """The text for logs. Ours name positions, not values, so it is ``str(self)``; an error that
        carries someone else's words (a remote server's OperationOutcome) leaves them out."""
        return str(self)


class ConfigError(GatewayError):
    stage: str = Stage.CONFIG


class VolatileQueue(ConfigError):
    """The queue's Redis can lose acknowledged messages in a crash, and HL7GW_ALLOW_VOLATILE_REDIS
    does not accept that (gateway/queue/durability.py); the text names the setting."""


class ParseError(GatewayError):
    """The bytes are not a readable HL7 v2 message."""

    stage: str = Stage.PARSE

    def __init__(self, message: str, *, segment: str = "MSH", field: int | None = None, code: str = "100"):
        super().__init__(message)
        self.segment = segment
        self.field = field
        #: HL7 table 0357 error code (100 segment sequence error, 102 data type error, ...).
        self.code = code


class CharsetError(ParseError):
    """The bytes are not valid in the character set MSH-18 declares."""


class MappingError(GatewayError):
    """The message cannot be converted (no mapping, or content the mapping cannot handle).

    Where the conversion knows it, the error says where it failed in words an interface analyst
    reads: the segment (``PID#2``: the second segment), the field with its HL7 name (``PID-3
    Patient Identifier List``) and the rule of the mappings (``map PID[Patient], rule id:
    patient``). Its text is then "conversion failed at PID#2 (PID-3 Patient Identifier List):
    <problem> (map PID[Patient], rule id: patient)"; names and positions, never values.
    """

    stage: str = Stage.CONVERT

    def __init__(self, problem: str, *, segment: str = "", field: str = "", rule: str = ""):
        self.problem = problem
        #: The failing segment and its place in the message, "PID#2".
        self.segment = segment
        #: The field (or fields) read, named: "PID-3 Patient Identifier List".
        self.field = field
        #: The map and rule of the mappings that failed: "map PID[Patient], rule id: patient".
        self.rule = rule
        super().__init__(self._text())

    def _text(self) -> str:
        rule = f" ({self.rule})" if self.rule else ""
        if not self.segment:
            return f"{self.problem}{rule}"
        field = f" ({self.field})" if self.field else ""
        return f"conversion failed at {self.segment}{field}: {self.problem}{rule}"

    def located(self, *, segment: str = "", field: str = "", rule: str = "") -> MappingError:
        """This error with the parts of its location it does not know yet filled in."""
        return MappingError(
            self.problem, segment=self.segment or segment, field=self.field or field, rule=self.rule or rule
        )

    def location(self) -> dict[str, str]:
        """The location as data (for ``--json`` and /admin): segment, field, rule, problem."""
        return {"segment": self.segment, "field": self.field, "rule": self.rule, "problem": self.problem}


class ValidationError(GatewayError):
    """The FHIR produced does not validate. ``safe``: the text for logs when the message (kept in
    the dead letter, for operators) quotes something a mapping may have taken from the data."""

    stage: str = Stage.VALIDATE

    def __init__(self, message: str, *, safe: str | None = None):
        super().__init__(message)
        self.safe = safe

    def safe_text(self) -> str:
        return self.safe if self.safe is not None else str(self)


class DeliveryError(GatewayError):
    """Storing or sending the FHIR failed permanently (a conflict, a 4xx)."""

    stage: str = Stage.DELIVER


class TransientDeliveryError(DeliveryError):
    """Sending failed in a way that may pass on retry (a remote 5xx, a timeout)."""

    policy = Policy.RETRY


class Unavailable(GatewayError):
    """A dependency of the gateway does not answer: never the message's fault."""

    policy = Policy.OUTAGE
    #: Which dependency: "database" or "redis" (gateway/services/outages.py probes it).
    dependency = "database"


class StoreUnavailable(Unavailable):
    """The database is unreachable, locked, read-only or out of disk."""

    stage: str = Stage.DELIVER
    dependency = "database"


class QueueUnavailable(Unavailable):
    """Redis is unreachable or refuses writes (its disk full, loading, read-only)."""

    stage: str = Stage.QUEUE
    dependency = "redis"


class IntakeUnavailable(QueueUnavailable):
    """The durable queue cannot take the message now; nothing was accepted."""

    stage: str = Stage.INTAKE


class RejectedAtIntake(GatewayError):
    """The MLLP listener answered AR/AE (or could not answer) and kept the raw message for operators."""

    stage: str = Stage.INTAKE


class StageCrash(GatewayError):
    """An unexpected exception inside a stage (a bug), tagged with the stage; its text is
    ``describe(exc)``: the type and where it was raised, never the exception's own words."""

    def __init__(self, stage: str, exc: BaseException):
        super().__init__(describe(exc))
        self.stage = stage


class OperatorRefused(GatewayError):
    """An operator's action does not apply (an unknown letter or job, one not in a state for it, a
    filter that cannot be read); the text says why, without PHI. ``missing``: nothing has that id;
    ``invalid``: what was asked cannot be read (a filter, an empty reason); else the state forbids it."""

    def __init__(self, message: str, *, missing: bool = False, invalid: bool = False):
        super().__init__(message)
        self.missing = missing
        self.invalid = invalid


def policy_of(exc: BaseException) -> Policy:
    """The one decision: what a failure means for the message that met it."""
    if isinstance(exc, GatewayError):
        return exc.policy
    if unavailable_dependency(exc) is not None:
        return Policy.OUTAGE
    # Anything else is a bug or content nobody expected: park it, do not hammer.
    return Policy.PERMANENT


def is_retryable(exc: BaseException) -> bool:
    return policy_of(exc) is not Policy.PERMANENT


def stage_of(exc: BaseException, default: str = Stage.GATEWAY) -> str:
    return exc.stage if isinstance(exc, GatewayError) else default


def unavailable_dependency(exc: BaseException) -> str | None:
    """ "database" or "redis" when ``exc`` says that dependency does not answer; None otherwise."""
    if isinstance(exc, Unavailable):
        return exc.dependency
    from dramatiq.errors import BrokerConnectionError
    from redis import exceptions as redis_errors
    from sqlalchemy import exc as sql

    if isinstance(exc, (sql.OperationalError, sql.InterfaceError, sql.DisconnectionError, sql.TimeoutError)):
        return "database"
    if isinstance(exc, sql.DBAPIError) and exc.connection_invalidated:
        return "database"
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError, BrokerConnectionError)):
        return "redis"
    if isinstance(exc, redis_errors.ResponseError) and str(exc).startswith(_REDIS_REFUSING):
        return "redis"
    return None


#: Replies of a Redis that is up but cannot take writes: AOF or RDB write failed (disk full),
#: a replica, still loading its data, out of memory under noeviction.
_REDIS_REFUSING = ("MISCONF", "READONLY", "LOADING", "OOM", "MASTERDOWN", "NOREPLICAS")


def as_unavailable(exc: BaseException, doing: str) -> Unavailable | None:
    """``exc`` as a StoreUnavailable/QueueUnavailable when it is an outage, else None."""
    dependency = unavailable_dependency(exc)
    if dependency is None:
        return None
    cls = StoreUnavailable if dependency == "database" else QueueUnavailable
    return cls(f"{dependency} unavailable while {doing}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """A text for logs and dead letters that never quotes data: our own errors' ``safe_text`` (they
    name positions, not values); a database error by its SQLSTATE, class and constraint;
    a connection error by its words (they name hosts and ports); anything else by its type and
    the place in our code where it was raised."""
    if isinstance(exc, GatewayError):
        return exc.safe_text()
    from redis import exceptions as redis_errors
    from sqlalchemy import exc as sql

    if isinstance(exc, sql.DBAPIError) and exc.orig is not None:
        return _database_error(exc.orig)
    if isinstance(exc, sql.SQLAlchemyError):
        return type(exc).__name__
    if isinstance(exc, (redis_errors.ConnectionError, redis_errors.TimeoutError)):
        return f"{type(exc).__name__}: {_first_line(exc)}"
    if isinstance(exc, redis_errors.ResponseError):
        return f"{type(exc).__name__}: {str(exc).split(' ', 1)[0]}"  # the error code only
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{type(exc).__name__}: [Errno {exc.errno}] {os.strerror(exc.errno)}"
    return f"{type(exc).__name__} at {_where(exc)}"


def _database_error(orig: BaseException) -> str:
    """A driver error without its values: PostgreSQL's detail lines quote keys and inputs, so only
    the SQLSTATE and the names of what was involved; SQLite's words name tables and columns only."""
    diag = getattr(orig, "diag", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if diag is not None and sqlstate:
        names = [
            f"{label} {value}"
            for label, value in (
                ("table", diag.table_name),
                ("column", diag.column_name),
                ("constraint", diag.constraint_name),
            )
            if value
        ]
        return f"{type(orig).__name__} SQLSTATE {sqlstate}" + (f" ({', '.join(names)})" if names else "")
    if type(orig).__module__.startswith("sqlite3"):
        return f"{type(orig).__name__}: {_first_line(orig)}"
    # A driver error without a SQLSTATE comes from the client side: a connection refused, closed or
    # timed out. Its words are libpq's or the socket's, about hosts and ports, not about rows.
    return f"{type(orig).__name__}: {_first_line(orig)}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _where(exc: BaseException) -> str:
    """file:line (function) of the innermost frame of ours, else of the innermost frame."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    if not frames:
        return "an unknown place"
    ours = [f for f in frames if "/gateway/" in f.filename.replace("\\", "/")]
    frame = (ours or frames)[-1]
    path = frame.filename.replace("\\", "/")
    short = path[path.rfind("/gateway/") + 1 :] if "/gateway/" in path else path.rsplit("/", 1)[-1]
    return f"{short}:{frame.lineno} ({frame.name})"
