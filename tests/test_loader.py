"""sslit.loader (grain input) and the synthetic JPEG set it is measured on."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from sslit import data, loader, sources
from tests.fit_utils import run_fit
from tests.multihost_worker import tiny_model

NUM_TRAIN, NUM_TEST = 64, 16


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
  """The synthetic JPEG set at a tiny size, as tfds records and as a folder."""
  root = tmp_path_factory.mktemp("jpeg")
  sources.build_jpeg_set(root, num_train=NUM_TRAIN, num_test=NUM_TEST,
                         folder=root / "folder")
  return root


def _jpeg(ds: str, root, split="train", **kw):
  if ds == "tfds":
    return data.load("jpeg_set", split, data_dir=root, image_size=16, **kw)
  return data.load(f"folder:{root / 'folder'}", split, image_size=16, **kw)


def test_jpeg_set_is_imagenet_like_with_fashion_mnist_labels(jpeg_dir):
  _, labels = sources.read_fashion_mnist(split="train")
  records = sources.ExampleRecords(jpeg_dir / sources.JPEG_SET_NAME / "1.0.0", "train")
  assert len(records) == NUM_TRAIN
  from tensorflow_datasets.proto import tf_example_pb2
  sizes, got_labels = [], []
  for i in range(NUM_TRAIN):
    feature = tf_example_pb2.Example.FromString(records[i]).features.feature
    jpeg = feature["image"].bytes_list.value[0]
    got_labels.append(feature["label"].int64_list.value[0])
    sizes.append(len(jpeg))
    with Image.open(io.BytesIO(jpeg)) as im:
      assert im.format == "JPEG" and im.mode == "RGB"
      assert 360 <= im.width <= 440 and 310 <= im.height <= 390, im.size
    # The folder holds the same file under its class.
    path = jpeg_dir / "folder" / "train" / f"{got_labels[-1]:02d}" / f"{i:06d}.jpg"
    assert path.read_bytes() == jpeg
  np.testing.assert_array_equal(got_labels, labels[:NUM_TRAIN])
  assert 60e3 < np.mean(sizes) < 160e3, np.mean(sizes)  # photograph-like files
  assert sum(len(f) for _, _, f in os.walk(jpeg_dir / "folder")) == NUM_TRAIN + NUM_TEST


def test_jpeg_set_is_a_pure_function_of_the_seed(tmp_path):
  image = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
  assert sources.synthetic_jpeg(image, seed=5) == sources.synthetic_jpeg(image, seed=5)
  assert sources.synthetic_jpeg(image, seed=5) != sources.synthetic_jpeg(image, seed=6)
  with pytest.raises(ValueError, match="num_train must be an int in"):
    sources.build_jpeg_set(tmp_path, num_train=0)
  with pytest.raises(data.DatasetNotFoundError, match="make_jpeg_set.py"):
    data.load("jpeg_set", "train", data_dir=tmp_path / "none")


@pytest.mark.parametrize("ds", ["tfds", "folder"])
def test_streamed_jpeg_set_equals_its_decoded_images(jpeg_dir, ds):
  streamed = _jpeg(ds, jpeg_dir, in_memory=False)
  cached = _jpeg(ds, jpeg_dir, in_memory=True)
  idx = np.array([5, 0, 63, 5])
  images, labels = streamed.get(idx)
  assert images.shape == (4, 16, 16, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(images, cached.get(idx)[0])
  # The oracle: PIL's decode of the file, resized and cropped by sources.
  fm_labels = sources.read_fashion_mnist(split="train")[1][:NUM_TRAIN]
  if ds == "folder":  # files listed class by class
    fm_labels = np.sort(fm_labels)
  np.testing.assert_array_equal(labels, fm_labels[idx])
  source, decode = streamed.records
  np.testing.assert_array_equal(decode(source[63])[0], images[2])


@pytest.mark.parametrize("process_count,workers", [(1, 0), (2, 0), (1, 2)])
def test_grain_batches_are_batch_iterators_batches(jpeg_dir, process_count, workers):
  """Across epochs, on every host, with any worker count; resumed from a state too."""
  ds = _jpeg("tfds", jpeg_dir, in_memory=False)
  kw = dict(seed=3, process_count=process_count)
  for p in range(process_count):
    want = data.batch_iterator(ds, 16, process_index=p, **kw)
    got = loader.grain_batches(ds, 16, process_index=p, workers=workers, num_steps=11, **kw)
    states = []
    for _ in range(11):  # four steps per epoch
      a, b = next(want), next(got)
      np.testing.assert_array_equal(b["image"], a["image"])
      np.testing.assert_array_equal(b["label"], a["label"])
      assert b["mask"].all() and b["image"].shape == (16 // process_count, 16, 16, 3)
      states.append(b["data_state"])
    with pytest.raises(StopIteration):
      next(got)
    if workers:  # resuming with workers: the fit test below (worker starts are slow)
      continue
    # A resumed iterator from the state after step 6 yields steps 7, 8, ...
    resumed = loader.grain_batches(ds, 16, process_index=p, workers=workers,
                                   start_step=7, state=states[6], **kw)
    want = data.batch_iterator(ds, 16, process_index=p, start_step=7, **kw)
    for _ in range(3):
      np.testing.assert_array_equal(next(resumed)["image"], next(want)["image"])
    resumed.close()
    # The state saved after step s is the one computed for step s + 1.
    assert json.loads(states[6]) == json.loads(loader.state_at_step(
        7, sampler=loader.StepSampler(num_records=NUM_TRAIN, batch_size=16,
                                      process_count=process_count, workers=workers,
                                      seed=3, num_steps=11),
        source=ds.records[0], process_index=p, workers=workers))


def test_a_state_of_another_run_is_refused(jpeg_dir):
  ds = _jpeg("tfds", jpeg_dir, in_memory=False)
  it = loader.grain_batches(ds, 16, seed=3, workers=0)
  state = [next(it)["data_state"] for _ in range(3)][-1]
  with pytest.raises(ValueError, match="does not fit step 2 of this run"):
    loader.grain_batches(ds, 16, seed=3, workers=0, start_step=2, state=state)
  with pytest.raises(ValueError, match="sampler"):
    loader.grain_batches(ds, 16, seed=4, workers=0, start_step=3, state=state)
  with pytest.raises(ValueError, match="in-memory"):
    loader.grain_batches(data.from_arrays(np.zeros((4, 2, 2, 1), np.uint8),
                                          np.zeros(4, int), num_classes=1), 2)


def test_fit_through_grain_resumes_bitwise_and_equals_the_in_memory_run(jpeg_dir,
                                                                       tmp_path):
  """One grain worker; interrupted after step 6 (checkpoint 4), then resumed."""
  import chex
  kw = dict(objective="vicreg", batch_size=16, num_steps=10, learning_rate=1e-3,
            log_every=2, progress=False, seed=3, checkpoint_every=2)
  cached = run_fit(model=tiny_model(), dataset=_jpeg("tfds", jpeg_dir, in_memory=True),
                   **kw)
  streamed = _jpeg("tfds", jpeg_dir, in_memory=False)

  def stop_at_6(step, variables):
    if step == 6:
      raise KeyboardInterrupt
    return {}

  with pytest.raises(KeyboardInterrupt):
    run_fit(model=tiny_model(), dataset=streamed, workdir=tmp_path, data_workers=1,
            evaluators=[stop_at_6], eval_every=2, **kw)
  saved = tmp_path / "checkpoints" / "4" / "data" / "process_0-of-1.json"
  assert json.loads(saved.read_text())["worker_count"] == 1
  resumed = run_fit(model=tiny_model(), dataset=streamed, workdir=tmp_path, data_workers=1,
                    **kw)
  assert resumed.resumed_from == 4 and resumed.step == 10
  chex.assert_trees_all_equal(resumed.state.params, cached.state.params)


def test_config_data_workers_reach_fit_options():
  from sslit import config as config_lib
  from sslit import runs
  config = config_lib.load_config("smoke")
  assert config.data_workers == -1 and runs.fit_options(config).data_workers is None
  config.data_workers = 2
  assert runs.fit_options(config).data_workers == 2
  config.data_workers = -2
  with pytest.raises(ValueError, match="data_workers"):
    config_lib.check_values(config)
  assert loader.default_workers() == max(1, len(os.sched_getaffinity(0)) - 1)
