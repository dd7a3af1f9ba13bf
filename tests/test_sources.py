"""Every data source on synthetic files in the published layouts, and its errors."""

import os
import time

import numpy as np
import pytest

import fixtures
from configs import common
from hamforget.data import cache, sources
from hamforget.data.sources import DataError, SKIN_CLASSES, hmnist, mnist


def data_config(name, root, image_size=0, limit=0, workers=1):
  config = common.base_config().data
  config.name, config.root = name, str(root)
  config.image_size, config.limit, config.decode_workers = image_size, limit, workers
  return config


def load(name, root, tmp_path, **kwargs):
  return sources.load_dataset(data_config(name, root, **kwargs), str(tmp_path / "cache"))


def test_unknown_source_lists_known_ones(tmp_path):
  with pytest.raises(DataError, match="unknown data source 'nope'.*ham10000"):
    load("nope", tmp_path, tmp_path)


def test_skin_classes_in_the_published_order():
  assert SKIN_CLASSES == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")


# -------------------------------------------------------------------- limit --


def test_limit_index_is_deterministic_sorted_and_stratified():
  labels = np.repeat(np.arange(4), [600, 250, 100, 50])
  index = sources.limit_index(labels, 100)
  assert len(index) == 100 and np.all(np.diff(index) > 0)
  np.testing.assert_array_equal(index, sources.limit_index(labels, 100))
  np.testing.assert_array_equal(np.bincount(labels[index]), [60, 25, 10, 5])
  assert not np.array_equal(index, sources.limit_index(labels, 100, seed=1))
  np.testing.assert_array_equal(sources.limit_index(labels, 0), np.arange(1000))
  np.testing.assert_array_equal(sources.limit_index(labels, 5000), np.arange(1000))


# ----------------------------------------------------------------- HAM10000 --


def check_ham(dataset, rows, size):
  """Labels, groups, ids and (via the flat colours) image order match `rows`."""
  ex = dataset.examples
  assert dataset.class_names == SKIN_CLASSES and dataset.official_split is None
  assert ex.images.shape == (len(rows), *size, 3) and ex.images.dtype == np.uint8
  assert ex.labels.dtype == np.int32 and ex.ids.dtype.kind == ex.groups.dtype.kind == "U"
  np.testing.assert_array_equal(ex.labels, [SKIN_CLASSES.index(r["dx"]) for r in rows])
  np.testing.assert_array_equal(ex.groups, [r["lesion_id"] for r in rows])
  np.testing.assert_array_equal(ex.ids, [r["image_id"] for r in rows])


@pytest.mark.parametrize("layout", ["split_parts", "images", "."])
def test_ham10000_layouts(tmp_path, layout):
  root = tmp_path / "ham"
  rows = fixtures.write_ham10000(root, split_parts=layout == "split_parts", image_folder=layout)
  dataset = load("ham10000", root, tmp_path, image_size=16)
  check_ham(dataset, rows, (16, 16))
  colours = dataset.examples.images.reshape(len(rows), -1, 3).mean(axis=1)
  expected = [fixtures.ham_colour(i) for i in range(len(rows))]
  np.testing.assert_allclose(colours, expected, atol=4)


def test_ham10000_native_size_and_csv_as_root(tmp_path):
  rows = fixtures.write_ham10000(tmp_path / "ham", n_lesions=4)
  dataset = load("ham10000", tmp_path / "ham" / "HAM10000_metadata.csv", tmp_path)
  check_ham(dataset, rows, (45, 60))


def test_ham10000_limit_picks_rows_before_decoding(tmp_path, monkeypatch):
  rows = fixtures.write_ham10000(tmp_path / "ham", n_lesions=30)
  decoded = []
  real = cache.decode_and_resize
  monkeypatch.setattr(cache, "decode_and_resize",
                      lambda paths, *a, **k: decoded.append(len(paths)) or real(paths, *a, **k))
  dataset = load("ham10000", tmp_path / "ham", tmp_path, image_size=8, limit=10)
  assert len(dataset.examples) == 10 and decoded == [10]
  index = sources.limit_index(np.array([SKIN_CLASSES.index(r["dx"]) for r in rows]), 10)
  np.testing.assert_array_equal(dataset.examples.ids, [rows[i]["image_id"] for i in index])


def test_ham10000_missing_folder_says_how_to_get_it(tmp_path):
  with pytest.raises(DataError, match=r"HAM10000_metadata\.csv does not exist.*10\.7910/DVN/DBW86T"):
    load("ham10000", tmp_path / "nowhere", tmp_path)


