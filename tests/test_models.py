"""Mini-BAGEL: packed sequence shapes, attention structure, flow head, sampler, tokenizer,
adapter and strict save/load. Tiny widths throughout so the file runs in seconds."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fakes.models import tiny_model_config
from medq.config import ModelConfig, SampleConfig, load_config
from medq.models import (
    CheckpointMismatchError,
    MiniBagel,
    MiniBagelAdapter,
    Tokenizer,
    euler_sample,
    load_model,
    load_state_verified,
    padded_vocab_size,
    sample_timesteps,
    save_model,
    training_forward,
)
from medq.models.flow import add_noise, sampling_schedule
from medq.models.sequence import PROMPT, pack_text, sequence_mask
from medq.protocol import ImageTextModel
from medq.tasks import SCALES

WORDS = ("super-resolve this fundus image x2 x4 enhance the quality is good usable reject grade "
         "0 1 2 3 4 no mild moderate severe proliferative diabetic retinopathy . ,").split()
SR4, ENH = "super-resolve this fundus image x4", "enhance this fundus image"
REPORT = "quality is good. grade 0, no diabetic retinopathy."


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def cfg() -> ModelConfig:
    """A tiny model whose outputs are the decoded latents (``pixel_residual`` off), so that the
    tests below compare with ``vae.decode`` directly; the residual rendering and the tiles have
    their own tests (tests/test_tiles.py)."""
    return tiny_model_config(pixel_residual=False)


@pytest.fixture
def tok() -> Tokenizer:
    return Tokenizer(WORDS)


def batch_of(tasks: list[str], size: int = 32) -> dict:
    """A collated batch as medq.data.collate makes it: inputs padded to the largest."""
    targets = torch.rand(len(tasks), 3, size, size)
    inputs = torch.zeros(len(tasks), 3, size, size)
    in_sizes = []
    for i, t in enumerate(tasks):
        s = size // SCALES[t]
        inputs[i, :, :s, :s] = targets[i, :, ::SCALES[t], ::SCALES[t]]
        in_sizes.append([s, s])
    instr = {"sr4": SR4, "sr2": "super-resolve this fundus image x2", "enhance": ENH}
    return {
        "input": inputs,
        "target": targets,
        "mask": torch.ones(len(tasks), 1, size, size),
        "instruction": [instr[t] for t in tasks],
        "report": [REPORT] * len(tasks),
        "task": tasks,
        "input_size": torch.tensor(in_sizes),
        "target_size": torch.tensor([[size, size]] * len(tasks)),
    }


def test_training_forward_shapes_mixed_tasks(cfg, tok, vae):
    model = MiniBagel(cfg, tok.vocab_size)
    batch = batch_of(["sr4", "sr2", "enhance"])
    fwd = training_forward(model, vae, tok, batch, timestep_shift=1.0,
                           generator=torch.Generator().manual_seed(0))
    lat = (cfg.latent_channels, 32 // cfg.vae_downsample, 32 // cfg.vae_downsample)
    for name in ("v_hat", "v_target", "x_t", "x0"):
        assert getattr(fwd, name).shape == (3, *lat), name
    assert fwd.latent_hw == lat[1:]
    assert fwd.t.shape == (3,) and bool(((fwd.t > 0) & (fwd.t < 1)).all())
    B, T, V = fwd.text_logits.shape
    assert (B, V) == (3, model.vocab_padded) and fwd.text_targets.shape == (B, T)
    # CE covers exactly the report tokens and EOS
    n_report = len(tok.encode(REPORT, eos=True))
    assert ((fwd.text_targets != -100).sum(1) == n_report).all()
    assert torch.equal(
        fwd.text_targets[0][fwd.text_targets[0] != -100], torch.tensor(tok.encode(REPORT, eos=True))
    )
    n_img = (lat[1] // cfg.patch_size) ** 2
    assert fwd.hidden.shape == (3, 2 * n_img + T, cfg.d_model)
    # the flow bookkeeping agrees with x_t = (1 - t) x0 + t eps, v = eps - x0
    eps = fwd.v_target + fwd.x0
    assert torch.allclose(
        fwd.x_t, (1 - fwd.t.view(-1, 1, 1, 1)) * fwd.x0 + fwd.t.view(-1, 1, 1, 1) * eps, atol=1e-5
    )


def test_zero_initialised_flow_head_gives_zero_velocity(cfg, tok, vae):
    model = MiniBagel(dataclasses.replace(cfg, cond_prior=False), tok.vocab_size)
    fwd = training_forward(
        model, vae, tok, batch_of(["sr4", "enhance"]), generator=torch.Generator().manual_seed(1)
    )
    assert torch.count_nonzero(fwd.v_hat) == 0
    assert fwd.text_logits.abs().sum() > 0


def test_condition_prior_maps_pure_noise_onto_the_condition(cfg, tok, vae):
    """cond_prior: v_hat = head + (x_t - cond). With an untrained (zero) head, the x0 prediction
    x_t - t v_hat is (1 - t) x_t + t cond: the condition latent at t = 1, whatever the noise; so the
    one-step output of an untrained model is the decoded condition (the bicubic / unchanged
    input)."""
    model = MiniBagel(cfg, tok.vocab_size)
    images = torch.rand(2, 3, 8, 8)
    ad = MiniBagelAdapter(model, vae, tok, SampleConfig(steps=2, onestep_t=1.0), output="onestep")
    got = ad.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[1, 2])
    cond = ad._encode_condition(images, (32, 32))
    assert torch.allclose(got, vae.decode(cond).clamp(0, 1), atol=1e-5)
    other_noise = ad.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[7, 8])
    assert torch.allclose(other_noise, got, atol=1e-5)
    plain = MiniBagelAdapter(MiniBagel(dataclasses.replace(cfg, cond_prior=False), tok.vocab_size),
                             vae, tok, SampleConfig(steps=2, onestep_t=1.0), output="onestep")
    assert not torch.allclose(plain.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[1, 2]),
                              got, atol=1e-3)


def test_prior_net_sharpens_the_condition_into_the_residual_prior(cfg, tok, vae):
    """prior_conv_channels: v_hat = head + (x_t - prior), prior = cond + net(cond). Zero at init
    (the same function as without it); once trained, an untrained head's x0 prediction from pure
    noise is the decoded prior: the condition changed by the CNN, the same for any noise."""
    with_net = MiniBagel(dataclasses.replace(cfg, prior_conv_channels=8), tok.vocab_size)
    plain = MiniBagel(dataclasses.replace(cfg, prior_conv_channels=0), tok.vocab_size)
    plain.load_state_dict({k: v for k, v in with_net.state_dict().items()
                           if not k.startswith("prior_net.")})
    images = torch.rand(2, 3, 8, 8)
    sc = SampleConfig(steps=2, onestep_t=1.0, onestep_draws=1)
    edit = dict(instructions=[SR4, SR4], tasks=["sr4", "sr4"], out_size=(32, 32), seed=[1, 2])
    a = MiniBagelAdapter(with_net, vae, tok, sc, output="onestep")
    b = MiniBagelAdapter(plain, vae, tok, sc, output="onestep")
    assert torch.equal(a.edit(images, **edit), b.edit(images, **edit))

    net = with_net.prior_net
    torch.nn.init.normal_(net.net[-1].weight, std=0.1)
    cond = a._encode_condition(images, (32, 32))
    context = torch.randn(2, cfg.d_model)
    prior = net(cond, context)  # FiLM still zero: the context does not matter yet
    assert prior.shape == cond.shape and not torch.allclose(prior, cond, atol=1e-3)
    got = a.edit(images, **edit)
    assert torch.allclose(got, vae.decode(prior).clamp(0, 1), atol=1e-5)
    assert torch.allclose(a.edit(images, **{**edit, "seed": [7, 8]}), got, atol=1e-5)
    # Local: the prior of a pixel depends on a 9 x 9 latent window (four 3 x 3 layers), no more.
    far = cond.clone()
    far[:, :, 10:, 10:] += 1.0
    assert torch.equal(net(far, context)[:, :, :5, :5], prior[:, :, :5, :5])
    # The context (which task, how degraded) modulates it once FiLM is trained.
    torch.nn.init.normal_(net.film.weight, std=0.1)
    assert not torch.allclose(net(cond, context), net(cond, -context), atol=1e-4)


def _model_and_inputs(cfg, tok, n: int = 1):
    """An untrained model whose velocity head is not zero, and ``n`` random conditions, noisy
    images (16 tokens each) and timesteps."""
    model = MiniBagel(cfg, tok.vocab_size).eval()
    torch.nn.init.normal_(model.llm2vae.weight)
    cond, gen = torch.randn(n, 16, model.patch_dim), torch.randn(n, 16, model.patch_dim)
    return model, cond, gen, torch.rand(n)


def _run(model, tok, prompts, reports, cond, gen, t):
    text = pack_text(tok, prompts, reports, model.cfg.max_text_len)
    mask = sequence_mask(text, cond.shape[1], 0 if gen is None else gen.shape[1])
    g = int(cond.shape[1] ** 0.5)
    return text, model(text.ids, text.pos, mask, cond=cond, gen=gen, t=t, grid=(g, g),
                       prompt_mask=text.roles == PROMPT)


def test_text_is_causal_and_blind_to_the_generated_image(cfg, tok):
    model, cond, gen, t = _model_and_inputs(cfg, tok)
    text, (_, logits, _) = _run(model, tok, [SR4], ["quality is good."], cond, gen, t)
    _, (_, logits2, _) = _run(model, tok, [SR4], ["quality is reject."], cond, gen, t)
    changed = [
        i
        for i, (a, b) in enumerate(
            zip(
                text.ids[0],
                tok.encode(SR4, bos=True, sep=True) + tok.encode("quality is reject.", eos=True),
            )
        )
        if a != b
    ]
    first = changed[0]
    assert torch.allclose(logits[0, :first], logits2[0, :first], atol=1e-6)
    assert not torch.allclose(logits[0, first:], logits2[0, first:], atol=1e-4)
    _, (_, logits3, _) = _run(
        model, tok, [SR4], ["quality is good."], cond, torch.randn_like(gen), t
    )
    assert torch.allclose(logits, logits3, atol=1e-6)


def test_generated_image_has_full_attention_and_ignores_the_report(cfg, tok):
    model, cond, gen, t = _model_and_inputs(cfg, tok)
    _, (_, _, v) = _run(model, tok, [SR4], [REPORT], cond, gen, t)
    gen2 = gen.clone()
    gen2[0, -1] += 1.0  # the LAST image token
    _, (_, _, v2) = _run(model, tok, [SR4], [REPORT], cond, gen2, t)
    assert not torch.allclose(v[0, 0], v2[0, 0], atol=1e-5)  # reaches the FIRST image token
    _, (_, _, v3) = _run(model, tok, [SR4], ["quality is reject."], cond, gen, t)
    assert torch.allclose(v, v3, atol=1e-6)
    _, (_, _, v4) = _run(model, tok, [ENH], [REPORT], cond, gen, t)
    assert not torch.allclose(v, v4, atol=1e-5)  # the instruction does reach the image


def test_report_is_trained_in_the_context_it_is_generated_in(cfg, tok):
    """Training packs [instruction][question report]; generation packs [question] alone. The
    report logits must not depend on the instruction, or CE would train a context the harness
    never asks in (the prompt mismatch that made trained models look collapsed)."""
    model = MiniBagel(cfg, tok.vocab_size).eval()
    cond = torch.randn(1, 16, model.patch_dim)
    question = "grade the quality"
    train_text = pack_text(tok, [SR4], [REPORT], cfg.max_text_len, questions=[question])
    infer_text = pack_text(tok, None, [REPORT], cfg.max_text_len, questions=[question])
    _, train_logits, _ = model(train_text.ids, train_text.pos, sequence_mask(train_text, 16, 0),
                               cond=cond, grid=(4, 4))
    _, infer_logits, _ = model(infer_text.ids, infer_text.pos, sequence_mask(infer_text, 16, 0),
                               cond=cond, grid=(4, 4))
    n_instr = len(tok.encode(SR4, bos=True, sep=True))
    assert torch.allclose(train_logits[0, n_instr:], infer_logits[0], atol=1e-5)
    assert torch.equal(train_text.targets[0, n_instr:], infer_text.targets[0])
    # and the targets are exactly the report, predicted from the question's last position on
    assert train_text.targets[0, n_instr + len(tok.encode(question, bos=True, sep=True)) - 1] == \
        tok.encode(REPORT, eos=True)[0]


def test_padding_does_not_change_a_sample(cfg, tok):
    """Padded batching: a sample's outputs do not depend on the longer samples beside it."""
    model, cond, gen, t = _model_and_inputs(cfg, tok, n=2)
    text, (_, logits, v) = _run(model, tok, [ENH, SR4 + " " + SR4], [REPORT, REPORT], cond, gen, t)
    text1, (_, logits1, v1) = _run(model, tok, [ENH], [REPORT], cond[:1], gen[:1], t[:1])
    T1 = text1.ids.shape[1]
    assert torch.allclose(logits[0, :T1], logits1[0], atol=1e-5)
    assert torch.allclose(v[0], v1[0], atol=1e-5)


