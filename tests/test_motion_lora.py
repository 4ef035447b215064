"""MotionLoRA files against the loaders people use: the original/ComfyUI-AnimateDiff-Evolved/A1111
key rules (written out here from their code, not imported), diffusers' ``load_lora_weights``
(run for real, outputs compared with our sampler), exact round trips, and merging."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from animatediff import motion_lora as ml
from animatediff.config import MotionModuleConfig, load_config
from animatediff.lora import LoraError, LoraLinear, add_lora
from animatediff.motion_module import MotionModules

LAYOUT = ((32, 64), 2)  # the tiny base's UNet
TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def _modules(cfg: MotionModuleConfig, seed: int = 0, std: float = 0.2) -> MotionModules:
    generator = torch.Generator().manual_seed(seed)
    modules = MotionModules(*LAYOUT, cfg)
    with torch.no_grad():
        for parameter in modules.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return modules


def _adapted(modules: MotionModules, rank: int, alpha: float, seed: int = 1) -> MotionModules:
    """A copy with trained-looking LoRA adapters on the default targets (``up`` is zero at init)."""
    import copy

    adapted = copy.deepcopy(modules)
    add_lora(adapted, TARGETS, rank, alpha)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in adapted.modules():
            if isinstance(module, LoraLinear):
                module.up.weight.copy_(
                    0.3 * torch.randn(module.up.weight.shape, generator=generator)
                )
    return adapted


def _effective_weights(adapted: MotionModules) -> dict[str, torch.Tensor]:
    """What the adapters compute, as plain weights: ``W + alpha / rank * up @ down``."""
    weights = {}
    for name, module in adapted.named_modules():
        if isinstance(module, LoraLinear):
            delta = module.up.weight @ module.down.weight * (module.alpha / module.rank)
            weights[f"{name}.weight"] = module.base.weight + delta
    return weights


# --- the external loaders' rules, transcribed (guoyww/AnimateDiff convert_motion_lora_ckpt...,
# --- Kosinkadink/ComfyUI-AnimateDiff-Evolved load_motion_lora_as_patches, and
# --- continue-revolution/sd-webui-animatediff scripts/animatediff_lora.py before v2.0)


def _evolved_patches(
    state: dict[str, torch.Tensor], has_mid_block: bool
) -> dict[str, torch.Tensor]:
    """ComfyUI-AnimateDiff-Evolved: model key -> ``up @ down`` (the original repo's rule)."""
    state = {k: v for k, v in state.items() if "temporal" in k}
    patches = {}
    for key in state:
        if not has_mid_block and "mid_block" in key:
            continue
        if "up." in key:
            continue
        up_key = key.replace(".down.", ".up.")
        model_key = (
            key.replace("processor.", "")
            .replace("_lora", "")
            .replace("down.", "")
            .replace("up.", "")
        )
        if "to_out.0." not in model_key:
            model_key = model_key.replace("to_out.", "to_out.0.")
        patches[model_key] = torch.mm(state[up_key].float(), state[key].float())
    return patches


def _a1111_modules(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The A1111 extension's motion-LoRA loader: module key -> {lora_down.weight, lora_up.weight}."""
    import re

    assert "motion_modules" in next(iter(state))  # how it recognises a motion LoRA
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, weight in state.items():
        module_key, _, part = re.split(r"(_lora\.)", key)
        module_key = module_key.replace("processor.", "").replace("to_out", "to_out.0")
        modules.setdefault(module_key, {})["lora_" + part] = weight
    return modules


@pytest.mark.parametrize("mid_block", [True, False])
def test_original_keys_load_by_the_original_evolved_and_a1111_rules(tmp_path, mid_block):
    cfg = MotionModuleConfig(num_heads=4, norm_groups=8, mid_block=mid_block)
    base = _modules(cfg)
    adapted = _adapted(base, rank=2, alpha=4.0)  # alpha / rank = 2 is folded into `up`
    lora = ml.from_adapters(adapted)
    path = ml.save_motion_lora(lora, tmp_path / "export")
    state = load_file(str(path / ml.ORIGINAL_FILE))
    weights = dict(base.named_parameters())
    expected = _effective_weights(adapted)
    # The q/k/v/out of both temporal attentions of every motion module, mid block included.
    modules = len(base.modules_list())
    assert len(expected) == modules * 2 * 4 and len(state) == 2 * len(expected)
    assert all(k.endswith(("_lora.down.weight", "_lora.up.weight")) for k in state)

    patches = _evolved_patches(state, has_mid_block=mid_block)
    assert set(patches) == set(expected)  # every key lands on a weight, none is missing
    for key, patch in patches.items():
        torch.testing.assert_close(weights[key] + 1.0 * patch, expected[key])

    a1111 = _a1111_modules(state)
    assert {f"{k}.weight" for k in a1111} == set(expected)
    for key, parts in a1111.items():
        assert set(parts) == {"lora_down.weight", "lora_up.weight"}  # no alpha: scale 1
        update = parts["lora_up.weight"] @ parts["lora_down.weight"]
        torch.testing.assert_close(weights[f"{key}.weight"] + update, expected[f"{key}.weight"])

    # Our merge computes the same weights, and the merged module what the adapters compute.
    merged = ml.merge_motion_loras(base, [(ml.read_motion_lora(path), 1.0)])
    merged_weights = dict(merged.named_parameters())
    for key, value in expected.items():
        torch.testing.assert_close(merged_weights[key], value)
    x = torch.randn(2 * 6, 64, 3, 3, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = merged.up_blocks[0].motion_modules[1](x, 6)
        want = adapted.up_blocks[0].motion_modules[1](x, 6)
        plain = base.up_blocks[0].motion_modules[1](x, 6)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (want - plain).abs().max() > 1e-2
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), _modules(cfg).parameters()))


