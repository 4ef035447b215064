"""Personalised base models: single-file SD checkpoints and merged LoRA weights (tiny, offline)."""

from __future__ import annotations

import socket

import pytest
import torch
from ldm_layout import to_ldm_checkpoint
from safetensors.torch import save_file

from animatediff.base_model import load_base_model, load_text_encoder, load_vae
from animatediff.config import BaseModelConfig, LoraConfig
from animatediff.lora import LoraError, merge_lora
from animatediff.tiny import build_tiny_components

ATTN_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
PROJ_IN = "up_blocks.1.attentions.2.proj_in"  # a 1x1 Conv2d in SD 1.x
CONV = "down_blocks.0.resnets.1.conv1"  # a 3x3 Conv2d (LoCon-style LoRA)
TE_Q = "encoder.layers.0.self_attn.q_proj"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading must be offline."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.fixture(scope="module")
def personalised(tmp_path_factory):
    """A DreamBooth-like model (other weights, same architecture) as one LDM-layout file."""
    components = build_tiny_components(seed=3)
    path = tmp_path_factory.mktemp("single") / "dreambooth.safetensors"
    ldm = to_ldm_checkpoint(components["unet"], components["vae"], components["text_encoder"])
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in ldm)
    save_file(ldm, str(path))
    return path, components


def test_single_file_checkpoint_replaces_unet_vae_and_text_encoder(
    tiny_base_dir, personalised, no_network
):
    path, expected = personalised
    cfg = BaseModelConfig(pretrained=str(tiny_base_dir), single_file=str(path))
    base = load_base_model(BaseModelConfig(pretrained=str(tiny_base_dir)))
    loaded = load_base_model(cfg)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(loaded, name), expected[name])
        differs = any(
            not torch.equal(v, getattr(base, name).state_dict()[k])
            for k, v in expected[name].state_dict().items()
            if v.is_floating_point()
        )
        assert differs, f"the personalised {name} must differ from the base's"
        assert not any(p.requires_grad for p in getattr(loaded, name).parameters())
    assert_same_weights(load_vae(cfg), expected["vae"])
    assert_same_weights(load_text_encoder(cfg)[1], expected["text_encoder"])


def test_single_file_must_be_safetensors(tiny_base_dir, tmp_path):
    cfg = BaseModelConfig(pretrained=str(tiny_base_dir), single_file=str(tmp_path / "m.ckpt"))
    with pytest.raises(ValueError, match="model.base.single_file: .* must be a .safetensors"):
        load_base_model(cfg)
    cfg = BaseModelConfig(
        pretrained=str(tiny_base_dir), single_file=str(tmp_path / "x.safetensors")
    )
    with pytest.raises(FileNotFoundError, match="model.base.single_file"):
        load_vae(cfg)


