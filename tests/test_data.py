"""The dataset registry: shipped subsets, checksums, data roots and the errors users see."""
import shutil

import pytest
import torch

from vklib import data

SHIPPED = {"mnist": ("train", "test"), "fashion_mnist": ("train", "test"), "cifar10": ("test",),
           "lfw_people": ("all",), "orl_faces": ("all",), "lfw_landmarks5": ("train", "test"), "pacs": ("all",),
           "coco_captions_mini": ("all", "train", "val"), "set12": ("test",), "levin_kernels": ("test",)}


def test_registry_lists_every_shipped_dataset():
    assert set(SHIPPED) <= set(data.names(shipped_only=True))
    assert {"cifar100", "svhn"} <= set(data.names()) - set(data.names(shipped_only=True))


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_subsets_load(name):
    for split in SHIPPED[name]:
        ds = data.load(name, split)
        assert len(ds) > 0 and ds.source == "subset" and ds.split == split
        first = ds.images[0]
        assert first.dtype == torch.float32 and first.ndim == 3
        assert 0.0 <= float(first.min()) and float(first.max()) <= 1.0
        if ds.labels is not None:
            assert ds.labels.dtype == torch.long and len(ds.labels) == len(ds)
            assert int(ds.labels.max()) < len(ds.classes)
        for key, value in ds.meta.items():
            if not key.startswith("_"):
                assert len(value) == len(ds), key


def test_subset_sizes_and_extras():
    mnist = data.load("mnist", "test")
    assert mnist.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(mnist.labels).tolist()[:3] == [980, 1135, 1032]
    faces = data.load("lfw_landmarks5", "train")
    assert faces.meta["landmarks"].shape == (1000, 5, 2)
    assert float(faces.meta["landmarks"].min()) >= 0 and float(faces.meta["landmarks"].max()) < 64
    small = data.load("lfw_landmarks5", "test", size=32)
    assert small.images.shape[-1] == 32 and float(small.meta["landmarks"].max()) < 32
    kernels = data.load("levin_kernels", "test")
    assert len(kernels) == 8 and all(abs(float(k.sum()) - 1) < 1e-5 for k in kernels.images)
    coco = data.load("coco_captions_mini", "val")
    assert len(coco) == 159 and all(len(c) == 5 for c in coco.meta["captions"])
    assert len(data.load("pacs", "all").meta["_domains"]) == 4


def test_per_class_and_subset_are_seeded():
    ds = data.load("mnist", "train")
    a, b = ds.per_class(3, seed=1), ds.per_class(3, seed=1)
    assert torch.equal(a.images, b.images) and torch.bincount(a.labels).tolist() == [3] * 10
    assert not torch.equal(a.images, ds.per_class(3, seed=2).images)
    with pytest.raises(ValueError, match="n must be >= 1"):
        ds.per_class(0)
    x, y = ds.subset([0, 5]).tensors().tensors
    assert x.shape == (2, 1, 28, 28) and y.tolist() == ds.labels[[0, 5]].tolist()


def test_unknown_dataset_and_split():
    with pytest.raises(KeyError, match="unknown dataset 'mnistt'.*known datasets: .*mnist"):
        data.load("mnistt")
    with pytest.raises(ValueError, match="unknown split 'val'.*allowed: train, test"):
        data.load("mnist", "val")
    with pytest.raises(ValueError, match="size must be a positive int"):
        data.load("mnist", size=0)


def test_full_only_dataset_without_subset():
    with pytest.raises(data.DataNotFoundError, match="'cifar100' has no shipped subset.*full=True"):
        data.load("cifar100", "train")


def test_missing_full_data_offline_says_what_to_do(tmp_path):
    with pytest.raises(data.DataNotFoundError, match=r"'mnist' \(full\).*download=False.*torchvision.*download=True"):
        data.load("mnist", "train", full=True, data_dir=tmp_path)
    with pytest.raises(data.DataNotFoundError, match="'pacs' \\(full\\).*PACS/<domain>/<class>") as e:
        data.load("pacs", "all", full=True, data_dir=tmp_path)
    assert "download=True" not in str(e.value)  # PACS cannot be fetched automatically: do not suggest it
    with pytest.raises(data.DataError, match="'pacs' cannot be downloaded automatically.*mnist"):
        data.load("pacs", "all", full=True, download=True, data_dir=tmp_path)


def test_splits_only_the_full_dataset_has(tmp_path):
    assert data.info("cifar10").allowed_splits(full=True) == ("test", "train")
    with pytest.raises(ValueError, match=r"unknown split 'train' \(full=True only\); allowed: test"):
        data.load("cifar10", "train")
    with pytest.raises(data.DataNotFoundError, match=r"'cifar10' \(full\)"):  # accepted, then not found offline
        data.load("cifar10", "train", full=True, data_dir=tmp_path)


def test_download_never_writes_into_shipped_data():
    with pytest.raises(data.DataError, match="downloads never go into the course's data/"):
        data.load("mnist", "train", full=True, download=True, data_dir=data.REPO_DATA)