def test_round_trips_are_exact(tmp_path):
    cfg = MotionModuleConfig(num_heads=4, norm_groups=8)
    adapted = _adapted(_modules(cfg), rank=3, alpha=3.0)
    lora = ml.from_adapters(adapted)
    for name, module in adapted.named_modules():  # alpha == rank: the adapters' own tensors
        if isinstance(module, LoraLinear):
            down, up = lora.pairs[f"{name}.weight"]
            assert torch.equal(down, module.down.weight) and torch.equal(up, module.up.weight)
    first = ml.save_motion_lora(lora, tmp_path / "a", {"name": "zoom_in"})
    again = ml.save_motion_lora(ml.read_motion_lora(first), tmp_path / "b")
    for source in (ml.ORIGINAL_FILE, ml.DIFFUSERS_FILE):
        a, b = load_file(str(first / source)), load_file(str(again / source))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), source
    assert ml.read_motion_lora(first).metadata["name"] == "zoom_in"
    # Each file alone reads back as the same pairs, whatever its format (and as a .ckpt).
    torch.save(load_file(str(first / ml.ORIGINAL_FILE)), tmp_path / "v2_lora_ZoomIn.ckpt")
    for path in (
        first / ml.ORIGINAL_FILE,
        first / ml.DIFFUSERS_FILE,
        tmp_path / "v2_lora_ZoomIn.ckpt",
    ):
        read = ml.read_motion_lora(path)
        assert read.pairs.keys() == lora.pairs.keys()
        for key, (down, up) in lora.pairs.items():
            assert torch.equal(read.pairs[key][0], down) and torch.equal(read.pairs[key][1], up)
    # diffusers keys name UNetMotionModel modules, with or without the unet. prefix
    diffusers = load_file(str(first / ml.DIFFUSERS_FILE))
    key = next(iter(diffusers))
    assert key.startswith("unet.down_blocks.0.motion_modules.0.transformer_blocks.0.attn")
    bare = {k.removeprefix("unet."): v for k, v in diffusers.items()}
    assert ml.from_state_dict(bare).pairs.keys() == lora.pairs.keys()


