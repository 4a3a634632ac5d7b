"""Tests of the margin heads against plain per-sample computations written here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from btnet_adapters.errors import ConfigError, InputImageError
from btnet_adapters.heads import HEADS, AdaFace, ArcFace, CosFace, CurricularFace, MarginHead, create_head

D, C, N = 16, 10, 12


# ---------------------------------------------------------------- plain references


def plain_cosines(emb: torch.Tensor, weight: torch.Tensor) -> list[list[float]]:
    def unit(v: list[float]) -> list[float]:
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    rows = [unit(e) for e in emb.tolist()]
    cols = [unit(w) for w in weight.tolist()]
    return [[max(-1.0, min(1.0, sum(a * b for a, b in zip(r, c)))) for c in cols] for r in rows]


def arc_target(c: float, m: float) -> float:
    """ArcFace target with the fallback for theta + m > pi."""
    return math.cos(math.acos(c) + m) if c > math.cos(math.pi - m) else c - math.sin(math.pi - m) * m


def plain_arcface(emb, weight, labels, s=64.0, m=0.5):
    cos = plain_cosines(emb, weight)
    for i, y in enumerate(labels):
        if y >= 0:
            cos[i][y] = arc_target(cos[i][y], m)
    return [[s * v for v in row] for row in cos]


def plain_cosface(emb, weight, labels, s=64.0, m=0.4):
    cos = plain_cosines(emb, weight)
    for i, y in enumerate(labels):
        if y >= 0:
            cos[i][y] -= m
    return [[s * v for v in row] for row in cos]


def plain_curricularface(emb, weight, labels, t, training, s=64.0, m=0.5, momentum=0.01):
    """Returns (logits, new t, number of hard examples)."""
    cos = plain_cosines(emb, weight)
    targets = [cos[i][y] for i, y in enumerate(labels) if y >= 0]
    if training and targets:
        t = momentum * (sum(targets) / len(targets)) + (1 - momentum) * t
    out, hard = [], 0
    for i, y in enumerate(labels):
        row = list(cos[i])
        if y >= 0:
            c = cos[i][y]
            c_m = math.cos(math.acos(c) + m)
            for j in range(len(row)):
                if j != y and row[j] > c_m:
                    row[j] = row[j] * (t + row[j])
                    hard += 1
            row[y] = arc_target(c, m)
        out.append([s * v for v in row])
    return out, t, hard


def plain_adaface(emb, weight, labels, mean, std, training, s=64.0, m=0.4, h=0.333, alpha=0.01):
    """Returns (logits, new mean, new std)."""
    eps = 1e-3
    cos = [[min(max(v, -1 + eps), 1 - eps) for v in row] for row in plain_cosines(emb, weight)]
    norms = [min(max(math.sqrt(sum(x * x for x in e)), 0.001), 100.0) for e in emb.tolist()]
    if training:
        mu = sum(norms) / len(norms)
        sd = math.sqrt(sum((n - mu) ** 2 for n in norms) / (len(norms) - 1))
        mean = alpha * mu + (1 - alpha) * mean
        std = alpha * sd + (1 - alpha) * std
    for i, y in enumerate(labels):
        if y >= 0:
            z = min(max((norms[i] - mean) / (std + eps) * h, -1.0), 1.0)
            theta = min(max(math.acos(cos[i][y]) - m * z, eps), math.pi - eps)
            cos[i][y] = math.cos(theta) - (m + m * z)
    return [[s * v for v in row] for row in cos], mean, std


# ---------------------------------------------------------------- data


def make_batch(seed: int = 0, near_pi: int = 3, dtype=torch.float64):
    """Random embeddings (various norms) and labels; the first rows point almost opposite their centre."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(C, D, generator=g, dtype=dtype)
    labels = torch.randint(0, C, (N,), generator=g)
    emb = torch.randn(N, D, generator=g, dtype=dtype) * torch.linspace(0.5, 30.0, N, dtype=dtype)[:, None]
    for i in range(near_pi):
        emb[i] = -weight[labels[i]] * (i + 1) + 0.05 * torch.randn(D, generator=g, dtype=dtype)
    return weight, emb, labels


def head_with(cls, weight, **kwargs) -> MarginHead:
    head = cls(D, C, **kwargs).double()
    with torch.no_grad():
        head.weight.copy_(weight)
    return head


def assert_close(got: torch.Tensor, want: list[list[float]]):
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=0, atol=1e-9)


# ---------------------------------------------------------------- exactness


def test_batch_exercises_both_arc_branches():
    weight, emb, labels = make_batch()
    cos = plain_cosines(emb, weight)
    targets = [cos[i][y] for i, y in enumerate(labels.tolist())]
    below = sum(c <= math.cos(math.pi - 0.5) for c in targets)
    assert 0 < below < len(targets)


