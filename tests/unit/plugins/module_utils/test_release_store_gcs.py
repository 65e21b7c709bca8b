"""The Cloud Storage release store against the schema-checking fake of the
Storage JSON API (tests/gcp_fake): generation preconditions decide every race."""
import json
import subprocess
import threading

import pytest

from ansible_collections.phoenix.deploy.plugins.module_utils import releases, targets
from ansible_collections.phoenix.deploy.plugins.module_utils.errors import PhoenixError
from ansible_collections.phoenix.deploy.plugins.module_utils.release_stores.gcs import GCSReleaseStore
from ansible_collections.phoenix.deploy.plugins.module_utils.releases import (
    ConflictError, FileReleaseStore, LockHeld, LockHolder, Release, StoreError)
from gcp_fake import GoogleFake

BUCKET = "phoenix-releases"


@pytest.fixture
def fake():
    fake = GoogleFake()
    fake.add_bucket(BUCKET)
    yield fake
    fake.check()  # no request the discovery document refuses


def store_on(fake, prefix="teams/shop"):
    return GCSReleaseStore(BUCKET, prefix, client=fake.build("storage", "v1"))


def release(rid="v001"):
    return Release(release_id=rid, artifact="catalog", environment="ci", version="1.0.0+b1",
                   image="projects/p/global/images/catalog-1-0-0-b1", strategy="canary", started=1700000000.5)


def dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_round_trip_one_object_per_artifact_and_environment(fake):
    store = store_on(fake)
    history = store.load("catalog", "ci")
    assert history.releases == [] and history.revision == 0
    history.add(release(history.new_release_id()))
    history.live = "v001"
    store.save(history)
    assert history.revision == 1
    stored = json.loads(fake.object_data(BUCKET, "teams/shop/releases/catalog/ci.json"))
    assert stored["live"] == "v001" and stored["revision"] == 1
    again = store_on(fake).load("catalog", "ci")
    assert again.live_release().image == "projects/p/global/images/catalog-1-0-0-b1" and again.next_seq == 2
    again.get("v001").status = releases.LIVE
    store_on(fake).save(again)  # a fresh store reads the generation itself
    assert store.load("catalog", "ci").revision == 2
    assert store_on(fake, prefix="").load("catalog", "ci").releases == []  # another prefix: another store
    assert store.root == "gs://phoenix-releases/teams/shop"


def test_two_stores_racing_one_conflict(fake):
    first, second = store_on(fake), store_on(fake)
    a, b = first.load("catalog", "ci"), second.load("catalog", "ci")
    a.add(release("v001"))
    first.save(a)
    b.add(release("v002"))
    with pytest.raises(ConflictError, match="phoenix-releases/teams/shop/releases/catalog/ci.json changed concurrently"):
        second.save(b)
    # the generation precondition decided it (the store did not read the object again)
    assert ("storage.objects.insert", 412) in fake.log
    assert [r.release_id for r in first.load("catalog", "ci").releases] == ["v001"]


