"""Deterministic stand-in pictures: a procedural landscape per generation output, as JPEG.

The prompt picks the palette, the seed and the other settings shape the scene (sky, sun or
moon, clouds, mountain ridges, trees, sometimes a lake), so the same normalised prompt,
settings, seed and output index always give byte-identical JPEG bytes (quality 85, as the real
workers write), and another seed gives another picture. Pure code: no I/O.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import itertools
import json
import random
from dataclasses import asdict, dataclass

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

JPEG_QUALITY = 85

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class RenderParams:
    """Everything that decides an output's pixels."""

    prompt: str
    negative_prompt: str
    model_id: str
    scheduler_id: str
    width: int
    height: int
    guidance_scale: float
    inference_steps: int
    seed: int
    output_index: int
    init_image_url: str = ""
    prompt_strength: float | None = None

    def digest(self) -> bytes:
        """A stable hash of all fields."""
        canonical = json.dumps(asdict(self), sort_keys=True, ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).digest()


def _hsv(hue: float, saturation: float, value: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, min(max(saturation, 0), 1), min(max(value, 0), 1))
    return round(r * 255), round(g * 255), round(b * 255)


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return (
        round(a[0] + (b[0] - a[0]) * t),
        round(a[1] + (b[1] - a[1]) * t),
        round(a[2] + (b[2] - a[2]) * t),
    )


@dataclass(frozen=True)
class _Palette:
    sky_top: RGB
    sky_horizon: RGB
    light: RGB
    land_far: RGB
    land_near: RGB
    night: bool


def _palette(theme: random.Random, rng: random.Random) -> _Palette:
    hue = (theme.random() + rng.uniform(-0.06, 0.06)) % 1.0
    mood = rng.choice(("day", "day", "dusk", "dusk", "night"))
    land_hue = (hue + theme.uniform(0.25, 0.45)) % 1.0
    if mood == "day":
        top, horizon = _hsv(hue, 0.65, 0.85), _hsv(hue + 0.03, 0.25, 0.98)
        light = _hsv(0.13, 0.15, 1.0)
        far, near = _mix(horizon, _hsv(land_hue, 0.35, 0.65), 0.55), _hsv(land_hue, 0.6, 0.3)
    elif mood == "dusk":
        top = _hsv(hue + 0.6, 0.55, 0.45)
        horizon = _hsv(0.05 + theme.uniform(-0.04, 0.06), 0.7, 1.0)
        light = _hsv(0.1, 0.35, 1.0)
        far, near = _mix(horizon, _hsv(hue + 0.7, 0.45, 0.45), 0.6), _hsv(hue + 0.7, 0.55, 0.14)
    else:
        top, horizon = _hsv(hue + 0.62, 0.7, 0.12), _hsv(hue + 0.58, 0.5, 0.38)
        light = _hsv(0.14, 0.08, 0.97)
        far, near = _mix(horizon, _hsv(hue + 0.6, 0.5, 0.2), 0.5), _hsv(hue + 0.6, 0.6, 0.06)
    return _Palette(top, horizon, light, far, near, mood == "night")


def _ridge(rng: random.Random, width: int, base: float, amplitude: float) -> list[float]:
    """Midpoint displacement: 129 heights across the width."""
    points = [base + rng.uniform(-amplitude, amplitude) for _ in range(2)]
    spread = amplitude
    while len(points) < 129:
        refined: list[float] = []
        for left, right in itertools.pairwise(points):
            refined += [left, (left + right) / 2 + rng.uniform(-spread, spread)]
        refined.append(points[-1])
        points = refined
        spread *= 0.55
    return points


def _sky(size: tuple[int, int], palette: _Palette) -> Image.Image:
    mask = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    top = Image.new("RGB", size, palette.sky_top)
    horizon = Image.new("RGB", size, palette.sky_horizon)
    return Image.composite(horizon, top, mask).convert("RGBA")


def _stars(image: Image.Image, rng: random.Random) -> None:
    draw = ImageDraw.Draw(image)
    width, height = image.size
    for _ in range(rng.randint(120, 320)):
        x, y = rng.uniform(0, width), rng.uniform(0, height * 0.6)
        radius = rng.choice((0.6, 0.8, 1.0, 1.4))
        shade = rng.randint(150, 255)
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=(shade,) * 3 + (255,))


def _light(image: Image.Image, rng: random.Random, palette: _Palette) -> None:
    width, height = image.size
    radius = min(width, height) * rng.uniform(0.045, 0.09)
    cx, cy = rng.uniform(0.15, 0.85) * width, rng.uniform(0.12, 0.42) * height
    glow = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(glow)
    steps = 14
    for step in range(steps, 0, -1):
        r = radius * (1 + step * 0.35)
        alpha = round(70 * (1 - step / (steps + 1)) ** 2)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(*palette.light, alpha))
    draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(*palette.light, 255))
    image.alpha_composite(glow)


