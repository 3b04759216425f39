"""Instructions, the report prompt, templated reports of the input image, and their vocabulary.

A report describes the image the model SEES (its input): ``quality: usable. findings: a few
microaneurysms. diabetic retinopathy grade 1 (mild).`` The quality word is one of ``QUALITY_WORDS``
and appears nowhere else in any template, so ``parse_report`` reads it back unambiguously.
"""

from __future__ import annotations

import re

QUALITY_WORDS = ("good", "usable", "reject")
REPORT_PROMPT = "describe the image quality and any signs of diabetic retinopathy."
DR_NAMES = ("none", "mild", "moderate", "severe", "proliferative")
LESION_ORDER = ("microaneurysms", "haemorrhages", "hard exudates", "new vessels")
INSTRUCTIONS = {
    "sr2": ("upscale this fundus image by 2x.", "increase the resolution of this retinal photo 2x.",
            "make a sharp 2x super-resolution of this fundus photograph."),
    "sr4": ("upscale this fundus image by 4x.", "increase the resolution of this retinal photo 4x.",
            "make a sharp 4x super-resolution of this fundus photograph."),
    "blur": ("deblur this fundus image.", "remove the blur from this retinal photo."),
    "haze": ("remove the haze from this fundus image.", "dehaze this retinal photo."),
    "illumination": ("correct the uneven illumination of this fundus image.",
                     "even out the lighting of this retinal photo."),
    "noise": ("denoise this fundus image.", "remove the noise from this retinal photo."),
}
# Same splitting rule as medq.models.tokenizer.WORD_RE (kept here: medq.data must not import
# models).
_WORD_RE = re.compile(r"[a-z0-9]+(?:[-'][a-z0-9]+)*|[^\sa-z0-9]")
_QUALITY_RE = re.compile(r"\b(" + "|".join(QUALITY_WORDS) + r")\b")


def instruction(kind: str, pick: int) -> str:
    """Instruction for task/degradation ``kind`` (sr2, sr4, blur, haze, illumination, noise);
    ``pick`` chooses among the phrasings (any int, taken modulo their number)."""
    options = INSTRUCTIONS[kind]
    return options[pick % len(options)]


def findings(lesions) -> str:
    names = [x for x in LESION_ORDER if x in set(lesions)]
    if not names:
        return "no lesions seen"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def report(quality: int, dr_grade: int, lesions=None) -> str:
    """Report of the model's input image. ``lesions`` None (unknown, real data) omits findings."""
    if quality not in (0, 1, 2) or dr_grade not in range(5):
        raise ValueError(f"report: quality {quality!r} must be 0-2 and dr_grade {dr_grade!r} 0-4")
    parts = [f"quality: {QUALITY_WORDS[quality]}."]
    if lesions is not None:
        parts.append(f"findings: {findings(lesions)}.")
    parts.append(f"diabetic retinopathy grade {dr_grade} ({DR_NAMES[dr_grade]}).")
    return " ".join(parts)


def parse_report(text: str) -> int | None:
    """Quality grade (0 good, 1 usable, 2 reject) stated in a report; None if it states none."""
    if not isinstance(text, str):
        return None
    m = _QUALITY_RE.search(text.lower())
    return None if m is None else QUALITY_WORDS.index(m.group(1))


def _all_texts() -> list[str]:
    texts = [REPORT_PROMPT] + [t for opts in INSTRUCTIONS.values() for t in opts]
    lesion_sets = [()] + [(x,) for x in LESION_ORDER] + [LESION_ORDER[:k] for k in range(2, 5)]
    for q in range(3):
        for g in range(5):
            texts.append(report(q, g))
            texts += [report(q, g, ls) for ls in lesion_sets]
    return texts


def vocabulary() -> list[str]:
    """Every word and punctuation mark any instruction, prompt or report can contain, sorted."""
    return sorted({w for t in _all_texts() for w in _WORD_RE.findall(t.lower())})
