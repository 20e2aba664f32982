from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder
from PIL import Image

from harness.core.errors import UserError
from harness.data import Dataset, load_dataset, sources
from harness.data.sources import CIFAR10_CLASSES, clear_memo
from harness.recipe import DataSpec


@pytest.fixture(autouse=True)
def _fresh_memo():
    clear_memo()
    yield
    clear_memo()


def folder_spec(root: Path, **changes) -> DataSpec:
    return DataSpec(name="imagefolder", root=str(root), **changes)


def cache_files(root: Path) -> list[Path]:
    return sorted((root / ".harness-cache").glob("*.pt"))


# --- ImageFolder --------------------------------------------------------------------------------


def test_imagefolder_reads_classes_labels_and_pixels(tiny_folder: Path) -> None:
    data = load_dataset(folder_spec(tiny_folder))

    assert data.classes == ["a", "b", "c"]
    assert data.train.images.shape == (12, 3, 8, 8)
    assert data.test.images.shape == (6, 3, 8, 8)
    assert data.train.images.dtype == torch.uint8
    assert data.train.labels.dtype == torch.int64
    assert data.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(data.train) == 12
    assert str(tiny_folder) in data.source
    assert len(data.digest) == 64
    # Pixels survive exactly (PNG is lossless), in CHW order.
    expected = np.array(Image.open(tiny_folder / "train" / "b" / "0002.png"))
    assert torch.equal(data.train.images[6], torch.from_numpy(expected).permute(2, 0, 1))


def test_class_names_are_sorted_folder_names(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, classes=("zebra", "ant", "moth"), per_class_train=1,
                             per_class_test=1)
    data = load_dataset(folder_spec(root))
    assert data.classes == ["ant", "moth", "zebra"]
    assert data.train.labels.tolist() == [0, 1, 2]


def test_grey_images_keep_one_channel(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, mode="L", ext=".jpg")
    data = load_dataset(folder_spec(root))
    assert data.train.images.shape == (12, 1, 8, 8)
    assert data.test.images.shape == (6, 1, 8, 8)


def test_one_colour_image_makes_the_set_rgb(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, mode="L")
    grey = np.array(Image.open(root / "train" / "a" / "0000.png"))
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "c" / "0000.png")

    data = load_dataset(folder_spec(root))

    assert data.train.images.shape[1] == 3
    # Grey images repeat their one channel.
    for channel in range(3):
        assert torch.equal(data.train.images[0, channel], torch.from_numpy(grey))


def test_sixteen_bit_grey_keeps_its_high_byte(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, classes=("a",), per_class_train=1, per_class_test=1,
                             mode="L")
    wide = np.full((8, 8), 0x1234, dtype=np.uint16)
    Image.fromarray(wide).save(root / "train" / "a" / "0000.png")
    assert Image.open(root / "train" / "a" / "0000.png").mode.startswith("I")

    data = load_dataset(folder_spec(root))

    assert data.train.images.shape == (1, 1, 8, 8)
    assert data.train.images.unique().tolist() == [0x12]


def test_image_size_resizes_to_a_square(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, size=(10, 6))
    data = load_dataset(folder_spec(root, image_size=4))
    assert data.train.images.shape == (12, 3, 4, 4)
    assert data.test.images.shape == (6, 3, 4, 4)


def test_mixed_sizes_need_image_size(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path)
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(root / "train" / "b" / "0001.png")

    with pytest.raises(UserError, match=r"differ in size.*data\.image_size"):
        load_dataset(folder_spec(root))
    assert load_dataset(folder_spec(root, image_size=8)).train.images.shape == (12, 3, 8, 8)


def test_corrupt_image_names_the_file(tiny_folder: Path) -> None:
    broken = tiny_folder / "train" / "b" / "0001.png"
    broken.write_bytes(b"not a png at all")

    with pytest.raises(UserError) as error:
        load_dataset(folder_spec(tiny_folder))
    assert f"cannot read image '{broken}'" in str(error.value)


def test_truncated_image_names_the_file(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, size=(32, 32), ext=".jpg")
    broken = root / "test" / "a" / "0000.jpg"
    broken.write_bytes(broken.read_bytes()[:200])

    with pytest.raises(UserError, match="0000.jpg"):
        load_dataset(folder_spec(root))


