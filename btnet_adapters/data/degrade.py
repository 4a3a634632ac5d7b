"""Resolution degradation as an explicit, recorded setting.

The reference trains its multi-resolution trunk on PIL-antialiased bilinear images brought back
to 112 and its branches on non-antialiased tensor resizes, and the numbers depend on it. A
:class:`DegradationSpec` names the down-sampling (library, filter, antialias, through
:class:`btnet_adapters.resize.ResizeSpec`) and whether and how the image goes back up to the
trunk size.

Real low-resolution faces are not clean resizes: optics blur them, the sampling grid falls
anywhere on the face, sensors add noise and cameras compress. A spec can add seeded random
parts for that (``blur``, ``shift``, ``kernels``, ``noise``, ``jpeg``), drawn from a generator
the caller seeds per sample; :data:`REALISTIC_DEGRADATION` is the documented preset
(``--degradation realistic``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, ResolutionError
from ..resize import PIL_BILINEAR, TORCH_BILINEAR, ResizeSpec, resize_tensor

_RANDOM_KEYS = ("shift", "kernels", "blur", "noise", "jpeg")


@dataclass(frozen=True)
class DegradationSpec:
    """How an image of the trunk size becomes an ``r×r`` image.

    Args:
        resize: the down-sampling to ``r`` (backend ``torch`` / ``pil`` / ``cv2``, filter
            ``bilinear`` / ``bicubic`` / ``area`` / ``nearest``, antialias on/off).
        upsample: bring the ``r×r`` image back to the trunk size (the paper's up-sampling
            baselines and φ_mr trunk); ``False`` keeps it at ``r`` (branch inputs).
        upsample_resize: the up-sampling; ``None`` uses ``resize``.
        blur: ``(lo, hi)``: Gaussian blur before down-sampling, σ drawn uniformly in [lo, hi]
            *output* pixels (optics and motion; scales with the resolution).
        shift: sub-pixel shift of the sampling grid, drawn uniformly in ±``shift`` output pixels
            per axis (applied as a whole-pixel shift of the larger image, edges replicated).
        kernels: further down-sampling kernels; each sample draws one of ``resize`` and these.
        noise: ``(lo, hi)``: Gaussian noise of standard deviation drawn in [lo, hi] grey levels,
            added to the low-resolution image.
        jpeg: ``(lo, hi)``: JPEG compression of the low-resolution image, quality drawn in
            [lo, hi] (integers, 1..100).

    Images are float ``C×H×W`` tensors with values in [0, 255]. The ``torch`` backend works on
    them directly (no rounding); ``pil`` and ``cv2`` round to uint8 around each resize, as those
    libraries do. Random parts need a seeded ``numpy`` generator in :meth:`apply`.
    """

    resize: ResizeSpec = PIL_BILINEAR
    upsample: bool = True
    upsample_resize: ResizeSpec | None = None
    blur: tuple[float, float] | None = None
    shift: float = 0.0
    kernels: tuple[ResizeSpec, ...] = ()
    noise: tuple[float, float] | None = None
    jpeg: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.resize, ResizeSpec):
            raise ConfigError(f"resize must be a ResizeSpec, got {type(self.resize).__name__}")
        if self.upsample_resize is not None and not isinstance(self.upsample_resize, ResizeSpec):
            raise ConfigError("upsample_resize must be a ResizeSpec or None")
        object.__setattr__(self, "kernels", tuple(self.kernels))
        if not all(isinstance(k, ResizeSpec) for k in self.kernels):
            raise ConfigError("kernels must be ResizeSpec objects")
        shift = self.shift
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 <= shift <= 1:
            raise ConfigError(f"shift must be a number of output pixels in [0, 1], got {shift!r}")
        object.__setattr__(self, "blur", _range("blur", self.blur, 0.0, 5.0))
        object.__setattr__(self, "noise", _range("noise", self.noise, 0.0, 64.0))
        jpeg = _range("jpeg", self.jpeg, 1, 100)
        if jpeg is not None and any(q != int(q) for q in jpeg):
            raise ConfigError(f"jpeg qualities must be integers in 1..100, got {self.jpeg!r}")
        object.__setattr__(self, "jpeg", None if jpeg is None else (int(jpeg[0]), int(jpeg[1])))

    @property
    def random(self) -> bool:
        """Whether the degradation draws random parts (and so needs a generator)."""
        return bool(self.blur or self.shift or self.kernels or self.noise or self.jpeg)

    def output_size(self, resolution: int, size: int) -> int:
        """Side of the output for an image degraded to ``resolution`` (trunk size ``size``)."""
        return size if self.upsample else resolution

    def apply(self, image: torch.Tensor, resolution: int, size: int,
              rng: np.random.Generator | None = None) -> torch.Tensor:
        """Down-sample ``image`` (``C×size×size``, values 0..255) to ``resolution`` and, with
        ``upsample``, back to ``size``. ``resolution == size`` returns the image unchanged.
        ``rng`` draws the random parts (required when :attr:`random`)."""
        if not 1 <= resolution <= size:
            raise ResolutionError(f"resolution {resolution} is outside 1..{size} (the trunk size)")
        if resolution == size:
            return image
        low = self.down(image, resolution, rng)
        if not self.upsample:
            return low
        return resize_tensor(low, size, self.upsample_resize or self.resize)

    def down(self, image: torch.Tensor, resolution: int, rng: np.random.Generator | None = None) -> torch.Tensor:
        """The ``resolution×resolution`` image (float, 0..255) this spec makes of ``image``
        (float ``C×H×W``, 0..255, any size): blur, shift, down-sampling, noise, JPEG."""
        if not self.random:
            return resize_tensor(image, resolution, self.resize)
        if rng is None:
            raise ConfigError(f"the degradation ({self}) has random parts: pass a seeded numpy generator")
        scale = image.shape[-1] / resolution  # input pixels per output pixel
        x = image.float()
        if self.blur:
            x = _gaussian_blur(x, rng.uniform(*self.blur) * scale)
        if self.shift:
            dx, dy = (round(v * scale) for v in rng.uniform(-self.shift, self.shift, size=2))
            x = _translate(x, dx, dy)
        kernel = (self.resize, *self.kernels)[int(rng.integers(len(self.kernels) + 1))] if self.kernels else self.resize
        low = resize_tensor(x, resolution, kernel)
        if self.noise:
            sigma = rng.uniform(*self.noise)
            low = low + torch.from_numpy(rng.normal(0.0, sigma, size=tuple(low.shape))).float()
        low = low.clamp(0, 255)
        if self.jpeg:
            low = _jpeg(low, int(rng.integers(self.jpeg[0], self.jpeg[1] + 1)))
        return low

    def down_array(self, image: np.ndarray, resolution: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """:meth:`down` for an ``H×W×3`` uint8 array (evaluation protocols), uint8 out."""
        x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return self.down(x, resolution, rng).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (random parts only when set, so older records stay equal)."""
        out: dict[str, Any] = {"resize": self.resize.to_dict(), "upsample": self.upsample,
                               "upsample_resize": self.upsample_resize.to_dict() if self.upsample_resize else None}
        if self.blur:
            out["blur"] = list(self.blur)
        if self.shift:
            out["shift"] = self.shift
        if self.kernels:
            out["kernels"] = [k.to_dict() for k in self.kernels]
        if self.noise:
            out["noise"] = list(self.noise)
        if self.jpeg:
            out["jpeg"] = list(self.jpeg)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DegradationSpec":
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        unknown = set(data) - {"resize", "upsample", "upsample_resize", *_RANDOM_KEYS}
        if unknown:
            raise ConfigError(f"unknown DegradationSpec keys {sorted(unknown)}")
        up = data.get("upsample_resize")
        return cls(ResizeSpec.from_dict(data["resize"]), bool(data.get("upsample", True)),
                   ResizeSpec.from_dict(up) if up is not None else None,
                   blur=_pair(data.get("blur")), shift=data.get("shift", 0.0),
                   kernels=tuple(ResizeSpec.from_dict(k) for k in data.get("kernels", ())),
                   noise=_pair(data.get("noise")), jpeg=_pair(data.get("jpeg")))

    @classmethod
    def parse(cls, text: str, *, upsample: bool = False) -> "DegradationSpec":
        """A preset name (``realistic``) or a JSON object of fields (``upsample`` its default)."""
        import json

        if not text.lstrip().startswith("{"):
            return cls.named(text.strip(), upsample=upsample)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"not valid JSON ({err}): {text!r}") from None
        try:
            return cls.from_dict({"upsample": upsample, **data})
        except (KeyError, TypeError) as err:
            raise ConfigError(f"not a DegradationSpec ({err!r}): {text!r}") from None

    @classmethod
    def named(cls, name: str, *, upsample: bool = False) -> "DegradationSpec":
        """A preset by name (:data:`DEGRADATION_PRESETS`), with or without up-sampling."""
        if name not in DEGRADATION_PRESETS:
            raise ConfigError(f"unknown degradation preset {name!r}; accepted: {sorted(DEGRADATION_PRESETS)} "
                              "or a JSON object of DegradationSpec fields")
        return replace(DEGRADATION_PRESETS[name], upsample=upsample)

    def __str__(self) -> str:
        up = f"up {self.upsample_resize or self.resize}" if self.upsample else "no upsampling"
        extra = [f"{k} {getattr(self, k)}" for k in ("blur", "shift", "noise", "jpeg") if getattr(self, k)]
        extra += [f"kernels {'/'.join(str(k) for k in self.kernels)}"] if self.kernels else []
        return f"down {self.resize}, {up}" + "".join(f", {e}" for e in extra)


