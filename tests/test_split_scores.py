"""medq.harness.split_scores.split_report_scores: the report kappa behind `train weights --check`
(the shipped base reads the DR grade from the image), on the real data path and tokenizer."""

from __future__ import annotations

import pytest

from medq.config import DataConfig
from medq.data import build_dataset
from medq.harness.split_scores import split_report_scores
from medq.models import Tokenizer


class ReportModel:
    """Writes, for each input image, the report ``write(input)`` (through the real tokenizer)."""

    name, seed_per_image, settings = "reports", True, {"kind": "test"}

    def __init__(self, write):
        self.write, self.tok = write, Tokenizer()
        self.vocab_size = self.tok.vocab_size

    def edit(self, images, instructions, tasks, out_size, seed):
        raise AssertionError("split_report_scores must not edit images")

    def generate_report(self, images, prompts, seed):
        assert len(seed) == images.shape[0]  # one seed per image: batching changes nothing
        return [self.tok.encode(self.write(img), eos=True) for img in images]

    def decode(self, ids):
        return self.tok.decode(ids)


@pytest.fixture
def data(tmp_path):
    return DataConfig(num_images=120, val_fraction=0.25, image_size=32,
                      cache_dir=str(tmp_path / "cache"))


def _truth_by_input(data, task):
    ds = build_dataset(data, "val", tasks=[task])
    return {ds[i]["input"].sum().item(): ds[i]["report"] for i in range(len(ds))}


def test_a_model_that_reads_the_grade_scores_kappa_one_and_a_constant_the_floor(data):
    truth = {t: _truth_by_input(data, t) for t in ("sr2", "enhance")}
    assert len({r.split("grade ")[1] for r in truth["sr2"].values()}) > 2   # several grades
    oracle = split_report_scores(
        ReportModel(lambda img: {**truth["sr2"], **truth["enhance"]}[img.sum().item()]),
        data, "val", n=100, tasks=["sr2", "enhance"])
    constant = split_report_scores(
        ReportModel(lambda img: "quality: good. findings: no lesions seen. diabetic retinopathy "
                                "grade 0 (none)."),
        data, "val", n=100, tasks=["sr2", "enhance"])
    for task in ("sr2", "enhance"):
        assert oracle[task]["dr_kappa"] == pytest.approx(1.0)
        assert oracle[task]["quality_accuracy"] == pytest.approx(1.0)
        assert oracle[task]["n"] == len(truth[task])
        assert constant[task]["dr_kappa"] == pytest.approx(constant[task]["dr_kappa_floor"])
        assert constant[task]["dr_kappa"] < 0.01


def test_n_counts_the_first_images_and_zero_is_refused(data):
    model = ReportModel(lambda img: "quality: good. diabetic retinopathy grade 1 (mild).")
    assert split_report_scores(model, data, "val", n=5, tasks=["sr2"])["sr2"]["n"] == 5
    with pytest.raises(ValueError, match="n = 0"):
        split_report_scores(model, data, "val", n=0, tasks=["sr2"])
