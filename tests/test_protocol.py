"""The model protocol, robust decoding and the undecodable-token statistics (medq.textcheck)."""

from __future__ import annotations

import json

import pytest

from fakes.infer import VOCAB, RandomCollapsed, TextBicubic
from medq.protocol import DecodeResult, ImageTextModel, decode_with_vocab
from medq.textcheck import check_ids, load_vocab, safe_decode, text_stats


def test_decode_with_vocab_flags_padding_holes_and_negatives():
    vocab = ["a", None, "c"]
    r = decode_with_vocab([0, 1, 2, 600, -1, 2], vocab, skip=frozenset({2}))
    assert r.text == "a" and r.bad_positions == [1, 3, 4] and r.bad_ids == [1, 600, -1]
    assert r.n_bad == 3 and r.collapsed


def test_implementations_satisfy_the_protocol():
    assert isinstance(TextBicubic(), ImageTextModel)
    assert not isinstance(object(), ImageTextModel)


def test_check_ids_with_size_or_vocab():
    r = check_ids([3, 100, 99, 7], vocab_size=100)
    assert r.text == "" and r.bad_positions == [1] and r.bad_ids == [100]
    r = check_ids([1, 2, 9], vocab=VOCAB)
    assert r.text == "quality good" and r.bad_ids == [9]
    with pytest.raises(ValueError):
        check_ids([1])


def test_safe_decode_survives_the_original_typeerror():
    model = RandomCollapsed()
    ids = [1, 2, 600, 5, 63]
    res = safe_decode(model, ids)
    assert res.bad_positions == [2, 4] and res.bad_ids == [600, 63]
    assert res.text == "quality good image"
    assert isinstance(safe_decode(TextBicubic(), [1, 2]), DecodeResult)


def test_text_stats_rates():
    results = [check_ids([1, 2, 3, 4], vocab_size=3), check_ids([0, 1], vocab_size=3)]
    s = text_stats(results, texts_only=["ok", "bad \ufffd"])
    assert (s.n_samples, s.n_tokens, s.n_undecodable) == (4, 6, 2)
    assert s.undecodable_rate == pytest.approx(2 / 6)
    assert s.frac_samples_with_undecodable == pytest.approx(2 / 4)
    empty = text_stats([])
    assert empty.undecodable_rate is None and empty.frac_samples_with_undecodable is None


def test_load_vocab_formats(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps(["a", "b"]))
    (tmp_path / "d.json").write_text(json.dumps({"a": 0, "c": 2}))
    (tmp_path / "t.txt").write_text("a\nb\nc\n")
    (tmp_path / "tok.json").write_text(json.dumps({"model": {"vocab": {"x": 1}}}))
    assert load_vocab(tmp_path / "l.json") == ["a", "b"]
    assert load_vocab(tmp_path / "d.json") == ["a", None, "c"]
    assert load_vocab(tmp_path / "t.txt") == ["a", "b", "c"]
    assert load_vocab(tmp_path / "tok.json") == [None, "x"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        load_vocab(tmp_path / "bad.json")
    (tmp_path / "neg.json").write_text(json.dumps({"a": -1}))
    with pytest.raises(ValueError, match="non-negative integer"):
        load_vocab(tmp_path / "neg.json")
    with pytest.raises(FileNotFoundError):
        load_vocab(tmp_path / "missing.json")
