"""A GCE controller killed at every API call of a deploy (rolling, blue/green,
canary), on the schema-checking fake: the next run (converge) leaves exactly one
live release at 100 % and no orphan, and the same deploy run again goes live.
The kill is an exception raised after the fake answered (the change happened,
the controller never saw it): the worst case for get-or-create."""
import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "unit" / "plugins" / "module_utils"))
from test_rollout_gce import Env, Kill, live_at_100  # noqa: E402  pylint: disable=wrong-import-position
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import LIVE  # noqa: E402

#: a short pause: each health poll of a pause is 3 more calls to kill at
CANARY = {"steps": [{"set_weight": 10}, {"pause": {"duration": 10}}]}


@pytest.mark.slow
@pytest.mark.parametrize("strategy, settings", [
    ("rolling", None), ("blue_green", {"scale_down_delay": 60}), ("canary", CANARY)])
def test_a_controller_killed_at_every_api_call_converges(tmp_path, strategy, settings):
    counting = Env(tmp_path, "count")
    counting.deploy("1.0.0")
    before = counting.http.count
    assert counting.deploy("1.1.0", strategy=strategy, settings=settings).state == LIVE
    total = counting.http.count - before
    assert total >= 10
    outcomes = []
    for kill_at in range(1, total + 1):
        env = Env(tmp_path, "kill%d" % kill_at)
        env.deploy("1.0.0")
        env.http.kill_at = env.http.count + kill_at
        with pytest.raises(Kill):
            env.deploy("1.1.0", strategy=strategy, settings=settings)
        env.http.kill_at = None
        env.engine().converge()
        history = env.store.load("catalog", "ci")
        outcomes.append(history.live)
        live, groups = live_at_100(env, "1.1.0" if history.live == "v002" else "1.0.0")
        for name in groups:  # no orphan: every group is live or a release's warm group
            assert name == live.group or any(r.group == name and r.warm_until
                                             for r in history.releases), (kill_at, groups)
        again = env.deploy("1.1.0", strategy=strategy, settings=settings)
        assert again.state == LIVE, (kill_at, again.msg)
        live_at_100(env, "1.1.0")
        env.fake.check()
    assert len(outcomes) == total and "v001" in outcomes and "v002" in outcomes