def test_ham10000_missing_columns(tmp_path):
  fixtures.write_ham10000(tmp_path, columns=("lesion_id", "image_id", "age"), write_images=False)
  with pytest.raises(DataError, match=r"HAM10000_metadata\.csv: missing column\(s\) dx"):
    load("ham10000", tmp_path, tmp_path)


def test_ham10000_bad_rows_reported_together(tmp_path):
  rows = fixtures.ham_rows(n_lesions=12)
  for i in range(1, 9):
    rows[i]["dx"] = "melanoma"                        # 8 unknown dx
  rows[10]["image_id"] = "../../etc/passwd"           # path traversal
  rows[11]["image_id"] = "a/b"
  rows[12]["image_id"] = rows[0]["image_id"]          # duplicate
  rows[13]["lesion_id"] = ""
  fixtures.write_ham10000(tmp_path, rows, write_images=False)
  with pytest.raises(DataError) as error:
    load("ham10000", tmp_path, tmp_path)
  message = str(error.value)
  assert "HAM10000_metadata.csv" in message
  assert "8 row(s) with a dx not in akiec, bcc, bkl, df, mel, nv, vasc: line 3 'melanoma'" in message
  assert "(+3 more)" in message  # only the first five are quoted
  assert "2 row(s) whose image_id is not a plain file name: line 12 '../../etc/passwd', line 13 'a/b'" in message
  assert "1 row(s) with a duplicate image_id: line 14 'ISIC_0000000' (first on line 2)" in message
  assert "1 row(s) with an empty lesion_id: line 15" in message
  # Images are checked in the same pass: one report, one round of fixes.
  assert f"{len(rows) - 2} of {len(rows)} images not found (searched {tmp_path})" in message


@pytest.mark.parametrize("image_id", ["..", ".hidden", "a\\b", ""])
def test_ham10000_rejects_non_plain_image_ids(tmp_path, image_id):
  rows = fixtures.ham_rows(n_lesions=2)
  rows[0]["image_id"] = image_id
  fixtures.write_ham10000(tmp_path, rows, write_images=False)
  with pytest.raises(DataError, match="1 row.s. whose image_id is not a plain file name: line 2"):
    load("ham10000", tmp_path, tmp_path)


def test_ham10000_missing_images_all_counted(tmp_path):
  rows = fixtures.write_ham10000(tmp_path, n_lesions=6)
  for row in rows[:3]:
    os.remove(tmp_path / "HAM10000_images_part_1" / f"{row['image_id']}.jpg")
  with pytest.raises(DataError) as error:
    load("ham10000", tmp_path, tmp_path)
  message = str(error.value)
  assert "HAM10000_metadata.csv: bad input" in message
  assert f"3 of {len(rows)} images not found" in message
  assert all(f"line {i + 2} {row['image_id']}.jpg" in message for i, row in enumerate(rows[:3]))
  assert "HAM10000_images_part_1" in message and "10.7910/DVN/DBW86T" in message


def test_ham10000_no_image_folder(tmp_path):
  rows = fixtures.write_ham10000(tmp_path / "ham", n_lesions=3, write_images=False)
  with pytest.raises(DataError, match=f"{len(rows)} of {len(rows)} images not found"):
    load("ham10000", tmp_path / "ham", tmp_path)


def test_ham10000_unreadable_images_all_counted(tmp_path):
  rows = fixtures.write_ham10000(tmp_path, n_lesions=6)
  bad = [tmp_path / "HAM10000_images_part_2" / f"{row['image_id']}.jpg" for row in rows[-2:]]
  bad[0].write_bytes(b"not a jpeg")
  bad[1].write_bytes(bad[1].read_bytes()[:200])  # truncated
  with pytest.raises(DataError) as error:
    load("ham10000", tmp_path, tmp_path, image_size=8)
  message = str(error.value)
  assert f"2 of {len(rows)} images cannot be read" in message
  assert str(bad[0]) in message and str(bad[1]) in message


def test_ham10000_real_metadata_subset(tmp_path):
  rows = fixtures.write_ham10000(tmp_path / "ham",
                                 fixtures.read_ham_rows(fixtures.real_ham_metadata(), 300))
  dataset = load("ham10000", tmp_path / "ham", tmp_path, image_size=16)
  check_ham(dataset, rows, (16, 16))


