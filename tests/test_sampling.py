"""Text-to-video sampling on the tiny base: windows, guidance, schedulers, determinism, decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from animatediff.base_model import load_base_model
from animatediff.config import Config, load_config
from animatediff.sampling import (
    TextToVideo,
    blend_windows,
    classifier_free_guidance,
    context_windows,
    decode_latents,
    iter_decoded,
    window_weights,
)
from animatediff.unet import VideoUNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Toy-sized tensors gain nothing from threads, and on a shared 2-core machine spinning
    OpenMP workers make these tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Pure functions
# ---------------------------------------------------------------------------------------------


def test_classifier_free_guidance_math() -> None:
    uncond, cond = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(classifier_free_guidance(uncond, cond, 1.0), cond)
    assert torch.equal(classifier_free_guidance(uncond, cond, 0.0), uncond)
    torch.testing.assert_close(
        classifier_free_guidance(uncond, cond, 7.5), torch.tensor([16.0, 13.0])
    )


@pytest.mark.parametrize(
    "num_frames, window, overlap",
    [(128, 16, 4), (32, 16, 4), (20, 8, 2), (17, 16, 4), (9, 4, 0), (50, 16, 15)],
)
def test_context_windows_cover_every_frame_with_overlap(
    num_frames: int, window: int, overlap: int
) -> None:
    windows = context_windows(num_frames, window, overlap)
    assert all(w == list(range(w[0], w[0] + window)) for w in windows)  # contiguous, full length
    assert sorted({f for w in windows for f in w}) == list(range(num_frames))
    assert windows[0][0] == 0 and windows[-1][-1] == num_frames - 1
    for left, right in zip(windows, windows[1:]):
        assert right[0] > left[0]
        assert len(set(left) & set(right)) >= overlap  # neighbours share at least `overlap` frames
    # Linear cost: about (num_frames - overlap) / (window - overlap) windows, never more than one extra.
    assert len(windows) == -(-(num_frames - window) // (window - overlap)) + 1


def test_context_windows_examples_and_errors() -> None:
    assert context_windows(20, 8, 2) == [list(range(0, 8)), list(range(6, 14)), list(range(12, 20))]
    assert len(context_windows(128, 16, 4)) == 11 and len(context_windows(32, 16, 4)) == 3
    assert context_windows(16, 16, 4) == [list(range(16))]
    assert context_windows(5, 16, 4) == [list(range(5))]
    with pytest.raises(ValueError, match="context_overlap"):
        context_windows(20, 8, 8)
    with pytest.raises(ValueError, match="num_frames"):
        context_windows(0, 8, 2)


def test_window_weights_taper_at_edges() -> None:
    weights = window_weights(16, 4)
    assert torch.equal(weights, weights.flip(0))
    assert (weights > 0).all() and weights.max() == 1
    assert weights[0] < weights[1] < weights[2] < weights[3] < weights[4] == 1
    assert torch.equal(window_weights(6, 0), torch.ones(6))


def test_blend_windows() -> None:
    num_frames, windows = 20, context_windows(20, 8, 2)
    # A prediction that depends only on the frame index blends back to exactly itself.
    per_frame = torch.randn(2, 4, num_frames, 3, 3)
    blended = blend_windows([per_frame[:, :, w] for w in windows], windows, num_frames, 2)
    torch.testing.assert_close(blended, per_frame, atol=1e-6, rtol=0)
    # Where windows disagree the overlap is a weighted mix, frames seen once keep their value.
    constant = [torch.full((1, 1, 8, 1, 1), float(i)) for i in range(len(windows))]
    mixed = blend_windows(constant, windows, num_frames, 2).flatten()
    assert mixed[:6].eq(0).all() and mixed[8:12].eq(1).all() and mixed[14:].eq(2).all()
    assert 0 < mixed[6] < mixed[7] < 1  # ramps from window 0 towards window 1
    # Predictions may stream in from a generator (one window in memory at a time).
    streamed = blend_windows((per_frame[:, :, w] for w in windows), windows, num_frames, 2)
    assert torch.equal(streamed, blended)
    with pytest.raises(ValueError, match="one prediction per window"):
        blend_windows([per_frame[:, :, w] for w in windows[:2]], windows, num_frames, 2)
    # A single window covering the clip is passed through untouched.
    single = torch.randn(1, 4, 5, 2, 2)
    assert blend_windows([single], [list(range(5))], 5, 2) is single
    with pytest.raises(ValueError, match="not covered"):
        blend_windows([torch.zeros(1, 1, 4, 1, 1)], [[0, 1, 2, 3]], 6, 1)


# ---------------------------------------------------------------------------------------------
# The pipeline on the tiny base
# ---------------------------------------------------------------------------------------------


def _config(base_dir: Path, *overrides: str) -> Config:
    return load_config(
        None,
        [
            f"model.base.pretrained={base_dir}",
            "model.motion.num_heads=4",
            "model.motion.norm_groups=8",
            "sample.num_inference_steps=2",
            "sample.num_frames=4",
            "sample.height=32",
            "sample.width=32",
            "sample.context_frames=8",
            "sample.context_overlap=2",
            "sample.decode_chunk_frames=3",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def base(tiny_base_dir: Path):
    return load_base_model(_config(tiny_base_dir).model.base)


@pytest.fixture(scope="module")
def t2v(tiny_base_dir: Path, base) -> TextToVideo:
    """Tiny pipeline with random (non-identity) motion modules, so frames interact."""
    cfg = _config(tiny_base_dir)
    unet = VideoUNet.from_unet2d(base.unet, cfg.model.motion)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in unet.motion_modules.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return TextToVideo(cfg, base=base, unet=unet, device="cpu")


def test_builds_from_config_and_returns_uint8_frames(tiny_base_dir: Path) -> None:
    t2v = TextToVideo(_config(tiny_base_dir), device="cpu")
    assert isinstance(t2v.unet, VideoUNet)
    frames = t2v("a red ball", num_frames=3, height=24, width=40)
    assert frames.shape == (3, 24, 40, 3) and frames.dtype == np.uint8
    assert frames.std() > 0


def test_seed_determinism(t2v: TextToVideo) -> None:
    first = t2v("a cat", seed=1)
    assert np.array_equal(first, t2v("a cat", seed=1))
    assert not np.array_equal(first, t2v("a cat", seed=2))


def test_negative_prompt_and_guidance_change_the_output(t2v: TextToVideo) -> None:
    plain = t2v("a cat", seed=3)
    assert not np.array_equal(plain, t2v("a cat", negative_prompt="blurry", seed=3))
    assert not np.array_equal(plain, t2v("a cat", seed=3, guidance_scale=1.0))


def test_guidance_scale_one_skips_the_unconditional_pass(t2v: TextToVideo, monkeypatch) -> None:
    batches = []
    forward = t2v.unet.forward

    def counting(sample, timestep, text):
        batches.append(sample.shape[0])
        return forward(sample, timestep, text)

    monkeypatch.setattr(t2v.unet, "forward", counting)
    t2v("a cat", guidance_scale=1.0, num_inference_steps=2)
    assert batches == [1, 1]
    batches.clear()
    t2v("a cat", guidance_scale=7.5, num_inference_steps=2)
    assert batches == [2, 2]  # [uncond; cond] in one batch


def test_other_schedulers_are_selectable(t2v: TextToVideo) -> None:
    ddim = t2v("a cat", seed=4)
    euler = t2v("a cat", seed=4, scheduler="EulerDiscreteScheduler")
    assert euler.shape == ddim.shape and not np.array_equal(euler, ddim)
    ancestral = "EulerAncestralDiscreteScheduler"  # stochastic steps are seeded too
    assert np.array_equal(
        t2v("a", seed=4, scheduler=ancestral), t2v("a", seed=4, scheduler=ancestral)
    )
    assert type(t2v.scheduler()).__name__ == "DDIMScheduler"
    with pytest.raises(ValueError, match="sample.scheduler"):
        t2v.scheduler("NoSuchScheduler")


def test_sampling_uses_the_training_noise_schedule(t2v: TextToVideo) -> None:
    scheduler = t2v.scheduler()
    diffusion = t2v.cfg.model.diffusion
    assert scheduler.config.beta_schedule == diffusion.beta_schedule == "linear"
    assert scheduler.config.steps_offset == 1  # the rest is the base's scheduler config


def test_batch_matches_single_calls(t2v: TextToVideo) -> None:
    batch = t2v.generate(["a cat", "a dog"], ["", "blurry"], [5, 6])
    singles = [t2v("a cat", seed=5), t2v("a dog", negative_prompt="blurry", seed=6)]
    for got, want in zip(batch, singles):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # batched float rounding
    with pytest.raises(ValueError, match="seeds"):
        t2v.generate(["a", "b"], seeds=[1])


def test_sampling_restores_the_unet_mode(t2v: TextToVideo, monkeypatch) -> None:
    """A trainer passes its own UNet for validation videos; it must get it back training."""
    modes = []
    forward = t2v.unet.forward
    monkeypatch.setattr(
        t2v.unet, "forward", lambda *a: modes.append(t2v.unet.training) or forward(*a)
    )
    t2v.unet.train()
    try:
        t2v("a cat", num_frames=2, num_inference_steps=1, height=16, width=16)
        assert modes == [False] and t2v.unet.training
    finally:
        t2v.unet.eval()


def test_single_window_is_exactly_no_windowing(t2v: TextToVideo) -> None:
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 4, 4, generator=generator)  # 8 frames == context_frames
    text = t2v.encode_prompts(["a cat"])
    t = torch.tensor(500)
    with torch.no_grad():
        direct = t2v.unet(latents, t, text)
    assert torch.equal(t2v.predict_noise(latents, t, text, guidance_scale=1.0), direct)


def test_windows_blend_per_frame_predictions_exactly(tiny_base_dir: Path, base) -> None:
    """Fresh motion modules are the identity, so the UNet is per-frame: windowed sampling must then
    equal one pass over all frames (any blending error would show)."""
    unet = VideoUNet.from_unet2d(base.unet, _config(tiny_base_dir).model.motion)
    windowed = TextToVideo(_config(tiny_base_dir), base=base, unet=unet, device="cpu")
    whole = TextToVideo(_config(tiny_base_dir, "sample.context_frames=16"), base=base, unet=unet)
    latents = torch.randn(1, 4, 14, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.cat([windowed.encode_prompts([""]), windowed.encode_prompts(["a cat"])])
    t = torch.tensor(700)
    torch.testing.assert_close(
        windowed.predict_noise(latents, t, text, 7.5),
        whole.predict_noise(latents, t, text, 7.5),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize(
    "windows_per_call, calls", [(0, [1, 1, 1]), (1, [1, 1, 1]), (2, [2, 1]), (4, [3])]
)
def test_long_video_runs_the_unet_on_batches_of_windows(
    tiny_base_dir: Path, base, t2v: TextToVideo, monkeypatch, windows_per_call, calls
) -> None:
    cfg = _config(tiny_base_dir, f"sample.context_batch_size={windows_per_call}")
    pipe = TextToVideo(cfg, base=base, unet=t2v.unet, device="cpu")
    shapes = []
    forward = pipe.unet.forward

    def recording(sample, timestep, text):
        assert text.shape[0] == sample.shape[0]
        shapes.append(tuple(sample.shape[:3]))
        return forward(sample, timestep, text)

    monkeypatch.setattr(pipe.unet, "forward", recording)
    video = pipe("a long cat", num_frames=20, num_inference_steps=2, height=16, width=16)
    assert video.shape == (20, 16, 16, 3)
    # 3 windows of context_frames per step (never 20 frames at once), `windows_per_call` at a
    # time, each window one sample of the batch; [uncond; cond] doubles it.
    assert shapes == [(2 * n, 4, 8) for n in calls] * 2


def test_batched_windows_give_what_one_call_per_window_gives(
    tiny_base_dir: Path, base, t2v: TextToVideo
) -> None:
    latents = torch.randn(2, 4, 30, 4, 4, generator=torch.Generator().manual_seed(1))
    text = torch.cat([t2v.encode_prompts(["", ""]), t2v.encode_prompts(["a cat", "a dog"])])
    t = torch.tensor(600)
    outputs = {}
    for size in (1, 3, 16):  # one at a time, chunks of 3 (the last one short), all 5 at once
        cfg = _config(tiny_base_dir, f"sample.context_batch_size={size}")
        pipe = TextToVideo(cfg, base=base, unet=t2v.unet, device="cpu")
        outputs[size] = pipe.predict_noise(latents, t, text, 7.5)
    # To float32 rounding, not bit for bit: CPU kernels may sum in another order for another batch
    # size (equal on an AMD EPYC, up to 6e-6 apart on an Intel Xeon). A window paired with the
    # wrong text or blended at the wrong frames would be off by orders of magnitude more.
    for size in (3, 16):
        torch.testing.assert_close(outputs[size], outputs[1], rtol=1e-5, atol=1e-5)


def test_chunked_decode_equals_unchunked(base) -> None:
    latents = torch.randn(2, 4, 5, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        chunks = list(iter_decoded(base.vae, latents, chunk_frames=3))
        (whole,) = list(iter_decoded(base.vae, latents, chunk_frames=100))
        video = decode_latents(base.vae, latents, chunk_frames=3)
        video_whole = decode_latents(base.vae, latents, chunk_frames=100)
    assert [c.shape[0] for c in chunks] == [3, 3, 3, 1]  # 10 images, at most 3 at a time
    chunked = torch.cat(chunks)
    assert chunked.shape == (10, 32, 32, 3) and 0 <= chunked.min() and chunked.max() <= 1
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)
    assert video.shape == (2, 5, 32, 32, 3) and video.dtype == np.uint8
    assert np.abs(video.astype(int) - video_whole.astype(int)).max() <= 1  # float rounding only
    # Frame order survives the reshapes: frame k of clip b is the decode of that latent alone.
    with torch.no_grad():
        alone = decode_latents(base.vae, latents[1:2, :, 3:4], chunk_frames=1)
    assert np.abs(video[1, 3].astype(int) - alone[0, 0].astype(int)).max() <= 1
    assert np.abs(video[1, 3].astype(int) - video[1, 2].astype(int)).max() > 1


def test_bad_requests_are_named(t2v: TextToVideo) -> None:
    with pytest.raises(ValueError, match="height"):
        t2v("a cat", height=30)
    with pytest.raises(ValueError, match="guidance_scale"):
        t2v("a cat", guidance_scale=0.5)
    with pytest.raises(ValueError, match="context_frames"):
        TextToVideo(_config(Path("unused"), "sample.context_frames=40"))


@pytest.mark.parametrize("method", ["extend", "interpolate"])
def test_a_module_samples_windows_longer_than_its_file_once_its_table_is_resized(
    tiny_base_dir: Path, base, tmp_path: Path, method: str
) -> None:
    """A 24-frame (v1-length) file samples 40-frame windows under model.motion.max_frames=40:
    loading resizes its tables (model.motion.pe_resize); without that it is refused."""
    from animatediff.checkpoints import save_original
    from animatediff.motion_module import MotionModules
    from tracking.registry import MotionSource, load_motion

    short = _config(tiny_base_dir, "model.motion.max_frames=24", "model.motion.zero_init_out=false")
    modules = MotionModules((32, 64), 2, short.model.motion)
    save_original(modules, short.model.motion, tmp_path / "mm.safetensors")
    source = MotionSource(str(tmp_path / "mm.safetensors"), "local", "")
    with pytest.raises(ValueError, match="context_frames"):
        TextToVideo(_config(tiny_base_dir, "sample.context_frames=40"), modules, base=base)
    cfg = _config(
        tiny_base_dir,
        "model.motion.max_frames=40",
        f"model.motion.pe_resize={method}",
        "sample.context_frames=40",
        "sample.context_overlap=8",
    )
    loaded, adapted = load_motion(source, cfg)
    assert (adapted.model.motion.max_frames, adapted.model.motion.pe_resize) == (40, method)
    pipe = TextToVideo(adapted, loaded, base=base, device="cpu")
    video = pipe("a long cat", num_frames=40, num_inference_steps=1, height=16, width=16)
    assert video.shape == (40, 16, 16, 3)


# ---------------------------------------------------------------------------------------------
# Against references written here: diffusers' AnimateDiffPipeline, and windows blended by hand
# ---------------------------------------------------------------------------------------------

# The default training schedule (model.diffusion), written out, not read from the config.
SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "prediction_type": "epsilon",
}


def _random_motion_unet(base, cfg: Config, seed: int = 0) -> VideoUNet:
    """The tiny base inflated with motion modules whose every weight is random (a fresh module
    is the identity, which would hide any difference between the frames)."""
    unet = VideoUNet.from_unet2d(base.unet, cfg.model.motion)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in unet.motion_modules.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return unet.eval()


def _final_latents(pipe: TextToVideo, monkeypatch, *args, **kwargs) -> torch.Tensor:
    """The latents ``pipe.generate`` hands to the VAE decoder, ``(batch, C, frames, h, w)``."""
    import animatediff.sampling as sampling

    captured = []

    def capture(vae, latents, chunk_frames):
        captured.append(latents.clone())
        return np.zeros((latents.shape[0], latents.shape[2], 8, 8, 3), np.uint8)

    monkeypatch.setattr(sampling, "decode_latents", capture)
    pipe.generate(*args, **kwargs)
    (latents,) = captured
    return latents


def _seeded_noise(seed: int, frames: int, size: int) -> torch.Tensor:
    """What a seed means (``TextToVideo.initial_latents``): one CPU generator per sample."""
    return torch.randn(1, 4, frames, size, size, generator=torch.Generator().manual_seed(seed))


def test_latents_match_diffusers_animatediff_pipeline(
    tiny_base_dir: Path, base, tmp_path, monkeypatch
):
    """The same adapter (cross-frame motion-module norm, diffusers' semantics), the same initial
    latents, DDIM on the training schedule, guidance 7.5: the final latents agree with
    ``AnimateDiffPipeline(output_type="latent")`` to 1e-4 (float32 on the CPU; bit-identical
    when measured with diffusers 0.42). The original per-frame norm on the same weights gives
    latents 0.018 away: the comparison can tell the two apart."""
    from diffusers import AnimateDiffPipeline, DDIMScheduler, MotionAdapter

    from animatediff.checkpoints import save_diffusers

    frames, size, steps, seed = 4, 32, 3, 7
    cfg = _config(tiny_base_dir, "model.motion.cross_frame_norm=true", "sample.guidance_scale=7.5")
    assert cfg.sample.scheduler == "DDIMScheduler" and frames <= cfg.sample.context_frames
    unet = _random_motion_unet(base, cfg)
    save_diffusers(unet.motion_modules, cfg.model.motion, tmp_path / "adapter")
    adapter = MotionAdapter.from_pretrained(tmp_path / "adapter")
    theirs_pipe = AnimateDiffPipeline.from_pretrained(tiny_base_dir, motion_adapter=adapter)
    theirs_pipe.scheduler = DDIMScheduler.from_config(theirs_pipe.scheduler.config, **SCHEDULE)
    theirs_pipe.set_progress_bar_config(disable=True)
    theirs = theirs_pipe(
        "a red ball",
        num_frames=frames,
        height=size,
        width=size,
        num_inference_steps=steps,
        guidance_scale=7.5,
        latents=_seeded_noise(seed, frames, size // 8),
        output_type="latent",
    ).frames

    generate = (["a red ball"], None, [seed])
    options = {"num_frames": frames, "num_inference_steps": steps, "height": size, "width": size}
    ours = _final_latents(
        TextToVideo(cfg, base=base, unet=unet, device="cpu"), monkeypatch, *generate, **options
    )
    assert ours.shape == theirs.shape == (1, 4, frames, size // 8, size // 8)
    assert (ours - theirs).abs().max() <= 1e-4
    assert theirs.abs().max() > 0.1  # not a trivially small output

    per_frame = _config(tiny_base_dir, "model.motion.cross_frame_norm=false")
    other = _random_motion_unet(base, per_frame)  # the same weights, per-frame norm
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), unet.parameters()))
    original = _final_latents(
        TextToVideo(per_frame, base=base, unet=other, device="cpu"),
        monkeypatch,
        *generate,
        **options,
    )
    assert (original - theirs).abs().max() > 1e-3


def test_sliding_windows_match_a_hand_blended_reference(tiny_base_dir: Path, base, monkeypatch):
    """9 frames in windows of 6 with ``context_overlap=2``: frames 0-5 and 3-8 (the last window is
    moved back to full length, so the two share 3 frames and the ramps' level matters, not only
    their ratio). Each step the reference runs the model on each window ([uncond; cond]
    together), blends with the documented weights (a ramp of ``k / (overlap + 1)`` at both window
    edges, 1 in the middle), then guides at 7.5 and takes a DDIM step. The sampler must give the
    same latents."""
    from diffusers import DDIMScheduler

    frames, size, steps, seed, scale = 9, 32, 2, 3, 7.5
    cfg = _config(
        tiny_base_dir,
        "sample.context_frames=6",
        "sample.context_overlap=2",
        "sample.guidance_scale=7.5",
    )
    unet = _random_motion_unet(base, cfg, seed=1)
    windows = [list(range(0, 6)), list(range(3, 9))]
    ramp = torch.tensor([1 / 3, 2 / 3, 1.0, 1.0, 2 / 3, 1 / 3])  # per position in a window

    def embed(prompt: str) -> torch.Tensor:
        ids = base.tokenizer(
            [prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        return base.text_encoder(ids)[0]

    with torch.no_grad():
        text = torch.cat([embed(""), embed("a long cat")])  # [uncond; cond]
        scheduler = DDIMScheduler.from_config(base.scheduler_config, **SCHEDULE)
        scheduler.set_timesteps(steps)
        latents = _seeded_noise(seed, frames, size // 8)
        for t in scheduler.timesteps:
            total = torch.zeros(2, 4, frames, size // 8, size // 8)
            weight = torch.zeros(frames)
            for window in windows:
                pair = torch.cat([latents[:, :, window]] * 2)
                prediction = unet(scheduler.scale_model_input(pair, t), t, text)
                total[:, :, window] += prediction * ramp.view(1, 1, -1, 1, 1)
                weight[window] += ramp
            uncond, cond = (total / weight.view(1, 1, -1, 1, 1)).chunk(2)
            guided = uncond + scale * (cond - uncond)
            latents = scheduler.step(guided, t, latents).prev_sample

    pipe = TextToVideo(cfg, base=base, unet=unet, device="cpu")

    def final(sampler: TextToVideo) -> torch.Tensor:
        return _final_latents(
            sampler,
            monkeypatch,
            ["a long cat"],
            None,
            [seed],
            num_frames=frames,
            num_inference_steps=steps,
            height=size,
            width=size,
        )

    torch.testing.assert_close(final(pipe), latents, atol=1e-5, rtol=1e-5)
    # The windows matter: one pass over all 9 frames gives other latents.
    whole = TextToVideo(
        _config(tiny_base_dir, "sample.context_frames=16", "sample.guidance_scale=7.5"),
        base=base,
        unet=unet,
        device="cpu",
    )
    assert (final(whole) - latents).abs().max() > 1e-3
