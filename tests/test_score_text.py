"""python -m bench score-text: external generations, vocab formats, bad lines with line numbers."""

from __future__ import annotations

import argparse
import json

from bench import score_text


def run(argv):
    p = argparse.ArgumentParser()
    score_text.add_arguments(p)
    return score_text.main(p.parse_args(argv))


def write_jsonl(path, lines):
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_scores_valid_lines_and_reports_bad_ones(tmp_path, capsys):
    f = write_jsonl(tmp_path / "g.jsonl", [{"id": "a", "token_ids": [1, 2, 3]},
                                           {"id": "b", "token_ids": [1, 200, 5, 300]}, "{broken",
                                           {"id": "c"}, {"id": "d", "token_ids": [1, "x"]},
                                           {"id": "e", "token_ids": [1, -100]}, {"token_ids": [1]},
                                           {"id": "f", "text": "fine text"},
                                           {"id": "a", "token_ids": [1]}])
    out = tmp_path / "s.json"
    assert run(["--jsonl", str(f), "--vocab-size", "100", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    for n in (3, 4, 5, 6, 7, 9):
        assert f"g.jsonl:{n}:" in err, n
    assert "g.jsonl:1:" not in err and "g.jsonl:8:" not in err
    res = json.loads(out.read_text())
    s = res["stats"]
    assert (s["n_samples"], s["n_tokens"], s["n_undecodable"]) == (3, 7, 2)
    assert s["undecodable_rate"] == 2 / 7 and s["frac_samples_with_undecodable"] == 1 / 3
    assert res["verdict"]["status"] == "collapsed" and len(res["errors"]) == 6
    b = next(x for x in res["samples"] if x["id"] == "b")
    assert b["undecodable_positions"] == [1, 3] and b["undecodable_ids"] == [200, 300]


def test_vocab_file_dict_style_with_holes(tmp_path, capsys):
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"hello": 0, "world": 1, "x": 3}))
    f = write_jsonl(
        tmp_path / "g.jsonl", [{"id": 1, "token_ids": [0, 1, 3]}, {"id": 2, "token_ids": [2, 0]}]
    )
    out = tmp_path / "s.json"
    assert run(["--jsonl", str(f), "--vocab", str(vocab), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["stats"]["n_undecodable"] == 1 and res["vocab_size"] == 4
    assert "collapsed" in capsys.readouterr().out


def test_healthy_and_text_only_replacement_chars(tmp_path, capsys):
    f = write_jsonl(tmp_path / "g.jsonl", [{"id": i, "token_ids": [1, 2, 3]} for i in range(5)]
                    + [{"id": "t", "text": "broken \ufffd bytes"}])
    out = tmp_path / "s.json"
    assert run(["--jsonl", str(f), "--vocab-size", "10", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["verdict"]["status"] == "healthy" and res["stats"]["n_text_only"] == 1
    assert res["stats"]["frac_samples_with_undecodable"] == 1 / 6


def test_unusable_inputs_exit_2(tmp_path, capsys):
    assert run(["--jsonl", str(tmp_path / "none.jsonl"), "--vocab-size", "10"]) == 2
    assert "none.jsonl: generations file not found" in capsys.readouterr().err
    f = write_jsonl(tmp_path / "bad.jsonl", ["nope", "[1]"])
    assert run(["--jsonl", str(f), "--vocab-size", "10"]) == 2
    assert "no valid line" in capsys.readouterr().err
    good = write_jsonl(tmp_path / "g.jsonl", [{"id": 1, "token_ids": [1]}])
    assert run(["--jsonl", str(good), "--vocab", str(tmp_path / "v.json")]) == 2
    assert run(["--jsonl", str(good), "--vocab-size", "0"]) == 2


def test_reports_scored_against_the_truth_beside_their_floors(tmp_path, capsys):
    from medq.data.text import report

    grades = [0, 0, 1, 2, 3, 4, 0, 2]
    truth = write_jsonl(tmp_path / "t.jsonl", [{"id": f"i{k}", "report": report(0, g, [])}
                                               for k, g in enumerate(grades)])
    same = write_jsonl(tmp_path / "g.jsonl", [{"id": f"i{k}", "text": report(0, 3, [])}
                                              for k in range(len(grades))])
    assert run(["--jsonl", str(same), "--vocab-size", "10", "--truth", str(truth),
                "--out", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "DR grade kappa (quadratic) 0.000  floor 0.000" in out  # one report for every image
    assert json.loads((tmp_path / "o.json").read_text())["reports"]["quality_accuracy"] == 1.0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "i0", "report": 3}])
    assert run(["--jsonl", str(same), "--vocab-size", "10", "--truth", str(bad)]) == 2
    assert f"--truth {bad}:1: expected" in capsys.readouterr().err
