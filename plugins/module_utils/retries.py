# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retry a call that failed with a *transient* ``PhoenixError``.

The shape follows amazon.aws's ``retries.py`` (a "full jitter" exponential
backoff, https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/),
with two differences the engine needs:

* the limit is a **deadline** (an absolute ``clock.now()`` value: the step's
  progress deadline or the rollout's timeout), not a retry count;
* time is the engine's ``Clock``, so unit tests with a fake clock never sleep,
  and the random source is injectable, so a seeded one gives fixed delays.

Only an error with ``transient=True`` is retried; any other exception
propagates at once.
"""

from __future__ import annotations

import functools
import random
from typing import Callable, Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import Clock


class RetryDeadline(PhoenixError):
    """Transient errors lasted until the deadline; ``last`` is the last one,
    ``attempts`` how many calls were made."""

    def __init__(self, msg, last=None, attempts=0):
        super().__init__(msg, param=getattr(last, "param", None))
        self.last = last
        self.attempts = attempts


def backoff_delays(base: float = 0.5, cap: float = 10.0, rng=None):
    """Endless "full jitter" delays: the n-th (from 0) is uniform in
    ``[0, min(cap, base * 2**n)]``, so many controllers that failed together
    do not retry together, and no delay exceeds ``cap``."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield rng.uniform(0, min(cap, base * (2 ** min(attempt, 32))))
        attempt += 1


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, PhoenixError) and exc.transient


def retry_transient(fn: Callable, deadline: float, clock, base: float = 0.5,
                    cap: float = 10.0, rng=None,
                    on_retry: Optional[Callable] = None):
    """``fn()``, called again after a jittered delay while it raises a
    transient error and the next attempt would start before ``deadline``.

    ``on_retry(exc, attempt, delay)`` is told about each retry before its
    sleep (``attempt`` counts retries from 1). When the deadline leaves no
    time for another attempt, ``RetryDeadline`` (carrying the last error)
    is raised; a permanent error propagates unchanged."""
    delays = backoff_delays(base, cap, rng)
    attempt = 0
    while True:
        try:
            return fn()
        except PhoenixError as exc:
            if not exc.transient:
                raise
            attempt += 1
            delay = next(delays)
            now = clock.now()
            if now + delay >= deadline:
                raise RetryDeadline("still failing after %d attempt(s): %s"
                                    % (attempt, exc.msg), last=exc, attempts=attempt)
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            clock.sleep(delay)


def transient_retry(seconds: float, clock=None, base: float = 0.5, cap: float = 10.0,
                    rng=None):
    """Decorator form: retry the decorated call's transient errors for up to
    ``seconds`` from when it is called (``clock`` defaults to the wall clock)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            used = clock or Clock()
            return retry_transient(lambda: fn(*args, **kwargs), used.now() + seconds, used,
                                   base=base, cap=cap, rng=rng)
        return wrapper
    return decorate