def test_bad_files_and_mismatched_layouts_are_named(tmp_path):
    with_mid = MotionModuleConfig(num_heads=4, norm_groups=8, mid_block=True)
    lora = ml.from_adapters(_adapted(_modules(with_mid), rank=2, alpha=2.0))
    without_mid = _modules(dataclasses.replace(with_mid, mid_block=False))
    with pytest.raises(LoraError, match="mid_block.motion_modules.0.* matches no weight"):
        ml.merge_motion_loras(without_mid, [(lora, 1.0)], ["zoom_in"])
    state = ml.to_original_state_dict(lora)
    save_file({**state, "lora_unet_x.alpha": torch.tensor(1.0)}, tmp_path / "extra.safetensors")
    with pytest.raises(LoraError, match="'lora_unet_x.alpha' is not an original MotionLoRA key"):
        ml.read_motion_lora(tmp_path / "extra.safetensors")
    half = {k: v for k, v in state.items() if not k.endswith("to_v_lora.up.weight")}
    save_file(half, tmp_path / "half.safetensors")
    with pytest.raises(LoraError, match="has only its down weight"):
        ml.read_motion_lora(tmp_path / "half.safetensors")
    narrow = _modules(MotionModuleConfig(num_heads=4, norm_groups=8), std=0.1)
    wide = MotionModules((64, 64), 2, MotionModuleConfig(num_heads=4, norm_groups=8))
    other = ml.from_adapters(_adapted(wide, rank=2, alpha=2.0))
    with pytest.raises(LoraError, match=r"the update is \(64, 64\), the weight \(32, 32\)"):
        ml.merge_motion_loras(narrow, [(other, 1.0)])


def test_diffusers_load_lora_weights_computes_what_our_sampler_computes(tmp_path, tiny_base_dir):
    """The diffusers file loaded by ``AnimateDiffPipeline.load_lora_weights`` (PEFT adapters, at
    a 0.8 adapter weight) and our sampler with the LoRA merged at scale 0.8 give the same video
    from the same weights and noise; without the LoRA they agree too, and differ from it."""
    from diffusers import AnimateDiffPipeline, MotionAdapter

    from animatediff import checkpoints as ck
    from animatediff.base_model import load_base_model
    from animatediff.sampling import TextToVideo

    cfg = load_config(
        None,
        [
            f"model.base.pretrained={tiny_base_dir}",
            "model.motion.num_heads=4",
            "model.motion.norm_groups=8",
            "model.motion.cross_frame_norm=true",  # diffusers' motion-module norm
            "sample.num_inference_steps=3",
            "sample.guidance_scale=7.5",
        ],
    )
    modules = _modules(cfg.model.motion, seed=4, std=0.05)
    adapted = _adapted(modules, rank=4, alpha=4.0, seed=5)
    lora = ml.from_adapters(adapted)
    ml.save_motion_lora(lora, tmp_path / "lora")
    ck.save_diffusers(modules, cfg.model.motion, tmp_path / "adapter")

    base = load_base_model(cfg.model.base)
    settings = dict(num_frames=4, height=32, width=32)
    ours = {}
    for scale in (0.0, 0.8):
        merged = ml.merge_motion_loras(modules, [(lora, scale)]) if scale else modules
        pipe = TextToVideo(cfg, merged, base=base, device="cpu")
        ours[scale] = pipe.generate(["a red ball bouncing"], seeds=[7], **settings)[0]
    latents = pipe.initial_latents([7], 4, 32, 32)

    theirs_pipe = AnimateDiffPipeline.from_pretrained(
        tiny_base_dir, motion_adapter=MotionAdapter.from_pretrained(tmp_path / "adapter")
    )
    theirs_pipe.scheduler = pipe.scheduler()  # the same DDIM (our training noise schedule)
    theirs_pipe.set_progress_bar_config(disable=True)

    def theirs() -> np.ndarray:
        frames = theirs_pipe(
            "a red ball bouncing",
            num_inference_steps=3,
            guidance_scale=7.5,
            latents=latents.clone(),
            output_type="np",
            **settings,
        ).frames[0]
        return (torch.as_tensor(frames) * 255).round().clamp(0, 255).to(torch.uint8).numpy()

    without = theirs()
    theirs_pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="motion")
    theirs_pipe.set_adapters(["motion"], [0.8])
    injected = [n for n, _ in theirs_pipe.unet.named_modules() if n.endswith(".lora_A.motion")]
    assert len(injected) == len(lora.pairs)  # every pair became a PEFT layer, none dropped
    with_lora = theirs()

    def gap(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.abs(a.astype(float) - b.astype(float)).mean())

    # The same uint8 video (a rare rounding step apart), and the LoRA visibly changes it.
    assert gap(ours[0.0], without) < 0.05 and gap(ours[0.8], with_lora) < 0.05
    assert np.abs(ours[0.8].astype(int) - with_lora.astype(int)).max() <= 2
    assert gap(ours[0.8], ours[0.0]) > 2 and gap(with_lora, without) > 2
