"""``python -m bench score-text``: undecodable-token statistics of generations made elsewhere.

    python -m bench score-text --jsonl gens.jsonl --vocab-size 151643
    python -m bench score-text --jsonl gens.jsonl --vocab vocab.json --out text_scores.json
    python -m bench score-text --jsonl gens.jsonl --vocab vocab.json --truth truth.jsonl

Each line of the JSONL is ``{"id": ..., "token_ids": [...]}`` and/or ``{"id": ..., "text": ...}``.
``--vocab-size N``: ids outside [0, N) are undecodable (the padded rows of a language head).
``--vocab FILE``: a JSON list of tokens, a JSON object token -> id (HF ``vocab.json``; unmapped ids
are holes) or a text file with one token per line; the ids are also decoded. Lines with text only
are checked for U+FFFD (what byte-level decoders write for undecodable bytes).

``--truth FILE``: ground-truth reports, one ``{"id": ..., "report": "..."}`` a line: the decoded
reports (or ``text``) are then scored for what they say, each beside its majority-class floor
(``medq.text_metrics``): DR grade by quadratic-weighted kappa, findings by per-finding F1, the
quality word by accuracy -- the leaderboard's report columns.

The statistics and the collapse verdict are those of the inference harness (``medq.textcheck``,
``medq.verdict``). Bad lines (not JSON, no id, no token_ids/text, ids that are not integers or
are negative or >= 2**31) are reported with file and line number; the valid rest is scored.
Exit 0 when something was scored, 2 when nothing could be (missing file, no valid line).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from medq.protocol import DecodeResult
from medq.textcheck import check_ids, load_vocab, replacement_chars, text_stats
from medq.verdict import verdict

# No tokenizer has 2**31 tokens: such an id (or a negative one, e.g. the -100 ignore index) means
# the file is broken, not that the model emitted padding.
MAX_ID = 2**31


@dataclass
class Scored:
    results: dict[str, DecodeResult] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def read_generations(path: Path, vocab, vocab_size) -> Scored:
    """Parse and check every line; errors are 'FILE:LINE: message' strings."""
    out = Scored()
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for n, line in enumerate(lines, 1):
        where = f"{path}:{n}"
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            out.errors.append(f"{where}: not JSON ({e.msg})")
            continue
        if not isinstance(row, dict):
            out.errors.append(f"{where}: expected an object with id and token_ids/text, got "
                              f"{type(row).__name__}")
            continue
        if "id" not in row or not isinstance(row["id"], (str, int)) or isinstance(row["id"], bool):
            out.errors.append(f"{where}: missing or invalid 'id' (a string or integer)")
            continue
        sid = str(row["id"])
        if sid in out.results or sid in out.texts:
            out.errors.append(f"{where}: duplicate id {sid!r}; the first occurrence is kept")
            continue
        ids, text = row.get("token_ids"), row.get("text")
        if ids is None and text is None:
            out.errors.append(f"{where}: needs 'token_ids' (list of integers) and/or 'text'")
            continue
        if text is not None and not isinstance(text, str):
            out.errors.append(f"{where}: 'text' must be a string, got {type(text).__name__}")
            continue
        if ids is not None:
            if not isinstance(ids, list):
                out.errors.append(f"{where}: 'token_ids' must be a list, got {type(ids).__name__}")
                continue
            bad = [(k, v) for k, v in enumerate(ids)
                   if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < MAX_ID]
            if bad:
                k, v = bad[0]
                out.errors.append(f"{where}: token_ids[{k}] = {v!r} is not an integer in "
                                  f"[0, 2**31) ({len(bad)} such)")
                continue
            res = check_ids(ids, vocab=vocab, vocab_size=vocab_size)
            if text is not None and vocab is None:
                res.text = text
            out.results[sid] = res
        else:
            out.texts[sid] = text
    return out


def score(scored: Scored) -> dict:
    stats = text_stats(scored.results.values(), scored.texts.values())
    v = verdict(undecodable_rate=stats.undecodable_rate)
    per_sample = [{"id": sid, "tokens": len(r.ids), "undecodable": r.n_bad,
                   "undecodable_positions": r.bad_positions, "undecodable_ids": r.bad_ids,
                   "collapsed": r.collapsed} for sid, r in scored.results.items()]
    per_sample += [{"id": sid, "tokens": None, "undecodable": None, "replacement_chars":
                    replacement_chars(t), "collapsed": replacement_chars(t) > 0}
                   for sid, t in scored.texts.items()]
    return {"stats": stats.as_dict(), "verdict": v.as_dict(), "errors": scored.errors,
            "samples": per_sample}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = __doc__
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--jsonl", type=Path, required=True, help="generations, one JSON object a line")
    vocab = p.add_mutually_exclusive_group(required=True)
    vocab.add_argument("--vocab-size", type=int, help="number of decodable ids")
    vocab.add_argument(
        "--vocab", type=Path, help="tokenizer vocabulary: JSON list, JSON token->id, or lines"
    )
    p.add_argument("--truth", type=Path, help="ground-truth reports, JSONL {\"id\", \"report\"}: "
                   "score DR grade (kappa), findings (F1) and quality beside their floors")
    p.add_argument("--out", type=Path, help="also write the scores as JSON here")


def read_truth(path: Path) -> dict[str, str]:
    """{id: report} from a JSONL of ``{"id", "report"}``; a bad line raises ValueError naming the
    file and line."""
    if not path.is_file():
        raise FileNotFoundError(f"--truth {path}: file not found")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"--truth {path}:{n}: not JSON ({e.msg})") from None
        if (not isinstance(row, dict) or not isinstance(row.get("id"), (str, int))
                or not isinstance(row.get("report"), str)):
            raise ValueError(f"--truth {path}:{n}: expected {{\"id\": ..., \"report\": \"...\"}}")
        out[str(row["id"])] = row["report"]
    if not out:
        raise ValueError(f"--truth {path}: no ground-truth report")
    return out


def score_against_truth(scored: Scored, truth: dict[str, str]) -> dict:
    """``medq.text_metrics.score_reports`` of the generations whose id has a truth, plus the
    number of generations without one."""
    from medq.text_metrics import score_reports

    texts = {sid: r.text for sid, r in scored.results.items()} | dict(scored.texts)
    ids = sorted(i for i in texts if i in truth)
    s = score_reports([texts[i] for i in ids], [truth[i] for i in ids])
    s["without_truth"] = len(texts) - len(ids)
    return s


def format_report_scores(s: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"reports scored against the truth: n={s['n']} "
             f"(without a truth: {s['without_truth']})",
             f"  DR grade kappa (quadratic) {f(s['dr_kappa'])}  floor {f(s['dr_kappa_floor'])}  "
             f"grade read in {f(s['dr_parsed'])}",
             f"  quality accuracy {f(s['quality_accuracy'])}  floor {f(s['quality_floor'])}",
             f"  findings F1 macro {f(s['findings_f1_macro'])}  "
             f"floor {f(s['findings_f1_macro_floor'])}"]
    return "\n".join(lines + [f"  ({r})" for r in s["reasons"]])


def format_table(path: Path, result: dict) -> str:
    s, v = result["stats"], result["verdict"]

    def f(x, spec=".4g"):
        return "n/a" if x is None else format(x, spec)

    head = ["file", "samples", "tokens", "undecodable", "rate", "samples with any", "verdict"]
    row = [str(path), str(s["n_samples"]), str(s["n_tokens"]), str(s["n_undecodable"]),
           f(s["undecodable_rate"]), f(s["frac_samples_with_undecodable"]), v["status"]]
    widths = [max(len(a), len(b)) for a, b in zip(head, row)]
    lines = ["  ".join(a.ljust(w) for a, w in zip(head, widths)),
             "  ".join(b.ljust(w) for b, w in zip(row, widths))]
    lines += [f"  - {r}" for r in v["reasons"]]
    if s["n_text_only"]:
        lines.append(f"  ({s['n_text_only']} samples had text only: checked for U+FFFD)")
    return "\n".join(lines)


def main(args) -> int:
    if args.vocab_size is not None and args.vocab_size < 1:
        print(f"error: --vocab-size {args.vocab_size}: must be >= 1", file=sys.stderr)
        return 2
    try:
        vocab = load_vocab(args.vocab) if args.vocab is not None else None
        if not args.jsonl.is_file():
            raise FileNotFoundError(f"{args.jsonl}: generations file not found")
        scored = read_generations(args.jsonl, vocab, args.vocab_size)
        truth = read_truth(args.truth) if args.truth is not None else None
    except (FileNotFoundError, ValueError, UnicodeDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for err in scored.errors:
        print(f"warning: {err}", file=sys.stderr)
    if not scored.results and not scored.texts:
        print(
            f"error: {args.jsonl}: no valid line to score ({len(scored.errors)} bad)",
            file=sys.stderr,
        )
        return 2
    result = score(scored)
    result["vocab"] = str(args.vocab) if args.vocab else None
    result["vocab_size"] = args.vocab_size if args.vocab_size else len(vocab)
    print(format_table(args.jsonl, result))
    if truth is not None:
        result["reports"] = score_against_truth(scored, truth)
        print(format_report_scores(result["reports"]))
    if args.out:
        from medq.files import write_text_atomic

        write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return 0