def _clouds(image: Image.Image, rng: random.Random, palette: _Palette) -> None:
    width, height = image.size
    small = (max(width // 4, 1), max(height // 4, 1))
    layer = Image.new("RGBA", small, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    tint = _mix(palette.light, palette.sky_horizon, 0.35)
    for _ in range(rng.randint(2, 6)):
        cx, cy = rng.uniform(0, small[0]), rng.uniform(0.05, 0.45) * small[1]
        for _ in range(rng.randint(5, 12)):
            rx, ry = rng.uniform(0.03, 0.09) * small[0], rng.uniform(0.015, 0.04) * small[1]
            x, y = cx + rng.uniform(-2.5, 2.5) * rx, cy + rng.uniform(-0.8, 0.8) * ry
            draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=(*tint, rng.randint(40, 110)))
    layer = layer.filter(ImageFilter.GaussianBlur(radius=max(small[0] / 120, 1)))
    image.alpha_composite(layer.resize(image.size, Image.Resampling.BILINEAR))


def _mountains(image: Image.Image, rng: random.Random, palette: _Palette, horizon: float) -> None:
    width, height = image.size
    draw = ImageDraw.Draw(image)
    layers = rng.randint(3, 5)
    for index in range(layers):
        depth = index / max(layers - 1, 1)
        base = height * (horizon - 0.22 + 0.2 * depth)
        amplitude = height * (0.12 - 0.05 * depth)
        heights = _ridge(rng, width, base, amplitude)
        step = width / (len(heights) - 1)
        outline = [(i * step, y) for i, y in enumerate(heights)]
        color = _mix(palette.land_far, palette.land_near, depth)
        draw.polygon([(0, height), *outline, (width, height)], fill=(*color, 255))
        if index == layers - 1:
            tree = _mix(palette.land_near, (0, 0, 0), 0.35)
            for _ in range(rng.randint(8, 40)):
                i = rng.randrange(len(heights))
                x, y = i * step, heights[i] + 2
                tall = rng.uniform(0.03, 0.09) * height
                half = tall * rng.uniform(0.18, 0.3)
                draw.polygon([(x, y - tall), (x - half, y), (x + half, y)], fill=(*tree, 255))


def _lake(image: Image.Image, rng: random.Random, palette: _Palette, level: float) -> None:
    width, height = image.size
    top = round(height * level)
    if top >= height:
        return
    depth = height - top
    source = image.crop((0, max(top - depth, 0), width, top)).transpose(
        Image.Transpose.FLIP_TOP_BOTTOM
    )
    water = Image.new("RGBA", (width, depth), (*_mix(palette.sky_horizon, (10, 30, 60), 0.5), 255))
    water.paste(source.resize((width, depth)), (0, 0))
    water = Image.blend(water, Image.new("RGBA", water.size, (*palette.sky_top, 255)), 0.35)
    draw = ImageDraw.Draw(water)
    for _ in range(rng.randint(20, 60)):
        y = rng.uniform(0, depth)
        x = rng.uniform(0, width)
        length = rng.uniform(0.02, 0.15) * width
        draw.line((x, y, x + length, y), fill=(*palette.light, 70), width=1)
    image.paste(water, (0, top))


def render_image(params: RenderParams) -> Image.Image:
    """The RGB picture for one output."""
    rng = random.Random(int.from_bytes(params.digest(), "big"))
    theme = random.Random(int.from_bytes(hashlib.sha256(params.prompt.encode()).digest(), "big"))
    palette = _palette(theme, rng)
    size = (params.width, params.height)
    image = _sky(size, palette)
    if palette.night:
        _stars(image, rng)
    _light(image, rng, palette)
    _clouds(image, rng, palette)
    horizon = rng.uniform(0.55, 0.75)
    _mountains(image, rng, palette, horizon)
    if rng.random() < 0.4:
        _lake(image, rng, palette, horizon + 0.06)
    picture = image.convert("RGB")
    # Higher guidance reads as more saturated, as it tends to in diffusion outputs.
    saturation = 0.85 + min(params.guidance_scale, 30.0) / 40.0
    return ImageEnhance.Color(picture).enhance(saturation)


def render_jpeg(params: RenderParams) -> bytes:
    """The JPEG bytes for one output (quality 85, no metadata)."""
    buffer = io.BytesIO()
    render_image(params).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()