def _pair(value: Any) -> tuple[Any, Any] | None:
    return None if value is None else tuple(value)  # type: ignore[return-value]


def _range(name: str, value: Any, lo: float, hi: float) -> tuple[float, float] | None:
    """A validated ``(low, high)`` range inside ``[lo, hi]``, or ``None``."""
    if value is None:
        return None
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a (low, high) pair of numbers, got {value!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and lo <= a <= b <= hi):
        raise ConfigError(f"{name} must be (low, high) with {lo} <= low <= high <= {hi}, got {value!r}")
    return a, b


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a ``C×H×W`` tensor (σ in pixels, reflected edges)."""
    radius = min(int(math.ceil(3 * sigma)), min(x.shape[-2:]) - 1)
    if sigma < 0.1 or radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def _translate(x: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """``x`` (``C×H×W``) moved by whole pixels, edges replicated."""
    if dx == 0 and dy == 0:
        return x
    p = max(abs(dx), abs(dy))
    h, w = x.shape[-2:]
    y = F.pad(x[None], (p, p, p, p), mode="replicate")[0]
    return y[:, p - dy:p - dy + h, p - dx:p - dx + w]


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """``x`` (``3×H×W``, 0..255) through JPEG at ``quality`` (PIL, 4:2:0 as cameras do)."""
    from PIL import Image

    arr = x.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    out = np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(out).permute(2, 0, 1).float()


#: The reference's multi-resolution trunk (φ_mr): PIL antialiased bilinear down and back up.
TRUNK_DEGRADATION = DegradationSpec(PIL_BILINEAR, upsample=True)
#: The reference's branch inputs: tensor bilinear without antialiasing, kept at ``r``.
BRANCH_DEGRADATION = DegradationSpec(TORCH_BILINEAR, upsample=False)
#: Low-resolution faces as cameras make them: optical blur σ 0–0.8 output pixels, the sampling
#: grid shifted by up to ±0.5 output pixels, area down-sampling (pixels integrate light),
#: sensor noise of σ 0–6 grey levels, JPEG quality 40–90.
REALISTIC_DEGRADATION = DegradationSpec(ResizeSpec("torch", "area", antialias=False), upsample=False,
                                        blur=(0.0, 0.8), shift=0.5, noise=(0.0, 6.0), jpeg=(40, 90))
#: Named presets (``--degradation NAME``): ``paper`` is the reference's branch input.
DEGRADATION_PRESETS: dict[str, DegradationSpec] = {"paper": BRANCH_DEGRADATION, "realistic": REALISTIC_DEGRADATION}