def test_many_controllers_racing_exactly_one_wins(fake):
    stores = [store_on(fake) for _i in range(6)]
    histories = [s.load("catalog", "ci") for s in stores]
    barrier, outcome = threading.Barrier(len(stores)), []

    def save(store, history, rid):
        history.add(release(rid))
        barrier.wait(timeout=10)
        try:
            store.save(history)
            outcome.append(("won", rid))
        except ConflictError:
            outcome.append(("lost", rid))

    threads = [threading.Thread(target=save, args=(s, h, "v%03d" % i)) for i, (s, h) in
               enumerate(zip(stores, histories), 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(o[0] for o in outcome) == ["lost"] * 5 + ["won"]
    winner = [rid for what, rid in outcome if what == "won"][0]
    assert [r.release_id for r in store_on(fake).load("catalog", "ci").releases] == [winner]


def test_two_lock_acquirers_one_lock_held(fake):
    one, two = store_on(fake), store_on(fake)
    barrier, outcome = threading.Barrier(2), []

    def take(store, rid):
        barrier.wait(timeout=10)
        try:
            outcome.append(("locked", store.acquire("catalog", "ci", LockHolder.current("deploy", rid))))
        except LockHeld as exc:
            outcome.append(("held", exc))

    threads = [threading.Thread(target=take, args=(s, rid)) for s, rid in ((one, "v001"), (two, "v002"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(o[0] for o in outcome) == ["held", "locked"]
    lock = [o[1] for o in outcome if o[0] == "locked"][0]
    held = [o[1] for o in outcome if o[0] == "held"][0]
    assert "catalog/ci is locked by deploy of release %s by pid" % lock.holder.release_id in str(held)
    assert held.holder.token == lock.holder.token
    assert store_on(fake).lock_holder("catalog", "ci").token == lock.holder.token


def test_lock_update_release_and_strangers(fake):
    store = store_on(fake)
    lock = store.acquire("catalog", "ci", LockHolder.current("deploy"))
    store.update_lock(lock, release_id="v010")
    assert store.lock_holder("catalog", "ci").release_id == "v010"
    stranger = releases.Lock("catalog", "ci", LockHolder.current("deploy"))
    store.release(stranger)  # not ours: no effect
    with pytest.raises(StoreError, match="no longer ours"):
        store.update_lock(stranger, release_id="v011")
    assert store.lock_holder("catalog", "ci").token == lock.holder.token
    store.release(lock)
    assert store.lock_holder("catalog", "ci") is None
    assert fake.object_data(BUCKET, "teams/shop/releases/catalog/ci.lock") is None


def test_stale_lock_taken_over_once(fake):
    store_on(fake).acquire("catalog", "ci", LockHolder.current("deploy", "v003", pid=dead_pid()))
    first, second = store_on(fake), store_on(fake)
    lock = first.acquire("catalog", "ci", LockHolder.current("deploy", "v004"))
    assert lock.recovered_from.release_id == "v003"
    with pytest.raises(LockHeld, match="release v004") as info:
        second.acquire("catalog", "ci", LockHolder.current("deploy", "v005"))
    assert "delete gs://phoenix-releases/teams/shop/releases/catalog/ci.lock" in str(info.value)


def test_lock_of_another_host_is_never_stale(fake):
    remote = LockHolder.current("deploy", "v003")
    remote.host, remote.pid = "other-controller", 999999
    store_on(fake).acquire("catalog", "ci", remote)
    with pytest.raises(LockHeld, match="on host other-controller"):
        store_on(fake).acquire("catalog", "ci", LockHolder.current("deploy"))


def test_stale_lock_recoverers_racing_one_wins(fake):
    store_on(fake).acquire("catalog", "ci", LockHolder.current("deploy", "v003", pid=dead_pid()))
    stores = [store_on(fake) for _i in range(4)]
    barrier, outcome = threading.Barrier(len(stores)), []

    def take(store, rid):
        barrier.wait(timeout=10)
        try:
            outcome.append(("locked", store.acquire("catalog", "ci", LockHolder.current("deploy", rid))))
        except LockHeld:
            outcome.append(("held", None))

    threads = [threading.Thread(target=take, args=(s, "v%03d" % (10 + i))) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(o[0] for o in outcome) == ["held"] * 3 + ["locked"]
    lock = [o[1] for o in outcome if o[0] == "locked"][0]
    assert lock.recovered_from.release_id == "v003"


def test_history_replaced_between_metadata_and_content_is_read_consistently(fake):
    store = store_on(fake)
    history = store.load("catalog", "ci")
    history.add(release("v001"))
    store.save(history)
    other = store_on(fake)
    newer = other.load("catalog", "ci")
    newer.add(release("v002"))
    gets = []

    def hook(method_id, phase):
        if method_id == "storage.objects.get" and phase == "before":
            gets.append(1)
            if len(gets) == 2:  # after the metadata read, before the content read
                fake.hook = None
                other.save(newer)
    fake.hook = hook
    loaded = store_on(fake).load("catalog", "ci")
    # the content read asked for the generation it had seen (404), so the store read again
    assert [r.release_id for r in loaded.releases] == ["v001", "v002"] and loaded.revision == 2
    assert ("storage.objects.get", 404) in fake.log


def test_transient_errors_surface_as_transient(fake):
    store = store_on(fake)
    fake.inject("storage.objects.get", 503)
    with pytest.raises(StoreError) as info:
        store.load("catalog", "ci")
    assert info.value.transient and "HTTP 503" in str(info.value) and "transient" in str(info.value)
    history = store.load("catalog", "ci")
    history.add(release())
    fake.inject("storage.objects.insert", 429)
    with pytest.raises(StoreError) as info:
        store.save(history)
    assert info.value.transient and history.revision == 0
    store.save(history)  # the retry works
    fake.inject("storage.objects.insert", 403)
    history.add(release("v002"))
    with pytest.raises(StoreError) as info:
        store.save(history)
    assert not info.value.transient and "roles/storage.objectUser on bucket phoenix-releases" in str(info.value)


def test_missing_bucket_and_damaged_history(fake):
    with pytest.raises(StoreError, match="bucket nope does not exist"):
        GCSReleaseStore("nope", client=fake.build("storage", "v1")).load("catalog", "ci")
    gcs = fake.build("storage", "v1")
    from googleapiclient.http import MediaInMemoryUpload
    gcs.objects().insert(bucket=BUCKET, name="teams/shop/releases/catalog/ci.json",
                         media_body=MediaInMemoryUpload(b'{"artifact": "catalog"}')).execute()
    with pytest.raises(StoreError, match="gs://phoenix-releases/teams/shop/releases/catalog/ci.json: lacks environment"):
        store_on(fake).load("catalog", "ci")


def test_store_id_written_once(fake):
    first, second = store_on(fake), store_on(fake)
    assert first.store_id == second.store_id and first.store_id.startswith("store-")
    assert store_on(fake, "other").store_id != first.store_id


def test_make_store_picks_gcs_and_refuses_malformed_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("PHOENIX_STATE_DIR", str(tmp_path))
    store = targets.make_store({"store": "gs://phoenix-releases/teams/shop/"}, {})
    assert isinstance(store, GCSReleaseStore)
    assert (store.bucket, store.prefix) == ("phoenix-releases", "teams/shop")
    assert store.directory("catalog", "ci") == str(tmp_path / "releases" / "catalog" / "ci")
    assert isinstance(targets.make_store({"store": str(tmp_path / "r")}, {}), FileReleaseStore)
    for bad in ("gs://", "gs:/phoenix-releases", "gs://Phoenix_Releases", "gs://ab", "gs://b-1/a//b",
                "gs://b-1/../x", "gs://b-1/a b"):
        with pytest.raises(PhoenixError) as info:
            targets.make_store({"store": bad}, {})
        assert info.value.param == "store" and "use gs://<bucket>[/<prefix>]" in info.value.msg, bad
    with pytest.raises(PhoenixError, match="'s3://bucket' is not supported; allowed: a directory, or gs://"):
        targets.make_store({"store": "s3://bucket"}, {})


def test_file_store_refuses_a_url_instead_of_making_a_gs_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match="'gs://phoenix-releases/x' is a URL, not a directory"):
        FileReleaseStore("gs://phoenix-releases/x")
    assert list(tmp_path.iterdir()) == []


def test_without_credentials_the_error_names_them(tmp_path, monkeypatch):
    import google.auth.compute_engine._metadata as metadata
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud application-default credentials
    monkeypatch.setattr(metadata, "is_on_gce", lambda *a, **k: False)  # never probe a metadata server
    store = GCSReleaseStore("phoenix-releases")
    with pytest.raises(StoreError) as info:
        store.load("catalog", "ci")
    assert info.value.param == "store" and not info.value.transient
    assert "needs Google credentials and found none: set GOOGLE_APPLICATION_CREDENTIALS" in info.value.msg
