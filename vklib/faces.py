"""The face data of notebook 04 (DVE), split off :mod:`vklib.landmarks` (which keeps the method's losses, network and
metrics) as the released code keeps them in its data loaders: the training pairs (:func:`warp_pair`: two random
thin-plate-spline warps of each face with their dense correspondence, DVE's ``Warper``, built on :func:`random_tps`,
:func:`tps_fit` and kornia's :class:`TPSWarp` evaluation; :func:`photometric` colour augmentation), and readers of
CelebA, MAFL and AFLW-MTFL in the layouts of their official releases (and of DVE's ``celeba.tar.gz`` and
``aflw-mtfl.tar.gz``), registered in :mod:`vklib.data` as ``celeba``, ``mafl`` and ``aflw_mtfl``.

Every reader returns a :class:`vklib.data.ImageSet` of lazily decoded ``(3, size, size)`` images in [0, 1] with
``meta["landmarks"]`` ``(N, 5, 2)`` in pixels of the resized image (left eye, right eye, nose, left and right mouth
corner). :func:`batch_stream` draws training batches from them (decoded by DataLoader workers if asked).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F

from . import data as _data
from . import train as _train
from .landmarks import cell_centres, crop_border

__all__ = ["CELEBA_BOX", "FaceImages", "TPSWarp", "batch_indices", "batch_stream", "photometric", "random_tps",
           "tps_fit", "warp_pair"]


# ----------------------------------------------------------------------------------------------- warps
class TPSWarp(NamedTuple):
    """A batch of thin-plate-spline maps of the plane (kornia's parametrisation), in normalised coordinates.

    ``centers`` ``(N, K, 2)``, ``kernel_weights`` ``(N, K, 2)``, ``affine_weights`` ``(N, 3, 2)``. Calling the warp
    on points ``(N, P, 2)`` returns the mapped points ``(N, P, 2)``.
    """

    centers: torch.Tensor
    kernel_weights: torch.Tensor
    affine_weights: torch.Tensor

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        from kornia.geometry.transform import warp_points_tps
        return warp_points_tps(points, self.centers, self.kernel_weights, self.affine_weights)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """The ``(N, H, W, 2)`` sampling grid for ``F.grid_sample(..., align_corners=False)``: output pixel
        ``(i, j)`` samples the input at the warp of its own normalised centre."""
        centres = cell_centres(height, width, 1, self.centers.device, self.centers.dtype)
        pts = _data.to_normalized(centres, (height, width)).expand(len(self.centers), -1, -1)
        return self(pts).reshape(-1, height, width, 2)


def random_tps(n: int, *, generator: torch.Generator | None = None, rotation: float = 2.5, scale: float = 0.05,
               translation: float = 0.05, tps: float = 0.02, control: int = 5,
               kernel: Sequence[float] = (0.0, 0.0), device: str | torch.device = "cpu") -> TPSWarp:
    """``n`` random smooth warps: a random similarity (rotation ~ N(0, ``rotation`` degrees), scale ~ 1 + N(0,
    ``scale``), translation ~ N(0, ``translation``) in normalised units) plus independent N(0, ``tps``) jitter of a
    ``control x control`` grid of control points, interpolated by a thin-plate spline (:func:`tps_fit`, evaluated
    with kornia's ``warp_points_tps``). ``kernel = (sd_all, sd_subset)`` adds the released ``Warper``'s random
    spline weights: each ~ N(0, ``sd_all``), a random half of them ~ N(0, ``sd_subset``) instead (in the units of
    its kernel ``r^2 log r^2``, twice kornia's ``r^2 log r``).

    The map sends a normalised output location to the normalised input location it samples. All random numbers
    come from ``generator`` (on the CPU), so a seeded generator gives the same warps on every device.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if control < 2:
        raise ValueError(f"control must be >= 2 (a control x control grid of points), got {control}")
    if min(rotation, scale, translation, tps, *kernel) < 0:
        raise ValueError("rotation, scale, translation and tps are standard deviations and must be >= 0")
    lin = torch.linspace(-1, 1, control)
    yy, xx = torch.meshgrid(lin, lin, indexing="ij")
    src = torch.stack([xx, yy], -1).reshape(1, -1, 2).expand(n, -1, -1)
    theta = torch.randn(n, generator=generator) * (rotation * math.pi / 180)
    s = 1 + torch.randn(n, generator=generator) * scale
    t = torch.randn(n, 1, 2, generator=generator) * translation
    cos, sin = torch.cos(theta) * s, torch.sin(theta) * s
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (n, 2, 2)
    dst = src @ rot.transpose(1, 2) + t + torch.randn(src.shape, generator=generator) * tps
    weights, affine = tps_fit(src, dst)
    if max(kernel) > 0:
        extra = torch.randn(weights.shape, generator=generator) * kernel[0]
        subset = torch.rand(weights.shape, generator=generator) > 0.5
        extra = torch.where(subset, torch.randn(weights.shape, generator=generator) * kernel[1], extra)
        weights = weights + 2 * extra
    return TPSWarp(src.to(device), weights.to(device), affine.to(device))


def tps_fit(centers: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The thin-plate spline ``f`` with ``f(centers_i) = targets_i`` and minimal bending energy, with its kernels
    at ``centers``: ``f(p) = a_0 + a_1 p_x + a_2 p_y + sum_j w_j U(||p - centers_j||)``, ``U(r) = r^2 log r``.

    ``centers``, ``targets`` ``(N, K, 2)`` -> kernel weights ``(N, K, 2)`` and affine weights ``(N, 3, 2)`` in
    kornia's layout, so ``kornia.geometry.transform.warp_points_tps(p, centers, w, a)`` evaluates ``f``.
    (kornia's own ``get_tps_transform`` puts the kernels at the targets instead, which is only close to this
    spline for small displacements.)
    """
    n, k, _ = centers.shape
    d2 = (centers[:, :, None] - centers[:, None]).pow(2).sum(-1)
    kernel = torch.where(d2 > 0, 0.5 * d2 * torch.log(d2.clamp_min(1e-30)), torch.zeros_like(d2))
    affine = torch.cat([torch.ones_like(centers[..., :1]), centers], -1)  # (N, K, 3)
    system = torch.cat([torch.cat([kernel, affine], -1),
                        torch.cat([affine.transpose(1, 2), centers.new_zeros(n, 3, 3)], -1)], 1)
    rhs = torch.cat([targets, targets.new_zeros(n, 3, 2)], 1)
    sol = torch.linalg.solve(system, rhs)
    return sol[:, :k], sol[:, k:]


#: The PCA lighting of DVE's ``PcaAug`` (AlexNet's ImageNet RGB eigenvalues and eigenvectors, as columns).
_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def photometric(x: torch.Tensor, jitter: float, pca: float = 0.0, generator: torch.Generator | None = None):
    """Per-image colour augmentation of ``(N, 3, H, W)`` images in [0, 1], DVE's ``ColorJitter(j, j, j)`` then
    ``PcaAug(pca)``: brightness (x b), contrast (around the grey mean) and saturation (around the grey image), each
    factor ~ U(1 - j, 1 + j), clamped to [0, 1]; then an RGB shift ``eigvec @ (a * eigval)``, ``a ~ N(0, pca)``."""
    n = len(x)
    if jitter > 0:
        b, c, s = ((1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * jitter).to(x) for _ in range(3))
        grey = lambda t: (t * t.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)  # noqa: E731
        x = (x * b).clamp(0, 1)
        x = ((x - grey(x).mean((2, 3), keepdim=True)) * c + grey(x).mean((2, 3), keepdim=True)).clamp(0, 1)
        x = ((x - grey(x)) * s + grey(x)).clamp(0, 1)
    if pca > 0:
        a = torch.randn(n, 3, generator=generator) * pca
        shift = (a * torch.tensor(_PCA_EIGVAL)) @ torch.tensor(_PCA_EIGVEC).T  # (n, 3)
        x = x + shift.to(x).view(n, 3, 1, 1)
    return x


def warp_pair(images: torch.Tensor, *, generator: torch.Generator | None = None, stride: int = 1, crop: int = 0,
              rotation: float = 2.5, scale: float = 0.05, translation: float = 0.05, tps: float = 0.02,
              control: int = 5, kernel: Sequence[float] = (0.0, 0.0), color_jitter: float = 0.0,
              pca_lighting: float = 0.0):
    """Two random warps of each image with their dense correspondence (the ``Warper`` of DVE's code).

    ``x2 = x o G1`` and ``x1 = x o G1 o G2`` for random thin-plate splines ``G1``, ``G2`` (:func:`random_tps`),
    so location ``u`` of ``x1`` shows the same physical point as location ``g(u) = G2(u)`` of ``x2``; both images
    are sampled once from ``x`` (the composed grid), then cropped by ``crop`` pixels per side and optionally
    colour-jittered independently.

    Args:
        images: ``(N, C, H, W)`` in [0, 1].
        stride: the descriptor network's stride; ``g`` is given at the centres of the ``stride x stride`` cells.

    Returns:
        ``x1, x2`` ``(N, C, H - 2 crop, W - 2 crop)`` and ``g`` ``(N, h, w, 2)`` with ``h = (H - 2 crop) // stride``:
        for the centre of each cell of ``x1``, its position in ``x2`` in pixels of the cropped frame.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    n, _, H, W = images.shape
    if crop < 0 or 2 * crop >= min(H, W):
        raise ValueError(f"crop must be in [0, {min(H, W) // 2}), got {crop}")
    kw = dict(generator=generator, rotation=rotation, scale=scale, translation=translation, tps=tps,
              control=control, device=images.device)
    # the released Warper draws the first warp's spline weights at half the second's (im1_multiplier 0.5)
    g1, g2 = random_tps(n, **kw, kernel=[k / 2 for k in kernel]), random_tps(n, **kw, kernel=kernel)
    full = cell_centres(H, W, 1, images.device, images.dtype)
    full = _data.to_normalized(full, (H, W)).expand(n, -1, -1)
    grid2 = g1(full).reshape(n, H, W, 2)
    grid1 = g1(g2(full)).reshape(n, H, W, 2)
    x2 = F.grid_sample(images, grid2, mode="bilinear", padding_mode="zeros", align_corners=False)
    x1 = F.grid_sample(images, grid1, mode="bilinear", padding_mode="zeros", align_corners=False)
    x1, x2 = crop_border(x1, crop), crop_border(x2, crop)
    h, w = x1.shape[-2] // stride, x1.shape[-1] // stride
    cells = cell_centres(h, w, stride, images.device, images.dtype) + crop  # full-frame pixels
    g = _data.to_pixels(g2(_data.to_normalized(cells, (H, W)).expand(n, -1, -1)), (H, W)) - crop
    x1 = photometric(x1, color_jitter, pca_lighting, generator)
    x2 = photometric(x2, color_jitter, pca_lighting, generator)
    return x1, x2, g.reshape(n, h, w, 2)


# ----------------------------------------------------------------------------------------------- readers
class FaceImages(_data.LazyImages):
    """Face images decoded on access (a :class:`vklib.data.LazyImages`): each file is cropped to ``box``
    ``(left, top, right, bottom)`` in pixels and resized to ``size x size``, giving ``(3, size, size)`` float
    tensors in [0, 1]."""

    def __init__(self, paths: Sequence[Path], box: tuple[int, int, int, int], size: int):
        super().__init__(paths, "RGB", size)
        self.box = box

    def __getitem__(self, i):
        if isinstance(i, slice):
            return FaceImages(self.paths[i], self.box, self.size)
        from PIL import Image
        import numpy as np
        with Image.open(self.paths[i]) as im:
            a = np.asarray(im.convert("RGB").crop(self.box).resize((self.size, self.size), Image.BILINEAR))
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


#: DVE's crop of a 178 x 218 aligned CelebA image (``left, top, right, bottom``): the 178 x 178 square 30 rows from
#: the top ("move head up a bit" in the official loaders ``CelebAPrunedAligned_MAFLVal`` and ``MAFLAligned``).
CELEBA_BOX = (0, 30, 178, 208)
_FIVE_POINTS = ["left eye", "right eye", "nose", "left mouth", "right mouth"]


def _first(root: Path, *candidates: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise FileNotFoundError(f"none of {', '.join(candidates)} under {root}")


def _celeba_index(root: Path):
    """``(image folder, {file: (5, 2) landmarks}, {file: partition})`` of CelebA under ``root / "celeba"``.

    Either the layout of the official release (and of DVE's ``celeba.tar.gz``): ``Img/img_align_celeba/`` (or DVE's
    ``Img/img_align_celeba_hq/``), ``Anno/list_landmarks_align_celeba.txt``, ``Eval/list_eval_partition.txt``; or
    torchvision's, with the three at the top of ``celeba/``. The landmark file has a count line, a header line, then
    ``<file> lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x
    rightmouth_y`` in pixels of the 178 x 218 aligned image; the partition file has ``<file> <0|1|2>`` (train, val,
    test). Without a partition file every image counts as training.
    """
    folder = root / "celeba"
    images = _first(folder, "img_align_celeba", "Img/img_align_celeba", "Img/img_align_celeba_hq")
    marks = _first(folder, "list_landmarks_align_celeba.txt", "Anno/list_landmarks_align_celeba.txt")
    files, values = [], []
    for ln in marks.read_text().splitlines()[2:]:
        parts = ln.split()
        if len(parts) == 11:
            files.append(parts[0])
            values.append([float(v) for v in parts[1:]])
    lms = torch.tensor(values).view(-1, 5, 2) if values else torch.zeros(0, 5, 2)
    pts = dict(zip(files, lms))
    try:
        listing = _first(folder, "list_eval_partition.txt", "Eval/list_eval_partition.txt")
    except FileNotFoundError:
        return images, pts, {f: 0 for f in pts}
    part = {}
    for ln in listing.read_text().splitlines():
        parts = ln.split()
        if len(parts) == 2:
            part[parts[0]] = int(parts[1])
    return images, pts, part


def _mafl_list(root: Path, split: str) -> list[str]:
    """The CelebA file names of MAFL's ``celeba/MAFL/training.txt`` or ``testing.txt`` (TCDCN's release: one file
    name per line, further columns ignored)."""
    path = _first(root / "celeba", f"MAFL/{'training' if split == 'train' else 'testing'}.txt")
    return [Path(ln.split()[0].replace("\\", "/")).name for ln in path.read_text().splitlines() if ln.strip()]


def _celeba_set(name: str, split: str, files: list[str], images: Path, pts: dict, size: int | None):
    """Faces cropped to :data:`CELEBA_BOX` and resized to ``size`` (default 100), with their landmarks moved into
    that frame (``(p - box corner) * size / 178``, as DVE's loaders do)."""
    size = size or 100
    lo_x, lo_y, hi_x, _ = CELEBA_BOX
    lms = torch.stack([pts[f] for f in files]) if files else torch.zeros(0, 5, 2)
    lms = (lms - lms.new_tensor([lo_x, lo_y])) * (size / (hi_x - lo_x))
    return _data.ImageSet(name, split, FaceImages([images / f for f in files], CELEBA_BOX, size),
                          None, None, {"landmarks": lms, "files": files, "_landmark_names": list(_FIVE_POINTS)},
                          "full")


def _celeba_full(root: Path, split: str, download: bool, size):
    """CelebA's ``split`` partition without the 20,000 MAFL faces (both of MAFL's lists, as in DVE's
    ``CelebAPrunedAligned_MAFLVal``), so that nothing MAFL evaluates on is seen while learning descriptors."""
    images, pts, part = _celeba_index(root)
    want = {"train": 0, "val": 1, "test": 2}.get(split)
    held_out = set()
    for mafl_split in ("train", "test"):
        try:
            held_out.update(_mafl_list(root, mafl_split))
        except FileNotFoundError:
            warnings.warn(f"celeba: no MAFL/{'training' if mafl_split == 'train' else 'testing'}.txt under "
                          f"{root / 'celeba'}; those MAFL faces cannot be left out of CelebA", stacklevel=3)
    files = sorted(f for f in pts if (want is None or part.get(f) == want) and f not in held_out)
    if not files:
        raise FileNotFoundError(f"no CelebA images for split {split!r} under {images}")
    return _celeba_set("celeba", split, files, images, pts, size)


def _mafl_full(root: Path, split: str, download: bool, size):
    """MAFL (``celeba/MAFL/training.txt``: 19,000 faces, ``testing.txt``: 1,000), CelebA's images and aligned
    landmarks in the crop of ``celeba`` (DVE's ``MAFLAligned``)."""
    images, pts, _ = _celeba_index(root)
    files = _mafl_list(root, split)
    missing = [f for f in files if f not in pts]
    if missing:
        raise _data.DataError(f"mafl: {len(missing)} listed images have no CelebA landmarks (e.g. {missing[0]})")
    return _celeba_set("mafl", split, files, images, pts, size)


def _aflw_folder(root: Path) -> Path:
    """``<root>/aflw_mtfl``, or ``<root>/aflw-mtfl`` as DVE's ``aflw-mtfl.tar.gz`` unpacks."""
    for name in ("aflw_mtfl", "aflw-mtfl"):
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no aflw_mtfl/ (or aflw-mtfl/) folder under {root}")


def _mtfl_test(folder: Path) -> tuple[list[Path], list[list[float]]]:
    """MTFL's AFLW test faces: ``MTFL/testing.txt`` lines ``AFLW/<n>-image<id>.jpg x1..x5 y1..y5 gender smile
    glasses pose`` (1-based pixels of the 150 x 150 crops, left eye, right eye, nose, left and right mouth corner);
    returns the image paths and the rows ``x1, y1, ..., x5, y5``."""
    listing = folder / "MTFL" / "testing.txt"
    paths, rows = [], []
    for ln in listing.read_text().splitlines():
        parts = ln.split()
        if not parts:
            continue
        if len(parts) < 11:
            raise _data.DataError(f"aflw_mtfl: {listing}: expected a path and 10 coordinates, got {ln!r}")
        v = [float(t) for t in parts[1:11]]
        paths.append(folder / "MTFL" / parts[0].replace("\\", "/"))
        rows.append([c for k in range(5) for c in (v[k], v[k + 5])])
    return paths, rows


def _aflw_train(folder: Path) -> tuple[list[Path], list[list[float]]]:
    """The 10,122 AFLW training crops of Thewlis et al. (ICCV 2017): the rows of
    ``aflw_cropped/facedata_cropped.csv`` (comma separated, one header line) whose ``set`` is 1; ``crop_file`` is the
    crop relative to ``aflw_cropped/``, ``image_file`` the original AFLW image, and columns 5 to 14 hold
    ``x1, y1, ..., x5, y5`` (1-based pixels of the 150 x 150 crop, in MTFL's landmark order), as DVE's ``AFLW_MTFL``
    reads them. Raises a :class:`vklib.data.DataError` when a training face's image is one of MTFL's test faces."""
    import csv
    base = folder / "aflw_cropped"
    table = base / "facedata_cropped.csv"
    with open(table, newline="", encoding="utf-8-sig") as f:  # a BOM, if any, is not part of a name
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in ("image_file", "set", "crop_file") if c not in header]
        if missing or len(header) < 14:
            raise _data.DataError(f"aflw_mtfl: {table} has no column(s) {', '.join(missing) or 'x1..y5'} "
                                  f"(header {header})")
        i_img, i_set, i_crop = (header.index(c) for c in ("image_file", "set", "crop_file"))
        paths, rows, originals = [], [], []
        for row in reader:
            if not row or float(row[i_set]) != 1:
                continue
            paths.append(base / row[i_crop].strip().replace("\\", "/"))
            rows.append([float(v) for v in row[4:14]])
            originals.append(row[i_img].strip())
    test_list = folder / "MTFL" / "testing.txt"
    if test_list.exists():
        tested = {p.name.split("-")[-1] for p in _mtfl_test(folder)[0]}
        clash = [f for f in originals if f in tested]
        if clash:
            raise _data.DataError(f"aflw_mtfl: {len(clash)} training faces of {table} come from MTFL test images "
                                  f"(e.g. {clash[0]})")
    return paths, rows


def _aflw_full(root: Path, split: str, download: bool, size):
    """AFLW-MTFL as DVE's ``AFLW_MTFL`` reads it from ``aflw-mtfl.tar.gz``: training faces from
    ``aflw_cropped/facedata_cropped.csv`` (:func:`_aflw_train`), test faces from ``MTFL/testing.txt``
    (:func:`_mtfl_test`). Whole crops are resized to ``size x size`` (default 100); the 1-based landmarks become
    0-based pixels scaled with them, ``(p - 1) * size / side`` (each image's side read from its header)."""
    folder = _aflw_folder(root)
    paths, rows = _aflw_train(folder) if split == "train" else _mtfl_test(folder)
    if not paths:
        raise FileNotFoundError(f"aflw_mtfl: no {split} faces listed under {folder}")
    size = size or 100
    from PIL import Image
    lms = torch.tensor(rows).view(-1, 5, 2) - 1  # MATLAB's 1-based pixels -> pixel centres at integers
    scale = torch.empty(len(paths), 1, 2)
    for k, p in enumerate(paths):
        with Image.open(p) as im:  # the header only
            scale[k, 0] = torch.tensor([size / im.size[0], size / im.size[1]])
    return _data.ImageSet("aflw_mtfl", split, _data.LazyImages(paths, "RGB", size), None, None,
                          {"landmarks": lms * scale, "files": [str(p) for p in paths],
                           "_landmark_names": list(_FIVE_POINTS)}, "full")


# ----------------------------------------------------------------------------------------------- batches
def batch_stream(images, batch_size: int, steps: int, generator: torch.Generator, workers: int = 0):
    """``steps`` batches of ``batch_size`` images (a stacked tensor, or a sequence of ``(3, H, W)`` decoded on
    access), a new seeded permutation for every pass (:func:`batch_indices`); with ``workers > 0`` a sequence is
    decoded by that many DataLoader workers, batches in the same order."""
    indices = batch_indices(len(images), batch_size, steps, generator)
    if workers <= 0 or torch.is_tensor(images):
        for idx in indices:
            yield _train.gather(images, idx)
        return
    loader = torch.utils.data.DataLoader(_IndexedBatches(images, list(indices)), batch_size=None,
                                         num_workers=workers)
    yield from loader  # the DataLoader round-robins over its workers, so batches keep their order


class _IndexedBatches(torch.utils.data.IterableDataset):
    """Batches ``[images[i] for i in idx]`` for each ``idx`` of ``index_list``, split across DataLoader workers
    (worker ``k`` of ``n`` decodes batches ``k, k + n, ...``), for the JPEG-decoding paper profile."""

    def __init__(self, images, index_list):
        self.images, self.index_list = images, index_list

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (0, 1) if info is None else (info.id, info.num_workers)
        for j in range(k, len(self.index_list), n):
            yield _train.gather(self.images, self.index_list[j])


def batch_indices(n: int, batch_size: int, steps: int, generator: torch.Generator):
    """``steps`` index batches of ``batch_size`` over ``range(n)``: the full batches of :func:`vklib.train.batches`
    of a new seeded permutation for every pass (a last, smaller batch is left out)."""
    made = 0
    while made < steps:
        for idx in _train.batches(n, batch_size, shuffle=True, generator=generator):
            if made == steps:
                return
            if len(idx) == batch_size:
                yield idx
                made += 1