@pytest.mark.skipif(sources._worker_count() < 2, reason="needs 2 CPUs and fork for the pool")
def test_process_pool_decodes_the_same(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    serial = load_dataset(folder_spec(tiny_folder))
    clear_memo()
    shutil.rmtree(tiny_folder / ".harness-cache")
    monkeypatch.setattr(sources, "_POOL_MIN_IMAGES", 1)
    monkeypatch.setattr(sources, "_POOL_CHUNK", 5)
    assert_same(serial, load_dataset(folder_spec(tiny_folder)))

    clear_memo()
    broken = tiny_folder / "test" / "c" / "0001.png"
    broken.write_bytes(b"broken")
    with pytest.raises(UserError, match="0001.png"):
        load_dataset(folder_spec(tiny_folder))


@pytest.mark.parametrize("name", ["imagefolder", "cifar10"])
def test_missing_root_is_one_line_naming_it(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError) as error:
        load_dataset(DataSpec(name=name, root=str(missing)))
    message = str(error.value)
    assert "\n" not in message
    assert str(missing) in message
    assert "data.root" in message


def test_missing_cifar10_says_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(UserError) as error:
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))
    message = str(error.value)
    assert "cifar-10-batches-py" in message
    assert "train/<class>" in message
    assert "data.download=true" in message


def test_unknown_dataset_lists_the_choices(tiny_folder: Path) -> None:
    with pytest.raises(UserError, match="choose one of: cifar10, imagefolder"):
        load_dataset(DataSpec(name="imagenet", root=str(tiny_folder)))


def test_train_and_test_classes_must_match(tiny_folder: Path) -> None:
    shutil.rmtree(tiny_folder / "test" / "c")
    with pytest.raises(UserError, match="only in train: c"):
        load_dataset(folder_spec(tiny_folder))


def test_missing_test_folder(tiny_folder: Path) -> None:
    shutil.rmtree(tiny_folder / "test")
    with pytest.raises(UserError, match="no 'test' folder"):
        load_dataset(folder_spec(tiny_folder))


def test_empty_class_folder(tiny_folder: Path) -> None:
    for image in (tiny_folder / "train" / "b").iterdir():
        image.unlink()
    (tiny_folder / "train" / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="holds no images"):
        load_dataset(folder_spec(tiny_folder))


# --- CIFAR-10 -----------------------------------------------------------------------------------


def test_cifar10_reads_an_imagefolder_tree(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path, classes=CIFAR10_CLASSES, per_class_train=2,
                             per_class_test=1, size=(4, 4))
    data = load_dataset(DataSpec(name="cifar10", root=str(root)))
    assert data.classes == list(CIFAR10_CLASSES)
    assert data.train.images.shape == (20, 3, 4, 4)
    assert data.source.startswith("CIFAR-10")


