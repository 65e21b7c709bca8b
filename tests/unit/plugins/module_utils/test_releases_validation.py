"""Tampered or ill-typed release-store files (history.json, lock): a clear
StoreError naming the file and the field, never a traceback, nothing changed."""
import json
import os

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    FileReleaseStore, LockHolder, Release, StoreError)


def good_history():
    rel = Release(release_id="v001", artifact="catalog", environment="ci", version="1.0.0+b1",
                  image="img@sha256:aaa", strategy="rolling", started=1700000000.5, size=2,
                  status="live", outcome="succeeded", group="catalog-ci-v001",
                  plan=[{"kind": "create", "role": "new", "size": 2}, {"kind": "mark_live"}])
    rel.event(1700000001.0, "deploy started")
    data = {"artifact": "catalog", "environment": "ci", "live": "v001", "next_seq": 2,
            "revision": 1, "releases": [rel.as_dict()]}
    return data


def write(tmp_path, data, name="history.json"):
    directory = tmp_path / "catalog" / "ci"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def tamper(change):
    data = good_history()
    change(data)
    return data


def set_release(field, value):
    return lambda d: d["releases"][0].__setitem__(field, value)


CASES = [
    ("releases is a number", tamper(lambda d: d.__setitem__("releases", 5)), "releases is 5"),
    ("history is a list", [1, 2], "is list, expected a mapping"),
    ("no artifact", tamper(lambda d: d.pop("artifact")), "lacks artifact"),
    ("next_seq string", tamper(lambda d: d.__setitem__("next_seq", "3")), "next_seq is '3'"),
    ("revision bool", tamper(lambda d: d.__setitem__("revision", True)), "revision is True"),
    ("live not a string", tamper(lambda d: d.__setitem__("live", 7)), "live is 7"),
    ("live names no release", tamper(lambda d: d.__setitem__("live", "v009")), "v009"),
    ("other artifact", tamper(lambda d: d.__setitem__("artifact", "search")),
     "belongs to search/ci"),
    ("size is a string", tamper(set_release("size", "x")), "releases[0].size is 'x'"),
    ("release is a string", tamper(lambda d: d["releases"].append("v002")), "releases[1] is str"),
    ("release without id", tamper(lambda d: d["releases"][0].pop("release_id")),
     "lacks release_id"),
    ("started NaN", tamper(set_release("started", float("nan"))), "started is nan"),
    ("settings a list", tamper(set_release("settings", [1])), "settings is [1]"),
    ("plan entry a number", tamper(set_release("plan", [5])), "plan[0]"),
    ("plan step unknown key", tamper(set_release("plan", [{"kind": "create", "rm": "-rf"}])),
     "plan[0]"),
    ("events a mapping", tamper(set_release("events", {"a": 1})), "events is"),
    ("event a string", tamper(set_release("events", ["x"])), "events[0]"),
    ("duplicate release id", tamper(lambda d: d["releases"].append(dict(d["releases"][0]))),
     "repeats release id v001"),
]


@pytest.mark.parametrize("label,data,fragment", CASES, ids=[c[0] for c in CASES])
def test_ill_typed_history_names_file_and_field(tmp_path, label, data, fragment):
    path = write(tmp_path, data)
    before = path.read_bytes()
    store = FileReleaseStore(str(tmp_path))
    with pytest.raises(StoreError) as err:
        store.load("catalog", "ci")
    assert isinstance(err.value, PhoenixError)  # the modules report these without a traceback
    assert str(path) in str(err.value) and fragment in str(err.value), str(err.value)
    assert path.read_bytes() == before


def test_valid_history_still_loads(tmp_path):
    write(tmp_path, good_history())
    history = FileReleaseStore(str(tmp_path)).load("catalog", "ci")
    assert history.live_release().size == 2 and history.next_seq == 2


@pytest.mark.parametrize("data,fragment", [
    ({"pid": "x", "host": "h", "user": "u", "started": 1.0}, "pid is 'x'"),
    ({"pid": 0, "host": "h", "user": "u", "started": 1.0}, "pid is 0"),
    ({"pid": 5, "host": "h", "user": "u"}, "lacks started"),
    ({"pid": 5, "host": "h", "user": "u", "started": 1.0, "token": 9}, "token is 9"),
    (5, "is int, expected a mapping"),
])
def test_ill_typed_lock_names_the_file(tmp_path, data, fragment):
    path = write(tmp_path, data, "lock")
    store = FileReleaseStore(str(tmp_path))
    with pytest.raises(StoreError) as err:
        store.lock_holder("catalog", "ci")
    assert str(path) in str(err.value) and fragment in str(err.value), str(err.value)
    with pytest.raises(StoreError) as err:  # acquiring names it too, and keeps it
        store.acquire("catalog", "ci", LockHolder.current("deploy"))
    assert str(path) in str(err.value) and "remove it" in str(err.value)
    assert path.exists()
    assert sorted(os.listdir(path.parent)) == [".guard", "lock"]  # no temp file left


def test_lock_holder_carries_the_request_digest(tmp_path):
    store = FileReleaseStore(str(tmp_path))
    lock = store.acquire("catalog", "ci", LockHolder.current("deploy", request="abc123"))
    assert store.lock_holder("catalog", "ci").request == "abc123"
    store.release(lock)
    old = dict(vars(LockHolder.current("deploy")))
    old.pop("request")  # a lock written before the field existed still reads
    write(tmp_path, old, "lock")
    assert store.lock_holder("catalog", "ci").request is None
