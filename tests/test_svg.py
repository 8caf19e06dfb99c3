"""The vector rasterizer against resvg and finite differences, SVG in/out, and ``ids-edit-svg`` on the demo prior."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.vector import RasterSettings, VectorScene, read_svg, render, svg_text

resvg_py = pytest.importorskip("resvg_py")

SHAPES = {
    "convex": '<ellipse cx="30" cy="34" rx="22" ry="14" fill="#d02020"/>',
    "concave": '<path d="M 8 8 L 56 8 L 56 56 L 32 24 L 8 56 Z" fill="#2040c0"/>',
    "star-evenodd": '<path d="M 32 4 L 50 60 L 3 24 L 61 24 L 14 60 Z" fill="#208020" fill-rule="evenodd"/>',
    "star-nonzero": '<path d="M 32 4 L 50 60 L 3 24 L 61 24 L 14 60 Z" fill="#208020" fill-rule="nonzero"/>',
    "hole": '<path d="M 6 6 H 58 V 58 H 6 Z M 20 20 V 44 H 44 V 20 Z" fill="#c08020"/>',
    "curved-hole": '<path d="M 32 4 C 60 4 60 60 32 60 C 4 60 4 4 32 4 Z M 32 20 Q 44 32 32 44 Q 20 32 32 20 Z" '
    'fill="#602080" fill-rule="evenodd"/>',
    "semi-transparent": '<rect x="4" y="10" width="36" height="30" fill="#ff0000" fill-opacity="0.5"/>'
    '<circle cx="40" cy="36" r="20" fill="#0000ff" opacity="0.6"/>'
    '<polygon points="10,60 60,4 60,60" fill="#00aa00" fill-opacity="0.35"/>',
}


def document(body: str, size: int = 64) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}">{body}</svg>'


def resvg_render(svg: str) -> np.ndarray:
    png = bytes(resvg_py.svg_to_bytes(svg_string=svg, background="#ffffff"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64) / 255


@pytest.mark.parametrize("name", list(SHAPES))
def test_forward_render_agrees_with_resvg(name):
    """At 8 x 8 supersamples and a sharp edge, mean |diff| < 0.006 over the image (edges are anti-aliased by
    either renderer its own way) and < 2.5/255 on every pixel whose 3 x 3 neighbourhood is flat in resvg's render
    (off the edges: fill colours, fill rules, holes and the compositing order)."""
    svg = document(SHAPES[name])
    mine = render(read_svg(svg), 64, 64, RasterSettings(samples=8, softness=0.05)).permute(1, 2, 0).numpy()
    reference = resvg_render(svg)
    difference = np.abs(mine - reference)
    window = torch.from_numpy(reference).permute(2, 0, 1)[None]
    spread = F.max_pool2d(window, 3, 1, 1) + F.max_pool2d(-window, 3, 1, 1)
    flat = (spread.amax(1)[0] < 0.5 / 255).numpy()
    assert flat.mean() > 0.5, "most pixels are off the edges"
    assert difference.mean() < 0.006, difference.mean()
    assert difference[flat].max() < 2.5 / 255, difference[flat].max()


def gradient_scene() -> VectorScene:
    """A curved evenodd shape with a hole over a semi-transparent concave one, float64."""
    svg = document(SHAPES["curved-hole"] + '<path d="M 8 9 L 40 10 L 31 29 L 50 51 L 11 40 Z" fill="#30a0c0" '
                   'fill-opacity="0.7"/>', size=16 * 4)  # fmt: skip
    return read_svg(svg, dtype=torch.float64)


def test_gradients_match_finite_differences():
    """d(sum(render * weights)) / d(points, colours) from autograd against central differences, float64.

    23 px for a 64-unit canvas and no mirror symmetry: no vertex falls on a supersample and no supersample is
    equally near two segments (there the distance has a kink and central differences average its two slopes)."""
    settings = RasterSettings(samples=2, softness=0.6)
    scene = gradient_scene()
    weights = torch.rand(3, 23, 23, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    parameters = [*scene.point_tensors(), *scene.color_tensors()]
    for p in parameters:
        p.requires_grad_(True)

    def objective() -> torch.Tensor:
        return (render(scene, 23, 23, settings) * weights).sum()

    analytic = torch.autograd.grad(objective(), parameters)
    generator = torch.Generator().manual_seed(1)
    checked = 0
    with torch.no_grad():
        for p, grad in zip(parameters, analytic, strict=True):
            flat = p.view(-1)
            for i in torch.randperm(flat.numel(), generator=generator)[:12].tolist():
                step = 1e-5
                flat[i] += step
                up = objective()
                flat[i] -= 2 * step
                down = objective()
                flat[i] += step
                numeric = (up - down) / (2 * step)
                assert abs(float(numeric) - float(grad.view(-1)[i])) <= 1e-6 + 1e-4 * abs(float(numeric)), (p.shape, i)
                checked += bool(abs(float(numeric)) > 1e-3)
    assert checked > 20, "most checked derivatives are not zero"


ROUND_TRIP = document(
    SHAPES["curved-hole"] + SHAPES["semi-transparent"]
    + '<g transform="translate(3.25 -1) rotate(10)"><path d="M 10 10 A 8 5 30 1 1 30 20 Q 25 40 12 30" '
    'fill="#123456" fill-opacity="0.123"/></g>'
)  # fmt: skip


def scene_numbers(scene: VectorScene) -> list[list[float]]:
    return [t.tolist() for t in [*scene.point_tensors(), *scene.color_tensors()]] + [[scene.width, scene.height]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parse_write_parse_keeps_every_number(dtype):
    """Arcs, quadratics, lines, transforms, an open subpath: the written file reads back to the same points and
    colours, exactly, in either dtype; the fill rules and the number of subpaths too."""
    first = read_svg(ROUND_TRIP, dtype=dtype)
    second = read_svg(svg_text(first), dtype=dtype)
    assert scene_numbers(second) == scene_numbers(first)
    assert [(p.fill_rule, len(p.subpaths)) for p in second.paths] == [
        (p.fill_rule, len(p.subpaths)) for p in first.paths
    ]
    assert len(first.paths) == 5 and first.paths[0].fill_rule == "evenodd"


def test_written_optimised_numbers_read_back():
    """Optimised (arbitrary float) points read back exactly; colours to svgelements' 8 bits per channel."""
    scene = read_svg(ROUND_TRIP, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    for t in scene.point_tensors():
        t += torch.randn(t.shape, generator=generator, dtype=torch.float64)
    for t in scene.color_tensors():
        t.copy_(torch.rand(4, generator=generator, dtype=torch.float64))
    again = read_svg(svg_text(scene), dtype=torch.float64)
    for before, after in zip(scene.point_tensors(), again.point_tensors(), strict=True):
        assert torch.equal(before, after)
    for before, after in zip(scene.color_tensors(), again.color_tensors(), strict=True):
        assert (before - after).abs().max() <= 0.5 / 255 + 1e-12


def test_what_cannot_be_drawn_is_named_in_one_warning_and_nothing_fillable_is_an_error():
    svg = document(
        '<rect id="floor" width="10" height="10" fill="gray" stroke="black"/><text id="label">hi</text>'
        '<polyline id="wire" points="0,0 5,5" fill="none" stroke="blue"/><image width="2" height="2" href="a.png"/>'
        '<defs><linearGradient id="g"/></defs><circle id="sun" r="3" fill="url(#g)"/>'
    )
    with pytest.warns(UserWarning) as caught:
        scene = read_svg(svg)
    assert len(caught) == 1
    message = str(caught[0].message)
    for name in ("rect#floor's stroke", "text#label", "polyline#wire (stroke without fill)", "image", "circle#sun"):
        assert name in message
    assert len(scene.paths) == 1 and "\n" not in message
    with pytest.raises(UserError, match="no filled shape"), pytest.warns(UserWarning):
        read_svg(document('<polyline points="0,0 5,5" fill="none" stroke="blue"/>'))
    with pytest.raises(UserError, match="not a readable SVG"):
        read_svg("<svg><path d=")
