"""Argument checks shared by every backend, so each rule is written once."""

from __future__ import annotations

import math

__all__ = ["MAX_KEY_BYTES", "check_key", "check_positive", "check_timeout", "check_ttl"]

#: The longest key accepted, in UTF-8 bytes.
MAX_KEY_BYTES = 1024


def check_key(key: object, name: str = "key") -> str:
    """Return ``key`` if it is a valid lock key, else raise naming ``name``."""
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, not {type(key).__name__}")
    if not key:
        raise ValueError(f"{name} must not be empty")
    if "\x00" in key:
        raise ValueError(f"{name} must not contain NUL characters")
    if key.isascii():
        size = len(key)
    else:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{name} must be encodable as UTF-8 (lone surrogates are not)"
            ) from exc
    if size > MAX_KEY_BYTES:
        raise ValueError(f"{name} must be at most {MAX_KEY_BYTES} UTF-8 bytes, got {size}")
    return key


def _number(value: object, name: str) -> float:
    if type(value) is float and not math.isnan(value):  # the common case
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        raise ValueError(
            f"{name} is out of range, got an integer of {len(str(value))} digits"
        ) from None
    if math.isnan(number):
        raise ValueError(f"{name} must not be NaN")
    return number


def check_positive(value: object, name: str) -> float:
    """Return ``value`` as a float if it is finite and > 0, else raise naming ``name``."""
    number = _number(value, name)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return number


def check_ttl(ttl: object, name: str = "ttl") -> float:
    """Return a valid lease TTL in seconds (finite, > 0)."""
    return check_positive(ttl, name)


def check_timeout(timeout: object, name: str = "timeout") -> float | None:
    """Return a valid wait timeout: ``None`` (wait forever) or a number >= 0 (inf allowed)."""
    if timeout is None:
        return None
    number = _number(timeout, name)
    if number < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {timeout!r}")
    return None if math.isinf(number) else number
