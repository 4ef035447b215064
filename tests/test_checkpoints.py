"""Motion-module checkpoints: native, original AnimateDiff and diffusers MotionAdapter formats."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from animatediff import checkpoints as ck
from animatediff.config import MotionModuleConfig
from animatediff.motion_module import (
    MotionModules,
    sinusoidal_position_encoding,
    to_diffusers_key,
)

LAYOUT = ((32, 64), 2)  # the tiny base's UNet: block_out_channels, layers_per_block


def tiny_cfg(**changes) -> MotionModuleConfig:
    return dataclasses.replace(MotionModuleConfig(num_heads=4, norm_groups=8), **changes)


def random_modules(cfg: MotionModuleConfig, seed: int = 0) -> MotionModules:
    """Motion modules with every parameter random (a fresh module has zero proj_out)."""
    torch.manual_seed(seed)
    modules = MotionModules(*LAYOUT, cfg)
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.normal_(0, 0.2)
    return modules


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b), sorted(set(a) ^ set(b))[:5]
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("mid_block", [True, False])
def test_round_trips_between_all_three_formats_are_exact(tmp_path, mid_block):
    # An explicit base_norm: a .ckpt carries no config, and 24 frames without a mid block is the
    # v1 signature that `auto` would resolve to across_frames.
    cfg = tiny_cfg(
        mid_block=mid_block, max_frames=24, cross_frame_norm=False, base_norm="per_frame"
    )
    modules = random_modules(cfg)
    reference = modules.state_dict()

    # native -> original .ckpt -> diffusers -> original .safetensors -> native
    ck.save_motion_modules(modules, cfg, tmp_path / "native", *LAYOUT)
    m, c = ck.load_motion_modules(tmp_path / "native")
    assert c == cfg
    ck.save_original(m, c, tmp_path / "mm.ckpt")
    m, c = ck.load_original(tmp_path / "mm.ckpt", defaults=cfg)
    assert c == cfg
    ck.save_diffusers(m, c, tmp_path / "adapter")
    m, c = ck.load_diffusers(tmp_path / "adapter")
    assert c == cfg  # our exports record the config, norm semantics included
    ck.save_original(m, c, tmp_path / "mm.safetensors")
    m, c = ck.load_original(tmp_path / "mm.safetensors")  # config from the header metadata
    assert c == cfg
    ck.save_motion_modules(m, c, tmp_path / "native2")
    m, c = ck.load_motion_modules(tmp_path / "native2")
    assert c == cfg
    assert_same_tensors(m.state_dict(), reference)

    # The files themselves: a plain tensor dict in the original layout, and diffusers' names.
    ckpt = torch.load(tmp_path / "mm.ckpt", map_location="cpu", weights_only=True)
    assert_same_tensors(ckpt, reference)
    assert_same_tensors(load_file(tmp_path / "mm.safetensors"), reference)
    adapter = load_file(tmp_path / "adapter" / ck.DIFFUSERS_WEIGHTS)
    expected = {to_diffusers_key(k): v for k, v in reference.items() if to_diffusers_key(k)}
    assert_same_tensors(adapter, expected)
    assert any(k.startswith("mid_block.motion_modules.0.") for k in ckpt) == mid_block

    # diffusers -> original -> diffusers gives the same adapter file contents.
    m, c = ck.load_diffusers(tmp_path / "adapter")
    ck.save_original(m, c, tmp_path / "again.ckpt")
    m, c = ck.load_original(tmp_path / "again.ckpt", defaults=cfg)
    ck.save_diffusers(m, c, tmp_path / "adapter2")
    assert_same_tensors(load_file(tmp_path / "adapter2" / ck.DIFFUSERS_WEIGHTS), adapter)


def test_native_format_files_and_uri(tmp_path):
    cfg = tiny_cfg(num_layers=2)
    modules = random_modules(cfg, seed=1)
    ck.save_motion_modules(modules, cfg, f"file://{tmp_path}/run/step-10")
    meta = json.loads((tmp_path / "run/step-10" / ck.NATIVE_CONFIG).read_text())
    assert meta["format_version"] == ck.FORMAT_VERSION
    assert meta["block_out_channels"] == [32, 64] and meta["layers_per_block"] == 2
    assert meta["motion"]["num_layers"] == 2 and meta["motion"]["num_heads"] == 4
    loaded, loaded_cfg = ck.load_motion_modules(tmp_path / "run/step-10")
    assert loaded_cfg == cfg
    assert (loaded.block_out_channels, loaded.layers_per_block) == LAYOUT
    assert_same_tensors(loaded.state_dict(), modules.state_dict())
    assert ck.detect_format(tmp_path / "run/step-10") == "native"

    with pytest.raises(ck.CheckpointError, match="layout"):
        ck.save_motion_modules(modules, cfg, tmp_path / "bad", (32, 128), 2)
    meta["format_version"] = 99
    (tmp_path / "run/step-10" / ck.NATIVE_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(ck.CheckpointError, match="format_version 99"):
        ck.load_motion_modules(tmp_path / "run/step-10")


@pytest.mark.parametrize(
    "name, max_frames, mid_block, base_norm",
    [
        ("mm_sd_v15.ckpt", 24, False, "across_frames"),
        ("mm_sd_v15_v2.ckpt", 32, True, "auto"),
        ("v3_sd15_mm.ckpt", 32, False, "auto"),
    ],
)
def test_config_inferred_from_released_layouts_at_sd15_size(name, max_frames, mid_block, base_norm):
    """Released checkpoints' key sets and shapes (built on the meta device: no memory)."""
    cfg = MotionModuleConfig(max_frames=max_frames, mid_block=mid_block)
    with torch.device("meta"):
        state = MotionModules((320, 640, 1280, 1280), 2, cfg).state_dict()
    layout = ck.infer_layout(state, name)
    assert layout == ck.UNetLayout((320, 640, 1280, 1280), 2)
    inferred = ck.infer_config(state, source=name)
    assert (inferred.max_frames, inferred.mid_block, inferred.num_layers) == (
        max_frames,
        mid_block,
        1,
    )
    assert (inferred.attention_blocks, inferred.ff_mult, inferred.num_heads) == (2, 4, 8)
    # v1 normalises the base UNet across frames (the original's use_inflated_groupnorm: false);
    # an explicit setting is never overridden.
    assert inferred.base_norm == base_norm
    explicit = MotionModuleConfig(base_norm="per_frame")
    assert ck.infer_config(state, explicit, source=name).base_norm == "per_frame"
    ck.validate_state_dict(state, layout, inferred, name)
    # The released sizes themselves: test_motion_module's parameter-count test.


