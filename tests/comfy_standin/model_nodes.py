"""The SD1.5 txt2img nodes, validated like ComfyUI but run without any model.

They validate exactly like the real nodes (a `ckpt_name` that is not a file under
`models/checkpoints` fails with `value_not_in_list`), so workflows built for a real
ComfyUI pass or fail the same way. Running them loads nothing: the "model" objects are
placeholders, KSampler only reports one `progress` per step (and honours interrupts
between steps), and VAEDecode returns seeded noise of the size a real decode would have.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from .images import ImageBatch
from .nodes import MAX_RESOLUTION, Node, NodeResult

SAMPLERS = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2",
    "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp",
    "dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis",
    "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp",
    "er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
              "linear_quadratic", "kl_optimal"]
# Pixels per latent cell in SD1.5.
LATENT_SCALE = 8


@dataclass(frozen=True)
class ModelPart:
    """Placeholder for the MODEL, CLIP or VAE loaded from a checkpoint."""

    checkpoint: str
    kind: str


@dataclass(frozen=True)
class Conditioning:
    text: str


@dataclass(frozen=True)
class Latent:
    width: int
    height: int
    batch_size: int
    seed: int = 0


class CheckpointLoaderSimple(Node):
    name = "CheckpointLoaderSimple"
    display_name = "Load Checkpoint"
    category = "loaders"
    description = "Loads a diffusion model checkpoint, diffusion models are used to denoise latents."
    outputs = ("MODEL", "CLIP", "VAE")
    output_tooltips = (
        "The model used for denoising latents.",
        "The CLIP model used for encoding text prompts.",
        "The VAE model used for encoding and decoding images to and from latent space.",
    )

    @classmethod
    def input_types(cls, paths):
        return {"required": {"ckpt_name": [
            paths.model_files("checkpoints"), {"tooltip": "The name of the checkpoint (model) to load."}]}}

    def run(self, ctx, ckpt_name):
        return NodeResult(tuple(ModelPart(ckpt_name, kind) for kind in self.outputs))


class EmptyLatentImage(Node):
    name = "EmptyLatentImage"
    display_name = "Empty Latent Image"
    category = "latent"
    description = "Create a new batch of empty latent images to be denoised via sampling."
    outputs = ("LATENT",)
    output_tooltips = ("The empty latent image batch.",)

    @classmethod
    def input_types(cls, paths):
        def size(axis):
            return ["INT", {"default": 512, "min": 16, "max": MAX_RESOLUTION, "step": 8,
                            "tooltip": f"The {axis} of the latent images in pixels."}]
        return {"required": {
            "width": size("width"),
            "height": size("height"),
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096,
                                   "tooltip": "The number of latent images in the batch."}],
        }}

    def run(self, ctx, width, height, batch_size=1):
        return NodeResult((Latent(width // LATENT_SCALE, height // LATENT_SCALE, batch_size),))


class CLIPTextEncode(Node):
    name = "CLIPTextEncode"
    display_name = "CLIP Text Encode (Prompt)"
    category = "conditioning"
    description = ("Encodes a text prompt using a CLIP model into an embedding that can be used to guide "
                   "the diffusion model towards generating specific images.")
    outputs = ("CONDITIONING",)
    output_tooltips = ("A conditioning containing the embedded text used to guide the diffusion model.",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {
            "text": ["STRING", {"multiline": True, "dynamicPrompts": True, "tooltip": "The text to be encoded."}],
            "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
        }}

    def run(self, ctx, text, clip):
        return NodeResult((Conditioning(text),))


class KSampler(Node):
    name = "KSampler"
    category = "sampling"
    description = "Uses the provided model, positive and negative conditioning to denoise the latent image."
    outputs = ("LATENT",)
    output_tooltips = ("The denoised latent.",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {
            "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
            "seed": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                             "tooltip": "The random seed used for creating the noise."}],
            "steps": ["INT", {"default": 20, "min": 1, "max": 10000,
                              "tooltip": "The number of steps used in the denoising process."}],
            "cfg": ["FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                              "tooltip": "The Classifier-Free Guidance scale balances creativity and adherence "
                                         "to the prompt. Higher values result in images more closely matching "
                                         "the prompt however too high values will negatively impact quality."}],
            "sampler_name": [list(SAMPLERS), {
                "tooltip": "The algorithm used when sampling, this can affect the quality, speed, and style "
                           "of the generated output."}],
            "scheduler": [list(SCHEDULERS), {
                "tooltip": "The scheduler controls how noise is gradually removed to form the image."}],
            "positive": ["CONDITIONING", {
                "tooltip": "The conditioning describing the attributes you want to include in the image."}],
            "negative": ["CONDITIONING", {
                "tooltip": "The conditioning describing the attributes you want to exclude from the image."}],
            "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
            "denoise": ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "The amount of denoising applied, lower values will maintain the "
                                             "structure of the initial image allowing for image to image "
                                             "sampling."}],
        }}

    def run(self, ctx, model, seed, steps, cfg, sampler_name, scheduler, positive, negative,
            latent_image, denoise=1.0):
        for step in range(1, steps + 1):
            ctx.check_interrupt()
            ctx.progress(step, steps)
        return NodeResult((Latent(latent_image.width, latent_image.height, latent_image.batch_size, seed),))


class VAEDecode(Node):
    name = "VAEDecode"
    display_name = "VAE Decode"
    category = "latent"
    description = "Decodes latent images back into pixel space images."
    outputs = ("IMAGE",)
    output_tooltips = ("The decoded image.",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {
            "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
            "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
        }}

    def run(self, ctx, samples, vae):
        size = (samples.width * LATENT_SCALE, samples.height * LATENT_SCALE)
        rng = random.Random(samples.seed)
        noise = ImageBatch(Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
                           for _ in range(samples.batch_size))
        return NodeResult((noise,))


NODES = (CheckpointLoaderSimple, EmptyLatentImage, CLIPTextEncode, KSampler, VAEDecode)
