"""The local object store (tests/fixtures/object_store.py) really serves all three libraries.

Each library writes something, and the other two list, stat and read it back through the same
gs:// URI: tf.io.gfile (TFX's fileio), Beam's FileSystems, and GDAL through rasterio.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
import urllib.request

import numpy as np
import pytest
import rasterio
import tensorflow as tf
from apache_beam.io.filesystems import FileSystems
from rasterio.io import MemoryFile

from tests.fixtures.geotiffs import write_geotiff


def _geotiff_bytes(tmp_path, array: np.ndarray) -> bytes:
    return write_geotiff(tmp_path / "a.tif", array).read_bytes()


def test_tf_beam_and_gdal_share_the_store(object_store, tmp_path):
    gfile = tf.io.gfile
    base = object_store.uri("three-libraries")

    # tf.io.gfile writes (folders, a text file, a GeoTIFF), renames, stats and lists.
    gfile.makedirs(f"{base}/tf/sub")
    with gfile.GFile(f"{base}/tf/sub/note.txt", "w") as fh:
        fh.write("from tensorflow")
    gfile.rename(f"{base}/tf/sub/note.txt", f"{base}/tf/note.txt")
    assert not gfile.exists(f"{base}/tf/sub/note.txt")
    assert gfile.isdir(f"{base}/tf/sub")
    pixels = np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32)
    with gfile.GFile(f"{base}/tf/img.tif", "wb") as fh:
        fh.write(_geotiff_bytes(tmp_path, pixels))
    assert sorted(gfile.listdir(f"{base}/tf")) == ["img.tif", "note.txt", "sub/"]
    assert gfile.stat(f"{base}/tf/note.txt").length == len("from tensorflow")

    # Objects TensorFlow wrote link to the store itself (the fixture's `_LAUNCHER` fix), as
    # Beam downloads through an object's mediaLink.
    name = urllib.parse.quote("three-libraries/tf/note.txt", safe="")
    with urllib.request.urlopen(
        f"{object_store.url}/storage/v1/b/{object_store.bucket}/o/{name}"
    ) as r:
        assert json.load(r)["mediaLink"].startswith(object_store.url + "/")

    # Beam lists and reads what TensorFlow wrote, and writes for the others.
    matched = FileSystems.match([f"{base}/tf/*"])[0].metadata_list
    assert {m.path.rsplit("/", 1)[1]: m.size_in_bytes for m in matched}["note.txt"] == 15
    with FileSystems.open(f"{base}/tf/note.txt") as fh:
        assert fh.read() == b"from tensorflow"
    with FileSystems.create(f"{base}/beam/note.txt") as fh:
        fh.write(b"from beam")
    with FileSystems.create(f"{base}/beam/img.tif") as fh:
        fh.write(_geotiff_bytes(tmp_path, pixels[::-1].copy()))
    assert gfile.GFile(f"{base}/beam/note.txt", "rb").read() == b"from beam"

    # An object of a megabyte reads back whole through both (the fixture paces the store's
    # responses: google-cloud-cpp's buffer overflowed on bigger reads over plain HTTP).
    big = np.random.default_rng(0).bytes(1 << 20)
    with gfile.GFile(f"{base}/tf/big.bin", "wb") as fh:
        fh.write(big)
    assert gfile.GFile(f"{base}/tf/big.bin", "rb").read() == big
    with FileSystems.open(f"{base}/tf/big.bin") as fh:
        assert fh.read() == big

    # A TensorFlow checkpoint (what SavedModels hold) saves to and restores from the store.
    weights = tf.Variable(tf.random.stateless_normal([64, 64], seed=[1, 2]))
    saved = tf.train.Checkpoint(weights=weights).write(f"{base}/tf/ckpt/weights")
    restored = tf.Variable(tf.zeros([64, 64]))
    tf.train.Checkpoint(weights=restored).read(saved).assert_consumed()
    np.testing.assert_array_equal(restored.numpy(), weights.numpy())

    # GDAL reads both GeoTIFFs straight from the store (gs:// and /vsigs/ alike).
    with rasterio.open(f"{base}/tf/img.tif") as src:
        np.testing.assert_array_equal(src.read(), pixels)
    vsigs = f"/vsigs/{object_store.bucket}/three-libraries/beam/img.tif"
    with rasterio.open(vsigs) as src:
        np.testing.assert_array_equal(src.read(), pixels[::-1])
        assert src.crs.to_epsg() == 4326

    # GDAL writes through MemoryFile + gfile (GDAL's /vsigs/ writing needs signed requests).
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=8, height=8, count=1, dtype="uint8") as dst:
            dst.write(np.full((1, 8, 8), 7, np.uint8))
        with gfile.GFile(f"{base}/gdal/seven.tif", "wb") as fh:
            fh.write(mem.read())
    with rasterio.open(f"{base}/gdal/seven.tif") as src:
        assert int(src.read().sum()) == 7 * 64


def test_a_subprocess_gets_the_store_from_env_alone(object_store):
    """What a pipeline step launched as a process (KFP's container command) relies on."""
    uri = object_store.uri("subprocess", "hello.txt")
    code = (
        "import sys, tensorflow as tf\n"
        "from apache_beam.io.filesystems import FileSystems\n"
        "with tf.io.gfile.GFile(sys.argv[1], 'w') as fh: fh.write('child')\n"
        "print(FileSystems.open(sys.argv[1]).read().decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, uri],
        env=object_store.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("child")
    assert tf.io.gfile.GFile(uri).read() == "child"


def test_folders_rename_as_with_tensorflows_own_gs(object_store):
    """The fixture's `_rename_folders_too`: what TFX's Transform does to publish its output
    (a folder renamed over one that may exist) works on the store as on TensorFlow's gs://."""
    gfile = tf.io.gfile
    base = object_store.uri("rename-folders")
    gfile.makedirs(f"{base}/tmp/abc/variables")
    for name, text in (("saved_model.pb", "graph"), ("variables/variables.index", "index")):
        with gfile.GFile(f"{base}/tmp/abc/{name}", "w") as fh:
            fh.write(text)

    # Through the plugin alone the folder is copied as one object: there is none of that name.
    plain = getattr(gfile.rename, "tailings_test_original", None)
    assert plain is not None
    with pytest.raises(tf.errors.NotFoundError):
        plain(f"{base}/tmp/abc", f"{base}/out", overwrite=True)

    with pytest.raises(tf.errors.AlreadyExistsError):
        gfile.rename(f"{base}/tmp/abc", f"{base}/tmp", overwrite=False)
    gfile.rename(f"{base}/tmp/abc", f"{base}/out", overwrite=True)
    assert not gfile.exists(f"{base}/tmp/abc")
    assert sorted(gfile.listdir(f"{base}/out")) == ["saved_model.pb", "variables/"]
    assert gfile.GFile(f"{base}/out/variables/variables.index").read() == "index"
    # A file still renames through the plugin's own copy and delete.
    gfile.rename(f"{base}/out/saved_model.pb", f"{base}/graph.pb")
    assert gfile.GFile(f"{base}/graph.pb").read() == "graph"