def test_ckpt_with_module_prefix_and_nested_state_dict(tmp_path):
    cfg = tiny_cfg(mid_block=False)
    reference = random_modules(cfg, seed=2).state_dict()
    wrapped = {"global_step": 1234, "state_dict": {"module." + k: v for k, v in reference.items()}}
    torch.save(wrapped, tmp_path / "train.ckpt")
    modules, inferred = ck.load_original(tmp_path / "train.ckpt", defaults=tiny_cfg())
    assert inferred == cfg
    assert_same_tensors(modules.state_dict(), reference)

    # A full-UNet training checkpoint: other keys are an error unless asked to drop them.
    full = {**reference, "conv_in.weight": torch.zeros(32, 4, 3, 3)}
    torch.save({"state_dict": full}, tmp_path / "full.ckpt")
    with pytest.raises(ck.CheckpointError, match="'conv_in.weight' is not a motion-module key"):
        ck.load_original(tmp_path / "full.ckpt", defaults=tiny_cfg())
    modules, _ = ck.load_original(tmp_path / "full.ckpt", tiny_cfg(), ignore_non_motion_keys=True)
    assert_same_tensors(modules.state_dict(), reference)


def test_state_dicts_of_the_original_code_have_no_position_tables(tmp_path):
    """The original registers `pos_encoder.pe` with persistent=False: its train.py saves a whole
    UNet's state_dict() without tables (and `animatediff_config` metadata may sit beside the
    tensors). The tables are recomputed: the same sinusoid the released files carry."""
    cfg = tiny_cfg(mid_block=False, max_frames=24)
    reference = random_modules(cfg, seed=7).state_dict()
    for key, value in reference.items():
        if key.endswith("pos_encoder.pe"):
            assert torch.equal(value, sinusoidal_position_encoding(24, value.shape[-1]))
    motion = {k: v for k, v in reference.items() if not k.endswith("pos_encoder.pe")}
    unet = {
        "conv_in.weight": torch.zeros(32, 4, 3, 3),
        "down_blocks.0.resnets.0.conv1.bias": torch.zeros(32),
    }
    saved = {"epoch": 3, "global_step": 1200, "state_dict": {**unet, **motion}}
    torch.save(saved, tmp_path / "checkpoint.ckpt")
    modules, loaded = ck.load_any(
        tmp_path / "checkpoint.ckpt", defaults=tiny_cfg(max_frames=24), ignore_non_motion_keys=True
    )
    assert loaded == tiny_cfg(mid_block=False, max_frames=24)  # no tables: base_norm not inferred
    assert_same_tensors(modules.state_dict(), reference)

    torch.save({**motion, "animatediff_config": {"use_motion_module": True}}, tmp_path / "mm.ckpt")
    modules, _ = ck.load_original(tmp_path / "mm.ckpt", defaults=tiny_cfg(max_frames=24))
    assert_same_tensors(modules.state_dict(), reference)

    # A partial set of tables is damage, not the original's convention: still an error.
    some = {**motion, next(k for k in reference if k.endswith(".pe")): torch.zeros(1, 24, 32)}
    save_file(some, tmp_path / "partial.safetensors")
    with pytest.raises(ck.CheckpointError, match="missing key .*pos_encoder.pe"):
        ck.load_original(tmp_path / "partial.safetensors", defaults=tiny_cfg(max_frames=24))


