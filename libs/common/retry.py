"""Exponential backoff with jitter, the one schedule every retry loop uses."""

import random


def backoff_delay(attempt: int, base_seconds: float, cap_seconds: float = 30.0) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base * 2^(attempt-1), capped, then
    jittered to 50-150 % so that clients that failed together do not retry together."""
    return min(cap_seconds, base_seconds * 2.0 ** (attempt - 1)) * (0.5 + random.random())  # noqa: S311 - not crypto
