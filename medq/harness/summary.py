"""Per-checkpoint summary of ``records.jsonl`` rows: text statistics, image sanity, verdict.

    summary = summarize(read_records("runs/x/eval/step_000300-ema"))
    summary["text"]            # TextStats + quality_accuracy (None = n/a: the model writes no text)
    summary["text_sampled"]    # the same for the sampled reports (None when not generated)
    summary["images"]          # medians of output std ratio, PSNR, PSNR gap to the reference
    summary["verdict"]         # medq.verdict: {"status": healthy | collapsed | unknown,
                               #                "reasons", "checks"}

Text statistics count every row (each report describes that row's input image). The
undecodable rate given to the verdict is the larger of the greedy and sampled rates: sampling
shows padding ids that greedy decoding can hide.
"""

from __future__ import annotations

from typing import Iterable

from medq.protocol import DecodeResult
from medq.textcheck import text_stats
from medq.verdict import finite_median, image_statistics, verdict


def _decode_result(text, ids, positions) -> DecodeResult:
    return DecodeResult(text or "", list(ids), list(positions), [ids[p] for p in positions])


def _text_summary(rows: list[dict], key: str) -> dict | None:
    """TextStats over the rows' reports (greedy ``report`` or ``sampled``); None when no row has
    one (a model without text: n/a)."""
    found = []
    for r in rows:
        if key == "report" and r.get("text") and r.get("report_ids") is not None:
            found.append(
                (_decode_result(r["report_text"], r["report_ids"], r["undecodable_positions"]), r)
            )
        elif key == "sampled" and r.get("sampled"):
            s = r["sampled"]
            found.append((_decode_result(s["text"], s["ids"], s["undecodable_positions"]), r))
    if not found:
        return None
    out = text_stats([res for res, _ in found]).as_dict()
    if key == "report":
        graded = [r for _, r in found if r.get("quality_label") is not None]
        out["n_graded"] = len(graded)
        out["quality_accuracy"] = (sum(r["report_quality"] == r["quality_label"] for r in graded)
                                   / len(graded)) if graded else None
        out["quality_parsed"] = (sum(r["report_quality"] is not None for r in graded)
                                 / len(graded)) if graded else None
    return out




def summarize(records: Iterable[dict]) -> dict:
    """Per-checkpoint summary of records rows: counts, text statistics (None = n/a), image sanity
    medians and the ``medq.verdict`` verdict."""
    rows = list(records)
    checks = [r["check"] for r in rows if r.get("check")]
    text, samp = _text_summary(rows, "report"), _text_summary(rows, "sampled")
    images = {
        **image_statistics(checks),
        "seconds_per_sample": finite_median(r.get("seconds") for r in rows),
    }
    rates = [s["undecodable_rate"] for s in (text, samp) if s and s["undecodable_rate"] is not None]
    v = verdict(undecodable_rate=max(rates) if rates else None,
                output_std_ratio=images["output_std_ratio"], psnr_gap_db=images["psnr_gap_db"],
                ssim_ratio=images["ssim_ratio"], nonfinite_frac=images["nonfinite_frac"])
    first = rows[0] if rows else {}
    tasks: dict[str, int] = {}
    for r in rows:
        tasks[r["task"]] = tasks.get(r["task"], 0) + 1
    return {
        "model": first.get("model"),
        "run": first.get("run"),
        "checkpoint": first.get("checkpoint"),
        "weights": first.get("weights"),
        "n": len(rows),
        "tasks": tasks,
        "text": text,
        "text_sampled": samp,
        "images": images,
        "verdict": v.as_dict(),
    }