@pytest.mark.parametrize("method", ["extend", "interpolate"])
def test_a_short_table_is_resized_to_model_motion_max_frames(tmp_path, method):
    """A 24-frame (v1-length) file runs 40-frame clips once adapted to max_frames=40."""
    from animatediff.motion_module import resize_position_table

    cfg = tiny_cfg(max_frames=24)
    modules = random_modules(cfg, seed=8)
    ck.save_original(modules, cfg, tmp_path / "mm.safetensors")
    loaded, loaded_cfg = ck.load_any(tmp_path / "mm.safetensors")
    wanted = tiny_cfg(max_frames=40, pe_resize=method, gradient_checkpointing=True)
    adapted = ck.adapt_to(loaded, loaded_cfg, wanted)
    assert adapted == dataclasses.replace(
        loaded_cfg, max_frames=40, pe_resize=method, gradient_checkpointing=True
    )
    for key, value in loaded.state_dict().items():
        if key.endswith(".pe"):
            original = modules.state_dict()[key]
            assert torch.equal(value, resize_position_table(original, 40, method)), key
    assert all(m.max_frames == 40 for m in loaded.modules_list())
    # Never shrunk: a longer table than asked for stays as it is.
    assert ck.adapt_to(loaded, adapted, tiny_cfg(max_frames=16)).max_frames == 40


