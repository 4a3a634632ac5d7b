"""PyTorch datasets of aligned faces for trunk and branch training.

Every sample's randomness (flip, drawn resolution) comes from a generator seeded by
``(seed, epoch, index)``: results do not depend on worker processes or fetch order, and a run
resumed at any step replays the same images. Call :meth:`set_epoch` before iterating an epoch,
and build the DataLoader iterator after it (``persistent_workers=False``: persistent workers
keep the epoch they were started with), or index with ``(epoch, index)`` pairs from your own
sampler.

Output tensors are RGB float32, normalised as ``(x / 255 - mean) / std`` per channel; the
default mean = std = 0.5 is the face-model convention ``(x / 255 - 0.5) / 0.5``. Pass the
model's ``pretrained_cfg`` mean and std for other backbones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, ResolutionError
from ..resize import resize_tensor
from .corrupt import DEFAULT_POLICY, CorruptPolicy, CorruptTracker
from .degrade import BRANCH_DEGRADATION, TRUNK_DEGRADATION, DegradationSpec
from .multires import ResolutionSampler, sample_rng
from .sources import FaceSource

SampleKey = int | tuple[int, int]
#: The face-model convention: ``(x / 255 - 0.5) / 0.5``.
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)


def normalize(x: torch.Tensor, mean: Sequence[float] = FACE_MEAN,
              std: Sequence[float] = FACE_STD) -> torch.Tensor:
    """Pixel values 0..255 (``3×H×W``) → ``(x / 255 - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x / 255.0 - m) / s


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], ...]:
    mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if len(mean_t) != 3 or len(std_t) != 3 or min(std_t) <= 0:
        raise ConfigError(f"mean and std must be 3 numbers (RGB) with std > 0, got {mean}, {std}")
    return mean_t, std_t


class _SeededFaceDataset(Dataset):
    """Loading, corrupt-image policy, resizing to the trunk size and the seeded flip."""

    def __init__(self, source: FaceSource, *, size: int, flip: bool, seed: int,
                 degradation: DegradationSpec, corrupt: CorruptPolicy, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        if not isinstance(source, FaceSource):
            raise ConfigError(f"source must be a FaceSource, got {type(source).__name__}")
        if int(size) < 1:
            raise ConfigError(f"size must be >= 1, got {size}")
        if int(seed) < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.source = source
        self.size = int(size)
        self.flip = bool(flip)
        self.seed = int(seed)
        self.degradation = degradation
        self.corrupt = corrupt
        self.mean, self.std = _check_stats(mean, std)
        self.epoch = 0
        self._tracker = CorruptTracker(corrupt, len(source))

    def __len__(self) -> int:
        return len(self.source)

    @property
    def num_classes(self) -> int:
        """Size of the label space."""
        return self.source.num_classes

    @property
    def labels(self) -> np.ndarray:
        """Label of every sample (int64)."""
        return self.source.labels

    @property
    def class_to_idx(self) -> dict[str, int]:
        """Identity name → label."""
        return self.source.class_to_idx

    @property
    def corrupt_samples(self) -> dict[int, str]:
        """Unreadable samples seen by this process: index → error (with the path)."""
        return dict(self._tracker.failed)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws integer indices use."""
        if int(epoch) < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def _prepare(self, key: SampleKey) -> tuple[np.random.Generator, torch.Tensor, int]:
        """Generator, trunk-size 0..255 image (flipped or not) and label of one sample."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        rng = sample_rng(self.seed, int(epoch), index)
        image, used = self._tracker.load(index, self.source.load)
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = resize_tensor(x, self.size, self.degradation.resize)
        if rng.random() < 0.5 and self.flip:  # drawn even without flip: same later draws
            x = x.flip(-1)
        return rng, x, int(self.source.labels[used])

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    def config(self) -> dict[str, Any]:
        """JSON-serialisable record of everything that shapes the samples."""
        return {"source": self.source.to_dict(), "size": self.size, "flip": self.flip,
                "seed": self.seed, "mean": list(self.mean), "std": list(self.std),
                "degradation": self.degradation.to_dict(),
                "corrupt": self.corrupt.to_dict()}


class FaceDataset(_SeededFaceDataset):
    """Faces at the trunk size, optionally degraded to a random resolution (φ_hr / φ_mr / φ_mm).

    Args:
        source: the labelled images (:func:`open_source`, :class:`ImageFolderSource`, ...).
        size: trunk input size; images of another size are first resized to it with
            ``degradation.resize``.
        flip: random horizontal flip with probability 0.5.
        resolutions: resolution drawn per sample (``ResolutionSampler.preset("v1")`` etc.);
            ``None`` keeps every image at ``size`` (φ_hr).
        degradation: how an image is brought to the drawn resolution and back.
        seed: base seed of the per-sample generators.
        corrupt: policy for unreadable images.
        mean, std: per-channel normalisation of ``x / 255`` (RGB).

    ``dataset[i]`` is ``(image, label)``: a float32 ``3×size×size`` tensor (``3×r×r`` when a
    fixed resolution ``r`` is used without up-sampling) and an int.
    """

    def __init__(self, source: FaceSource, *, size: int = 112, flip: bool = True,
                 resolutions: ResolutionSampler | None = None,
                 degradation: DegradationSpec = TRUNK_DEGRADATION, seed: int = 0,
                 corrupt: CorruptPolicy = DEFAULT_POLICY, mean: Sequence[float] = FACE_MEAN,
                 std: Sequence[float] = FACE_STD) -> None:
        super().__init__(source, size=size, flip=flip, seed=seed, degradation=degradation,
                         corrupt=corrupt, mean=mean, std=std)
        if resolutions is not None:
            if resolutions.max_size > self.size:
                raise ResolutionError(f"resolutions up to {resolutions.max_size} exceed the trunk "
                                      f"size {self.size}; accepted: 1..{self.size}")
            if not degradation.upsample and len(resolutions.sizes) > 1:
                raise ConfigError("several resolutions without up-sampling give images of "
                                  "different sizes that cannot be batched; set "
                                  "degradation.upsample=True or use one resolution")
        self.resolutions = resolutions

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, int]:
        rng, x, label = self._prepare(key)
        if self.resolutions is not None:
            x = self.degradation.apply(x, self.resolutions.sample(rng), self.size, rng)
        return self._normalize(x), label

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["resolutions"] = self.resolutions.to_dict() if self.resolutions else None
        return out


