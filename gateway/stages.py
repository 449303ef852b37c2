"""The stages of the gateway, by one name each: where a message failed (a dead letter's stage),
and what a stage of the pipeline is called in errors and logs."""

from __future__ import annotations

import enum


class Stage(enum.StrEnum):
    #: The MLLP listener: refused or unreadable at intake.
    INTAKE = "intake"
    #: The queue: a queue entry nobody can read, Redis unavailable.
    QUEUE = "queue"
    PARSE = "parse"
    CONVERT = "convert"
    VALIDATE = "validate"
    #: The built-in store; a remote sink's is ``sink_stage(name)``.
    DELIVER = "deliver"
    #: Keeping an incoming acknowledgement in the archive.
    ARCHIVE = "archive"
    CONFIG = "config"
    #: An error of the gateway's own that names no stage, or a failure outside any stage.
    GATEWAY = "gateway"


def sink_stage(sink: str) -> str:
    """The stage of delivery to the remote sink ``sink``: ``deliver:<sink>``."""
    return f"{Stage.DELIVER.value}:{sink}"
