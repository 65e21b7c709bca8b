"""Analysis: thresholds, consecutive failures, inconclusive is never a pass."""
import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.analysis import (
    FAIL, INCONCLUSIVE, PASS, AnalysisRun, AnalysisSpec, SettingsError, judge,
    parse_duration)
from ansible_collections.phoenix.deploy.plugins.module_utils.platforms.base import Metrics


def spec(**kw):
    return AnalysisSpec.from_dict(kw)


def test_healthy_sample_passes():
    verdict = judge(Metrics(400, 2, {"p99": 120.0}, 10), spec(max_latency_ms=500))
    assert verdict.result == PASS
    assert "400 requests" in verdict.reason


@pytest.mark.parametrize("metrics", [
    Metrics(0, 0, None, 10),
    None,
    Metrics(3, 0, {"p99": 10.0}, 10),
])
def test_no_data_or_too_few_requests_is_inconclusive(metrics):
    verdict = judge(metrics, spec(min_requests=50))
    assert verdict.result == INCONCLUSIVE
    assert verdict.result != PASS
    assert "request_count" in verdict.reason and "min 50" in verdict.reason


def test_too_few_requests_with_errors_is_not_a_failure_either():
    # 1 error in 2 requests is 50 %, but too little traffic to judge
    assert judge(Metrics(2, 1, None, 10), spec(min_requests=10)).result == INCONCLUSIVE


def test_error_rate_failure_names_metric_value_threshold():
    verdict = judge(Metrics(412, 128, None, 10), spec(max_error_rate=0.05))
    assert verdict.result == FAIL
    assert verdict.reason == "canary error_rate 0.3107 > max 0.05 over 412 requests"


def test_latency_failure_and_missing_latency():
    s = spec(max_error_rate=None, max_latency_ms=500, latency_percentile="p99")
    fail = judge(Metrics(100, 0, {"p99": 812.0}, 10), s)
    assert fail.result == FAIL
    assert fail.reason == "canary latency_p99 812ms > max 500ms over 100 requests"
    unknown = judge(Metrics(100, 0, None, 10), s)
    assert unknown.result == INCONCLUSIVE
    assert "latency_p99: no data" in unknown.reason


def test_consecutive_failure_limit_message():
    run = AnalysisRun(spec(max_error_rate=0.05, failure_limit=3))
    bad = Metrics(412, 128, None, 10)
    run.add(bad)
    run.add(bad)
    assert not run.failed
    assert run.verdict().result == INCONCLUSIVE  # failing but under the limit
    run.add(bad)
    assert run.failed
    assert run.verdict().result == FAIL
    assert run.verdict().reason == ("canary error_rate 0.3107 > max 0.05 over 412 "
                                    "requests (3 consecutive failures)")


def test_pass_resets_consecutive_failures():
    run = AnalysisRun(spec(failure_limit=2))
    run.add(Metrics(100, 50, None, 1))
    run.add(Metrics(100, 0, None, 1))
    run.add(Metrics(100, 50, None, 1))
    assert not run.failed and run.consecutive_failures == 1


def test_run_without_samples_is_inconclusive():
    verdict = AnalysisRun(spec()).verdict()
    assert verdict.result == INCONCLUSIVE and "no data" in verdict.reason


def test_run_of_only_no_data_never_passes():
    run = AnalysisRun(spec())
    for _sample in range(10):
        run.add(Metrics(0, 0, None, 1))
    assert run.verdict().result == INCONCLUSIVE


@pytest.mark.parametrize("settings, fragment", [
    ({"max_error_rate": 1.5}, "analysis.max_error_rate: 1.5 is out of range; allowed 0 to 1"),
    ({"max_error_rate": "lots"}, "analysis.max_error_rate"),
    ({"min_requests": -1}, "analysis.min_requests: -1 is out of range"),
    ({"failure_limit": 0}, "analysis.failure_limit"),
    ({"latency_percentile": "p42"}, "allowed: avg, p50, p90, p95, p99"),
    ({"interval": "soon"}, "analysis.interval: 'soon' is not a duration"),
    ({"on_inconclusive": "promote"}, "allowed: abort, pause"),
    ({"max_eror_rate": 0.1}, "unknown option(s) max_eror_rate"),
    ({"max_error_rate": None}, "no check enabled"),
])
def test_bad_settings_name_option_and_allowed(settings, fragment):
    with pytest.raises(SettingsError) as err:
        AnalysisSpec.from_dict(settings)
    assert fragment in str(err.value)


def test_durations():
    assert parse_duration("500ms", "x") == 0.5
    assert parse_duration("5m", "x") == 300
    assert parse_duration(30, "x") == 30
    with pytest.raises(SettingsError, match="x: -1 is out of range"):
        parse_duration(-1, "x")
