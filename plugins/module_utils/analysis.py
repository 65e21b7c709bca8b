# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Analysis: metric checks on one server group, judged pass / fail /
inconclusive.

No data, or fewer requests than ``min_requests``, is INCONCLUSIVE and never
a pass.  Failed windows are counted over the whole analysis of a release
(Argo Rollouts' ``failureLimit``, not consecutive): the analysis FAILS once
``failure_limit`` windows failed.  Every message names the metric, the value,
the threshold and the count, e.g. ``canary error_rate 0.5 > max 0.05 over 40
requests (3 failed windows of 5, limit 3)``.

Every number and duration must be finite: NaN compares false with every
threshold (a ``max_error_rate`` of NaN would pass a 100 %-error canary) and
a NaN deadline never expires.
"""

from __future__ import annotations

import math
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


def _finite(value, option: str, allowed: str):
    if isinstance(value, float) and not math.isfinite(value):
        raise SettingsError("%s: %r is not a finite number; allowed %s"
                            % (option, value, allowed))


def parse_duration(value, option: str, maximum: float = 7 * 86400) -> float:
    """Seconds from ``30``, ``2.5``, ``"500ms"``, ``"30s"``, ``"5m"``, ``"1h"``;
    NaN and infinities are refused."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, (int, float)):
        _finite(value, option, "0 to %gs" % maximum)
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
    _finite(value, option, "%g to %g" % (low, high))
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
    windows: int = 1  # per analysis step after a traffic shift (not canary pauses)

    OPTIONS = ("max_error_rate", "max_latency_ms", "latency_percentile",
               "min_requests", "interval", "failure_limit", "on_inconclusive",
               "windows")

    @classmethod
    def from_dict(cls, data: Optional[dict], prefix: str = "analysis"):
        if data is not None and not isinstance(data, dict):
            raise SettingsError("%s: %r; allowed a dict of checks (options %s) or "
                                "'none' (deploy without analysis, recorded as such)"
                                % (prefix, data, ", ".join(cls.OPTIONS)))
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
        if "windows" in data:
            spec.windows = _number(data["windows"], prefix + ".windows", 1, 1000,
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
    """All windows judged for one release, over every pause and analysis step
    (Argo Rollouts' ``failureLimit``): the run FAILS as soon as
    ``failure_limit`` windows failed in total, whether or not passing windows
    came in between (F, F, P, F fails with a limit of 3).  INCONCLUSIVE
    windows neither pass nor fail.

    A *judgment* (one canary pause, one analysis step after a traffic shift)
    is the windows since ``begin()``; ``verdict()`` judges it: FAIL once the
    limit is reached, PASS when its latest window passed, INCONCLUSIVE
    otherwise (no window, no data, or a failure still under the limit).
    ``state()`` / ``state=`` carry the counts across controller runs (a
    canary paused for ``promote`` resumes with the failures it had).
    """

    COUNTS = ("windows", "passed", "failed", "inconclusive")

    def __init__(self, spec: AnalysisSpec, subject: str = "canary",
                 state: Optional[dict] = None):
        self.spec = spec
        self.subject = subject
        state = state if isinstance(state, dict) else {}
        self.counts = {}
        for key in self.COUNTS:
            value = state.get(key, 0)
            self.counts[key] = value if isinstance(value, int) and value >= 0 else 0
        judgments = state.get("judgments")
        self.judgments = [j for j in judgments if j in (PASS, INCONCLUSIVE)] \
            if isinstance(judgments, list) else []
        self.samples = []
        self._start = 0
        self._failed: Optional[Verdict] = None

    def begin(self) -> None:
        """Start a new judgment (a pause or an analysis step)."""
        self._start = len(self.samples)

    def _count(self) -> str:
        failed = self.counts["failed"]
        return "%d failed window%s of %d, limit %d" % (
            failed, "" if failed == 1 else "s", self.counts["windows"],
            self.spec.failure_limit)

    def add(self, metrics, subject: Optional[str] = None) -> Verdict:
        sample = judge(metrics, self.spec, subject or self.subject)
        self.samples.append(sample)
        self.counts["windows"] += 1
        if sample.result == FAIL:
            self.counts["failed"] += 1
            if self.counts["failed"] >= self.spec.failure_limit and not self._failed:
                self._failed = Verdict(FAIL, ["%s (%s)" % (m, self._count())
                                              for m in sample.messages], sample.requests)
        elif sample.result == PASS:
            self.counts["passed"] += 1
        else:
            self.counts["inconclusive"] += 1
        return sample

    @property
    def failed(self) -> bool:
        """The failure limit was reached: the analysis failed."""
        return self._failed is not None

    def verdict(self) -> Verdict:
        """Verdict of the current judgment (see the class docstring)."""
        if self._failed:
            return self._failed
        samples = self.samples[self._start:]
        if not samples:
            return Verdict(INCONCLUSIVE, ["%s analysis has no samples (no data)"
                                          % self.subject])
        last = samples[-1]
        if last.result == FAIL:
            return Verdict(INCONCLUSIVE, ["%s (%s)" % (m, self._count())
                                          for m in last.messages], last.requests)
        if last.result == PASS and self.counts["failed"]:
            return Verdict(PASS, ["%s (%s)" % (m, self._count()) for m in last.messages],
                           last.requests)
        return last

    def close(self, result: str) -> None:
        """Record how the current judgment ended (PASS, or INCONCLUSIVE when
        the rollout went on anyway: a first deploy, or a human's promote)."""
        self.judgments.append(result)

    def outcome(self) -> Optional[str]:
        """What the analysis says about the release: ``fail``, ``pass`` (every
        judgment passed), ``inconclusive``, or None before any judgment."""
        if self._failed:
            return FAIL
        if not self.judgments:
            return None
        return PASS if all(j == PASS for j in self.judgments) else INCONCLUSIVE

    def state(self) -> dict:
        data = dict(self.counts)
        data.update(judgments=list(self.judgments), verdict=self.outcome(),
                    failure_limit=self.spec.failure_limit)
        return data
