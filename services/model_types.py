"""ComfyUI's model folders: the `type` a spec, `/download` or `/models/ls` names, and where it lives.

ComfyUI renamed two folders (`unet` -> `diffusion_models`, `clip` -> `text_encoders`) and
still reads both, so the old names are accepted as aliases of the new ones: a file is
stored once, under the canonical folder, and ComfyUI finds it through extra_model_paths.
"""
from __future__ import annotations

CANONICAL = (
    "checkpoints", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
    "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
    "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker", "classifiers",
    "model_patches", "audio_encoders",
)
ALIASES = {"unet": "diffusion_models", "clip": "text_encoders", "t2i_adapter": "controlnet"}
ALL_TYPES = CANONICAL + tuple(ALIASES)


def canonical(model_type: str) -> str | None:
    """The folder a type is stored in, or None when ComfyUI has no such model folder."""
    if model_type in CANONICAL:
        return model_type
    return ALIASES.get(model_type)
