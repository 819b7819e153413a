"""The Pusher into a gs:// serving folder (tests/fixtures/object_store.py): numbered versions,
no duplicate push, `saved_model.pb` published last, no staging prefix left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request

import tensorflow as tf

from components import pusher
from components.warmup import WARMUP_FILE
from tests.components.test_pusher import fake_saved_model


def _generations(object_store, prefix: str) -> dict[str, int]:
    """Object name (below `prefix`) -> generation, from the store's JSON listing. The store
    numbers generations by creation time, so they give the order objects were written in."""
    query = urllib.parse.urlencode({"prefix": prefix})
    url = f"{object_store.url}/storage/v1/b/{object_store.bucket}/o?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        items = json.load(response).get("items", [])
    return {
        i["name"][len(prefix) :]: int(i["generation"]) for i in items if not i["name"].endswith("/")
    }


def test_push_into_a_bucket(object_store, tmp_path):
    local = fake_saved_model(tmp_path / "model")
    model = object_store.upload(local, object_store.uri("pusher", "model"))
    base = object_store.uri("pusher", "serving", "tailings")
    record = {"model_uri": model}

    assert pusher.push_atomically(model, base, record) == (1, True)
    assert pusher.push_atomically(model, base, record) == (1, False)  # same bytes: no copy

    generations = _generations(object_store, "pusher/serving/tailings/1/")
    assert set(generations) == {
        "saved_model.pb",
        "variables/variables.index",
        WARMUP_FILE,
        pusher.PUSH_RECORD,
    }
    assert max(generations, key=generations.get) == "saved_model.pb"  # written last
    assert [n.rstrip("/") for n in tf.io.gfile.listdir(base)] == ["1"]  # staging removed
    pushed = json.loads(tf.io.gfile.GFile(f"{base}/1/{pusher.PUSH_RECORD}").read())
    assert pushed["version"] == 1
    assert pushed["fingerprint"] == pusher.model_fingerprint(str(local))  # same as on disk

    with tf.io.gfile.GFile(f"{model}/variables/variables.index", "wb") as fh:
        fh.write(b"new weights")
    assert pusher.push_atomically(model, base, record) == (2, True)
    assert pusher.numeric_versions(base) == [1, 2]


def test_push_removes_a_dead_pushers_staging_prefix(object_store, tmp_path):
    base = object_store.uri("pusher-stale", "serving", "tailings")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    stale = f"{base}/{pusher.temp_name(dead.pid)}"
    dead.wait()
    with tf.io.gfile.GFile(f"{stale}/saved_model.pb", "wb") as fh:
        fh.write(b"half a model")
    model = object_store.upload(
        fake_saved_model(tmp_path / "model"), object_store.uri("pusher-stale", "model")
    )

    assert pusher.push_atomically(model, base, {}) == (1, True)
    assert [n.rstrip("/") for n in tf.io.gfile.listdir(base)] == ["1"]