class _Payload:
    """Unpickling this runs ``os.mkdir(target)``: a stand-in for arbitrary code."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_malicious_pickle_ckpt_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    tensors = random_modules(tiny_cfg()).state_dict()
    torch.save({"state_dict": tensors, "extra": _Payload(str(marker))}, tmp_path / "evil.ckpt")
    with pytest.raises(ck.CheckpointError, match="refused to load"):
        ck.load_original(tmp_path / "evil.ckpt", defaults=tiny_cfg())
    with pytest.raises(ck.CheckpointError, match="refused to load"):
        ck.load_any(tmp_path / "evil.ckpt")
    assert not marker.exists()
    # The file really is an exploit: an unrestricted unpickler runs the payload.
    torch.load(tmp_path / "evil.ckpt", weights_only=False)
    assert marker.is_dir()


def test_bad_keys_and_shapes_name_the_key(tmp_path):
    cfg = tiny_cfg()
    reference = random_modules(cfg).state_dict()
    key = "up_blocks.1.motion_modules.2.temporal_transformer.proj_in.weight"

    bad_shape = {**reference, key: torch.zeros(32, 16)}
    save_file(bad_shape, tmp_path / "shape.safetensors")
    with pytest.raises(
        ck.CheckpointError, match=rf"'{key}' has shape \(32, 16\), expected \(32, 32\)"
    ):
        ck.load_original(tmp_path / "shape.safetensors", defaults=cfg)

    missing = {k: v for k, v in reference.items() if k != key}
    save_file(missing, tmp_path / "missing.safetensors")
    with pytest.raises(ck.CheckpointError, match=f"missing key '{key}'"):
        ck.load_original(tmp_path / "missing.safetensors", defaults=cfg)

    unknown = "down_blocks.0.motion_modules.0.temporal_transformer.extra.weight"
    save_file({**reference, unknown: torch.zeros(2)}, tmp_path / "unknown.safetensors")
    with pytest.raises(ck.CheckpointError, match=f"unexpected key '{unknown}'"):
        ck.load_original(tmp_path / "unknown.safetensors", defaults=cfg)

    # An up block short of one module: the layout itself is inconsistent.
    short = {
        k: v for k, v in reference.items() if not k.startswith("up_blocks.0.motion_modules.2.")
    }
    save_file(short, tmp_path / "short.safetensors")
    with pytest.raises(ck.CheckpointError, match=r"up_blocks.0 has motion modules \[0, 1\]"):
        ck.load_original(tmp_path / "short.safetensors", defaults=cfg)

    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="junk.ckpt"):
        ck.load_original(tmp_path / "junk.ckpt")

    # diffusers directory with a key that has no place in the layout
    modules = random_modules(cfg)
    ck.save_diffusers(modules, cfg, tmp_path / "adapter")
    weights = load_file(tmp_path / "adapter" / ck.DIFFUSERS_WEIGHTS)
    weights["down_blocks.0.motion_modules.5.proj_in.weight"] = torch.zeros(32, 32)
    save_file(weights, tmp_path / "adapter" / ck.DIFFUSERS_WEIGHTS)
    with pytest.raises(ck.CheckpointError, match="unexpected key 'down_blocks.0.motion_modules.5"):
        ck.load_diffusers(tmp_path / "adapter")

    with pytest.raises(ck.CheckpointError, match="diffusers MotionAdapter name"):
        ck.load_any(tmp_path / "adapter" / ck.DIFFUSERS_WEIGHTS)

    with pytest.raises(ck.CheckpointError, match="attention_blocks=3"):
        three = tiny_cfg(attention_blocks=3)
        ck.save_diffusers(random_modules(three), three, tmp_path / "three")


def test_foreign_diffusers_adapter_imports_with_cross_frame_norm(tmp_path):
    """A MotionAdapter saved by diffusers itself: the weights load; the norm semantics are
    diffusers' (cross-frame) unless the caller says otherwise."""
    from diffusers import MotionAdapter

    torch.manual_seed(3)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_num_attention_heads=4,
        motion_norm_num_groups=8,
        motion_max_seq_length=24,
        use_motion_mid_block=False,
    )
    adapter.save_pretrained(tmp_path / "foreign")
    assert ck.detect_format(tmp_path / "foreign") == "diffusers"
    modules, cfg = ck.load_any(tmp_path / "foreign")
    assert cfg == tiny_cfg(max_frames=24, mid_block=False, cross_frame_norm=True)
    ours = {to_diffusers_key(k): v for k, v in modules.state_dict().items() if to_diffusers_key(k)}
    assert_same_tensors(ours, adapter.state_dict())
    _, per_frame = ck.load_diffusers(tmp_path / "foreign", cross_frame_norm=False)
    assert per_frame.cross_frame_norm is False

    # Without the position tables (diffusers recomputes them): the same sinusoid is filled in.
    weights = load_file(tmp_path / "foreign" / ck.DIFFUSERS_WEIGHTS)
    save_file(
        {k: v for k, v in weights.items() if not k.endswith(".pe")},
        tmp_path / "foreign" / ck.DIFFUSERS_WEIGHTS,
    )
    without_pe, _ = ck.load_diffusers(tmp_path / "foreign")
    assert_same_tensors(without_pe.state_dict(), modules.state_dict())


