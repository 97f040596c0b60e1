"""The HDF5 maps store: layout, atomic shards, coverage checks."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from wsss.data.store import MapsReader, MapsWriter, StoreError


def write_shard(path: Path, ids: list[str], shard: int = 0, num_shards: int = 1) -> dict:
    rng = np.random.default_rng(shard)
    data = {}
    with MapsWriter(path, "cam", ["background", "a", "b", "c"], True, shard, num_shards) as w:
        for image_id in ids:
            maps = rng.random((2, 5, 7)).astype(np.float32)
            w.add(image_id, maps, [0, 2])
            data[image_id] = maps
    return data


def test_round_trip_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.h5"
    data = write_shard(path, ["x", "dir/y"])
    with h5py.File(path) as f:
        assert f.attrs["complete"] and f.attrs["num_images"] == 2 and f.attrs["kind"] == "cam"
        assert f["images/dir%2Fy/maps"].dtype == np.float16
        assert f["images/x/classes"][()].tolist() == [0, 2]
        assert f["images/x"].attrs["size"].tolist() == [5, 7]
    with MapsReader([path]) as reader:
        assert reader.ids() == ["dir/y", "x"]
        assert reader.label_names == ["background", "a", "b", "c"] and reader.has_background
        item = reader["dir/y"]
        np.testing.assert_allclose(item.maps, data["dir/y"], atol=1e-3)  # float16 storage
        assert item.classes.tolist() == [0, 2]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.h5"
    with pytest.raises(RuntimeError):
        with MapsWriter(path, "cam", ["a"], False, 0, 1) as w:
            w.add("x", np.zeros((1, 2, 2), np.float32), [0])
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "shard-0.h5"
    write_shard(path, ["x"])
    with h5py.File(path, "a") as f:
        f.attrs["complete"] = False
    with pytest.raises(StoreError, match="not a complete"):
        MapsReader([path])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="junk.h5"):
        MapsReader([tmp_path / "junk.h5"])


def test_coverage_across_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "s0.h5", ["a", "c"], 0, 2)
    write_shard(tmp_path / "s1.h5", ["b"], 1, 2)
    with MapsReader([tmp_path / "s0.h5", tmp_path / "s1.h5"]) as reader:
        reader.check_covers(["a", "b", "c"])
        with pytest.raises(StoreError, match="1 images have no maps"):
            reader.check_covers(["a", "b", "d"])
    write_shard(tmp_path / "dup.h5", ["b"], 1, 2)
    with pytest.raises(StoreError, match="'b' is also in"):
        MapsReader([tmp_path / "s1.h5", tmp_path / "dup.h5"])