def test_ham10000_real_metadata_all_rows(tmp_path):
  rows = fixtures.read_ham_rows(fixtures.real_ham_metadata())
  fixtures.write_ham10000(tmp_path / "ham", rows, image_hw=(4, 4), hardlink_repeats=True)
  dataset = load("ham10000", tmp_path / "ham", tmp_path, image_size=4, workers=1)
  ex = dataset.examples
  assert ex.images.shape == (10015, 4, 4, 3)
  # Images stay aligned with their rows over ~160 decode chunks.
  np.testing.assert_allclose(ex.images.reshape(10015, -1, 3).mean(axis=1),
                             [fixtures.ham_colour(i) for i in range(10015)], atol=6)
  assert len(np.unique(ex.groups)) == 7470 and len(np.unique(ex.ids)) == 10015
  counts = dict(zip(SKIN_CLASSES, np.bincount(ex.labels, minlength=7)))
  assert counts == {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113,
                    "nv": 6705, "vasc": 142}
  # Each lesion has one diagnosis, so lesion-grouped splits are well defined.
  for lesion in np.unique(ex.groups)[:500]:
    assert len(np.unique(ex.labels[ex.groups == lesion])) == 1


# ------------------------------------------------------------------- HMNIST --


@pytest.mark.parametrize("size,rgb", [(8, True), (8, False), (28, True)])
def test_hmnist_reads_pixels_and_remaps_labels(tmp_path, size, rgb):
  path = tmp_path / f"hmnist_{size}_{size}_{'RGB' if rgb else 'L'}.csv"
  images, kaggle = fixtures.write_hmnist_csv(path, size=size, rgb=rgb, n=14)
  dataset = load("hmnist", path, tmp_path)
  ex = dataset.examples
  np.testing.assert_array_equal(ex.images, images)
  names = [dataset.class_names[label] for label in ex.labels]
  assert names == [fixtures.HMNIST_KAGGLE_CLASSES[k] for k in kaggle]
  assert names[4] == "nv" and names[6] == "mel" and names[0] == "akiec"
  assert ex.ids[12] == "row00012" and np.array_equal(ex.groups, ex.ids)


def test_hmnist_resize_and_limit(tmp_path):
  path = tmp_path / "hmnist_8_8_L.csv"
  fixtures.write_hmnist_csv(path, size=8, rgb=False, n=70)
  ex = load("hmnist", path, tmp_path, image_size=4, limit=14).examples
  assert ex.images.shape == (14, 4, 4, 1)
  np.testing.assert_array_equal(np.bincount(ex.labels), [2] * 7)


def test_hmnist_label_mapping_constant():
  assert [SKIN_CLASSES[i] for i in hmnist.KAGGLE_TO_CLASS] == [
      "akiec", "bcc", "bkl", "df", "nv", "vasc", "mel"]


def test_hmnist_missing_label_column(tmp_path):
  path = tmp_path / "hmnist_8_8_L.csv"
  fixtures.write_hmnist_csv(path, size=8, rgb=False, n=3)
  path.write_text(path.read_text().replace(",label", ",target"))
  with pytest.raises(DataError, match=r"hmnist_8_8_L\.csv: no 'label' column"):
    load("hmnist", path, tmp_path)


def test_hmnist_wrong_pixel_count_for_name(tmp_path):
  path = tmp_path / "hmnist_28_28_RGB.csv"
  fixtures.write_hmnist_csv(path, size=8, rgb=True, n=3)
  with pytest.raises(DataError, match=r"hmnist_28_28_RGB\.csv: 192 pixel columns.*needs 2352"):
    load("hmnist", path, tmp_path)


def test_hmnist_out_of_range_values_with_lines(tmp_path):
  path = tmp_path / "hmnist_8_8_L.csv"
  images, labels = fixtures.write_hmnist_csv(path, size=8, rgb=False, n=10,
                                             kaggle_labels=[0, 7, 1, 2, -1, 3, 4, 5, 6, 0])
  lines = path.read_text().splitlines()
  lines[3] = "300" + lines[3][lines[3].index(","):]  # data row 2, first pixel
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError) as error:
    load("hmnist", path, tmp_path)
  message = str(error.value)
  assert "hmnist_8_8_L.csv" in message
  assert "2 row(s) with a label outside 0..6: line 3 label 7, line 6 label -1" in message
  assert "1 row(s) with pixels outside 0..255: line 4" in message