def test_exported_adapter_drives_diffusers_animatediff_pipeline(tmp_path, tiny_base_dir):
    from diffusers import AnimateDiffPipeline, MotionAdapter

    cfg = tiny_cfg(max_frames=32, mid_block=True)
    modules = random_modules(cfg, seed=4)
    with torch.no_grad():  # keep activations tame: random weights at 0.2 would blow up
        for parameter in modules.parameters():
            parameter.mul_(0.1)
    ck.save_diffusers(modules, cfg, tmp_path / "adapter")

    adapter = MotionAdapter.from_pretrained(tmp_path / "adapter")
    ours = {to_diffusers_key(k): v for k, v in modules.state_dict().items() if to_diffusers_key(k)}
    assert_same_tensors(adapter.state_dict(), ours)

    pipe = AnimateDiffPipeline.from_pretrained(tiny_base_dir, motion_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    motion = {k: v for k, v in pipe.unet.state_dict().items() if ".motion_modules." in k}
    assert set(motion) == set(ours)
    for key, value in ours.items():  # the UNetMotionModel carries our weights unchanged
        assert torch.equal(motion[key], value), key
    out = pipe(
        "a cat",
        num_frames=4,
        num_inference_steps=2,
        height=64,
        width=64,
        guidance_scale=1.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames[0]
    assert out.shape == (4, 64, 64, 3)
    assert torch.isfinite(torch.as_tensor(out)).all()


def test_checkpoints_in_object_storage(s3):
    s3.create_bucket(Bucket="checkpoints")
    bucket = "s3://checkpoints"
    cfg = tiny_cfg()
    modules = random_modules(cfg, seed=5)
    ck.save_motion_modules(modules, cfg, f"{bucket}/run/step-5")
    ck.save_original(modules, cfg, f"{bucket}/run/mm.ckpt")
    assert ck.detect_format(f"{bucket}/run/step-5") == "native"
    for uri in (f"{bucket}/run/step-5", f"{bucket}/run/mm.ckpt"):
        loaded, loaded_cfg = ck.load_any(uri, defaults=cfg)
        assert loaded_cfg == cfg
        assert_same_tensors(loaded.state_dict(), modules.state_dict())
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.detect_format(f"{bucket}/run/nothing")


def test_fp16_export_for_distribution(tmp_path):
    """Released files are often fp16: exports can be cast; import upcasts losslessly to fp32."""
    cfg = tiny_cfg()
    modules = random_modules(cfg, seed=6)
    ck.save_original(modules, cfg, tmp_path / "mm_fp16.safetensors", dtype=torch.float16)
    ck.save_diffusers(modules, cfg, tmp_path / "adapter", dtype=torch.float16)
    stored = load_file(tmp_path / "mm_fp16.safetensors")
    assert all(v.dtype == torch.float16 for v in stored.values())
    for path in (tmp_path / "mm_fp16.safetensors", tmp_path / "adapter"):
        loaded, _ = ck.load_any(path)
        for key, value in modules.state_dict().items():
            assert loaded.state_dict()[key].dtype == torch.float32
            assert torch.equal(loaded.state_dict()[key], value.half().float()), key


def test_imported_diffusers_adapter_computes_what_diffusers_computes(tmp_path):
    """The cross_frame_norm=True import choice: our VideoUNet with the imported module equals
    diffusers' UNetMotionModel with the adapter; per-frame semantics give another output."""
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    from animatediff.tiny import tiny_unet_kwargs
    from animatediff.unet import VideoUNet

    torch.manual_seed(0)
    unet2d = UNet2DConditionModel(**tiny_unet_kwargs()).eval()
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=2,
        motion_num_attention_heads=4,
        motion_norm_num_groups=8,
    )
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.normal_(0, 0.2)
    adapter.save_pretrained(tmp_path / "adapter")

    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, 5, 8, 8, generator=generator)
    text = torch.randn(1, 7, 32, generator=generator)
    timestep = torch.tensor([300])
    with torch.no_grad():
        reference = UNetMotionModel.from_unet2d(unet2d, adapter).eval()
        theirs = reference(sample, timestep, text.repeat_interleave(5, dim=0)).sample
        outputs = {}
        for cross_frame in (None, False):
            modules, cfg = ck.load_diffusers(tmp_path / "adapter", cross_frame_norm=cross_frame)
            video = VideoUNet.from_unet2d(unet2d, cfg, modules).eval()
            outputs[cross_frame] = video(sample, timestep, text)
    assert (outputs[None] - theirs).abs().max() <= 1e-4
    assert (outputs[False] - theirs).abs().max() > 1e-3