@pytest.mark.parametrize("training", [True, False])
def test_arcface_matches_plain(training):
    weight, emb, labels = make_batch()
    head = head_with(ArcFace, weight).train(training)
    assert_close(head(emb, labels), plain_arcface(emb, weight, labels.tolist()))


def test_arcface_easy_margin():
    weight, emb, labels = make_batch()
    head = head_with(ArcFace, weight, easy_margin=True)
    cos = plain_cosines(emb, weight)
    for i, y in enumerate(labels.tolist()):
        c = cos[i][y]
        cos[i][y] = math.cos(math.acos(c) + 0.5) if c > 0 else c
    assert_close(head(emb, labels), [[64.0 * v for v in row] for row in cos])


def test_cosface_matches_plain():
    weight, emb, labels = make_batch()
    head = head_with(CosFace, weight, scale=30.0, margin=0.35)
    assert_close(head(emb, labels), plain_cosface(emb, weight, labels.tolist(), s=30.0, m=0.35))


def test_curricularface_matches_plain_over_steps():
    head = head_with(CurricularFace, make_batch()[0])
    t = 0.0
    hard_total = 0
    for step in range(4):
        _, emb, labels = make_batch(seed=step + 1)
        want, t, hard = plain_curricularface(emb, head.weight.detach(), labels.tolist(), t, training=True)
        assert_close(head(emb, labels), want)
        assert head.t.item() == pytest.approx(t, abs=1e-12)
        hard_total += hard
    assert hard_total > 0  # hard-example modulation was exercised
    assert t != 0.0


def test_curricularface_hard_mask_uses_cos_theta_plus_m():
    # Opposite to two near-identical centres: the non-target cosine (about -1) lies between
    # the fallback target logit (about -1.24) and cos(theta + m) (about -0.88): not hard.
    weight, emb, labels = make_batch()
    weight[1] = weight[0] + 0.01 * weight[1]
    emb[:4] = -weight[0] + 0.01 * emb[:4]
    labels[:4] = 0
    head = head_with(CurricularFace, weight)
    head.t.fill_(0.5)
    want, _, _ = plain_curricularface(emb, weight, labels.tolist(), 0.5, training=True)
    assert_close(head(emb, labels), want)


def test_curricularface_eval_keeps_t():
    weight, emb, labels = make_batch()
    head = head_with(CurricularFace, weight)
    head.t.fill_(0.3)
    head.eval()
    want, t, _ = plain_curricularface(emb, weight, labels.tolist(), 0.3, training=False)
    assert_close(head(emb, labels), want)
    assert head.t.item() == 0.3 and t == 0.3


def test_curricularface_t_state_dict_roundtrip():
    weight, emb, labels = make_batch()
    head = head_with(CurricularFace, weight)
    for _ in range(3):
        head(emb, labels)
    state = head.state_dict()
    assert set(state) == {"weight", "t"}
    restored = CurricularFace(D, C).double()
    restored.load_state_dict(state)
    assert restored.t.item() == head.t.item() != 0.0
    head.eval(), restored.eval()
    torch.testing.assert_close(restored(emb, labels), head(emb, labels), rtol=0, atol=0)


def test_unlabelled_rows_get_plain_cosines_and_no_t_update():
    weight, emb, labels = make_batch()
    labels[::2] = -1
    head = head_with(CurricularFace, weight)
    want, t, _ = plain_curricularface(emb, weight, labels.tolist(), 0.0, training=True)
    got = head(emb, labels)
    assert_close(got, want)
    assert head.t.item() == pytest.approx(t, abs=1e-12)
    plain = [[64.0 * v for v in row] for row in plain_cosines(emb, weight)]
    assert_close(got[::2], plain[::2])
    for cls in (ArcFace, CosFace, AdaFace):
        out = head_with(cls, weight)(emb, labels)
        torch.testing.assert_close(out[::2], got[::2], rtol=0, atol=0.07)  # AdaFace clips cos to 1 - 1e-3


def test_all_rows_unlabelled_leaves_t():
    weight, emb, _ = make_batch()
    head = head_with(CurricularFace, weight)
    head(emb, torch.full((N,), -1))
    assert head.t.item() == 0.0


@pytest.mark.parametrize("training", [True, False])
def test_adaface_matches_plain_over_steps(training):
    head = head_with(AdaFace, make_batch()[0], t_alpha=0.3).train(training)
    mean, std = 20.0, 100.0
    for step in range(3):
        _, emb, labels = make_batch(seed=step + 5)
        want, mean, std = plain_adaface(emb, head.weight.detach(), labels.tolist(), mean, std, training, alpha=0.3)
        assert_close(head(emb, labels), want)
        assert head.batch_mean.item() == pytest.approx(mean, abs=1e-12)
        assert head.batch_std.item() == pytest.approx(std, abs=1e-12)
    assert (mean != 20.0) == training


