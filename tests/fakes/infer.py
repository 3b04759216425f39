"""Small ImageTextModel implementations and data items for the harness tests (no medq.data /
medq.models needed)."""

from __future__ import annotations

import torch

from medq.baselines import bicubic
from medq.protocol import DecodeResult, decode_with_vocab
from medq.tasks import SCALES

VOCAB = ["<bos>", "quality", "good", "usable", "reject", "image", "vessels", "clear"]
PADDED = 64                       # rows of a fake text head: ids 8..63 decode to nothing
GRADES = {"good": 0, "usable": 1, "reject": 2}
PROMPT = "describe"


def parse_report(text: str):
    """Fake of medq.data.parse_report: the first grade word in the text."""
    for word in text.split():
        if word in GRADES:
            return GRADES[word]
    return None


def disc_image(seed: int, size: int) -> torch.Tensor:
    """(3, size, size): a bright textured disc on black, like a fundus photograph."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = ((xx ** 2 + yy ** 2) < 0.8).float()
    low = torch.rand(1, 3, 4, 4, generator=g)
    tex = torch.nn.functional.interpolate(
        low, size=(size, size), mode="bilinear", align_corners=False
    )[0]
    color = torch.tensor([0.8, 0.4, 0.2])[:, None, None]
    return ((0.3 + 0.7 * tex) * color * disc).clamp(0, 1)


def make_items(n: int = 5, size: int = 32, tasks=("sr4", "enhance")) -> list[dict]:
    items = []
    for k in range(n):
        target = disc_image(k, size)
        mask = (target.max(0, keepdim=True).values > 0.02).float()
        for task in tasks:
            scale = SCALES[task]
            if scale == 1:
                inp = (
                    target * 0.7
                    + 0.05 * torch.rand(target.shape, generator=torch.Generator().manual_seed(k))
                ).clamp(0, 1)
            else:
                inp = bicubic(target[None], (size // scale, size // scale))[0]
            items.append({"id": f"img{k:03d}", "task": task, "instruction": f"do {task}",
                          "report": "quality good", "input": inp, "target": target, "mask": mask,
                          "quality": k % 3, "dr_grade": 0, "scale": scale})
    return items


class TextBicubic:
    """The second implementation of the protocol: bicubic images and a fixed report whose grade is
    the image's brightness class, so the quality accuracy is computable."""

    name = "text-bicubic"
    vocab_size = len(VOCAB)
    seed_per_image = True
    settings = {"kind": "test"}

    def __init__(self):
        self.calls = 0

    def edit(self, images, instructions, tasks, out_size, seed):
        self.calls += images.shape[0]
        return bicubic(images, out_size)

    def generate_report(self, images, prompts, seed):
        return [
            [0, 1, 2, 5] for _ in range(images.shape[0])
        ]  # "<bos>" skipped: "quality good image"

    def decode(self, ids):
        return decode_with_vocab(ids, VOCAB, skip=frozenset({0}))


class NoisySeeded:
    """Stochastic model without per-image seeds: output depends on the int seed of the call, so
    it only stays batch-invariant if the harness calls it one image at a time."""

    name = "noisy"
    vocab_size = len(VOCAB)
    temperature = 0.0
    top_p = 1.0

    def edit(self, images, instructions, tasks, out_size, seed):
        assert isinstance(seed, int)
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(images.shape[0], 3, *out_size, generator=g) * 0.02
        return (bicubic(images, out_size) + noise).clamp(0, 1)

    def generate_report(self, images, prompts, seed):
        g = torch.Generator().manual_seed(seed)
        hi = len(VOCAB) if self.temperature == 0 else PADDED
        return [torch.randint(1, hi, (6,), generator=g).tolist() for _ in range(images.shape[0])]

    def decode(self, ids):
        return decode_with_vocab(ids, VOCAB)


class RandomCollapsed:
    """What an untrained unified model looks like: ids uniform over the padded head, noise
    images."""

    name = "random"
    vocab_size = len(VOCAB)
    seed_per_image = True

    def edit(self, images, instructions, tasks, out_size, seed):
        g = torch.Generator().manual_seed(seed[0])
        return torch.rand(images.shape[0], 3, *out_size, generator=g)

    def generate_report(self, images, prompts, seed):
        g = torch.Generator().manual_seed(seed[0])
        return [
            torch.randint(0, PADDED, (40,), generator=g).tolist() for _ in range(images.shape[0])
        ]

    def decode(self, ids):
        # The original bug: "".join over pieces that are None for padding ids.
        return DecodeResult("".join(VOCAB[i] if i < len(VOCAB) else None for i in ids), list(ids))