def test_corrupt_file_raises_checksum_error(tmp_path):
    shutil.copytree(data.REPO_DATA / "orl_faces", tmp_path / "orl_faces")
    target = tmp_path / "orl_faces" / "orl_faces.npz"
    blob = bytearray(target.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(data.ChecksumError, match="orl_faces.npz does not match its sha256") as err:
        data.load("orl_faces", "all", data_dir=tmp_path)
    assert "git checkout" not in str(err.value) and "copy the course's data/orl_faces/ folder" in str(err.value)


def test_missing_file_and_env_root(tmp_path, monkeypatch):
    shutil.copytree(data.REPO_DATA / "set12", tmp_path / "set12")
    (tmp_path / "set12" / "01_cameraman.png").unlink()
    monkeypatch.setenv("VKLIB_DATA", str(tmp_path))
    assert data.data_root() == tmp_path
    with pytest.raises(data.DataNotFoundError, match="01_cameraman.png is missing"):
        data.load("set12", "test")
    # a root without the subset falls back to the shipped copy
    monkeypatch.setenv("VKLIB_DATA", str(tmp_path / "empty"))
    assert len(data.load("set12", "test")) == 7


def test_missing_subset_everywhere(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "REPO_DATA", tmp_path / "repo_data")
    with pytest.raises(data.DataNotFoundError, match="'mnist': the shipped subset was not found.*git checkout"):
        data.load("mnist", data_dir=tmp_path)


def test_register_a_new_dataset():
    spec = data.DatasetSpec("toy_for_test", "toy", ("all",), None,
                            lambda root, split, download, size: data.ImageSet("toy_for_test", split, torch.zeros(2, 1, 4, 4),
                                                                              source="full"),
                            "no hint")
    data.register(spec)
    try:
        assert data.info("toy_for_test") is spec
        assert len(data.load("toy_for_test", "all", full=True, data_dir="/nonexistent")) == 2
    finally:
        data._REGISTRY.pop("toy_for_test")


def test_registry_is_complete_on_importing_vklib_data():
    """Every dataset, the full-size benchmarks of single methods included, is registered by `import vklib.data`."""
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", "import vklib.data as d; print(' '.join(d.names()))"],
                         capture_output=True, text=True, check=True).stdout.split()
    for name in ("voc07", "imagenet", "coco_instances", "flickr_aes", "celeba", "mafl", "aflw_mtfl", "aflw_imm",
                 "office_home", "domainnet", "casia_webface", "market1501", "dukemtmc_reid", "coco_karpathy", "lfw"):
        assert name in out, f"{name} is registered only after importing its method module"


def test_landmark_coordinates_round_trip():
    p = torch.tensor([[0.0, 0.0], [99.0, 49.0]])
    n = data.to_normalized(p, (50, 100))
    assert torch.allclose(n, torch.tensor([[-0.99, -0.98], [0.99, 0.98]]))
    assert torch.allclose(data.to_pixels(n, (50, 100)), p, atol=1e-5)


def test_class_folders_reads_the_imagefolder_layout(tmp_path):
    from PIL import Image
    for cls, n in (("b_cat", 2), ("a_dog", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            Image.new("RGB", (6, 4), (i * 100, 0, 0)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "a_dog" / "notes.txt").write_text("not an image")
    ds = data.class_folders("demo", "all", tmp_path, size=8)
    assert ds.classes == ["a_dog", "b_cat"] and ds.labels.tolist() == [0, 1, 1]
    assert ds.images[2].shape == (3, 8, 8) and len(ds.meta["files"]) == 3
    with pytest.raises(FileNotFoundError, match="no <class>/<image> files"):
        data.class_folders("demo", "all", tmp_path / "a_dog")
    with pytest.raises(FileNotFoundError, match="not found"):
        data.class_folders("demo", "all", tmp_path / "missing")


@pytest.fixture(scope="module")
def miniature_root(tmp_path_factory):
    from miniatures import write_all
    return write_all(tmp_path_factory.mktemp("miniatures"))


def test_every_full_reader_has_a_miniature():
    """tests/miniatures writes a miniature, in the release's own layout, for every dataset with a full-size reader."""
    from miniatures import sizes
    readers = {n for n in data.names() if data.info(n).load_full is not None}
    assert not readers - set(sizes()), f"full readers without a miniature: {sorted(readers - set(sizes()))}"
    assert not set(sizes()) - readers, f"miniatures of no registered full reader: {sorted(set(sizes()) - readers)}"


@pytest.mark.parametrize("name", sorted(__import__("miniatures").sizes()))
def test_full_readers_read_their_official_layouts(name, miniature_root):
    """Every full-dataset reader loads its miniature (tests/miniatures) with the images and labels expected; the
    method modules' tests check what is particular to each (landmarks, boxes, captions, ratings)."""
    from miniatures import sizes
    for split, n in sizes()[name].items():
        ds = data.load(name, split, full=True, data_dir=miniature_root)
        assert ds.source == "full" and len(ds) == n, (split, len(ds))
        x = ds.images[0]
        assert x.ndim == 3 and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
        if ds.labels is not None and not ds.labels.is_floating_point():  # class labels (not ratings)
            assert ds.labels.dtype == torch.int64 and int(ds.labels.min()) >= 0
            assert ds.classes and int(ds.labels.max()) < len(ds.classes)
    if name == "svhn":
        assert data.load(name, "test", full=True, data_dir=miniature_root).labels.tolist()[:3] == [1, 2, 3]
        assert 0 in data.load(name, "test", full=True, data_dir=miniature_root).labels.tolist()
    if name == "lfw_landmarks5":
        pts = data.load(name, "train", full=True, data_dir=miniature_root).meta["landmarks"]
        assert pts.shape == (6, 5, 2) and torch.allclose(pts[0, 0], torch.tensor([(100 - 61) * 0.5, (110 - 61) * 0.5]))
    if name == "lfw_people":
        ds = data.load(name, "all", full=True, data_dir=miniature_root)
        assert ds.images.shape[1:] == (1, 62, 47) and ds.classes == ["Ada Lovelace", "Alan Turing"]
