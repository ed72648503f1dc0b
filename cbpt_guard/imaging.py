"""Small pictures for reports: tensors in [0, 1] -> inline PNG data URIs (no external resources)."""

from __future__ import annotations

import base64
import io

import torch


def png_data_uri(image: torch.Tensor, scale: int | None = None) -> str:
    """A (3, H, W) or (1, H, W) image in [0, 1] as a ``data:image/png;base64,...`` URI, upscaled ``scale``x.

    By default a 32-pixel image (or smaller) is shown 4x, a larger one at most
    128 pixels a side upscaled, never shrunk: a 224-pixel image stays 224.
    """
    from PIL import Image

    if scale is None:
        side = max(image.shape[-2:])
        scale = 4 if side <= 32 else max(1, 128 // side)

    pixels = image.detach().float().cpu().clamp(0, 1)
    if pixels.shape[0] == 1:
        pixels = pixels.expand(3, -1, -1)
    pixels = pixels.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    array = (pixels.permute(1, 2, 0) * 255).round().to(torch.uint8).contiguous()
    buffer = io.BytesIO()
    Image.frombytes("RGB", (array.shape[1], array.shape[0]), array.numpy().tobytes()).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