def test_timesteps_and_schedule():
    g = torch.Generator().manual_seed(0)
    t1, t3 = (
        sample_timesteps(4000, 1.0, g),
        sample_timesteps(4000, 3.0, torch.Generator().manual_seed(0)),
    )
    assert bool(((t1 > 0) & (t1 < 1)).all()) and abs(float(t1.mean()) - 0.5) < 0.02
    assert bool((t3 > t1).all())  # the shift moves every t towards noise
    s = sampling_schedule(8, 3.0)
    assert s[0] == 1 and s[-1] == 0 and bool((s[1:] < s[:-1]).all())


@pytest.mark.parametrize("shift,steps", [(1.0, 1), (3.0, 7), (3.0, 49)])
def test_euler_sampler_with_perfect_oracle_recovers_x0(shift, steps):
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    out = euler_sample(lambda x, t: eps - x0, eps, steps=steps, shift=shift)
    assert torch.allclose(out, x0, atol=1e-5)
    # the oracle is consistent with the noising: x_t - t v = x0 at any t
    t = torch.full((3,), 0.7)
    x_t, v = add_noise(x0, eps, t)
    assert torch.allclose(x_t - 0.7 * v, x0, atol=1e-5)


def test_cfg_with_equal_branches_is_a_no_op():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    oracle = lambda x, t: eps - x0  # noqa: E731
    out = euler_sample(oracle, eps, steps=5, shift=3.0, uncond_velocity=oracle, guidance=4.0)
    assert torch.allclose(out, x0, atol=1e-5)


