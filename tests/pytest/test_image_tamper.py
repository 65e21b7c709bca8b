"""A tampered image is refused when a rollback re-creates a group from it (issue 9, item 17), on a
real local stack (supervisord + HAProxy): the bundle of the release to roll back to had one file's
mode changed after its release (a chmod, no byte changed). The rollback is refused naming the image,
and the live release keeps serving. The bundles live in a private copy of the image store, so the
shared baked images are never touched."""
import os
import pathlib
import shutil
import stat
import urllib.request

import pytest

from fixtures_rollout import Env
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError

pytestmark = pytest.mark.slow


@pytest.fixture
def private_env(rollout_stack, rollout_images, tmp_path):
    store = tmp_path / "images"
    images = dict(rollout_images, store=str(store))
    for key in ("v1", "v2"):
        src = pathlib.Path(rollout_images[key]["path"])
        dst = store / "local" / "catalog" / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dst, symlinks=True)
        images[key] = dict(rollout_images[key], path=str(dst))
    env = Env(rollout_stack, images, "tamper%d" % (os.getpid() % 1000), tmp_path)
    yield env
    env.clean()
    for dirpath, dirnames, filenames in os.walk(store):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, stat.S_IMODE(os.lstat(p).st_mode) | 0o700)


def get_version(url):
    req = urllib.request.Request(url.rstrip("/") + "/version", headers={"Host": "catalog"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.read().decode()


def test_rollback_refuses_to_recreate_from_a_chmodded_bundle(private_env):
    env = private_env
    assert env.deploy("v1", size=1).state == "live"
    assert env.deploy("v2", size=1, strategy="rolling").state == "live"
    assert len(env.settled_groups()) == 1  # the v1 group is gone: a rollback must re-create it from the image
    app = pathlib.Path(env.images["v1"]["path"]) / "rootfs" / "opt" / "phoenix" / "catalog" / "bin" / "run"
    os.chmod(app, stat.S_IMODE(os.stat(app).st_mode) | 0o022)  # group/other may now write the entrypoint

    try:
        msg = env.engine().rollback().msg  # a failed result ...
    except PhoenixError as exc:  # ... or the platform's error, which the module reports (no traceback)
        msg = str(exc)
    assert "refused" in msg and "modified after baking" in msg and env.images["v1"]["name"] in msg, msg
    history = env.history()
    assert history.live_release().version == env.images["v2"]["version"]
    assert [g.name for g in env.groups().values() if g.attached] == [history.live_release().group]
    assert env.images["v2"]["version"] in get_version(env.url)
