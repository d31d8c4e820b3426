"""Image-text datasets for training, fundus augmentation, and a resumable step-indexed sampler.

Randomness is tied to *what* is drawn, never to *who* draws it: batch `s` is a fixed slice of a
permutation seeded by (seed, epoch), and each sample's augmentation is seeded by (seed, step,
position). So a run resumed at step `s` sees exactly the batches and crops the uninterrupted run saw,
whatever the number of loader workers or processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler, default_collate
from torchvision.transforms import v2

from fedclip.data.images import load_rgb
from fedclip.data.records import Record
from fedclip.errors import DataError
from fedclip.synth import CohortSpec, sample

Key = tuple[int, int]  # (dataset index, augmentation seed)


def train_transform(size: int, mean: Sequence[float], std: Sequence[float],
                    augment: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """Fundus augmentation: crops that keep most of the field of view, rotation, vertical flips, colour.

    No horizontal flips: they turn a right eye into a left one and the caption would then be wrong.
    No hue jitter: fundus hue carries little camera variation and hue shifts cost more than the rest of
    the pipeline together. Augmentations run on the PIL image (PIL's kernels are the fast path at these
    sizes); conversion to a tensor comes last.
    """
    steps: list[Any] = []
    if augment:
        steps += [
            v2.RandomResizedCrop(size, scale=(0.75, 1.0), ratio=(0.92, 1.08), antialias=True),
            v2.RandomRotation(15),
            v2.RandomVerticalFlip(0.5),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1),
        ]
    else:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    steps += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True),
              v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class UndecodableImage(DataError):
    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


class Undecodable(NamedTuple):
    """What a dataset yields for an image that does not decode (a DataLoader worker cannot raise one cleanly)."""

    path: str


def collate_skipping(batch: list[Any]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
    """(pixels, tokens, paths of undecodable images left out): a batch without its broken images."""
    good = [b for b in batch if not isinstance(b, Undecodable)]
    bad = [b.path for b in batch if isinstance(b, Undecodable)]
    if not good:
        return None, None, bad
    pixels, tokens = default_collate(good)
    return pixels, tokens, bad


class ImageTextDataset(Dataset):
    """(image tensor, token ids) pairs; subclasses say where an image and its caption come from."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], tokenizer: Callable) -> None:
        self.transform = transform
        self.tokenizer = tokenizer

    def item(self, index: int) -> tuple[Image.Image, str]:
        raise NotImplementedError

    def __getitem__(self, key: Key | int) -> tuple[torch.Tensor, torch.Tensor] | Undecodable:
        index, aug_seed = key if isinstance(key, tuple) else (key, key)
        try:
            image, caption = self.item(index)
        except UndecodableImage as e:  # counted by the training loop (its tolerance), not fatal here
            return Undecodable(str(e.path))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(aug_seed)
            pixels = self.transform(image)
        return pixels, self.tokenizer([caption])[0]


class RecordDataset(ImageTextDataset):
    """A dataset dir (or any records) on disk."""

    def __init__(self, records: Sequence[Record], root: str | Path, transform, tokenizer) -> None:
        super().__init__(transform, tokenizer)
        if not records:
            raise DataError("no records to train on; the dataset is empty")
        self.records = list(records)
        self.root = Path(root)

    def __len__(self) -> int:
        return len(self.records)

    def item(self, index: int) -> tuple[Image.Image, str]:
        r = self.records[index]
        try:
            return load_rgb(r.path(self.root)), r.caption
        except DataError as e:
            raise UndecodableImage(str(e), r.path(self.root)) from None


class SynthDataset(ImageTextDataset):
    """Images rendered on the fly from a cohort spec: a million-image corpus with no disk."""

    def __init__(self, spec: CohortSpec, n: int, transform, tokenizer) -> None:
        super().__init__(transform, tokenizer)
        if n <= 0:
            raise DataError(f"a synthetic stream needs n >= 1 images, got {n}")
        self.spec = spec
        self.n = n

    def __len__(self) -> int:
        return self.n

    def item(self, index: int) -> tuple[Image.Image, str]:
        s = sample(self.spec, index)
        return Image.fromarray(s.image), s.caption


class Concat(ImageTextDataset):
    """Several image-text datasets as one (a dataset dir or generator stream plus planted canaries)."""

    def __init__(self, parts: Sequence[ImageTextDataset]) -> None:
        super().__init__(parts[0].transform, parts[0].tokenizer)
        self.parts = list(parts)
        self.starts = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def item(self, index: int) -> tuple[Image.Image, str]:
        k = int(np.searchsorted(self.starts, index, side="right")) - 1
        return self.parts[k].item(index - int(self.starts[k]))


class StepBatchSampler(Sampler[list[Key]]):
    """Batches for steps `start..steps-1`; this rank's share of each global batch.

    Epoch e is a permutation seeded by (seed, e); step s takes slice s mod (n // batch) of it
    (the incomplete tail of an epoch is dropped, as every contrastive trainer does).
    """

    def __init__(self, n: int, batch_size: int, seed: int, start: int, steps: int, rank: int = 0,
                 world: int = 1) -> None:
        if batch_size > n:
            raise DataError(f"batch size {batch_size} exceeds the dataset's {n} images; lower --batch-size")
        if batch_size % world:
            raise DataError(f"batch size {batch_size} must be divisible by the {world} processes")
        self.n, self.batch, self.seed, self.start, self.steps = n, batch_size, seed, start, steps
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self) -> Iterator[list[Key]]:
        perm, epoch = None, -1
        for s in range(self.start, self.steps):
            e, j = divmod(s, self.per_epoch)
            if e != epoch:
                perm, epoch = np.random.default_rng([self.seed, e]).permutation(self.n), e
            batch = perm[j * self.batch:(j + 1) * self.batch]
            seeds = np.random.SeedSequence([self.seed, s]).generate_state(self.batch, dtype=np.uint64) >> np.uint64(1)
            yield [(int(batch[k]), int(seeds[k])) for k in range(self.rank, self.batch, self.world)]
