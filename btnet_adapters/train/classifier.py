"""Fitting a margin head to a frozen trunk (for trunks imported without a classifier).

Branch training keeps the trunk's classifier frozen (backward-compatible training): its class
centres anchor the embedding space the branch must map into. A trunk imported from
insightface comes without one, so :func:`fit_classifier` makes one on the training set:

1. embed every training image once with the trunk in eval mode (no gradient; the dataset's
   seeded flips of epoch 0 apply);
2. set each class centre to the normalised mean of its L2-normalised embeddings;
3. refine the centres for ``epochs`` passes of SGD on the margin loss over the cached
   embeddings (the trunk is never run again; CurricularFace's ``t`` settles on the way).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from ..progress import progress_bar

from ..errors import ConfigError
from ..heads import MarginHead, create_head
from ..model import BTNet

logger = logging.getLogger(__name__)


@torch.no_grad()
def embed_dataset(model: BTNet, dataset: Dataset, *, batch_size: int = 128, workers: int = 0,
                  device: torch.device | str = "cpu", progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw trunk embeddings ``(N, D)`` (float32, CPU) and labels ``(N,)`` of a dataset whose
    items start with a trunk-size image and end with the label."""
    keys = [[(0, i) for i in range(s, min(s + batch_size, len(dataset)))]  # type: ignore[arg-type]
            for s in range(0, len(dataset), batch_size)]  # type: ignore[arg-type]
    loader = DataLoader(dataset, batch_sampler=keys, num_workers=workers)
    was_training = model.training
    model.eval()
    embeddings, labels = [], []
    try:
        for batch in progress_bar(loader, desc="embedding training set", unit="batch", disable=not progress):
            embeddings.append(model.forward_trunk(batch[0].to(device)).float().cpu())
            labels.append(torch.as_tensor(batch[-1]))
    finally:
        model.train(was_training)
    return torch.cat(embeddings), torch.cat(labels).long()


def class_means(embeddings: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised mean of the normalised embeddings of each class, and the count per class."""
    sums = torch.zeros(num_classes, embeddings.shape[1]).index_add_(0, labels, F.normalize(embeddings))
    counts = torch.bincount(labels, minlength=num_classes)
    return F.normalize(sums), counts


def fit_classifier(model: BTNet, dataset: Dataset, num_classes: int, *, margin: str = "curricularface",
                   margin_kwargs: dict | None = None, epochs: int = 3, lr: float = 0.1, batch_size: int = 128,
                   seed: int = 0, workers: int = 0, device: torch.device | str = "cpu",
                   progress: bool = True) -> MarginHead:
    """Fit a margin head on a frozen trunk's embeddings (see the module docstring).

    Args:
        model: the trunk (left unchanged).
        dataset: training data whose items are ``(image, label)`` or ``(image, ..., label)``
            with trunk-size images (:class:`btnet_adapters.data.FaceDataset`).
        num_classes: size of the label space.
        margin: margin head name; ``margin_kwargs`` its hyper-parameters.
        epochs: refinement passes over the cached embeddings (0: class means only).
        lr: SGD learning rate of the refinement (momentum 0.9, no weight decay).
        batch_size: batch size of the embedding pass and of the refinement.
        seed: seed of the refinement order.
        workers: DataLoader workers of the embedding pass.
        device: where the trunk runs.
        progress: tqdm bars.

    Returns:
        The head, on CPU, in eval mode.
    """
    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    embeddings, labels = embed_dataset(model, dataset, batch_size=batch_size, workers=workers,
                                       device=device, progress=progress)
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ConfigError(f"labels span [{int(labels.min())}, {int(labels.max())}] but num_classes={num_classes}")
    head = create_head(margin, embeddings.shape[1], num_classes, **(margin_kwargs or {}))
    centres, counts = class_means(embeddings, labels, num_classes)
    with torch.no_grad():
        head.weight[counts > 0] = centres[counts > 0]
    if (counts == 0).any():
        logger.warning("%d classes have no training image; their centres stay random", int((counts == 0).sum()))
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng([seed, 0xC1A5])
    head.train()
    bar = progress_bar(range(epochs), desc="fitting classifier", unit="epoch", disable=not progress or epochs == 0)
    for epoch in bar:
        order = torch.from_numpy(rng.permutation(len(labels)))
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            if len(idx) < 2:  # AdaFace needs two norms per batch
                continue
            loss = F.cross_entropy(head(embeddings[idx], labels[idx]), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        bar.set_postfix(loss=f"{total / len(order):.4g}")
        logger.info("classifier fit epoch %d/%d: margin loss %.4g", epoch + 1, epochs, total / len(order))
    return head.eval()