def test_hmnist_unparsable_cells_and_bad_name(tmp_path):
  path = tmp_path / "hmnist_8_8_L.csv"
  fixtures.write_hmnist_csv(path, size=8, rgb=False, n=4)
  lines = path.read_text().splitlines()
  lines[2] = "abc" + lines[2][lines[2].index(","):]   # text
  lines[3] = "1.5" + lines[3][lines[3].index(","):]   # not an integer
  lines[4] = lines[4][lines[4].index(",") + 1:]       # a cell short
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=r"(?s)hmnist_8_8_L\.csv: .*3 row\(s\) with empty or non-integer "
                     r"cells: line 3, line 4, line 5"):
    load("hmnist", path, tmp_path)
  path.write_text("\n".join(lines[:2] + [lines[1] + ",0"]) + "\n")  # a cell too many
  with pytest.raises(DataError, match=r"hmnist_8_8_L\.csv: cannot parse as CSV: .*line 3"):
    load("hmnist", path, tmp_path)
  other = tmp_path / "skin.csv"
  other.write_text("label\n1\n")
  with pytest.raises(DataError, match=r"skin\.csv: cannot tell the image size"):
    load("hmnist", other, tmp_path)
  with pytest.raises(DataError, match="is not a file.*kmader"):
    load("hmnist", tmp_path / "hmnist_28_28_RGB.csv", tmp_path)


# --------------------------------------------------------------- DermaMNIST --


def test_dermamnist_keeps_official_split(tmp_path):
  arrays = fixtures.write_dermamnist_npz(tmp_path / "dermamnist.npz", n_per_split=(14, 7, 7))
  dataset = load("dermamnist", tmp_path / "dermamnist.npz", tmp_path)
  ex = dataset.examples
  assert dataset.class_names == SKIN_CLASSES
  np.testing.assert_array_equal(ex.images, np.concatenate(
      [arrays[f"{s}_images"] for s in ("train", "val", "test")]))
  np.testing.assert_array_equal(ex.labels, np.concatenate(
      [arrays[f"{s}_labels"][:, 0] for s in ("train", "val", "test")]))
  assert list(dataset.official_split) == ["train"] * 14 + ["val"] * 7 + ["test"] * 7
  assert dataset.official_split.dtype.kind == "U" and len(set(ex.ids)) == 28
  assert ex.ids[14] == "val00000" and np.array_equal(ex.ids, ex.groups)


def test_dermamnist_folder_picks_the_best_size(tmp_path):
  fixtures.write_dermamnist_npz(tmp_path / "dermamnist.npz", 28, (7, 7, 7))
  fixtures.write_dermamnist_npz(tmp_path / "dermamnist_64.npz", 64, (7, 7, 7))
  assert load("dermamnist", tmp_path, tmp_path, image_size=64).name.endswith("dermamnist_64.npz")
  assert load("dermamnist", tmp_path, tmp_path, image_size=16).name.endswith("dermamnist.npz")
  dataset = load("dermamnist", tmp_path, tmp_path, image_size=32, limit=7)
  assert dataset.name.endswith("_64.npz") and dataset.examples.images.shape == (7, 32, 32, 3)
  assert len(dataset.official_split) == 7


def test_dermamnist_missing_keys(tmp_path):
  path = tmp_path / "dermamnist.npz"
  fixtures.write_dermamnist_npz(path, drop_keys=("val_images", "test_labels"))
  with pytest.raises(DataError, match=r"dermamnist\.npz: missing key\(s\) val_images, test_labels"):
    load("dermamnist", path, tmp_path)


def test_dermamnist_never_unpickles(tmp_path):
  path = tmp_path / "dermamnist.npz"
  arrays = fixtures.write_dermamnist_npz(path)
  arrays["train_labels"] = np.array([[1]] * 14, dtype=object)  # needs pickle to load
  np.savez(path, **arrays)
  with pytest.raises(DataError, match=r"dermamnist\.npz: .*allow_pickle"):
    load("dermamnist", path, tmp_path)


def test_dermamnist_not_an_npz_or_absent(tmp_path):
  (tmp_path / "dermamnist.npz").write_bytes(b"garbage")
  with pytest.raises(DataError, match=r"dermamnist\.npz: not a readable \.npz"):
    load("dermamnist", tmp_path / "dermamnist.npz", tmp_path)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no dermamnist.*zenodo"):
    load("dermamnist", tmp_path / "empty", tmp_path)


# -------------------------------------------------------------------- MNIST --


