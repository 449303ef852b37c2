"""The one typed settings object, read from ``HL7GW_*`` environment variables."""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.errors import ConfigError


class Role(str, Enum):
    reader = "reader"
    operator = "operator"
    admin = "admin"


ROLE_RANK = {Role.reader: 0, Role.operator: 1, Role.admin: 2}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HL7GW_", extra="ignore", frozen=True)

    data_dir: Path = Path("./data")
    redis_url: str | None = None
    database_url: str | None = None
    #: Prefix of every Redis key, so that several gateways (or test runs) can share one Redis.
    redis_namespace: str = Field(default="hl7gw", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    mllp_host: str = "127.0.0.1"
    mllp_port: int = Field(default=2575, ge=0, le=65535)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)

    # "token:role,token:role"; roles reader < operator < admin.
    api_tokens: str | None = None

    # Worker tuning.
    worker_processes: int = Field(default=1, ge=1, le=64)
    worker_threads: int = Field(default=4, ge=1, le=256)
    max_retries: int = Field(default=5, ge=0, le=100)
    # Milliseconds without a heartbeat after which a worker's in-flight messages are requeued.
    heartbeat_timeout_ms: int = Field(default=15_000, ge=1_000)

    # Intake: how many messages one Redis commit may carry, and how long a flush may wait.
    commit_batch_max: int = Field(default=256, ge=1, le=10_000)
    commit_timeout_s: float = Field(default=5.0, gt=0)

    @field_validator("api_tokens")
    @classmethod
    def _check_tokens(cls, value: str | None) -> str | None:
        if value:
            parse_tokens(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value or None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'hl7gw.sqlite3').resolve()}"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin.token"


def parse_tokens(value: str) -> dict[str, Role]:
    """Parse ``token:role,token:role`` into a mapping; raises ValueError naming the bad entry."""
    tokens: dict[str, Role] = {}
    for entry in filter(None, (part.strip() for part in value.split(","))):
        token, sep, role = entry.rpartition(":")
        if not sep or not token:
            raise ValueError(f"entry {entry!r} is not token:role")
        try:
            tokens[token] = Role(role)
        except ValueError:
            raise ValueError(f"role {role!r} is not one of reader, operator, admin") from None
    return tokens


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises ConfigError naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = "HL7GW_" + "_".join(str(part) for part in err["loc"]).upper()
            problems.append(f"{name}: {err['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


@functools.cache
def get_settings() -> Settings:
    return load_settings()
