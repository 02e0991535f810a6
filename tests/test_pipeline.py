"""The grain pipeline over a real prepared store."""


import jax
import numpy as np
import pytest

from helpers import DATA, needs_data
from multichan_diff.data.pipeline import (StoreSource, make_dataset, make_iterator, to_global)
from multichan_diff.data.prepare import prepare_images
from multichan_diff.train.sharding import batch_sharding, make_mesh

pytestmark = needs_data


def test_source_reads_one_split_and_pickles(store_path):
  import pickle
  src = StoreSource(store_path, "train")
  assert len(src) == 64  # one FOV of 128 x 128 in 16 x 16 tiles
  rec = src[3]
  assert rec["x0"].shape == (16, 16, 40) and rec["present"].all()
  clone = pickle.loads(pickle.dumps(src))
  np.testing.assert_array_equal(clone[3]["x0"], rec["x0"])
  with pytest.raises(ValueError, match="unknown split"):
    StoreSource(store_path, "holdout")
  # Several splits: the final fit on train + val, once the settings are chosen on val.
  both = StoreSource(store_path, ("train", "val"))
  val = StoreSource(store_path, "val")
  assert len(both) == len(src) + len(val)
  np.testing.assert_array_equal(both.indices, np.sort(np.r_[src.indices, val.indices]))
  for bad in (("train", "holdout"), ()):
    with pytest.raises(ValueError, match="unknown split"):
      StoreSource(store_path, bad)


def test_batches_are_masked_deterministic_and_resume_exactly(store_path):
  ds = make_dataset(store_path, "train", global_batch_size=8, seed=1, mask_p=0.5)
  it = make_iterator(ds)
  first = [next(it) for _ in range(3)]
  b = first[0]
  assert b["x0"].shape == (8, 16, 16, 40) and b["observed"].shape == (8, 40)
  n_obs = b["observed"].sum(1)
  assert (n_obs >= 1).all() and (n_obs <= 39).all()
  state = it.get_state()
  after = [next(it) for _ in range(4)]
  # Same seed, same stream; a restored iterator continues where the state was taken.
  again = make_iterator(make_dataset(store_path, "train", global_batch_size=8, seed=1,
                                     mask_p=0.5))
  for x, y in zip(first, [next(again) for _ in range(3)]):
    np.testing.assert_array_equal(x["x0"], y["x0"])
    np.testing.assert_array_equal(x["observed"], y["observed"])
  resumed = make_iterator(ds)
  resumed.set_state(state)
  for x, y in zip(after, [next(resumed) for _ in range(4)]):
    np.testing.assert_array_equal(x["x0"], y["x0"])
    np.testing.assert_array_equal(x["observed"], y["observed"])
  other = next(make_iterator(make_dataset(store_path, "train", global_batch_size=8, seed=2)))
  assert not np.array_equal(other["x0"], b["x0"])


def test_hosts_get_disjoint_shares(store_path):
  shares = [make_dataset(store_path, "train", global_batch_size=8, seed=0, num_epochs=1,
                         process_index=i, process_count=2) for i in range(2)]
  seen = [np.concatenate([b["x0"].reshape(4, -1) for b in s]) for s in shares]
  assert all(len(x) == 32 for x in seen)
  rows = {r.tobytes() for r in seen[0]}
  assert not rows & {r.tobytes() for r in seen[1]}
  with pytest.raises(ValueError, match="does not split"):
    make_dataset(store_path, global_batch_size=7, process_index=0, process_count=2)


def test_global_arrays_on_the_mesh(store_path):
  mesh = make_mesh()
  batch = next(make_iterator(make_dataset(store_path, global_batch_size=16)))
  g = to_global(batch, batch_sharding(mesh))
  assert g["x0"].shape == (16, 16, 16, 40)
  assert len(g["x0"].sharding.device_set) == jax.device_count()
  np.testing.assert_array_equal(np.asarray(g["observed"]), batch["observed"])