def test_mnist_embedded():
  dataset = sources.load_dataset(data_config("mnist_embedded", "", image_size=16, limit=200), "")
  ex = dataset.examples
  assert dataset.class_names == tuple("0123456789") and dataset.official_split is None
  assert ex.images.shape == (200, 16, 16, 1) and ex.images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(ex.labels), [20] * 10)
  assert ex.ids[0].startswith("mnist") and ex.images.max() > 200  # real digits


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
  arrays = fixtures.write_mnist_idx(tmp_path / "mnist", n=(30, 10), gz=gz)
  dataset = load("mnist_idx", tmp_path / "mnist", tmp_path)
  ex = dataset.examples
  np.testing.assert_array_equal(ex.images[..., 0], np.concatenate(
      [arrays["train_images"], arrays["test_images"]]))
  np.testing.assert_array_equal(ex.labels, np.concatenate(
      [arrays["train_labels"], arrays["test_labels"]]))
  assert list(dataset.official_split) == ["train"] * 30 + ["test"] * 10
  assert ex.ids[30] == "test00000"


def test_mnist_idx_errors(tmp_path):
  folder = tmp_path / "mnist"
  arrays = fixtures.write_mnist_idx(folder, n=(20, 10), gz=False)
  images = folder / "train-images-idx3-ubyte"
  images.write_bytes(images.read_bytes()[:-5])
  with pytest.raises(DataError, match=r"train-images-idx3-ubyte: the header promises \(20, 28, 28\)"):
    load("mnist_idx", folder, tmp_path)
  fixtures.write_idx(images, arrays["train_images"][:, :, :, None])  # 4 dims: wrong magic
  with pytest.raises(DataError, match=r"train-images-idx3-ubyte: magic number 00000804"):
    load("mnist_idx", folder, tmp_path)
  fixtures.write_idx(images, arrays["train_images"][:15])
  with pytest.raises(DataError, match="holds 15 images but .* 20 labels"):
    load("mnist_idx", folder, tmp_path)
  os.remove(folder / "t10k-labels-idx1-ubyte")
  os.remove(folder / "train-images-idx3-ubyte")
  with pytest.raises(DataError, match=r"file\(s\) train-images-idx3-ubyte\[\.gz\], "
                     r"t10k-labels-idx1-ubyte\[\.gz\] not found .*yann\.lecun"):
    load("mnist_idx", folder, tmp_path)


def test_mnist_tfds_missing_fails_fast_without_download(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel

  def no_tfds(*args, **kwargs):
    raise AssertionError("tfds must not be called for a missing dataset")

  monkeypatch.setattr(tfds, "data_source", no_tfds)
  start = time.monotonic()
  with pytest.raises(DataError, match="mnist is not prepared in .*tfds build mnist --file_format=array_record"):
    load("mnist_tfds", tmp_path / "tfds", tmp_path)
  (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)
  (tmp_path / "tfds" / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
  (tmp_path / "tfds" / "mnist" / "3.0.1" / "mnist-train.tfrecord-00000-of-00001").write_text("")
  with pytest.raises(DataError, match="not in array_record format"):
    load("mnist_tfds", tmp_path / "tfds", tmp_path)
  assert time.monotonic() - start < 5


def test_mnist_tfds_reads_a_prepared_copy(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  version = tmp_path / "mnist" / "3.0.1"
  version.mkdir(parents=True)
  (version / "dataset_info.json").write_text("{}")
  (version / "mnist-train.array_record-00000-of-00001").write_text("")
  rng = np.random.default_rng(0)
  records = {split: [{"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": i % 10}
                     for i in range(n)] for split, n in (("train", 20), ("test", 10))}
  calls = []

  class BatchedSource(list):  # like tfds' ArrayRecordDataSource
    def __getitems__(self, keys):
      calls.append("__getitems__")
      return [self[k] for k in keys]

  def fake_data_source(name, **kwargs):
    calls.append((name, kwargs))
    return {"train": BatchedSource(records["train"]), "test": records["test"]}

  monkeypatch.setattr(tfds, "data_source", fake_data_source)
  dataset = load("mnist_tfds", tmp_path, tmp_path, image_size=14)
  assert calls == [("mnist:3.0.1", {"data_dir": str(tmp_path), "download": False, "try_gcs": False}),
                   "__getitems__"]
  assert dataset.examples.images.shape == (30, 14, 14, 1)
  assert list(dataset.official_split) == ["train"] * 20 + ["test"] * 10
  np.testing.assert_array_equal(dataset.examples.labels, np.r_[np.arange(20) % 10, np.arange(10)])
  assert mnist.prepared_tfds_version(str(tmp_path)) == "3.0.1"