def _pair(rank: int, weight: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA (down, up) for ``weight``: Linear (out, in) or Conv2d (out, in, kh, kw)."""
    generator = torch.Generator().manual_seed(seed)
    if weight.ndim == 4:
        out, inp, kh, kw = weight.shape
        down = torch.randn(rank, inp, kh, kw, generator=generator)
        up = torch.randn(out, rank, 1, 1, generator=generator)
    else:
        down = torch.randn(rank, weight.shape[1], generator=generator)
        up = torch.randn(weight.shape[0], rank, generator=generator)
    return down * 0.1, up * 0.1


def _expected(weight, down, up, alpha, rank, scale):
    delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
    return weight + scale * (alpha / rank) * delta


def _kohya_file(path, base, rank=4, alpha=2.0, text=True):
    unet, text_encoder = base.unet, base.text_encoder
    targets = {
        "lora_unet_" + ATTN_Q.replace(".", "_"): unet.get_submodule(ATTN_Q).weight,
        "lora_unet_" + PROJ_IN.replace(".", "_"): unet.get_submodule(PROJ_IN).weight,
        "lora_unet_" + CONV.replace(".", "_"): unet.get_submodule(CONV).weight,
        "lora_te_text_model_" + TE_Q.replace(".", "_"): text_encoder.get_submodule(TE_Q).weight,
    }
    if not text:
        targets = {k: v for k, v in targets.items() if k.startswith("lora_unet_")}
    tensors, pairs = {}, {}
    for i, (name, weight) in enumerate(targets.items()):
        down, up = _pair(rank, weight, seed=i)
        tensors[f"{name}.lora_down.weight"] = down
        tensors[f"{name}.lora_up.weight"] = up
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
        pairs[name] = (weight.clone(), down, up)
    save_file(tensors, str(path))
    return pairs


def test_kohya_lora_is_merged_into_unet_and_text_encoder(tiny_base_dir, tmp_path):
    base_cfg = BaseModelConfig(pretrained=str(tiny_base_dir))
    base = load_base_model(base_cfg)
    pairs = _kohya_file(tmp_path / "style.safetensors", base, rank=4, alpha=2.0)
    cfg = BaseModelConfig(
        pretrained=str(tiny_base_dir),
        loras=(LoraConfig(path=str(tmp_path / "style.safetensors"), scale=0.7),),
    )
    merged = load_base_model(cfg)

    modules = {
        "lora_unet_" + ATTN_Q.replace(".", "_"): merged.unet.get_submodule(ATTN_Q),
        "lora_unet_" + PROJ_IN.replace(".", "_"): merged.unet.get_submodule(PROJ_IN),
        "lora_unet_" + CONV.replace(".", "_"): merged.unet.get_submodule(CONV),
        "lora_te_text_model_" + TE_Q.replace(".", "_"): merged.text_encoder.get_submodule(TE_Q),
    }
    for name, (weight, down, up) in pairs.items():
        expected = _expected(weight, down, up, alpha=2.0, rank=4, scale=0.7)
        torch.testing.assert_close(modules[name].weight, expected, rtol=0, atol=1e-6)
        assert not torch.equal(modules[name].weight, weight)
    # Nothing else moved.
    touched = {ATTN_Q + ".weight", PROJ_IN + ".weight", CONV + ".weight"}
    for key, value in base.unet.state_dict().items():
        if key not in touched:
            assert torch.equal(merged.unet.state_dict()[key], value), key

    # The merged UNet computes something else.
    torch.manual_seed(0)
    sample, t, text = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = base.unet(sample, t, text).sample
        after = merged.unet(sample, t, text).sample
    assert (before - after).abs().max() > 1e-4

    # The text-encoder part also lands when only the text encoder is loaded (cached embeddings).
    _, text_encoder = load_text_encoder(cfg)
    assert torch.equal(text_encoder.get_submodule(TE_Q).weight, modules[list(pairs)[3]].weight)


def test_diffusers_peft_style_lora_and_lora_order(tiny_base_dir, tmp_path):
    base = load_base_model(BaseModelConfig(pretrained=str(tiny_base_dir)))
    target = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    te_target = "encoder.layers.1.mlp.fc1"
    w = base.unet.get_submodule(target).weight.clone()
    w_te = base.text_encoder.get_submodule(te_target).weight.clone()
    down, up = _pair(2, w, seed=7)
    down_te, up_te = _pair(2, w_te, seed=8)
    save_file(
        {
            f"unet.{target}.lora_A.weight": down,
            f"unet.{target}.lora_B.weight": up,
            f"text_encoder.text_model.{te_target}.lora_A.weight": down_te,
            f"text_encoder.text_model.{te_target}.lora_B.weight": up_te,
        },
        str(tmp_path / "peft.safetensors"),
    )
    # The old attention-processor form, on the same module: merges add up in order.
    down2, up2 = _pair(3, w, seed=9)
    save_file(
        {
            f"unet.{target.rsplit('.', 1)[0]}.processor.to_k_lora.down.weight": down2,
            f"unet.{target.rsplit('.', 1)[0]}.processor.to_k_lora.up.weight": up2,
        },
        str(tmp_path / "old.safetensors"),
    )
    cfg = BaseModelConfig(
        pretrained=str(tiny_base_dir),
        loras=(
            LoraConfig(path=str(tmp_path / "peft.safetensors"), scale=1.0),
            LoraConfig(path=str(tmp_path / "old.safetensors"), scale=0.5),
        ),
    )
    merged = load_base_model(cfg)
    expected = _expected(_expected(w, down, up, 2, 2, 1.0), down2, up2, 3, 3, 0.5)
    torch.testing.assert_close(
        merged.unet.get_submodule(target).weight, expected, rtol=0, atol=1e-6
    )
    expected_te = _expected(w_te, down_te, up_te, 2, 2, 1.0)
    torch.testing.assert_close(
        merged.text_encoder.get_submodule(te_target).weight, expected_te, rtol=0, atol=1e-6
    )


def test_kohya_merge_matches_diffusers_fuse_lora(tiny_base_dir, tmp_path, no_network):
    """Our kohya name mapping and scaling agree with diffusers' own loader + fuse_lora.

    UNet part only: diffusers 0.42.1 cannot read kohya text-encoder keys ("Could not
    automatically infer state dict type"); the formula test above covers ours."""
    from diffusers import StableDiffusionPipeline

    base = load_base_model(BaseModelConfig(pretrained=str(tiny_base_dir)))
    _kohya_file(tmp_path / "style.safetensors", base, rank=4, alpha=2.0, text=False)
    ours = load_base_model(
        BaseModelConfig(
            pretrained=str(tiny_base_dir),
            loras=(LoraConfig(path=str(tmp_path / "style.safetensors"), scale=0.7),),
        )
    )
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base_dir, safety_checker=None)
    pipe.load_lora_weights(str(tmp_path), weight_name="style.safetensors")
    pipe.fuse_lora(lora_scale=0.7)
    pipe.unload_lora_weights()
    for target in (ATTN_Q, PROJ_IN, CONV):
        assert not torch.equal(
            pipe.unet.get_submodule(target).weight, base.unet.get_submodule(target).weight
        )
        torch.testing.assert_close(
            ours.unet.get_submodule(target).weight,
            pipe.unet.get_submodule(target).weight,
            rtol=0,
            atol=1e-6,
        )


def test_lora_keys_that_match_no_module_are_errors(tiny_base_dir, tmp_path):
    base = load_base_model(BaseModelConfig(pretrained=str(tiny_base_dir)))
    before = {k: v.clone() for k, v in base.unet.state_dict().items()}
    good = "lora_unet_" + ATTN_Q.replace(".", "_")
    down, up = _pair(2, base.unet.get_submodule(ATTN_Q).weight, seed=1)
    ldm_name = "lora_unet_input_blocks_1_1_proj_in"  # LDM naming (SDXL-style kohya files)
    save_file(
        {
            f"{good}.lora_down.weight": down,
            f"{good}.lora_up.weight": up,
            f"{ldm_name}.lora_down.weight": torch.zeros(2, 32),
            f"{ldm_name}.lora_up.weight": torch.zeros(32, 2),
        },
        str(tmp_path / "sdxl.safetensors"),
    )
    with pytest.raises(LoraError, match=f"'{ldm_name}.lora_down.weight' matches no module"):
        merge_lora({"unet": base.unet}, tmp_path / "sdxl.safetensors")
    assert_same_weights_dict(base.unet.state_dict(), before)  # a bad file changes nothing

    cfg = BaseModelConfig(
        pretrained=str(tiny_base_dir), loras=(LoraConfig(path=str(tmp_path / "sdxl.safetensors")),)
    )
    with pytest.raises(LoraError, match=r"model.base.loras\[0\]: .*input_blocks_1_1_proj_in"):
        load_base_model(cfg)

    save_file({"unet.foo.hada_w1_a": torch.zeros(2, 2)}, str(tmp_path / "loha.safetensors"))
    with pytest.raises(LoraError, match="not a LoRA key"):
        merge_lora({"unet": base.unet}, tmp_path / "loha.safetensors")

    save_file({f"{good}.lora_down.weight": down}, str(tmp_path / "half.safetensors"))
    with pytest.raises(LoraError, match="no matching lora up/down"):
        merge_lora({"unet": base.unet}, tmp_path / "half.safetensors")

    save_file(
        {
            f"{good}.lora_down.weight": torch.zeros(2, 7),
            f"{good}.lora_up.weight": torch.zeros(32, 2),
        },
        str(tmp_path / "shape.safetensors"),
    )
    with pytest.raises(LoraError, match="does not fit the weight"):
        merge_lora({"unet": base.unet}, tmp_path / "shape.safetensors")


def assert_same_weights_dict(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_single_file_then_lora(tiny_base_dir, personalised, tmp_path):
    """LoRAs merge into the personalised weights, not the base's."""
    path, expected = personalised
    unet = expected["unet"]
    down, up = _pair(4, unet.get_submodule(ATTN_Q).weight, seed=11)
    name = "lora_unet_" + ATTN_Q.replace(".", "_")
    save_file(
        {f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up},
        str(tmp_path / "l.safetensors"),
    )
    cfg = BaseModelConfig(
        pretrained=str(tiny_base_dir),
        single_file=str(path),
        loras=(LoraConfig(path=str(tmp_path / "l.safetensors"), scale=1.0),),
    )
    loaded = load_base_model(cfg)
    want = _expected(unet.get_submodule(ATTN_Q).weight, down, up, 4, 4, 1.0)
    torch.testing.assert_close(loaded.unet.get_submodule(ATTN_Q).weight, want, rtol=0, atol=1e-6)


def test_loads_from_several_threads_take_turns_and_leave_torch_unpatched(tiny_base_dir):
    """diffusers loads a model by patching ``nn.Module.register_parameter`` for the whole process;
    unlocked, two loads at once restore each other's patch and it stays (measured: every
    unlocked run left it patched), so every model built afterwards gets meta weights."""
    import threading

    cfg = BaseModelConfig(pretrained=str(tiny_base_dir))
    original = torch.nn.Module.register_parameter
    loaded: list[torch.nn.Module] = []

    def load_some() -> None:
        for _ in range(3):
            loaded.append(load_vae(cfg))
            loaded.append(load_base_model(cfg).unet)

    threads = [threading.Thread(target=load_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loaded) == 24
    assert torch.nn.Module.register_parameter is original
    assert all(p.device.type == "cpu" for model in loaded for p in model.parameters())
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"
