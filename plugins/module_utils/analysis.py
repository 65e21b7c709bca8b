# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Analysis: metric checks on one server group, judged pass / fail /
inconclusive.

No data, or fewer requests than ``min_requests``, is INCONCLUSIVE and never
a pass.  Every message names the metric, the value and the threshold, e.g.
``canary error_rate 0.31 > max 0.05 over 412 requests (3 consecutive
failures)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"

# "avg" is a statistic, not a percentile, but some platforms only have it (HAProxy keeps
# averages of response times); a platform without the asked one gives no data: inconclusive.
PERCENTILES = ("avg", "p50", "p90", "p95", "p99")
ON_INCONCLUSIVE = ("abort", "pause")


class SettingsError(PhoenixError, ValueError):
    """Bad user settings; the message names the option and what is allowed."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(value, option: str, maximum: float = 7 * 86400) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value)) if value is not None else None
        if not match:
            raise SettingsError(
                "%s: %r is not a duration; use seconds (30) or a string like "
                "'500ms', '30s', '5m', '1h'" % (option, value))
        seconds = float(match.group(1)) * _UNIT[match.group(2)]
    if seconds < 0 or seconds > maximum:
        raise SettingsError("%s: %r is out of range; allowed 0 to %gs"
                            % (option, value, maximum))
    return seconds


def _number(value, option, low, high, integer=False):
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise SettingsError("%s: %r must be a%s number between %g and %g"
                            % (option, value, "n integer" if integer else "",
                               low, high))
    if value < low or value > high:
        raise SettingsError("%s: %r is out of range; allowed %g to %g"
                            % (option, value, low, high))
    return value


@dataclass
class AnalysisSpec:
    """Thresholds for one group's metrics; ``None`` disables a check."""

    max_error_rate: Optional[float] = 0.05
    max_latency_ms: Optional[float] = None
    latency_percentile: str = "p99"
    min_requests: int = 50
    interval: float = 10.0
    failure_limit: int = 3
    on_inconclusive: str = "abort"

    OPTIONS = ("max_error_rate", "max_latency_ms", "latency_percentile",
               "min_requests", "interval", "failure_limit", "on_inconclusive")

    @classmethod
    def from_dict(cls, data: Optional[dict], prefix: str = "analysis"):
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.OPTIONS))
        if unknown:
            raise SettingsError("%s: unknown option(s) %s; allowed: %s"
                                % (prefix, ", ".join(unknown),
                                   ", ".join(cls.OPTIONS)))
        spec = cls()
        if "max_error_rate" in data:
            value = data["max_error_rate"]
            spec.max_error_rate = None if value is None else float(
                _number(value, prefix + ".max_error_rate", 0, 1))
        if data.get("max_latency_ms") is not None:
            spec.max_latency_ms = float(_number(
                data["max_latency_ms"], prefix + ".max_latency_ms", 0.001, 3600000))
        if "latency_percentile" in data:
            if data["latency_percentile"] not in PERCENTILES:
                raise SettingsError("%s.latency_percentile: %r; allowed: %s"
                                    % (prefix, data["latency_percentile"],
                                       ", ".join(PERCENTILES)))
            spec.latency_percentile = data["latency_percentile"]
        if "min_requests" in data:
            spec.min_requests = _number(data["min_requests"],
                                        prefix + ".min_requests", 1, 10 ** 9,
                                        integer=True)
        if "interval" in data:
            spec.interval = parse_duration(data["interval"], prefix + ".interval",
                                           maximum=3600)
            if spec.interval <= 0:
                raise SettingsError("%s.interval: must be above 0" % prefix)
        if "failure_limit" in data:
            spec.failure_limit = _number(data["failure_limit"],
                                         prefix + ".failure_limit", 1, 1000,
                                         integer=True)
        if "on_inconclusive" in data:
            if data["on_inconclusive"] not in ON_INCONCLUSIVE:
                raise SettingsError("%s.on_inconclusive: %r; allowed: %s"
                                    % (prefix, data["on_inconclusive"],
                                       ", ".join(ON_INCONCLUSIVE)))
            spec.on_inconclusive = data["on_inconclusive"]
        if spec.max_error_rate is None and spec.max_latency_ms is None:
            raise SettingsError("%s: no check enabled; set max_error_rate "
                                "and/or max_latency_ms" % prefix)
        return spec

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.OPTIONS}


