"""Small API-format workflows the tests send (model-free: run by stand-in and real ComfyUI)."""
from __future__ import annotations


def image(width: int = 64, height: int = 64, color: int = 0x33AAFF, prefix: str = "test", batch: int = 1) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                         "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}}}


def sleep_then_save(seconds: float, steps: int = 10) -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
            "2": {"class_type": "StandinSleep", "inputs": {"seconds": seconds, "steps": steps, "images": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "slept"}}}


def raising(message: str = "boom on purpose") -> dict:
    return {"1": {"class_type": "StandinRaise", "inputs": {"message": message}}}


def exiting(code: int = 3, after_seconds: float = 0.0) -> dict:
    wf = {"1": {"class_type": "StandinExit", "inputs": {"code": code}}}
    if after_seconds:
        wf["0"] = {"class_type": "StandinSleep", "inputs": {"seconds": after_seconds, "steps": 4}}
        wf["1"]["inputs"]["images"] = ["0", 0]
    return wf


def preview_only() -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def animated_and_preview() -> dict:
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 3, "color": 0x153E2D}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["2", 0], "filename_prefix": "anim", "fps": 6.0,
                                                               "lossless": True, "quality": 80, "method": "default"}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}


def load_invert_save(image_name: str) -> dict:
    return {"1": {"class_type": "LoadImage", "inputs": {"image": image_name}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}}}


def hanging(seconds: float = 60.0) -> dict:
    """A node that blocks without progress and ignores interrupts (the stall watchdog's case)."""
    return {"1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
            "2": {"class_type": "StandinHang", "inputs": {"seconds": seconds, "images": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "hung"}}}


def txt2img(checkpoint: str, steps: int = 2) -> dict:
    """SD1.5 txt2img: loads `checkpoint` from the checkpoints folder (a name ComfyUI must list)."""
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
            "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
            "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 7, "steps": steps, "cfg": 7.0,
                                                       "sampler_name": "euler", "scheduler": "normal",
                                                       "positive": ["3", 0], "negative": ["4", 0],
                                                       "latent_image": ["2", 0], "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "txt2img"}}}
