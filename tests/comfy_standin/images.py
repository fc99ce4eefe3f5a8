"""IMAGE and MASK values as they travel between stand-in nodes.

ComfyUI passes an IMAGE as a float tensor shaped [batch, height, width, 3] and a MASK as
[batch, height, width]. The stand-in uses lists of Pillow images instead. The only place
where clients see these values is the `current_inputs` of an `execution_error`, where
ComfyUI prints the tensor, so the batches print as a tensor-like summary with that shape.
"""

from __future__ import annotations

from PIL import Image


class ImageBatch(list):
    """IMAGE: RGB Pillow images, all of one size."""

    def __str__(self) -> str:
        width, height = self[0].size if self else (0, 0)
        return f"tensor([...], size=({len(self)}, {height}, {width}, 3))"

    __repr__ = __str__

    @classmethod
    def blank(cls, width: int, height: int, count: int, rgb=(0, 0, 0)) -> "ImageBatch":
        return cls(Image.new("RGB", (width, height), rgb) for _ in range(count))


class MaskBatch(list):
    """MASK: single-channel ("L") Pillow images."""

    def __str__(self) -> str:
        width, height = self[0].size if self else (0, 0)
        return f"tensor([...], size=({len(self)}, {height}, {width}))"

    __repr__ = __str__
