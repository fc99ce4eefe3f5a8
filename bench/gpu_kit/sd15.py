"""A randomly initialised checkpoint with Stable Diffusion 1.5's exact key names and shapes.

    python -m bench.gpu_kit.sd15 --out random_sd15.safetensors [--seed 1234] [--dtype fp16]

The layout is the original SD1.5 single-file checkpoint (the LDM/CompVis names, as in
v1-5-pruned-emaonly.safetensors): the UNet under `model.diffusion_model.` (859.5 M
parameters), the CLIP ViT-L/14 text encoder under `cond_stage_model.transformer.text_model.`
(123.1 M) and the KL VAE under `first_stage_model.` (83.7 M), so ComfyUI's
CheckpointLoaderSimple detects it as SD1.5 by the same shape checks it applies to the real file.

Memory-frugal: the table of names and shapes is known up front, so the safetensors header is
written first and each tensor is drawn, converted and written on its own (peak: the largest
tensor, the 49408x768 token embedding, about 150 MB in float32). Values come from one seeded
CPU generator in a fixed order, so the same seed gives the same bytes on any machine with the
same torch; the file is then opened with `safetensors` to check it reads back.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import struct
import sys
from pathlib import Path

UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer.text_model."
VAE = "first_stage_model."

Shapes = list  # [(name, shape, kind)], kind in {"weight", "bias", "norm_w", "norm_b", "embed", "ids"}


def _linear(out: Shapes, name: str, n_out: int, n_in: int, bias: bool = True) -> None:
    out.append((f"{name}.weight", (n_out, n_in), "weight"))
    if bias:
        out.append((f"{name}.bias", (n_out,), "bias"))


def _conv(out: Shapes, name: str, n_out: int, n_in: int, k: int) -> None:
    out.append((f"{name}.weight", (n_out, n_in, k, k), "weight"))
    out.append((f"{name}.bias", (n_out,), "bias"))


def _norm(out: Shapes, name: str, channels: int) -> None:
    out.append((f"{name}.weight", (channels,), "norm_w"))
    out.append((f"{name}.bias", (channels,), "norm_b"))


# ---- UNet (openaimodel.UNetModel, SD1.5 config) -------------------------------------------
MODEL_CHANNELS, CHANNEL_MULT, NUM_RES_BLOCKS, ATTENTION_LEVELS = 320, (1, 2, 4, 4), 2, (0, 1, 2)
TIME_EMBED, CONTEXT_DIM = 4 * 320, 768


def _res_block(out: Shapes, name: str, ch_in: int, ch_out: int) -> None:
    _norm(out, f"{name}.in_layers.0", ch_in)
    _conv(out, f"{name}.in_layers.2", ch_out, ch_in, 3)
    _linear(out, f"{name}.emb_layers.1", ch_out, TIME_EMBED)
    _norm(out, f"{name}.out_layers.0", ch_out)
    _conv(out, f"{name}.out_layers.3", ch_out, ch_out, 3)
    if ch_in != ch_out:
        _conv(out, f"{name}.skip_connection", ch_out, ch_in, 1)


def _spatial_transformer(out: Shapes, name: str, ch: int) -> None:
    _norm(out, f"{name}.norm", ch)
    _conv(out, f"{name}.proj_in", ch, ch, 1)  # SD1.5: 1x1 convs, not linear (use_linear_in_transformer=False)
    block = f"{name}.transformer_blocks.0"
    for attn, ctx in (("attn1", ch), ("attn2", CONTEXT_DIM)):
        _linear(out, f"{block}.{attn}.to_q", ch, ch, bias=False)
        _linear(out, f"{block}.{attn}.to_k", ch, ctx, bias=False)
        _linear(out, f"{block}.{attn}.to_v", ch, ctx, bias=False)
        _linear(out, f"{block}.{attn}.to_out.0", ch, ch)
        if attn == "attn1":
            _linear(out, f"{block}.ff.net.0.proj", 8 * ch, ch)  # GEGLU: 2 x (4 x ch)
            _linear(out, f"{block}.ff.net.2", ch, 4 * ch)
    for i in (1, 2, 3):
        _norm(out, f"{block}.norm{i}", ch)
    _conv(out, f"{name}.proj_out", ch, ch, 1)


def unet_shapes() -> Shapes:
    out: Shapes = []
    p = UNET
    _linear(out, f"{p}time_embed.0", TIME_EMBED, MODEL_CHANNELS)
    _linear(out, f"{p}time_embed.2", TIME_EMBED, TIME_EMBED)
    _conv(out, f"{p}input_blocks.0.0", MODEL_CHANNELS, 4, 3)
    chans, ch, index = [MODEL_CHANNELS], MODEL_CHANNELS, 1
    for level, mult in enumerate(CHANNEL_MULT):
        for _ in range(NUM_RES_BLOCKS):
            _res_block(out, f"{p}input_blocks.{index}.0", ch, mult * MODEL_CHANNELS)
            ch = mult * MODEL_CHANNELS
            if level in ATTENTION_LEVELS:
                _spatial_transformer(out, f"{p}input_blocks.{index}.1", ch)
            chans.append(ch)
            index += 1
        if level != len(CHANNEL_MULT) - 1:
            _conv(out, f"{p}input_blocks.{index}.0.op", ch, ch, 3)
            chans.append(ch)
            index += 1
    _res_block(out, f"{p}middle_block.0", ch, ch)
    _spatial_transformer(out, f"{p}middle_block.1", ch)
    _res_block(out, f"{p}middle_block.2", ch, ch)
    index = 0
    for level, mult in reversed(list(enumerate(CHANNEL_MULT))):
        for i in range(NUM_RES_BLOCKS + 1):
            skip = chans.pop()
            _res_block(out, f"{p}output_blocks.{index}.0", ch + skip, mult * MODEL_CHANNELS)
            ch = mult * MODEL_CHANNELS
            sub = 1
            if level in ATTENTION_LEVELS:
                _spatial_transformer(out, f"{p}output_blocks.{index}.1", ch)
                sub = 2
            if level and i == NUM_RES_BLOCKS:
                _conv(out, f"{p}output_blocks.{index}.{sub}.conv", ch, ch, 3)
            index += 1
    _norm(out, f"{p}out.0", ch)
    _conv(out, f"{p}out.2", 4, ch, 3)
    return out


# ---- CLIP ViT-L/14 text encoder (transformers' CLIPTextModel names) -----------------------
def clip_shapes() -> Shapes:
    out: Shapes = []
    p, width, layers = CLIP, 768, 12
    out.append((f"{p}embeddings.position_ids", (1, 77), "ids"))  # int64, as in the released file
    out.append((f"{p}embeddings.token_embedding.weight", (49408, width), "embed"))
    out.append((f"{p}embeddings.position_embedding.weight", (77, width), "embed"))
    for i in range(layers):
        layer = f"{p}encoder.layers.{i}"
        _norm(out, f"{layer}.layer_norm1", width)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(out, f"{layer}.self_attn.{proj}", width, width)
        _norm(out, f"{layer}.layer_norm2", width)
        _linear(out, f"{layer}.mlp.fc1", 4 * width, width)
        _linear(out, f"{layer}.mlp.fc2", width, 4 * width)
    _norm(out, f"{p}final_layer_norm", width)
    return out


# ---- KL-f8 VAE (ldm AutoencoderKL) --------------------------------------------------------
def _vae_resnet(out: Shapes, name: str, ch_in: int, ch_out: int) -> None:
    _norm(out, f"{name}.norm1", ch_in)
    _conv(out, f"{name}.conv1", ch_out, ch_in, 3)
    _norm(out, f"{name}.norm2", ch_out)
    _conv(out, f"{name}.conv2", ch_out, ch_out, 3)
    if ch_in != ch_out:
        _conv(out, f"{name}.nin_shortcut", ch_out, ch_in, 1)


def _vae_mid(out: Shapes, name: str, ch: int) -> None:
    _vae_resnet(out, f"{name}.block_1", ch, ch)
    _norm(out, f"{name}.attn_1.norm", ch)
    for proj in ("q", "k", "v", "proj_out"):
        _conv(out, f"{name}.attn_1.{proj}", ch, ch, 1)
    _vae_resnet(out, f"{name}.block_2", ch, ch)


def vae_shapes() -> Shapes:
    out: Shapes = []
    p, ch, mult, z = VAE, 128, (1, 2, 4, 4), 4
    _conv(out, f"{p}encoder.conv_in", ch, 3, 3)
    block_in = ch
    for level, m in enumerate(mult):
        for i in range(2):
            _vae_resnet(out, f"{p}encoder.down.{level}.block.{i}", block_in, ch * m)
            block_in = ch * m
        if level != len(mult) - 1:
            _conv(out, f"{p}encoder.down.{level}.downsample.conv", block_in, block_in, 3)
    _vae_mid(out, f"{p}encoder.mid", block_in)
    _norm(out, f"{p}encoder.norm_out", block_in)
    _conv(out, f"{p}encoder.conv_out", 2 * z, block_in, 3)
    _conv(out, f"{p}quant_conv", 2 * z, 2 * z, 1)
    _conv(out, f"{p}post_quant_conv", z, z, 1)
    block_in = ch * mult[-1]
    _conv(out, f"{p}decoder.conv_in", block_in, z, 3)
    _vae_mid(out, f"{p}decoder.mid", block_in)
    for level in reversed(range(len(mult))):
        for i in range(3):
            _vae_resnet(out, f"{p}decoder.up.{level}.block.{i}", block_in, ch * mult[level])
            block_in = ch * mult[level]
        if level != 0:
            _conv(out, f"{p}decoder.up.{level}.upsample.conv", block_in, block_in, 3)
    _norm(out, f"{p}decoder.norm_out", block_in)
    _conv(out, f"{p}decoder.conv_out", 3, block_in, 3)
    return out


def sd15_shapes() -> Shapes:
    return unet_shapes() + clip_shapes() + vae_shapes()


def parameter_counts() -> dict[str, int]:
    counts = {}
    for part, shapes in (("unet", unet_shapes()), ("clip", clip_shapes()), ("vae", vae_shapes())):
        counts[part] = sum(math.prod(s) for name, s, kind in shapes if kind != "ids")
    return counts


# ---- writing ------------------------------------------------------------------------------
DTYPES = {"fp16": ("F16", 2), "bf16": ("BF16", 2), "fp32": ("F32", 4)}


def write(path: Path, seed: int, dtype: str = "fp16") -> dict:
    import torch

    shapes = sd15_shapes()
    tag, size = DTYPES[dtype]
    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    header: dict = {"__metadata__": {"format": "pt", "generator": "bench.gpu_kit.sd15", "seed": str(seed),
                                     "note": "random weights with SD1.5 names and shapes; its images are noise"}}
    offset = 0
    for name, shape, kind in shapes:
        nbytes = math.prod(shape) * (8 if kind == "ids" else size)
        header[name] = {"dtype": "I64" if kind == "ids" else tag, "shape": list(shape),
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    generator = torch.Generator().manual_seed(seed)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        for chunk in (struct.pack("<Q", len(raw)), raw):
            f.write(chunk)
            digest.update(chunk)
        for _name, shape, kind in shapes:
            if kind == "ids":
                tensor = torch.arange(shape[1], dtype=torch.int64).reshape(shape)
            elif kind == "norm_w":
                tensor = torch.ones(shape)
            elif kind == "norm_b":
                tensor = torch.zeros(shape)
            else:
                # Kaiming-like scale keeps activations finite through 16 UNet blocks in fp16,
                # so the pictures are noise rather than NaN-black.
                std = {"embed": 0.02, "bias": 0.01}.get(kind) or 1.0 / math.sqrt(math.prod(shape[1:]))
                tensor = torch.randn(shape, generator=generator) * std
            tensor = tensor.to(torch.int64 if kind == "ids" else torch_dtype).contiguous()
            data = tensor.view(torch.uint8).numpy().tobytes()
            f.write(data)
            digest.update(data)
            del tensor, data
    tmp.replace(path)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest(), "seed": seed,
            "dtype": dtype, "tensors": len(shapes), "parameters": parameter_counts()}


def check(path: Path) -> int:
    """Read the file back with safetensors (the library ComfyUI loads it with): every name and shape."""
    from safetensors import safe_open

    expected = {name: list(shape) for name, shape, _ in sd15_shapes()}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(expected):
            raise SystemExit(f"sd15: {path} has {len(keys ^ set(expected))} unexpected or missing keys")
        for name in (f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                     f"{CLIP}embeddings.token_embedding.weight", f"{VAE}decoder.conv_out.weight"):
            if list(f.get_slice(name).get_shape()) != expected[name]:
                raise SystemExit(f"sd15: {name} reads back with the wrong shape")
    return len(keys)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--count", action="store_true", help="print the parameter counts and exit")
    args = parser.parse_args(argv)
    if args.count:
        print(json.dumps(parameter_counts()))
        return
    if args.out is None:
        parser.error("--out is required")
    info = write(args.out, args.seed, args.dtype)
    info["checked_tensors"] = check(args.out)
    json.dump(info, sys.stdout)
    print()


if __name__ == "__main__":
    main()