class PairedFaceDataset(_SeededFaceDataset):
    """Teacher / student pairs for branch training.

    Args:
        source: the labelled images.
        resolution: the branch resolution ``r``.
        size: trunk input size (teacher input).
        flip: random horizontal flip, the same for both images.
        degradation: how the student image is made from the teacher image (default: the
            reference's non-antialiased tensor bilinear, kept at ``r``).
        seed: base seed of the per-sample generators.
        corrupt: policy for unreadable images.
        mean, std: per-channel normalisation of ``x / 255`` (RGB).

    ``dataset[i]`` is ``(teacher, student, label)``: float32 ``3×size×size``, float32
    ``3×r×r`` (``3×size×size`` with up-sampling) and an int.
    """

    def __init__(self, source: FaceSource, resolution: int, *, size: int = 112,
                 flip: bool = True, degradation: DegradationSpec = BRANCH_DEGRADATION,
                 seed: int = 0, corrupt: CorruptPolicy = DEFAULT_POLICY,
                 mean: Sequence[float] = FACE_MEAN, std: Sequence[float] = FACE_STD) -> None:
        super().__init__(source, size=size, flip=flip, seed=seed, degradation=degradation,
                         corrupt=corrupt, mean=mean, std=std)
        if not 1 <= int(resolution) <= self.size:
            raise ResolutionError(f"resolution {resolution} is outside 1..{self.size} "
                                  "(the trunk size)")
        self.resolution = int(resolution)

    def __getitem__(self, key: SampleKey) -> tuple[torch.Tensor, torch.Tensor, int]:
        rng, x, label = self._prepare(key)
        student = self.degradation.apply(x, self.resolution, self.size, rng)
        return self._normalize(x), self._normalize(student), label

    def config(self) -> dict[str, Any]:
        out = super().config()
        out["resolution"] = self.resolution
        return out