def test_adaface_margin_depends_on_norm():
    # Same direction, different norms: low-norm (hard) samples get a smaller margin here.
    weight, _, _ = make_batch()
    head = head_with(AdaFace, weight).eval()
    head.batch_mean.fill_(10.0), head.batch_std.fill_(5.0)
    direction = weight[3] + 0.8 * weight[4]
    emb = torch.stack([direction * 0.2, direction * 50.0])
    logits = head(emb, torch.tensor([3, 3]))
    assert logits[0, 3] > logits[1, 3]


def test_adaface_needs_two_samples_in_training():
    weight, emb, labels = make_batch()
    head = head_with(AdaFace, weight)
    with pytest.raises(InputImageError, match="at least 2"):
        head(emb[:1], labels[:1])
    head.eval()
    assert head(emb[:1], labels[:1]).shape == (1, C)


# ---------------------------------------------------------------- gradients and dtypes


@pytest.mark.parametrize("name", list(HEADS))
def test_gradients_flow_even_at_zero_angle(name):
    torch.manual_seed(0)
    head = create_head(name, D, C)
    emb = torch.randn(N, D, requires_grad=True)
    labels = torch.randint(0, C, (N,))
    labels[:2] = torch.tensor([2, 5])
    with torch.no_grad():  # basis vectors: cos = 1 and cos = -1 exactly for the first two targets
        head.weight[2], head.weight[5] = F.one_hot(torch.tensor(0), D), F.one_hot(torch.tensor(1), D)
        emb[0], emb[1] = head.weight[2] * 3.0, -head.weight[5]
    loss = F.cross_entropy(head(emb, labels), labels)
    loss.backward()
    assert torch.isfinite(loss)
    for grad in (emb.grad, head.weight.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_float32_and_half_inputs():
    torch.manual_seed(0)
    head = create_head("curricularface", D, C)
    emb, labels = torch.randn(N, D), torch.randint(0, C, (N,))
    out32 = head.eval()(emb, labels)
    out16 = head(emb.half(), labels)
    assert out32.dtype == out16.dtype == torch.float32
    torch.testing.assert_close(out16, out32, rtol=0, atol=0.2)


# ---------------------------------------------------------------- factory and errors


def test_factory_defaults():
    assert list(HEADS) == ["curricularface", "arcface", "cosface", "adaface"]
    head = create_head("curricularface", 512, 7)
    assert isinstance(head, CurricularFace) and isinstance(head, MarginHead)
    assert (head.embed_dim, head.num_classes, head.scale, head.margin, head.momentum) == (512, 7, 64.0, 0.5, 0.01)
    assert head.weight.shape == (7, 512)
    assert isinstance(head.t, torch.Tensor) and "t" in dict(head.named_buffers())
    assert (create_head("arcface", 8, 3).margin, create_head("arcface", 8, 3).easy_margin) == (0.5, False)
    assert create_head("cosface", 8, 3).margin == 0.4
    ada = create_head("adaface", 8, 3)
    assert (ada.margin, ada.h, ada.t_alpha, ada.scale) == (0.4, 0.333, 0.01, 64.0)
    assert create_head("cosface", 8, 3, scale=30.0, margin=0.35).scale == 30.0


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        MarginHead(8, 3, 64.0, 0.5)


def test_factory_errors():
    with pytest.raises(ConfigError, match="curricularface, arcface, cosface, adaface"):
        create_head("sphereface", 8, 3)
    with pytest.raises(ConfigError, match="momentum"):
        create_head("arcface", 8, 3, momentum=0.1)
    for kwargs in ({"num_classes": 0}, {"embed_dim": -1}, {"margin": -0.1}, {"scale": 0.0}, {"momentum": 2.0}):
        args = {"embed_dim": 8, "num_classes": 3} | kwargs
        with pytest.raises(ConfigError):
            CurricularFace(**args)


@pytest.mark.parametrize("name", list(HEADS))
def test_input_errors(name):
    head = create_head(name, D, C)
    emb, labels = torch.randn(4, D), torch.tensor([0, 1, 2, 3])
    with pytest.raises(InputImageError, match="dim mismatch"):
        head(torch.randn(4, D + 1), labels)
    with pytest.raises(InputImageError, match="shape"):
        head(torch.randn(D), labels)
    with pytest.raises(InputImageError, match="shape"):
        head(emb, labels[:3])
    with pytest.raises(InputImageError, match="shape"):
        head(emb, labels[:, None])
    with pytest.raises(InputImageError, match=r"\[0, 10\)"):
        head(emb, torch.tensor([0, 1, 2, C]))
    with pytest.raises(InputImageError, match=r"\[0, 10\)"):
        head(emb, torch.tensor([0, -2, 2, 3]))
    with pytest.raises(InputImageError, match="integer"):
        head(emb, labels.float())
    with pytest.raises(InputImageError, match="float tensor"):
        head(emb.long(), labels)
