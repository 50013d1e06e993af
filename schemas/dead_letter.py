"""A message that could not be accepted, with the reason and the original bytes."""

from __future__ import annotations

from pydantic import Field

from schemas.base import UtcDatetime, WireModel


class DeadLetter(WireModel):
    source_topic: str
    source_partition: int
    source_offset: int
    key_base64: str | None
    raw_base64: str = Field(description="the original message bytes, base64")
    error_type: str = Field(description="DecodeError, ValidationError, ...")
    reason: str = Field(description="one line a person can act on")
    received_at: UtcDatetime = Field(description="wall-clock time the worker rejected it")
