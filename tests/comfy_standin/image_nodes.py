"""Model-free image nodes, executed for real with Pillow.

Their `/object_info` entries match `tests/fixtures/comfy/object_info_selected.json`, and
their files and UI outputs are named as ComfyUI names them.
"""

from __future__ import annotations

import json
import os
import random

from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from . import files
from .images import ImageBatch, MaskBatch
from .nodes import HIDDEN_PROMPT_INFO, MAX_RESOLUTION, Node, NodeResult, RunContext


class EmptyImage(Node):
    name = "EmptyImage"
    outputs = ("IMAGE",)

    @classmethod
    def input_types(cls, paths):
        size = {"default": 512, "min": 1, "max": MAX_RESOLUTION, "step": 1}
        return {"required": {
            "width": ["INT", dict(size)],
            "height": ["INT", dict(size)],
            "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
            "color": ["INT", {"default": 0, "min": 0, "max": 0xFFFFFF, "step": 1, "display": "color"}],
        }}

    def run(self, ctx, width, height, batch_size=1, color=0):
        rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
        return NodeResult((ImageBatch.blank(width, height, batch_size, rgb),))


class ImageInvert(Node):
    name = "ImageInvert"
    display_name = "Invert Image"
    outputs = ("IMAGE",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"image": ["IMAGE"]}}

    def run(self, ctx, image):
        return NodeResult((ImageBatch(ImageOps.invert(frame) for frame in image),))


class LoadImage(Node):
    name = "LoadImage"
    display_name = "Load Image"
    outputs = ("IMAGE", "MASK")
    # ComfyUI checks the path itself instead of the list, so a name outside the list fails as
    # custom validation, not value_not_in_list; and like ComfyUI it only checks that the path
    # exists: `jobs/<other>/x.png`, `x.png [output]`, `../x.png` or an absolute path all load.
    custom_validated = ("image",)

    @classmethod
    def input_types(cls, paths):
        return {"required": {"image": [paths.input_images(), {"image_upload": True}]}}

    @classmethod
    def validate(cls, paths, image):
        if not files.annotated_path_exists(paths, image):
            return f"Invalid image file: {image}"
        return True

    @classmethod
    def fingerprint(cls, paths, image):
        # A new upload under the same name must not be served from the cache.
        return files.file_digest(files.annotated_path(paths, image))

    def run(self, ctx, image):
        with Image.open(files.annotated_path(ctx.paths, image)) as source:
            # MPO files hold a stereo pair, not an animation; ComfyUI keeps the first frame.
            frames = [source] if source.format == "MPO" else ImageSequence.Iterator(source)
            images, masks = ImageBatch(), MaskBatch()
            for frame in frames:
                frame = ImageOps.exif_transpose(frame)
                rgb = frame.convert("RGB")
                if images and rgb.size != images[0].size:
                    continue
                images.append(rgb)
                masks.append(_mask_of(frame))
        return NodeResult((images, masks))


def _mask_of(frame: Image.Image) -> Image.Image:
    """ComfyUI's mask is the inverted alpha channel, or an empty 64x64 mask without alpha."""
    if "A" in frame.getbands():
        return ImageOps.invert(frame.getchannel("A"))
    if frame.mode == "P" and "transparency" in frame.info:
        return ImageOps.invert(frame.convert("RGBA").getchannel("A"))
    return Image.new("L", (64, 64), 0)