def test_counts_store_reads_the_same_as_a_normalised_store(tmp_path):
  kw = dict(tile=16, bin_size=8, bin_how="sum", test_fovs=["Point2206"])
  prepare_images(str(DATA / "mibi_dcis"), str(tmp_path / "f.zarr"), **kw)
  prepare_images(str(DATA / "mibi_dcis"), str(tmp_path / "u.zarr"), dtype="uint16", **kw)
  a, b = StoreSource(str(tmp_path / "f.zarr")), StoreSource(str(tmp_path / "u.zarr"))
  for i in (0, 7, 40):
    np.testing.assert_allclose(a[i]["x0"], b[i]["x0"], rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="bin with --bin-how sum"):
    prepare_images(str(DATA / "mibi_dcis"), str(tmp_path / "m.zarr"), dtype="uint16",
                   tile=16, bin_size=8)


def test_fov_context_norm_carries_each_tiles_fov_statistics(store_path):
  from multichan_diff.data import store
  from multichan_diff.data.transforms import fov_stats
  from multichan_diff.evaluate.images import read_fovs
  attrs = store.read_attributes(store_path)
  (fov,) = read_fovs(store_path, "test")  # the whole FOV, every pixel covered
  f = attrs["fovs"].index(fov.name)
  mean, std = fov_stats(fov.image)
  np.testing.assert_allclose(attrs["fov_mean"][f], mean, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(attrs["fov_std"][f], std, rtol=1e-5, atol=1e-5)
  assert min(min(s) for s in attrs["fov_std"]) >= 0.1  # floored
  src = StoreSource(store_path, "test", context_norm="fov")
  rec = src[5]
  np.testing.assert_array_equal(rec["cond_shift"], np.float32(attrs["fov_mean"][f]))
  np.testing.assert_array_equal(rec["cond_scale"], np.float32(attrs["fov_std"][f]))
  assert "cond_shift" not in StoreSource(store_path, "test")[5]
  batch = next(iter(make_dataset(store_path, "train", global_batch_size=4,
                                 context_norm="fov")))
  assert batch["cond_shift"].shape == (4, 40) and batch["cond_scale"].shape == (4, 40)
  # fov_targets: the record's x0 itself standardised, no statistics left to apply.
  std_rec = StoreSource(store_path, "test", context_norm="fov_targets")[5]
  np.testing.assert_allclose(std_rec["x0"], (rec["x0"] - rec["cond_shift"]) / rec["cond_scale"],
                             rtol=1e-6, atol=1e-6)
  assert "cond_shift" not in std_rec and "cond_scale" not in std_rec
  with pytest.raises(ValueError, match="unknown context_norm"):
    StoreSource(store_path, "test", context_norm="tile")


def test_typical_fov_stats_average_the_training_fovs(store_path):
  from multichan_diff.data import store
  from multichan_diff.data.transforms import typical_fov_stats
  attrs = store.read_attributes(store_path)
  train = [attrs["fovs"].index(f) for f in attrs["splits"]["train"]]
  assert 0 < len(train) < len(attrs["fovs"])
  mean, std = typical_fov_stats(attrs)
  np.testing.assert_allclose(mean, np.mean([attrs["fov_mean"][f] for f in train], 0), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(std, np.mean([attrs["fov_std"][f] for f in train], 0), rtol=1e-5)
  # An export of a fov_targets run carries them; other runs do not.
  from multichan_diff.train.export import _metadata
  run = {"model": {}, "channels": attrs["channels"], "kind": "images",
         "config": {"diffusion": {"schedule": "linear", "num_steps": 10}}}
  meta, _ = _metadata({**run, "context_norm": "fov_targets"}, attrs, 1)
  assert list(meta["target_stats"]) == [mean, std]
  assert "target_stats" not in _metadata({**run, "context_norm": "fov"}, attrs, 1)[0]
  # A run trained on train + val goes back to the units of all the FOVs it saw.
  seen = train + [attrs["fovs"].index(f) for f in attrs["splits"]["val"]]
  both = typical_fov_stats(attrs, ("train", "val"))
  np.testing.assert_allclose(both[0], np.mean([attrs["fov_mean"][f] for f in seen], 0),
                             rtol=1e-5, atol=1e-6)
  meta, _ = _metadata({**run, "context_norm": "fov_targets", "train_splits": ["train", "val"]},
                      attrs, 1)
  assert list(meta["target_stats"]) == list(both) and both[0] != mean
