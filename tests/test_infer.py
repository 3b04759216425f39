"""The harness with small fake models: records, PNGs, determinism, resume, text n/a, collapse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fakes.infer import (
    PROMPT,
    VOCAB,
    NoisySeeded,
    RandomCollapsed,
    TextBicubic,
    make_items,
    parse_report,
)
from medq.baselines import Bicubic
from medq.harness import derive_seed, edit_one, run_harness, summarize
from medq.harness.records import FIELDS, KINDS, read_records
from medq.harness.text import InferError
from medq.protocol import ImageTextModel

torch.set_num_threads(1)


def run(model, items, out, **kw):
    kw.setdefault("progress", False)
    return run_harness(model, items, out, prompt=PROMPT, parse_report=parse_report, **kw)


def test_second_implementation_through_whole_harness(tmp_path):
    model = TextBicubic()
    assert isinstance(model, ImageTextModel)
    items = make_items(4)
    paths = run(model, items, tmp_path, tasks=["sr4", "enhance"], seed=3, batch_size=3,
                meta={"run": "r", "checkpoint": "step_000001", "weights": "ema"})
    assert set(paths) == {"sr4", "enhance"}
    rows = read_records(paths["sr4"])
    assert [r["id"] for r in rows] == ["img000", "img001", "img002", "img003"]
    for r in rows:
        assert all(k in r for k in FIELDS)
        assert (r["run"], r["checkpoint"], r["weights"], r["seed"]) == (
            "r",
            "step_000001",
            "ema",
            3,
        )
        assert r["sample_seed"] == derive_seed(3, r["id"])
        for kind in KINDS:
            assert r[kind] == f"images/{r['id']}_{kind}.png"
            assert (tmp_path / "sr4" / r[kind]).is_file()
        assert r["report_text"] == "quality good image" and r["report_ids"] == [0, 1, 2, 5]
        assert (
            r["undecodable"] == 0 and r["undecodable_positions"] == [] and r["report_quality"] == 0
        )
        assert r["settings"]["kind"] == "test" and r["text"] is True
    out_png = np.asarray(Image.open(tmp_path / "sr4" / rows[0]["output"]))
    assert out_png.shape == (32, 32, 3)
    mask_png = np.asarray(Image.open(tmp_path / "sr4" / rows[0]["mask"]))
    assert mask_png.ndim == 2 and set(np.unique(mask_png)) <= {0, 255}
    s = summarize(read_records(tmp_path))
    assert s["n"] == 8 and s["tasks"] == {"sr4": 4, "enhance": 4}
    assert s["text"]["n_samples"] == 8          # one report per row: it describes that row's input
    assert s["text"]["undecodable_rate"] == 0
    assert s["text"]["quality_accuracy"] == pytest.approx(4 / 8)   # labels 0,1,2,0; reports say 0
    assert s["images"]["psnr_gap_db"] == pytest.approx(0.0)
    assert s["verdict"]["status"] == "healthy"
    assert not list(tmp_path.rglob(".tmp-*")) and not list(tmp_path.rglob("records.part-*"))


def test_batching_does_not_change_outputs(tmp_path):
    items = make_items(5, tasks=("sr4",))
    hot = NoisySeeded()
    hot.temperature = 0.9  # greedy reports are forced to temperature 0, then restored
    a = run(
        hot, items, tmp_path / "a", seed=1, batch_size=1, sampled={"temperature": 1.0, "top_p": 1.0}
    )
    assert hot.temperature == 0.9
    b = run(
        NoisySeeded(),
        items[::-1],
        tmp_path / "b",
        seed=1,
        batch_size=4,
        sampled={"temperature": 1.0, "top_p": 1.0},
    )
    ra, rb = read_records(a["sr4"]), read_records(b["sr4"])
    for x, y in zip(ra, rb):
        assert x["report_ids"] == y["report_ids"] and x["sampled"]["ids"] == y["sampled"]["ids"]
        assert max(x["report_ids"]) < len(VOCAB) and x["sampled"]["temperature"] == 1.0
        pa = (tmp_path / "a" / "sr4" / x["output"]).read_bytes()
        assert pa == (tmp_path / "b" / "sr4" / y["output"]).read_bytes()
    # a different seed changes the stochastic output
    c = run(NoisySeeded(), items, tmp_path / "c", seed=2, batch_size=4)
    rc = read_records(c["sr4"])
    assert (tmp_path / "c" / "sr4" / rc[0]["output"]).read_bytes() != \
        (tmp_path / "a" / "sr4" / ra[0]["output"]).read_bytes()


def test_resume_skips_finished_and_redoes_incomplete(tmp_path):
    items = make_items(4, tasks=("sr4",))
    model = TextBicubic()
    run(model, items, tmp_path, seed=0)
    assert model.calls == 4
    (tmp_path / "sr4" / "images" / "img002_output.png").unlink()     # sample 2 no longer complete
    model2 = TextBicubic()
    run(model2, items, tmp_path, seed=0)
    assert model2.calls == 1
    assert len(read_records(tmp_path / "sr4")) == 4
    model3 = TextBicubic()
    run(model3, items, tmp_path, seed=5)            # other settings: nothing is reused
    assert model3.calls == 4
    model4 = TextBicubic()
    run(model4, make_items(4, size=64, tasks=("sr4",)), tmp_path, seed=5)   # other pixels: redone
    assert model4.calls == 4


class CrashAfter(TextBicubic):
    def __init__(self, n_ok):
        super().__init__()
        self.n_ok = n_ok

    def edit(self, images, instructions, tasks, out_size, seed):
        if self.calls >= self.n_ok:
            raise RuntimeError("killed")
        return super().edit(images, instructions, tasks, out_size, seed)


def test_crash_leaves_nothing_that_looks_complete(tmp_path):
    items = make_items(5, tasks=("sr4",))
    with pytest.raises(RuntimeError, match="killed"):
        run(CrashAfter(2), items, tmp_path, batch_size=2)
    assert not (tmp_path / "sr4" / "records.jsonl").exists()
    parts = list((tmp_path / "sr4").glob("records.part-*.jsonl"))
    assert len(parts) == 1 and len(parts[0].read_text().splitlines()) == 2
    model = TextBicubic()
    run(model, items, tmp_path, batch_size=2)
    assert model.calls == 3
    rows = read_records(tmp_path / "sr4")
    assert [r["id"] for r in rows] == [f"img{k:03d}" for k in range(5)]


def test_random_model_is_collapsed_and_never_crashes_on_none_pieces(tmp_path):
    model = RandomCollapsed()
    with pytest.raises(TypeError):          # the original bug, reproduced by the fake itself
        model.decode(list(range(60)))
    paths = run(model, make_items(4, tasks=("sr4",)), tmp_path, batch_size=2)
    rows = read_records(paths["sr4"])
    r = rows[0]
    bad = [i for i in r["report_ids"] if i >= 8]
    assert r["undecodable"] == len(bad) > 0 and r["collapsed"] is True
    assert [r["report_ids"][p] for p in r["undecodable_positions"]] == bad
    s = summarize(rows)
    assert s["text"]["undecodable_rate"] > 0.5
    assert s["verdict"]["status"] == "collapsed"
    reasons = " ".join(s["verdict"]["reasons"])
    assert "undecodable" in reasons and "PSNR" in reasons


def test_random_minibagel_is_collapsed(tmp_path):
    import medq.models as M
    from medq.config import load_config

    cfg = load_config(
        "control",
        overrides=["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "sample.steps=2",
                   "model.tile_size=32", "data.image_size=32"],
    )
    tok = M.Tokenizer(words=VOCAB[1:] + ["do", "sr4", "describe"])
    torch.manual_seed(0)
    net = M.MiniBagel(cfg.model, tok.vocab_size).eval()
    vae = M.build_vae(cfg.model).eval()
    model = M.MiniBagelAdapter(net, vae, tok, cfg.sample)
    paths = run(model, make_items(3, tasks=("sr4",)), tmp_path, batch_size=3)
    s = summarize(read_records(paths["sr4"]))
    assert s["verdict"]["status"] == "collapsed"


def test_baseline_text_is_not_applicable(tmp_path):
    paths = run(Bicubic(), make_items(3, tasks=("sr4",)), tmp_path)
    rows = read_records(paths["sr4"])
    assert all(r["text"] is False and r["report_text"] is None and r["report_ids"] is None
               and r["undecodable"] is None and r["report_quality"] is None for r in rows)
    s = summarize(rows)
    assert s["text"] is None and s["text_sampled"] is None
    assert s["verdict"]["checks"]["undecodable_rate"]["ok"] is None
    assert s["verdict"]["status"] == "healthy"


class NaNModel(TextBicubic):
    def edit(self, images, instructions, tasks, out_size, seed):
        out = super().edit(images, instructions, tasks, out_size, seed)
        out[:, :, :2, :2] = float("nan")
        return out


def test_nan_outputs_are_counted_and_collapse(tmp_path):
    paths = run(NaNModel(), make_items(2, tasks=("sr4",)), tmp_path)
    rows = read_records(paths["sr4"])
    assert rows[0]["check"]["nonfinite"] == 12
    s = summarize(rows)
    assert s["verdict"]["status"] == "collapsed" and "non-finite" in " ".join(
        s["verdict"]["reasons"]
    )


class WrongShape(TextBicubic):
    def edit(self, images, instructions, tasks, out_size, seed):
        return torch.zeros(images.shape[0], 3, 5, 5)


def test_protocol_violations_are_clear_errors(tmp_path):
    with pytest.raises(InferError, match="edit returned shape"):
        run(WrongShape(), make_items(1, tasks=("sr4",)), tmp_path)
    with pytest.raises(InferError, match="object does not satisfy medq.protocol.ImageTextModel: "
                                         "missing name, vocab_size, edit"):
        run(object(), make_items(1, tasks=("sr4",)), tmp_path)
    items = make_items(1, tasks=("sr4",)) * 2
    with pytest.raises(InferError, match="appears twice"):
        run(TextBicubic(), items, tmp_path / "dup")
    bad = make_items(1, tasks=("sr4",))[0]
    bad["input"] = bad["input"][:1]
    with pytest.raises(
        InferError, match=r"'img000': input is \(1, 8, 8\), expected a tensor \(3, h, w\)"
    ):
        run(TextBicubic(), [bad], tmp_path / "bad")
    with pytest.raises(InferError, match="missing mask"):
        run(TextBicubic(), [{k: v for k, v in bad.items() if k != "mask"}], tmp_path / "bad")


def test_tasks_filter_and_records_sorted(tmp_path):
    items = make_items(3, tasks=("enhance", "sr4"))[::-1]
    paths = run(TextBicubic(), items, tmp_path, tasks=["sr4"])
    assert list(paths) == ["sr4"] and not (tmp_path / "enhance").exists()
    lines = paths["sr4"].read_text().splitlines()
    ids = [json.loads(line)["id"] for line in lines]
    assert ids == sorted(ids)


def test_edit_one_any_size_with_report():
    from fakes.infer import disc_image
    img = torch.nn.functional.interpolate(disc_image(1, 90)[None], size=(90, 130))[0]   # not square
    out = edit_one(TextBicubic(), img, "sr2", size=32, report=True, prompt=PROMPT)
    assert out["input"].shape == (3, 16, 16) and out["output"].shape == (3, 32, 32)
    assert out["report"].text == "quality good image" and out["instruction"]
    with pytest.raises(InferError, match="give an instruction"):
        edit_one(TextBicubic(), img, "enhance", size=32)
    with pytest.raises(ValueError, match="scan.png: no field of view"):
        edit_one(TextBicubic(), torch.zeros(3, 40, 40), "sr2", size=32, name="scan.png")