def test_tokenizer_round_trip_unk_and_out_of_range_ids(tok, tmp_path):
    ids = tok.encode(REPORT, bos=True, eos=True)
    assert tok.decode(ids).text == REPORT and tok.decode(ids).n_bad == 0
    assert tok.encode("quality is splendid")[-1] == tok.unk_id
    bad = ids[:3] + [tok.vocab_size + 5, -1, 10 ** 6] + ids[3:]
    res = tok.decode(bad)  # must not raise (the original crashed in "".join on None)
    assert res.bad_positions == [3, 4, 5] and res.bad_ids == [tok.vocab_size + 5, -1, 10 ** 6]
    assert res.collapsed and res.text == REPORT
    tok.save(tmp_path / "tokenizer.json")
    assert Tokenizer.load(tmp_path / "tokenizer.json") == tok
    (tmp_path / "broken.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="broken.json"):
        Tokenizer.load(tmp_path / "broken.json")


def test_text_head_is_padded_beyond_the_tokenizer(cfg, tok):
    model = MiniBagel(cfg, tok.vocab_size)
    assert model.vocab_padded == padded_vocab_size(tok.vocab_size, 16) > tok.vocab_size
    assert model.vocab_padded % 16 == 0 and model.text_head.weight.shape[0] == model.vocab_padded


def test_adapter_protocol_edit_and_collapsed_text(cfg, tok, vae):
    model = MiniBagel(cfg, tok.vocab_size).train()
    sc = SampleConfig(steps=3, max_new_tokens=6)
    ad = MiniBagelAdapter(model, vae, tok, sc, name="tiny")
    assert isinstance(ad, ImageTextModel) and ad.vocab_size == tok.vocab_size
    b = batch_of(["sr4", "sr4"])
    low = b["input"][:, :, :8, :8]
    out = ad.edit(low, b["instruction"], b["task"], (32, 32), seed=3)
    assert out.shape == (2, 3, 32, 32) and float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, ad.edit(low, b["instruction"], b["task"], (32, 32), seed=3))
    assert model.training  # the adapter restores the caller's mode
    # a collapsed head: every step's argmax is a padding row; ids are returned, decode flags them
    with torch.no_grad():
        model.text_head.weight.zero_()
        model.text_head.weight[tok.vocab_size + 2] = 1.0
        model.norm.weight.fill_(1.0)
    with torch.no_grad():
        model.tok_emb.weight[:] = torch.randn_like(model.tok_emb.weight).abs()
    ids = ad.generate_report(b["target"], b["instruction"], seed=0)
    assert [len(x) for x in ids] == [6, 6] and all(i == tok.vocab_size + 2 for x in ids for i in x)
    res = ad.decode(ids[0])
    assert res.n_bad == 6 and res.text == ""


