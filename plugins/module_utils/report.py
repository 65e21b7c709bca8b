# -*- coding: utf-8 -*-
# Copyright: phoenix.deploy contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rollout reports: a timeline of traffic weights and error rate per server
group (sampled from the platform while a rollout runs), written as JSON and
as a PNG chart (matplotlib, Agg backend).

The sampler only *reads* the platform (``list_groups`` and ``metrics`` of its
roles, each window from the previous sample to now) from
its own thread with its own platform object, so it never changes what the
engine does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Optional

from ansible_collections.phoenix.deploy.plugins.module_utils.releases import atomic_write, iso


def _pyplot():
    """matplotlib's pyplot (Agg backend), imported when a chart is drawn:
    importing it takes 0.4 CPU-seconds, which every run of the rollout
    module paid before, also the ones that draw nothing (no change, check
    mode, bad input).  None when matplotlib is missing."""
    try:
        import matplotlib  # pylint: disable=import-outside-toplevel
        matplotlib.use("Agg")
        from matplotlib import pyplot  # pylint: disable=import-outside-toplevel
    except ImportError:  # pragma: no cover - the PNG is optional
        return None
    return pyplot


class TimelineSampler:
    """Samples ``{group: (weight, requests, errors)}`` every ``interval`` s."""

    def __init__(self, platform, artifact: str, environment: str, interval: float = 0.5,
                 max_samples: int = 20000):
        self.platform = platform
        self.artifact, self.environment = artifact, environment
        self.interval = interval
        self.max_samples = max_samples
        self.samples = []
        self._since = {}  # group -> clock time of its previous sample
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="timeline", daemon=True)

    def start(self) -> "TimelineSampler":
        self._thread.start()
        return self

    def stop(self) -> list:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        try:  # the final state (e.g. 100 % back on stable after a rollback)
            self.sample()
        except Exception:  # the report must never break a rollout
            self.errors += 1
        return self.samples

    def sample(self) -> None:
        groups = {}
        now = time.time()
        for group in self.platform.groups.list_groups(self.artifact, self.environment):
            entry = {"weight": group.weight, "size": group.size, "attached": group.attached,
                     "requests": None, "errors": None}
            try:
                start = self._since.get(group.name, now - self.interval)
                self._since[group.name] = now
                metrics = self.platform.metrics.metrics(group.name, start, now)
                entry["requests"], entry["errors"] = metrics.requests, metrics.errors_5xx
            except Exception:  # a group being destroyed between the two calls
                pass
            groups[group.name] = entry
        self.samples.append({"at": time.time(), "groups": groups})

    def _loop(self) -> None:
        while not self._stop.is_set() and len(self.samples) < self.max_samples:
            try:
                self.sample()
            except Exception:  # the report must never break a rollout
                self.errors += 1
            self._stop.wait(self.interval)


def build_report(result: dict, samples: list, extra: Optional[dict] = None) -> dict:
    """The rollout report (JSON-able): outcome, events and the timeline."""
    totals = {}
    for sample in samples:
        for name, entry in sample["groups"].items():
            tot = totals.setdefault(name, {"requests": 0, "errors_5xx": 0})
            tot["requests"] += entry.get("requests") or 0
            tot["errors_5xx"] += entry.get("errors") or 0
    report = {
        "generated": iso(time.time()),
        "action": result.get("action"),
        "state": result.get("state"),
        "msg": result.get("msg"),
        "release": result.get("release"),
        "live": result.get("live"),
        "events": result.get("events") or [],
        "per_group": totals,
        "timeline": [{"at": s["at"], "time": iso(s["at"]), "groups": s["groups"]}
                     for s in samples],
    }
    report.update(extra or {})
    return report


def write_json(path: str, report: dict) -> str:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    atomic_write(path, json.dumps(report, indent=1, sort_keys=True, default=str).encode("utf-8"))
    return path


def write_png(path: str, report: dict) -> Optional[str]:
    """Traffic weight (top) and 5xx error rate (bottom) per group over time,
    with the rollout's events as ticks; None when matplotlib is missing."""
    pyplot = _pyplot()
    if pyplot is None:
        return None
    timeline = report.get("timeline") or []
    events = report.get("events") or []
    starts = [s["at"] for s in timeline] + [e["at"] for e in events if "at" in e]
    t0 = min(starts) if starts else time.time()
    names = sorted({n for s in timeline for n in s["groups"]})
    fig, (top, bottom) = pyplot.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    try:
        for name in names:
            xs, weights, rx, rates = [], [], [], []
            for sample in timeline:
                entry = sample["groups"].get(name)
                x = sample["at"] - t0
                xs.append(x)
                weights.append(entry["weight"] if entry else 0)
                if entry and entry.get("requests"):
                    rx.append(x)
                    rates.append(100.0 * entry["errors"] / entry["requests"])
            top.step(xs, weights, where="post", label=name)
            bottom.plot(rx, rates, marker=".", label=name)
        for event in events:
            if "weights" in event or "verdict" in event or "cause" in event:
                top.axvline(event["at"] - t0, color="0.85", linewidth=0.8, zorder=0)
        release = report.get("release") or {}
        top.set_title("%s %s (%s): %s" % (release.get("artifact", ""), release.get("version", ""),
                                          release.get("strategy") or report.get("action") or "-",
                                          report.get("state")))
        top.set_ylabel("traffic weight %")
        top.set_ylim(-5, 105)
        bottom.set_ylabel("5xx error rate %")
        bottom.set_xlabel("seconds since start")
        bottom.set_ylim(bottom=0)
        if names:
            top.legend(loc="center left", fontsize="small")
        fig.tight_layout()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = path + ".tmp.png"
        fig.savefig(tmp, dpi=90)
        os.replace(tmp, path)
    finally:
        pyplot.close(fig)
    return path
