"""Analysis: thresholds, failed windows over the whole analysis, inconclusive is
never a pass, NaN and infinities are refused."""
import math

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


def test_failure_limit_message_counts_failed_windows():
    run = AnalysisRun(spec(max_error_rate=0.05, failure_limit=3))
    bad = Metrics(412, 128, None, 10)
    run.add(bad)
    run.add(bad)
    assert not run.failed
    assert run.verdict().result == INCONCLUSIVE  # failing but under the limit
    assert run.verdict().reason.endswith("(2 failed windows of 2, limit 3)")
    run.add(bad)
    assert run.failed
    assert run.verdict().result == FAIL
    assert run.verdict().reason == ("canary error_rate 0.3107 > max 0.05 over 412 "
                                    "requests (3 failed windows of 3, limit 3)")


BAD, GOOD = Metrics(40, 20, None, 5), Metrics(40, 0, None, 5)


def test_failed_windows_add_up_over_the_whole_analysis():
    """Argo failureLimit semantics: F,F,P,F,F,P fails with the default limit (3);
    a pass between failures does not reset the count (it did: "consecutive")."""
    run = AnalysisRun(spec(min_requests=20))
    assert run.spec.failure_limit == 3  # the default
    results = [run.add(m).result for m in (BAD, BAD, GOOD, BAD, BAD, GOOD)]
    assert results == [FAIL, FAIL, PASS, FAIL, FAIL, PASS]
    assert run.failed
    verdict = run.verdict()
    assert verdict.result == FAIL
    assert verdict.reason == ("canary error_rate 0.5 > max 0.05 over 40 requests "
                              "(3 failed windows of 4, limit 3)")
    assert run.state()["verdict"] == FAIL


def test_failures_under_the_limit_then_a_pass_passes_with_the_count():
    run = AnalysisRun(spec(failure_limit=2, min_requests=20))
    run.add(BAD)
    run.add(GOOD)
    assert not run.failed and run.counts == {"windows": 2, "passed": 1, "failed": 1,
                                             "inconclusive": 0}
    assert run.verdict().result == PASS
    assert run.verdict().reason == ("canary passed all checks over 40 requests "
                                    "(1 failed window of 2, limit 2)")


def test_failed_windows_carry_over_judgments_and_controller_runs():
    """A canary's pauses (and a promote after an indefinite pause, which runs
    in a new controller) are one analysis: the state carries the counts."""
    run = AnalysisRun(spec(failure_limit=3, min_requests=20))
    run.begin()
    run.add(BAD)
    run.add(GOOD)
    run.close(run.verdict().result)
    resumed = AnalysisRun(spec(failure_limit=3, min_requests=20), state=run.state())
    resumed.begin()
    resumed.add(BAD)
    assert not resumed.failed
    resumed.add(BAD)
    assert resumed.failed
    assert resumed.verdict().reason.endswith("(3 failed windows of 4, limit 3)")


def test_outcome_is_pass_only_when_every_judgment_passed():
    run = AnalysisRun(spec(min_requests=20))
    assert run.outcome() is None  # nothing judged yet
    run.begin()
    run.add(GOOD)
    run.close(run.verdict().result)
    assert run.outcome() == PASS
    run.begin()
    run.add(Metrics(0, 0, None, 5))
    assert run.verdict().result == INCONCLUSIVE
    run.close(INCONCLUSIVE)  # e.g. a first deploy that went live without traffic
    assert run.outcome() == INCONCLUSIVE


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
    ({"windows": 0}, "analysis.windows: 0 is out of range"),
    ("yes", "analysis: 'yes'; allowed a dict of checks"),
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


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("option", ["max_error_rate", "max_latency_ms", "interval"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_nan_and_infinities_are_refused_naming_the_option(option, value):
    """NaN compares false with every threshold: max_error_rate .nan used to
    pass a 100 %-error canary."""
    with pytest.raises(SettingsError) as err:
        AnalysisSpec.from_dict({option: value})
    assert str(err.value).startswith("analysis.%s: " % option)
    assert "allowed" in str(err.value)


def test_nan_error_rate_would_never_fail_a_window():
    """Why NaN must be refused: every comparison with it is false."""
    with pytest.raises(SettingsError, match=r"analysis.max_error_rate: nan is not a "
                                            r"finite number; allowed 0 to 1"):
        AnalysisSpec.from_dict({"max_error_rate": NAN})


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_durations_refuse_nan_and_infinities(value):
    with pytest.raises(SettingsError, match=r"^x: .* allowed 0 to "):
        parse_duration(value, "x")
    assert math.isnan(NAN)