def test_cifar10_rejects_other_classes(tiny_folder: Path) -> None:
    with pytest.raises(UserError, match="data.name=imagefolder"):
        load_dataset(DataSpec(name="cifar10", root=str(tiny_folder)))


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10, whose md5 checks reject made-up batch files."""

    def __init__(self, root: str, train: bool, download: bool) -> None:
        count = 6 if train else 3
        rng = np.random.default_rng(int(train))
        self.data = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 2 for i in range(count)]
        self.classes = ["airplane", "automobile"]


def test_cifar10_reads_the_official_batches(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("torchvision.datasets.CIFAR10", FakeCIFAR10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")

    data = load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))
    fake = FakeCIFAR10("", train=True, download=False)

    assert data.train.images.shape == (6, 3, 32, 32)
    assert torch.equal(data.train.images, torch.from_numpy(fake.data).permute(0, 3, 1, 2))
    assert data.test.labels.tolist() == [0, 1, 0]
    assert data.classes == ["airplane", "automobile"]
    assert "batches" in data.source
    clear_memo()
    assert load_dataset(DataSpec(root=str(tmp_path), image_size=16)).train.images.shape == (
        6, 3, 16, 16)


def test_broken_batches_are_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(UserError, match="cannot read the CIFAR-10 batches"):
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path)))


def test_failed_download_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(root: str, train: bool, download: bool) -> None:
        raise OSError("<urlopen error [Errno -3]\n Temporary failure in name resolution>")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", offline)
    with pytest.raises(UserError) as error:
        load_dataset(DataSpec(name="cifar10", root=str(tmp_path), download=True))
    message = str(error.value)
    assert "\n" not in message
    assert "downloading it failed" in message
    assert "name resolution" in message


# --- caching ------------------------------------------------------------------------------------


def test_memo_returns_the_same_object(tiny_folder: Path) -> None:
    assert load_dataset(folder_spec(tiny_folder)) is load_dataset(folder_spec(tiny_folder))


def test_cache_hit_skips_decoding(tiny_folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset(folder_spec(tiny_folder))
    assert len(cache_files(tiny_folder)) == 1
    clear_memo()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although the cache was valid")

    monkeypatch.setattr(sources, "_decode", no_decoding)
    second = load_dataset(folder_spec(tiny_folder))
    assert_same(first, second)


def test_changed_file_changes_the_key(tiny_folder: Path) -> None:
    first = load_dataset(folder_spec(tiny_folder))
    changed = tiny_folder / "train" / "a" / "0000.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks

    second = load_dataset(folder_spec(tiny_folder))  # no clear_memo: the memo must notice too

    assert second.digest != first.digest
    assert second.train.images[0].sum() == 0
    assert len(cache_files(tiny_folder)) == 2


def test_image_size_gets_its_own_cache_entry(tiny_folder: Path) -> None:
    load_dataset(folder_spec(tiny_folder))
    load_dataset(folder_spec(tiny_folder, image_size=4))
    assert len(cache_files(tiny_folder)) == 2


@pytest.mark.parametrize("damage", ["garbage", "tampered"])
def test_damaged_cache_is_rebuilt(tiny_folder: Path, damage: str) -> None:
    first = load_dataset(folder_spec(tiny_folder))
    (cache,) = cache_files(tiny_folder)
    if damage == "garbage":
        cache.write_bytes(b"\0" * 100)
    else:
        blob = torch.load(cache, weights_only=True)
        blob["train_images"][0] += 1  # the stored digest no longer matches
        torch.save(blob, cache)
    clear_memo()

    with pytest.warns(UserWarning, match="ignoring damaged data cache"):
        second = load_dataset(folder_spec(tiny_folder))
    assert_same(first, second)
    clear_memo()
    assert_same(first, load_dataset(folder_spec(tiny_folder)))  # the rebuilt file is good


def test_unwritable_root_caches_in_the_user_cache(tiny_folder: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    (tiny_folder / ".harness-cache").write_text("a file where the cache folder would go")

    first = load_dataset(folder_spec(tiny_folder))
    clear_memo()
    second = load_dataset(folder_spec(tiny_folder))

    assert len(list((tmp_path / "user-cache" / "ablation-harness").glob("*.pt"))) == 1
    assert_same(first, second)


def test_digest_depends_on_content_not_path(tiny_folder: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(tiny_folder, tmp_path / "copy")
    original = load_dataset(folder_spec(tiny_folder))
    copied = load_dataset(folder_spec(copy))
    assert copied.digest == original.digest
    assert str(copy) in copied.source


def assert_same(first: Dataset, second: Dataset) -> None:
    assert second.digest == first.digest
    assert second.classes == first.classes
    for a, b in ((first.train, second.train), (first.test, second.test)):
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.labels, b.labels)


# --- the real data ------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_cifar10(cifar_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # cifar_root (conftest): ./data if unpacked there, else the shared tarball; skips without it.
    spec = DataSpec(name="cifar10", root=str(cifar_root))
    started = time.perf_counter()
    first = load_dataset(spec)
    first_seconds = time.perf_counter() - started
    clear_memo()
    started = time.perf_counter()
    second = load_dataset(spec)
    second_seconds = time.perf_counter() - started

    assert second.train.images.shape == (50000, 3, 32, 32)
    assert second.test.images.shape == (10000, 3, 32, 32)
    assert second.classes == list(CIFAR10_CLASSES)
    assert torch.bincount(second.train.labels).tolist() == [5000] * 10
    assert torch.bincount(second.test.labels).tolist() == [1000] * 10
    assert second.digest == first.digest
    with capsys.disabled():
        print(f"\nCIFAR-10 from {cifar_root}: first load {first_seconds:.2f} s, "
              f"second load (disk cache) {second_seconds:.2f} s")
    assert second_seconds < 10, "the disk cache should load 60k images in about 2 s"