def test_per_image_seeds_make_outputs_independent_of_the_batch(cfg, tok, vae):
    model = MiniBagel(cfg, tok.vocab_size)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.1)
    ad = MiniBagelAdapter(model, vae, tok, SampleConfig(steps=2, max_new_tokens=5, temperature=1.0))
    assert ad.seed_per_image
    b = batch_of(["sr4", "sr4", "sr4"])
    low = b["input"][:, :, :8, :8]
    both = ad.edit(low, b["instruction"], b["task"], (32, 32), seed=[7, 8, 9])
    alone = ad.edit(low[1:2], b["instruction"][1:2], b["task"][1:2], (32, 32), seed=[8])
    assert torch.allclose(both[1], alone[0], atol=1e-5)
    assert not torch.allclose(both[0], both[1], atol=1e-3)  # different seeds, different noise
    ids = ad.generate_report(low, b["instruction"], seed=[7, 8, 9])
    assert ids[2] == ad.generate_report(low[2:], b["instruction"][2:], seed=[9])[0]
    with pytest.raises(ValueError, match="3 images but 2 seeds"):
        ad.edit(low, b["instruction"], b["task"], (32, 32), seed=[1, 2])


def test_generate_report_stops_at_eos_and_sampling_is_seeded(cfg, tok, vae):
    model = MiniBagel(cfg, tok.vocab_size)
    ad = MiniBagelAdapter(
        model, vae, tok, SampleConfig(max_new_tokens=8, temperature=1.0, top_p=0.9)
    )
    imgs = torch.rand(3, 3, 32, 32)
    a = ad.generate_report(imgs, [SR4] * 3, seed=5)
    assert a == ad.generate_report(imgs, [SR4] * 3, seed=5)
    assert all(0 < len(x) <= 8 for x in a)
    with torch.no_grad():
        model.text_head.weight.zero_()
        model.text_head.weight[tok.eos_id] = 1.0
        model.tok_emb.weight[:] = model.tok_emb.weight.abs()
    greedy = MiniBagelAdapter(model, vae, tok, SampleConfig(max_new_tokens=8))
    assert greedy.generate_report(imgs, [SR4, ENH, ""], seed=0) == [[tok.eos_id]] * 3


def test_save_load_round_trip_is_bit_identical(cfg, tok, tmp_path):
    model = MiniBagel(cfg, tok.vocab_size)
    torch.nn.init.normal_(model.llm2vae.weight)
    save_model(model, tok, tmp_path)
    save_model(model, tok, tmp_path, filename="ema.safetensors")
    assert {p.name for p in tmp_path.iterdir()} == {
        "model.safetensors",
        "ema.safetensors",
        "arch.json",
        "tokenizer.json",
    }
    loaded, tok2, report = load_model(tmp_path, expect_arch=cfg)
    assert tok2 == tok and report.ok and report.weights == "model" and len(report.fingerprint) == 16
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    _, _, ema_report = load_model(tmp_path, weights_file="ema.safetensors")
    assert ema_report.weights == "ema" and ema_report.fingerprint == report.fingerprint
    assert ema_report.source.endswith("ema.safetensors")
    import medq.checkpoint as checkpoint
    assert checkpoint.fingerprint(model.state_dict()) == report.fingerprint