@dataclass
class Verdict:
    result: str
    messages: list = field(default_factory=list)
    requests: int = 0

    @property
    def reason(self) -> str:
        return "; ".join(self.messages)


def _fmt(value: float) -> str:
    return ("%.4f" % value).rstrip("0").rstrip(".") if value else "0"


def judge(metrics, spec: AnalysisSpec, subject: str = "canary") -> Verdict:
    """Judge one sample of ``Metrics`` against ``spec``."""
    requests = int(metrics.requests or 0) if metrics is not None else 0
    if requests < spec.min_requests:
        why = "no data" if requests == 0 else "too few requests to judge"
        return Verdict(INCONCLUSIVE, ["%s request_count %d < min %d (%s)"
                                      % (subject, requests, spec.min_requests, why)],
                       requests)
    fails, unknown = [], []
    if spec.max_error_rate is not None:
        rate = metrics.errors_5xx / float(requests)
        if rate > spec.max_error_rate:
            fails.append("%s error_rate %s > max %s over %d requests"
                         % (subject, _fmt(rate), _fmt(spec.max_error_rate), requests))
    if spec.max_latency_ms is not None:
        pct = spec.latency_percentile
        value = (metrics.latency_ms or {}).get(pct)
        if value is None:
            unknown.append("%s latency_%s: no data (max %gms)"
                           % (subject, pct, spec.max_latency_ms))
        elif value > spec.max_latency_ms:
            fails.append("%s latency_%s %gms > max %gms over %d requests"
                         % (subject, pct, value, spec.max_latency_ms, requests))
    if fails:
        return Verdict(FAIL, fails, requests)
    if unknown:
        return Verdict(INCONCLUSIVE, unknown, requests)
    return Verdict(PASS, ["%s passed all checks over %d requests"
                          % (subject, requests)], requests)


class AnalysisRun:
    """Samples over time with a consecutive-failure limit.

    A PASS sample resets the failure count; an INCONCLUSIVE one neither
    resets nor counts.  ``verdict()`` is FAIL once ``failure_limit``
    consecutive samples failed, PASS when the latest sample passed, and
    INCONCLUSIVE otherwise (including no samples at all).
    """

    def __init__(self, spec: AnalysisSpec, subject: str = "canary"):
        self.spec = spec
        self.subject = subject
        self.samples = []
        self.consecutive_failures = 0
        self._failed: Optional[Verdict] = None

    def add(self, metrics) -> Verdict:
        sample = judge(metrics, self.spec, self.subject)
        self.samples.append(sample)
        if sample.result == FAIL:
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.spec.failure_limit and not self._failed:
                suffix = " (%d consecutive failure%s)" % (
                    self.consecutive_failures,
                    "" if self.consecutive_failures == 1 else "s")
                self._failed = Verdict(FAIL, [m + suffix for m in sample.messages],
                                       sample.requests)
        elif sample.result == PASS:
            self.consecutive_failures = 0
        return sample

    @property
    def failed(self) -> bool:
        return self._failed is not None

    def verdict(self) -> Verdict:
        if self._failed:
            return self._failed
        if not self.samples:
            return Verdict(INCONCLUSIVE, ["%s analysis has no samples (no data)"
                                          % self.subject])
        last = self.samples[-1]
        if last.result == PASS:
            return last
        if last.result == FAIL:
            return Verdict(INCONCLUSIVE, [
                m + " (%d of %d allowed consecutive failures)"
                % (self.consecutive_failures, self.spec.failure_limit)
                for m in last.messages], last.requests)
        return last