class SaveImage(Node):
    name = "SaveImage"
    display_name = "Save Image"
    description = "Saves the input images to your ComfyUI output directory."
    output_node = True
    folder_type = "output"
    compress_level = 4

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": ["STRING", {
                    "default": "ComfyUI",
                    "tooltip": "The prefix for the file to save. This may include formatting information "
                               "such as %date:yyyy-MM-dd% or %Empty Latent Image.width% to include values "
                               "from nodes.",
                }],
            },
            "hidden": dict(HIDDEN_PROMPT_INFO),
        }

    def prefix_suffix(self) -> str:
        return ""

    def run(self, ctx, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
        folder = ctx.paths.by_type(self.folder_type)
        width, height = images[0].size
        target = files.save_target(filename_prefix + self.prefix_suffix(), folder, width, height)
        metadata = None if ctx.disable_metadata else _png_metadata(prompt, extra_pnginfo)
        results = []
        for batch_number, image in enumerate(images):
            name = target.filename.replace("%batch_num%", str(batch_number))
            file = f"{name}_{target.counter + batch_number:05}_.png"
            image.save(os.path.join(target.folder, file), pnginfo=metadata,
                       compress_level=self.compress_level)
            results.append({"filename": file, "subfolder": target.subfolder, "type": self.folder_type})
        return NodeResult(ui={"images": results})


class PreviewImage(SaveImage):
    name = "PreviewImage"
    display_name = "Preview Image"
    folder_type = "temp"
    compress_level = 1

    def __init__(self):
        # ComfyUI's alphabet for this suffix (sic: no "w", two "p").
        self._suffix = "_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))

    @classmethod
    def input_types(cls, paths):
        return {"required": {"images": ["IMAGE"]}, "hidden": dict(HIDDEN_PROMPT_INFO)}

    def prefix_suffix(self) -> str:
        return self._suffix


def _png_metadata(prompt, extra_pnginfo) -> PngInfo:
    metadata = PngInfo()
    if prompt is not None:
        metadata.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        metadata.add_text(key, json.dumps(value))
    return metadata


class _SaveAnimated(Node):
    category = "image/animation"
    python_module = "comfy_extras.nodes_images"
    output_node = True

    @classmethod
    def common_inputs(cls) -> dict:
        return {
            "images": ["IMAGE"],
            "filename_prefix": ["STRING", {"default": "ComfyUI"}],
            "fps": ["FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}],
        }

    def save(self, ctx: RunContext, images, filename_prefix, extension, **save_options) -> dict:
        width, height = images[0].size
        target = files.save_target(filename_prefix, ctx.paths.output, width, height)
        file = f"{target.filename}_{target.counter:05}_.{extension}"
        images[0].save(os.path.join(target.folder, file), save_all=True,
                       append_images=images[1:], **save_options)
        return {"filename": file, "subfolder": target.subfolder, "type": "output"}


class SaveAnimatedWEBP(_SaveAnimated):
    name = "SaveAnimatedWEBP"
    methods = {"default": 4, "fastest": 0, "slowest": 6}

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {
                **cls.common_inputs(),
                "lossless": ["BOOLEAN", {"default": True}],
                "quality": ["INT", {"default": 80, "min": 0, "max": 100}],
                "method": [list(cls.methods)],
            },
            "hidden": dict(HIDDEN_PROMPT_INFO),
        }

    def run(self, ctx, images, filename_prefix, fps, lossless, quality, method,
            prompt=None, extra_pnginfo=None):
        exif = images[0].getexif()
        if not ctx.disable_metadata:
            if prompt is not None:
                exif[0x0110] = "prompt:" + json.dumps(prompt)
            for tag, (key, value) in zip(range(0x010F, 0, -1), (extra_pnginfo or {}).items()):
                exif[tag] = f"{key}:{json.dumps(value)}"
        saved = self.save(ctx, images, filename_prefix, "webp", duration=int(1000.0 / fps),
                          exif=exif, lossless=lossless, quality=quality, method=self.methods[method])
        return NodeResult(ui={"images": [saved], "animated": [len(images) != 1]})


class SaveAnimatedPNG(_SaveAnimated):
    name = "SaveAnimatedPNG"

    @classmethod
    def input_types(cls, paths):
        return {
            "required": {**cls.common_inputs(), "compress_level": ["INT", {"default": 4, "min": 0, "max": 9}]},
            "hidden": dict(HIDDEN_PROMPT_INFO),
        }

    def run(self, ctx, images, filename_prefix, fps, compress_level, prompt=None, extra_pnginfo=None):
        metadata = None if ctx.disable_metadata else _png_metadata(prompt, extra_pnginfo)
        saved = self.save(ctx, images, filename_prefix, "png", duration=int(1000.0 / fps),
                          pnginfo=metadata, compress_level=compress_level)
        return NodeResult(ui={"images": [saved], "animated": [True]})


NODES = (EmptyImage, ImageInvert, LoadImage, SaveImage, PreviewImage, SaveAnimatedWEBP, SaveAnimatedPNG)