def test_loading_into_another_architecture_names_the_keys(cfg, tok, tmp_path):
    state = MiniBagel(cfg, tok.vocab_size).state_dict()
    deeper = MiniBagel(dataclasses.replace(cfg, n_layers=3), tok.vocab_size)
    with pytest.raises(CheckpointMismatchError, match=r"missing .*blocks\.2\.qkv\.weight"):
        load_state_verified(deeper, state, source="ckpt/model.safetensors")
    wider = MiniBagel(dataclasses.replace(cfg, d_model=48), tok.vocab_size)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"shape-mismatched \(35\): .*blocks\.0\.qkv\.weight \(96, 32\) vs model \(144, 48\)",
    ) as e:
        load_state_verified(wider, state)
    assert "tok_emb.weight (48, 32) vs model (48, 48)" in e.value.mismatched  # the full list
    state["extra.bias"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"unexpected \(1\): extra\.bias"):
        load_state_verified(MiniBagel(cfg, tok.vocab_size), state)


def test_arch_json_mismatch_names_the_fields(cfg, tok, tmp_path):
    save_model(MiniBagel(cfg, tok.vocab_size), tok, tmp_path)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"d_model: file 32 vs expected 64.*n_layers: file 2 vs expected 4",
    ):
        load_model(tmp_path, expect_arch=dataclasses.replace(cfg, d_model=64, n_layers=4))


def test_arch_json_without_a_field_added_since_reads_as_its_old_value(cfg, tok, tmp_path):
    """Weights shipped before ``prior_conv_channels`` existed had no prior net: an arch.json
    without the field loads as 0 and is a mismatch for a config that asks for the net."""
    old = dataclasses.replace(cfg, prior_conv_channels=0)
    save_model(MiniBagel(old, tok.vocab_size), tok, tmp_path)
    arch = json.loads((tmp_path / "arch.json").read_text())
    assert arch["prior_conv_channels"] == 0
    del arch["prior_conv_channels"]
    (tmp_path / "arch.json").write_text(json.dumps(arch))
    model, _, report = load_model(tmp_path, expect_arch=old)
    assert report.ok and model.prior_net is None
    with pytest.raises(CheckpointMismatchError,
                       match=r"prior_conv_channels: file 0 vs expected 16"):
        load_model(tmp_path, expect_arch=dataclasses.replace(cfg, prior_conv_channels=16))


@pytest.mark.parametrize(
    "overlay,params", [("model/small", (10e6, 30e6)), ("model/large", (80e6, 200e6))]
)
def test_shipped_model_sizes_build(overlay, params, tok):
    c = load_config("pretrain", overlays=[overlay]).model
    with torch.device("meta"):
        model = MiniBagel(c, tok.vocab_size)
    assert params[0] < model.num_parameters() < params[1]


def test_training_forward_feeds_the_loss_composer_and_backpropagates(cfg, tok, vae):
    import medq.losses as losses
    from medq.config import LossConfig

    model = MiniBagel(cfg, tok.vocab_size)
    batch = batch_of(["sr4", "sr2", "enhance", "sr4"])
    fwd = training_forward(model, vae, tok, batch, generator=torch.Generator().manual_seed(0))
    loss_cfg = LossConfig(pixel_weight=1.0, ssim_weight=0.1, pixel_max_t=1.0, ssim_max_t=1.0)
    terms = losses.compose_losses(loss_cfg, fwd, batch, vae.decode)
    assert set(terms) >= {"ce", "mse", "pixel", "ssim", "total"} and torch.isfinite(terms["total"])
    terms["total"].backward()
    # the zero-initialised flow head still receives a gradient (through MSE and the decoder path)
    assert model.llm2vae.weight.grad.abs().sum() > 0 and model.text_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_training_forward_returns_the_prior_and_its_loss_trains_the_prior_net(cfg, tok, vae):
    import medq.losses as losses
    from medq.config import LossConfig

    model = MiniBagel(dataclasses.replace(cfg, prior_conv_channels=8), tok.vocab_size)
    batch = batch_of(["sr4", "sr2", "enhance"])
    fwd = training_forward(model, vae, tok, batch, generator=torch.Generator().manual_seed(0))
    assert fwd.prior.shape == fwd.x0.shape
    assert fwd.cond.shape == fwd.x0.shape
    terms = losses.compose_losses(LossConfig(prior_relative=False), fwd, batch, None)
    assert terms["prior"].item() == pytest.approx(((fwd.prior - fwd.x0) ** 2).mean().item())
    terms["prior"].backward()
    assert model.prior_net.net[-1].weight.grad.abs().sum() > 0
    assert model.llm2vae.weight.grad is None  # the prior's own loss does not reach the head
    plain = MiniBagel(dataclasses.replace(cfg, prior_conv_channels=0), tok.vocab_size)
    assert training_forward(plain, vae, tok, batch).prior is None


