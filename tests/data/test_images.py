"""Image data: the digits split, folder reading (labels, resizing, unreadable files named), the
strict data config, and batches that resume exactly."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from genmodels.config import ConfigError
from genmodels.data.images import ImageBatches, ImageDataConfig, digits_images, load_images


# ---- digits ------------------------------------------------------------------------------------
def test_digits_split_sizes_stratified_and_scaled():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_images()
    assert (len(data.train), len(data.val)) == (1437, 360)
    assert data.summary["train"] == 1437 and data.summary["val"] == 360 and data.summary["skipped"] == 0
    assert data.class_names == tuple("0123456789")
    assert data.train.images.shape == (1437, 1, 8, 8) and data.train.images.dtype == torch.float32
    # x/8 - 1 of the raw 0..16 values, the reference recipe's split (sklearn, stratified, seed 0)
    d = load_digits()
    tr, va = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    want = torch.from_numpy(d.images[np.sort(tr)] / 8.0 - 1.0).float().unsqueeze(1)
    torch.testing.assert_close(data.train.images, want, rtol=0, atol=0)
    torch.testing.assert_close(data.val.labels, torch.from_numpy(d.target[np.sort(va)]).long())
    assert data.train.images.min() == -1.0 and data.train.images.max() == 1.0
    # each class keeps its share: 20% ± one image in validation
    full = np.bincount(d.target, minlength=10)
    val = np.bincount(data.val.labels.numpy(), minlength=10)
    assert np.all(np.abs(val - 0.2 * full) <= 1)


def test_digits_upsampling_and_channels():
    base = digits_images().images  # (1797, 1, 8, 8)
    near = digits_images(16, 1, "nearest").images
    torch.testing.assert_close(near, base.repeat_interleave(2, -1).repeat_interleave(2, -2), rtol=0, atol=0)
    bil = load_images({"image_size": 32, "channels": 3}).train.images
    assert bil.shape == (1437, 3, 32, 32) and bil.min() >= -1 and bil.max() <= 1
    torch.testing.assert_close(bil[:, 0], bil[:, 2], rtol=0, atol=0)
    cub = digits_images(16, 1, "bicubic").images
    assert cub.min() >= -1 and cub.max() <= 1


def test_split_seed_changes_membership_and_zero_fraction_keeps_all():
    a, b = load_images({"seed": 0}), load_images({"seed": 1})
    assert not torch.equal(a.val.images, b.val.images)
    none = load_images({"val_fraction": 0.0})
    assert (len(none.train), len(none.val)) == (1797, 0)


@pytest.mark.parametrize("section, field", [
    ({"source": "mnist"}, "data.source"),
    ({"source": "folder"}, "data.path"),
    ({"path": "/tmp"}, "data.path"),
    ({"image_size": 12}, "data.image_size"),
    ({"image_size": 0}, "data.image_size"),
    ({"channels": 2}, "data.channels"),
    ({"interpolation": "lanczos"}, "data.interpolation"),
    ({"val_fraction": 1.0}, "data.val_fraction"),
    ({"val_fraction": "0.2"}, "data.val_fraction"),
    ({"extensions": ["png"]}, "data.extensions"),
    ({"colour": True}, "colour"),
])
def test_config_errors_name_the_field(section, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ImageDataConfig.from_dict(section)


def test_config_round_trips():
    cfg = ImageDataConfig.from_dict({"source": "folder", "path": "/x", "image_size": 32, "channels": 3})
    assert ImageDataConfig.from_dict(cfg.to_dict()) == cfg


# ---- folders -----------------------------------------------------------------------------------
def _png(path, size=(12, 10), mode="RGB", value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value,) * len(mode)).save(path)


def _folder(tmp_path):
    root = tmp_path / "pets"
    for i in range(4):
        _png(root / "dog" / f"d{i}.png", size=(20 + i, 9), value=40 * i)
        _png(root / "cat" / f"c{i}.png", mode="L" if i % 2 else "RGBA", value=200)
    _png(root / "cat" / "deep" / "c9.png")  # nested below a class folder: still a cat
    (root / "dog" / "broken.png").write_bytes(b"not an image at all")
    good = root / "dog" / "d0.png"
    (root / "dog" / "cut.png").write_bytes(good.read_bytes()[:40])  # truncated
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.png").write_bytes(b"junk")
    return root


def test_folder_labels_resize_and_unreadable_files_named(tmp_path):
    root = _folder(tmp_path)
    with pytest.warns(UserWarning, match=r"skipped 2 of 11 image files") as record:
        data = load_images({"source": "folder", "path": str(root), "image_size": 6, "channels": 3,
                            "val_fraction": 0.0})
    message = str(record[0].message)
    assert "broken.png" in message and "cut.png" in message
    s = data.summary
    assert (s["found"], s["loaded"], s["skipped"], s["ignored"]) == (11, 9, 2, 1)
    assert sorted(f.split(":")[0] for f in s["skipped_files"]) == ["dog/broken.png", "dog/cut.png"]
    assert data.class_names == ("cat", "dog")
    assert data.train.images.shape == (9, 3, 6, 6)
    assert data.train.labels.tolist() == [0] * 5 + [1] * 4  # files sorted: cat/*, then dog/*
    # dog i is grey 40·i everywhere: x/127.5 - 1
    torch.testing.assert_close(data.train.images[5:, 0, 0, 0], torch.tensor([40 * i / 127.5 - 1 for i in range(4)]))


def test_folder_centre_crop_or_stretch(tmp_path):
    root = tmp_path / "one"
    root.mkdir()
    a = np.zeros((20, 60), np.uint8)
    a[:, 20:40] = 255  # white centre square, black sides
    Image.fromarray(a).save(root / "a.png")
    Image.fromarray(a).save(root / "b.png")
    cfg = {"source": "folder", "path": str(root), "image_size": 8, "val_fraction": 0.0, "interpolation": "nearest"}
    data = load_images(cfg)
    assert data.class_names == ("one",) and data.train.images.shape == (2, 1, 8, 8)
    assert torch.all(data.train.images == 1.0)  # the centre crop is all white
    smooth = load_images({**cfg, "interpolation": "bilinear"}).train.images  # edges read their neighbours
    assert torch.all(smooth[..., 1:-1] == 1.0) and torch.all(smooth[..., 0] < 1.0)
    stretched = load_images({**cfg, "crop": False}).train.images
    assert stretched[0, 0, :, 0].max() == -1.0 and stretched[0, 0, :, 4].min() == 1.0


def test_folder_errors_name_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no image files"):
        load_images({"source": "folder", "path": str(empty)})
    with pytest.raises(ValueError, match="nowhere.*no such folder"):
        load_images({"source": "folder", "path": str(tmp_path / "nowhere")})
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="x.png"), pytest.raises(ValueError, match=r"bad: none of its 1 image"):
        load_images({"source": "folder", "path": str(bad)})
    mixed = tmp_path / "mixed"
    _png(mixed / "top.png")
    _png(mixed / "cls" / "a.png")
    with pytest.raises(ValueError, match="mixed.*both directly"):
        load_images({"source": "folder", "path": str(mixed)})


def test_folder_split_needs_two_per_class(tmp_path):
    root = tmp_path / "few"
    _png(root / "a" / "1.png")
    for i in range(5):
        _png(root / "b" / f"{i}.png")
    with pytest.raises(ValueError, match="class 'a' has 1 image.*val_fraction"):
        load_images({"source": "folder", "path": str(root), "val_fraction": 0.2})


def test_class_with_only_unreadable_files_is_dropped_with_a_warning(tmp_path):
    root = tmp_path / "c"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.png").write_bytes(b"junk")
    _png(root / "b" / "1.png")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        data = load_images({"source": "folder", "path": str(root), "val_fraction": 0.0})
    assert any("class folder(s) a" in str(w.message) for w in record)
    assert data.class_names == ("b",) and data.train.labels.tolist() == [0]


# ---- batches -----------------------------------------------------------------------------------
def test_batches_resume_exactly_and_refuse_other_images():
    data = load_images()
    batches = ImageBatches(data.train, batch_size=100, seed=3)
    assert len(batches) == 14
    for _ in range(20):  # into the second epoch
        next(batches)
    state = batches.state_dict()
    want = [next(batches) for _ in range(3)]
    again = ImageBatches(data.train, batch_size=100, seed=0)
    again.load_state_dict(state)
    for (x, y), (wx, wy) in zip((next(again) for _ in range(3)), want):
        assert torch.equal(x, wx) and torch.equal(y, wy)
    x, y = want[0]
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,)
    other = ImageBatches(load_images({"seed": 1}).train, batch_size=100)
    with pytest.raises(ValueError, match="images differ"):
        other.load_state_dict(state)


def test_batches_pair_images_with_their_labels():
    data = load_images()
    x, y = next(ImageBatches(data.train, batch_size=64))
    for img, label in zip(x[:5], y[:5]):
        i = int(torch.nonzero((data.train.images == img).flatten(1).all(1))[0])
        assert data.train.labels[i] == label