def test_instruction_dropout_trains_the_unconditional_branch(cfg, tok, vae):
    """With dropout the image branch sees the empty instruction (what guidance's unconditional
    pass asks for); the report's context (question, no instruction) is unchanged."""
    model = MiniBagel(cfg, tok.vocab_size).eval()
    torch.nn.init.normal_(model.llm2vae.weight)
    b = batch_of(["sr4", "enhance"])
    def run(batch, p):
        return training_forward(model, vae, tok, batch, instruction_dropout=p,
                                generator=torch.Generator().manual_seed(5))

    kept, dropped = run(b, 0.0), run(b, 0.999999)
    empty = run(dict(b, instruction=["", ""]), 0.0)
    assert torch.allclose(dropped.v_hat, empty.v_hat, atol=1e-6)
    assert not torch.allclose(kept.v_hat, dropped.v_hat, atol=1e-4)
    assert torch.equal(
        kept.text_targets[kept.text_targets != -100],
        dropped.text_targets[dropped.text_targets != -100],
    )


def test_condition_at_the_generated_grid_position(cfg, tok):
    """cond_at_gen adds cond2gen(condition token i) to generated token i only: zero at init (the
    same function as a model without it), and once trained, changing one condition token moves the
    generated token at its own position through that path."""
    with_add = MiniBagel(cfg, tok.vocab_size)
    without = MiniBagel(dataclasses.replace(cfg, cond_at_gen=False), tok.vocab_size)
    assert not any(k.startswith("cond2gen") for k in without.state_dict())
    without.load_state_dict({k: v for k, v in with_add.state_dict().items()
                             if not k.startswith("cond2gen")})
    torch.nn.init.normal_(with_add.llm2vae.weight)
    without.llm2vae.load_state_dict(with_add.llm2vae.state_dict())
    text = pack_text(tok, [SR4], None, cfg.max_text_len)
    n = (cfg.tile_size // 4 // cfg.patch_size) ** 2
    grid = (int(n ** 0.5),) * 2
    cond, gen = torch.randn(1, n, with_add.patch_dim), torch.randn(1, n, with_add.patch_dim)
    mask = sequence_mask(text, n, n)
    args = (text.ids, text.pos, mask)
    kw = dict(cond=cond, gen=gen, t=torch.tensor([0.5]), grid=grid,
              prompt_mask=text.roles == PROMPT)
    assert torch.allclose(with_add(*args, **kw)[2], without(*args, **kw)[2], atol=1e-6)
    torch.nn.init.normal_(with_add.cond2gen.weight)
    assert not torch.allclose(with_add(*args, **kw)[2], without(*args, **kw)[2], atol=1e-3)
    # The direct path: with attention cut off (no block), the generated token i depends on
    # condition token i and on no other condition token.
    with_add.blocks = torch.nn.ModuleList()
    cond2 = cond.clone()
    cond2[0, 3] += 1.0
    diff = (with_add(*args, **{**kw, "cond": cond2})[2] - with_add(*args, **kw)[2]).abs().sum(-1)[0]
    assert diff[3] > 1e-3 and torch.all(diff[torch.arange(n) != 3] < 1e-6)


@pytest.mark.parametrize("onestep_t", [1.0, 0.9])
def test_onestep_output_is_the_x0_prediction_from_the_noised_condition(cfg, tok, vae, onestep_t):
    """output="onestep" returns decode(x_t - t v_hat(x_t, t)) with x_t = (1 - t) cond + t eps for
    the seeded noise eps and t = sample.onestep_t (t = 1: from pure noise): one forward,
    independent of the sampler's steps; "sample" runs the Euler sampler (a different image)."""
    model = MiniBagel(cfg, tok.vocab_size)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.05)
    images = torch.rand(2, 3, 8, 8)
    sc = SampleConfig(steps=3, max_new_tokens=4, onestep_t=onestep_t, onestep_draws=1)
    onestep = MiniBagelAdapter(model, vae, tok, sc, output="onestep")
    got = onestep.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[5, 6])
    cond = onestep._encode_condition(images, (32, 32))
    n, c, h, w = cond.shape
    p = cfg.patch_size
    noise = torch.stack([torch.randn(cond.shape[1:], generator=torch.Generator().manual_seed(s))
                         for s in (5, 6)])
    text = pack_text(tok, [SR4, SR4], None, cfg.max_text_len)
    from medq.models.transformer import patchify, unpatchify
    x_t = (1 - onestep_t) * cond + onestep_t * noise
    with torch.no_grad():
        _, _, v = model(text.ids, text.pos, sequence_mask(text, h * w // p // p, h * w // p // p),
                        cond=patchify(cond, p), gen=patchify(x_t, p), t=torch.full((2,), onestep_t),
                        grid=(h // p, w // p), prompt_mask=text.roles == PROMPT)
        want = vae.decode(x_t - onestep_t * unpatchify(v, p, c, h, w)).clamp(0, 1)
    assert torch.allclose(got, want, atol=1e-5)
    more_steps = MiniBagelAdapter(model, vae, tok, dataclasses.replace(sc, steps=7),
                                  output="onestep")
    assert torch.allclose(
        more_steps.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[5, 6]), got, atol=1e-6
    )
    sampled = MiniBagelAdapter(model, vae, tok, sc).edit(
        images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[5, 6]
    )
    assert not torch.allclose(sampled, got, atol=1e-3)
    assert onestep.settings["output"] == "onestep"
    with pytest.raises(ValueError, match="output = 'mean'"):
        MiniBagelAdapter(model, vae, tok, sc, output="mean")


def test_onestep_output_averages_the_x0_predictions_of_its_noise_draws(cfg, tok, vae):
    """sample.onestep_draws = K: decode(mean over k of x0_hat(x_t(eps_k))), eps_k the k-th draw of
    each image's seeded generator; draw 0 is the one-draw output's noise, so K = 1 is unchanged;
    the result does not depend on which other images share the batch."""
    model = MiniBagel(cfg, tok.vocab_size)
    torch.nn.init.normal_(model.llm2vae.weight, std=0.05)
    images = torch.rand(2, 3, 8, 8)
    sc = SampleConfig(steps=3, max_new_tokens=4, onestep_t=0.9, onestep_draws=3)
    got = MiniBagelAdapter(model, vae, tok, sc, output="onestep").edit(
        images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[5, 6])
    one = MiniBagelAdapter(model, vae, tok, dataclasses.replace(sc, onestep_draws=1),
                           output="onestep")
    cond = one._encode_condition(images, (32, 32))
    n, c, h, w = cond.shape
    p = cfg.patch_size
    eps = torch.stack([torch.randn((3, c, h, w), generator=torch.Generator().manual_seed(s))
                       for s in (5, 6)], dim=1)  # (draws, N, C, h, w)
    text = pack_text(tok, [SR4, SR4], None, cfg.max_text_len)
    from medq.models.transformer import patchify, unpatchify
    x0_hats = []
    with torch.no_grad():
        for k in range(3):
            x_t = 0.1 * cond + 0.9 * eps[k]
            _, _, v = model(text.ids, text.pos, sequence_mask(text, h * w // p // p,
                                                              h * w // p // p),
                            cond=patchify(cond, p), gen=patchify(x_t, p), t=torch.full((2,), 0.9),
                            grid=(h // p, w // p), prompt_mask=text.roles == PROMPT)
            x0_hats.append(x_t - 0.9 * unpatchify(v, p, c, h, w))
        want = vae.decode(torch.stack(x0_hats).mean(0)).clamp(0, 1)
        first = vae.decode(x0_hats[0]).clamp(0, 1)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(one.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[5, 6]),
                          first, atol=1e-5)
    assert not torch.allclose(got, first, atol=1e-3)
    alone = MiniBagelAdapter(model, vae, tok, sc, output="onestep").edit(
        images[1:], [SR4], ["sr4"], (32, 32), seed=[6])
    assert torch.allclose(alone, got[1:], atol=1e-5)
    assert "onestep_draws" not in MiniBagelAdapter(model, vae, tok, sc).settings["sample"]
    with pytest.raises(Exception, match="sample.onestep_draws"):
        SampleConfig(onestep_draws=0)


def _randomised(model: MiniBagel) -> MiniBagel:
    """Every zero-initialised part (flow head, cond2gen, prior net FiLM / last layer) made
    non-zero, so that no path of the forward is trivially the identity."""
    with torch.no_grad():
        for prm in model.parameters():
            if not prm.abs().sum():
                prm.normal_(std=0.05)
    return model.eval()


def test_cached_prefix_gives_the_full_forward_velocity_and_logits(cfg, tok):
    """``prefix`` + ``velocity`` (the condition and prompt run once, the generated tokens at each
    step) and ``next_text`` equal one full forward over [cond | text | gen], for prompts of
    different lengths (padding) and with the condition prior and its net."""
    model = _randomised(MiniBagel(cfg, tok.vocab_size))
    assert model.prior_net is not None and model.cond2gen is not None
    g, n, C = 4, 16, model.patch_dim
    cond, gen = torch.randn(2, n, C), torch.randn(2, n, C)
    t = torch.tensor([0.9, 0.3])
    text = pack_text(tok, [SR4, "enhance"], None, cfg.max_text_len)
    full = sequence_mask(text, n, n)
    P = n + text.ids.shape[1]
    with torch.no_grad():
        _, logits, v = model(text.ids, text.pos, full, cond=cond, gen=gen, t=t, grid=(g, g),
                             prompt_mask=text.roles == PROMPT)
        pre_logits, cache, h_text = model.prefix(text.ids, text.pos, full[:, :P, :P], cond=cond,
                                                 grid=(g, g))
        prior = model.prior(cond, (g, g), model.context(h_text, text.roles == PROMPT))
        assert cache.length == P
        for _ in range(2):  # the cache is not consumed by a step
            v_cached = model.velocity(cache, full[:, P:], gen, t, cond, (g, g), prior)
            assert torch.allclose(v_cached, v, atol=1e-5)
    assert torch.allclose(pre_logits, logits, atol=1e-5)
    assert not torch.allclose(model.velocity(cache, full[:, P:], gen, t.flip(0), cond, (g, g),
                                             prior), v, atol=1e-3)  # the step's own t is used

    # text: a report continued token by token equals the full sequence's logits
    rep = pack_text(tok, None, [REPORT, REPORT], cfg.max_text_len, questions=["grade", SR4])
    q = pack_text(tok, None, None, cfg.max_text_len, questions=["grade", SR4])
    with torch.no_grad():
        _, want, _ = model(rep.ids, rep.pos, sequence_mask(rep, n, 0), cond=cond, grid=(g, g))
        _, cache, _ = model.prefix(q.ids, q.pos, sequence_mask(q, n, 0), cond=cond,
                                   grid=(g, g))
        lengths = (q.roles != 0).sum(1)
        keys = torch.cat([torch.ones(2, n, dtype=torch.bool), q.roles != 0], dim=1)
        for j in range(4):
            ids = rep.ids[torch.arange(2), lengths + j][:, None]
            mask = torch.cat([keys, torch.ones(2, j + 1, dtype=torch.bool)], 1)[:, None]
            got, cache = model.next_text(cache, ids, (lengths + j)[:, None], mask)
            assert torch.allclose(got[:, 0], want[torch.arange(2), lengths + j], atol=1e-5)


def test_cached_report_generation_equals_recomputing_the_whole_sequence(cfg, tok, vae):
    """Greedy reports from the adapter (KV cache) are the ids of a loop that re-runs the full
    forward over [cond | question + report so far] for every token."""
    model = _randomised(MiniBagel(cfg, tok.vocab_size))
    with torch.no_grad():  # each token steers the next: long, varied reports
        for block in model.blocks:  # attention that reads the question and the image
            block.qkv.weight.normal_(std=0.3)
        model.tok_emb.weight.normal_(std=0.3)
        model.text_head.weight.normal_(std=1.0)
        model.text_head.weight[tok.eos_id] = 0
    ad = MiniBagelAdapter(model, vae, tok, SampleConfig(max_new_tokens=7))
    imgs = torch.rand(3, 3, 32, 32)
    prompts = ["grade", SR4, "the quality is"]
    got = ad.generate_report(imgs, prompts, seed=0)
    cond = ad._encode_condition(imgs, (32, 32))
    from medq.models.sequence import REPORT as REPORT_ROLE
    from medq.models.transformer import patchify
    ctok = patchify(cond, cfg.patch_size)
    g = cond.shape[-1] // cfg.patch_size
    for i in range(3):
        q = pack_text(tok, None, None, cfg.max_text_len, questions=[prompts[i]])
        ids, out = q.ids[0].tolist(), []
        for _ in range(7):
            T = len(ids)
            roles = torch.tensor([q.roles[0].tolist() + [REPORT_ROLE] * (T - q.ids.shape[1])])
            from medq.models.sequence import TextBatch
            text = TextBatch(torch.tensor([ids]), torch.arange(T)[None], roles,
                             torch.full((1, T), -100))
            with torch.no_grad():
                _, logits, _ = model(text.ids, text.pos, sequence_mask(text, ctok.shape[1], 0),
                                     cond=ctok[i:i + 1], grid=(g, g))
            out.append(int(logits[0, -1].argmax()))
            ids.append(out[-1])
            if out[-1] == tok.eos_id:
                break
        assert got[i] == out
    assert len({tuple(x) for x in got}) > 1 and max(len(x) for x in got) > 3, got


def test_noise_temperature_scales_the_samplers_start_and_only_the_sample(cfg, tok, vae,
                                                                        monkeypatch):
    """sample.noise_temperature = tau: the Euler sampler starts from tau * the seeded noise; the
    one-step output ignores it (and does not record it); tau <= 0 is refused."""
    import medq.models.adapter as adapter_mod

    model = _randomised(MiniBagel(cfg, tok.vocab_size))
    images = torch.rand(2, 3, 8, 8)
    starts = []
    real = adapter_mod.euler_sample
    monkeypatch.setattr(adapter_mod, "euler_sample",
                        lambda v, noise, **kw: starts.append(noise) or real(v, noise, **kw))

    def run(tau, output="sample"):
        ad = MiniBagelAdapter(model, vae, tok, SampleConfig(steps=2, noise_temperature=tau),
                              output=output)
        return ad, ad.edit(images, [SR4, SR4], ["sr4", "sr4"], (32, 32), seed=[5, 6])

    _, at_one = run(1.0)
    ad, at_03 = run(0.3)
    assert torch.allclose(starts[1], 0.3 * starts[0]) and starts[0].std() > 0.5
    assert not torch.allclose(at_one, at_03, atol=1e-3)
    assert ad.settings["sample"]["noise_temperature"] == 0.3
    onestep_ad, m1 = run(1.0, "onestep")
    _, m3 = run(0.3, "onestep")
    assert torch.equal(m1, m3) and "noise_temperature" not in onestep_ad.settings["sample"]
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="sample.noise_temperature"):
            SampleConfig(noise_temperature=bad)
