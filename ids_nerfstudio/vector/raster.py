"""A differentiable rasterizer of filled vector paths in pure PyTorch (what diffvg does for PDS's SVG editing).

A scene is a list of filled paths painted in document order over a background. A path is one or more closed
subpaths of cubic Béziers (lines, quadratics and arcs are converted to cubics by the SVG reader) with a fill rule and
a solid RGBA fill or a linear or radial gradient (stops interpolated per supersample: differentiable in the stop
colours). Per path:

1. each cubic is flattened into K line segments (K from the curve's second-derivative bound, so the chord error
   stays under ``tolerance`` pixels); the segments are differentiable in the control points;
2. only the supersamples inside the path's bounding box (plus the sigmoid's reach) are visited;
3. without gradient, per sample: the winding number from the segments (crossing test; non-zero or even-odd
   inside), the nearest segment, and whether that segment is a real boundary there (a probe just across it
   is on the other side: inner edges of a self-overlapping non-zero path are not);
4. with gradient, only the distance to that one segment: coverage = sigmoid(+-distance / softness) at a boundary,
   the hard inside test elsewhere. Gradients reach the control points through the distance and the colour through
   the compositing; memory is O(samples), not O(samples x segments).

The supersampled canvas is box-filtered to the output size. Device and dtype follow the scene's tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

FillRule = Literal["nonzero", "evenodd"]

SIGMOID_REACH = 12.0
"""Beyond this many softness units from the boundary the sigmoid is within 6e-6 of 0 or 1: samples farther than
that from a path's control-point box are not visited."""


SpreadMethod = Literal["pad", "reflect", "repeat"]


@dataclass
class GradientFill:
    """A linear or radial gradient paint (SVG's ``linearGradient`` / ``radialGradient``), stops in offset order.

    The geometry is in the gradient's own space; ``transform`` maps it to the scene's user units (the SVG matrix
    ``a b c d e f``: x' = a x + c y + e, y' = b x + d y + f), which holds the shape's transform, the object bounding
    box and ``gradientTransform`` together.
    """

    kind: Literal["linear", "radial"]
    """linear: the colour varies along x1,y1 -> x2,y2; radial: from the focal point fx,fy out to the circle."""
    geometry: Float[Tensor, " G"]
    """linear: (x1, y1, x2, y2); radial: (cx, cy, r, fx, fy)."""
    transform: Float[Tensor, "6"]
    """Gradient space to user units, as SVG's matrix(a b c d e f)."""
    offsets: Float[Tensor, " K"]
    """Stop offsets in [0, 1], non-decreasing."""
    stops: Float[Tensor, "K 4"]
    """Stop colours RGBA in [0, 1], not premultiplied (the alpha holds stop-opacity x the shape's fill-opacity x
    opacity); the optimiser's colour parameters of the path."""
    spread: SpreadMethod = "pad"
    """What lies beyond the ends: the end colours (pad), mirrored (reflect) or repeated (repeat) stops."""


@dataclass
class FilledPath:
    """One filled shape: closed subpaths of cubic Béziers sharing a fill (a colour or a gradient) and a fill rule.

    A subpath of S cubics is a (3S, 2) tensor ``[p0, c0, d0, p1, c1, d1, ...]``: cubic i runs from ``p_i`` through
    the controls ``c_i, d_i`` to ``p_{i+1}`` (to ``p0`` for the last one), so neighbouring cubics share their end
    points and the subpath is closed by construction.
    """

    subpaths: list[Float[Tensor, "N 2"]]
    """Control points of each closed subpath, in the scene's user units (x right, y down)."""
    color: Float[Tensor, "4"] | None
    """Solid fill colour RGBA in [0, 1], not premultiplied (None with a gradient fill)."""
    fill_rule: FillRule = "nonzero"
    """SVG fill-rule: which winding numbers are inside."""
    name: str = "path"
    """Where it came from (the SVG element's tag and id), for messages."""
    gradient: GradientFill | None = None
    """Gradient fill (instead of ``color``)."""

    def __post_init__(self) -> None:
        if (self.color is None) == (self.gradient is None):
            raise ValueError(f"{self.name}: a path is filled with either a colour or a gradient")

    def paint(self) -> Tensor:
        """The fill's colour parameters: the RGBA colour, or the gradient's (K, 4) stops."""
        return self.color if self.gradient is None else self.gradient.stops


@dataclass
class VectorScene:
    """Filled paths on a canvas of ``width`` x ``height`` user units, painted in list order."""

    width: float
    """Canvas width in user units (the SVG's viewport)."""
    height: float
    """Canvas height in user units."""
    paths: list[FilledPath] = field(default_factory=list)
    """The shapes, back to front."""

    def point_tensors(self) -> list[Tensor]:
        """Every subpath's control points (the optimiser's point parameters)."""
        return [points for path in self.paths for points in path.subpaths]

    def color_tensors(self) -> list[Tensor]:
        """Every path's RGBA fill or gradient stops (the optimiser's colour parameters)."""
        return [path.paint() for path in self.paths]


def cubic_controls(subpath: Float[Tensor, "N 2"]) -> Float[Tensor, "S 4 2"]:
    """The four control points of each cubic of a closed subpath."""
    if subpath.shape[0] % 3:
        raise ValueError(f"a closed cubic subpath has 3 points per segment, got {subpath.shape[0]} points")
    ends = subpath[0::3]
    return torch.stack([ends, subpath[1::3], subpath[2::3], ends.roll(-1, dims=0)], dim=1)


def flattening_segments(controls: Float[Tensor, "S 4 2"], tolerance: float, max_segments: int) -> int:
    """Line segments per cubic so that the chord error is under ``tolerance`` (same units as the controls).

    A cubic's second derivative is bounded by 6 max(|P0 - 2P1 + P2|, |P1 - 2P2 + P3|) and a chord over a parameter
    step h deviates from the curve by at most h^2/8 times that bound.
    """
    with torch.no_grad():
        second = torch.stack(
            [controls[:, 0] - 2 * controls[:, 1] + controls[:, 2], controls[:, 1] - 2 * controls[:, 2] + controls[:, 3]]
        )
        bound = 6 * float(second.norm(dim=-1).max()) if controls.numel() else 0.0
    return int(min(max_segments, max(1, math.ceil(math.sqrt(bound / (8 * tolerance))))))


def flatten(controls: Float[Tensor, "S 4 2"], segments: int) -> tuple[Float[Tensor, "M 2"], Float[Tensor, "M 2"]]:
    """Start and end points of the ``segments`` chords of each cubic (M = S * segments), differentiable."""
    t = torch.linspace(0, 1, segments + 1, dtype=controls.dtype, device=controls.device)[:, None]
    basis = torch.cat([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], dim=1)  # Bernstein, (K+1, 4)
    points = torch.einsum("kj,sjd->skd", basis, controls)
    return points[:, :-1].reshape(-1, 2), points[:, 1:].reshape(-1, 2)


def winding_numbers(
    samples: Float[Tensor, "P 2"], start: Float[Tensor, "M 2"], end: Float[Tensor, "M 2"]
) -> Int[Tensor, " P"]:
    """Winding number of the closed polylines around each sample (+1 per upward crossing on the left, -1 down)."""
    x, y = samples[:, 0:1], samples[:, 1:2]
    ax, ay, bx, by = start[:, 0], start[:, 1], end[:, 0], end[:, 1]
    cross = (bx - ax) * (y - ay) - (x - ax) * (by - ay)
    up = (ay <= y) & (by > y) & (cross > 0)
    down = (by <= y) & (ay > y) & (cross < 0)
    return up.sum(1) - down.sum(1)


def inside(winding: Int[Tensor, " P"], fill_rule: FillRule) -> Bool[Tensor, " P"]:
    """SVG's fill rules."""
    return winding % 2 == 1 if fill_rule == "evenodd" else winding != 0


def closest_on_segments(
    samples: Float[Tensor, "P 2"], start: Float[Tensor, "P 2"], end: Float[Tensor, "P 2"]
) -> Float[Tensor, "P 2"]:
    """The point of each sample's segment nearest to it (rows paired)."""
    edge = end - start
    length2 = (edge * edge).sum(-1).clamp_min(torch.finfo(edge.dtype).tiny)
    t = (((samples - start) * edge).sum(-1) / length2).clamp(0, 1)
    return start + t[:, None] * edge


def nearest_segment(
    samples: Float[Tensor, "P 2"], start: Float[Tensor, "M 2"], end: Float[Tensor, "M 2"]
) -> tuple[Int[Tensor, " P"], Float[Tensor, " P"]]:
    """Index of the nearest segment of each sample and the distance to it."""
    edge = end - start
    length2 = (edge * edge).sum(-1).clamp_min(torch.finfo(edge.dtype).tiny)
    offset = samples[:, None, :] - start
    t = ((offset * edge).sum(-1) / length2).clamp(0, 1)
    gap = offset - t[..., None] * edge
    distance2, index = (gap * gap).sum(-1).min(dim=1)
    return index, distance2.sqrt()


@dataclass
class RasterSettings:
    """How a scene is rasterized."""

    samples: int = 2
    """Supersamples per pixel along each axis (PDS's official renders use 2 x 2)."""
    softness: float = 0.15
    """Scale of the edge sigmoid in output pixels (10-90 % of the edge within 4.4 x this, about half a pixel)."""
    tolerance: float = 0.1
    """Largest distance in output pixels between a cubic and its flattened polyline."""
    max_segments: int = 64
    """Most line segments per cubic."""
    chunk: int = 1 << 22
    """Sample x segment pairs evaluated at once in the gradient-free pass (bounds its memory)."""


def box_samples(box: tuple[int, int, int, int], per_unit: tuple[float, float], like: Tensor) -> Float[Tensor, "P 2"]:
    """(x, y) of the supersample centres of a (y0, y1, x0, x1) box of the supersample grid, row by row, in units of
    which ``per_unit`` (x, y) supersamples make one."""
    y0, y1, x0, x1 = box
    ys = (torch.arange(y0, y1, dtype=like.dtype, device=like.device) + 0.5) / per_unit[1]
    xs = (torch.arange(x0, x1, dtype=like.dtype, device=like.device) + 0.5) / per_unit[0]
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)


def path_coverage(
    path: FilledPath,
    scale: tuple[float, float],
    grid: tuple[int, int],
    settings: RasterSettings,
) -> tuple[Float[Tensor, "h w"], tuple[int, int, int, int]] | None:
    """Soft coverage of one path on the supersample grid, restricted to its box: (coverage, (y0, y1, x0, x1)).

    ``scale`` maps user units to output pixels; ``grid`` is the supersampled (height, width). None when the path
    misses the canvas.
    """
    subpaths = [points for points in path.subpaths if points.shape[0] >= 3]
    if not subpaths:
        return None
    sx, sy = scale
    factor = torch.tensor([sx, sy], dtype=subpaths[0].dtype, device=subpaths[0].device)
    controls = torch.cat([cubic_controls(points * factor) for points in subpaths])  # in output pixels
    start, end = flatten(controls, flattening_segments(controls, settings.tolerance, settings.max_segments))

    n = settings.samples
    reach = SIGMOID_REACH * settings.softness
    with torch.no_grad():  # the box of the control points holds the curves (convex hull)
        low, high = (controls.reshape(-1, 2).amin(0) - reach) * n, (controls.reshape(-1, 2).amax(0) + reach) * n
    x0, y0 = max(0, math.floor(float(low[0]))), max(0, math.floor(float(low[1])))
    x1, y1 = min(grid[1], math.ceil(float(high[0]))), min(grid[0], math.ceil(float(high[1])))
    if x1 <= x0 or y1 <= y0:
        return None
    samples = box_samples((y0, y1, x0, x1), (n, n), controls)

    with torch.no_grad():
        is_inside, index, near, inside_left = classify(
            samples, start.detach(), end.detach(), path.fill_rule, reach, settings
        )
    coverage = is_inside.to(controls.dtype)
    if near.any():
        rows = near.nonzero().squeeze(1)
        picked = samples[rows]
        a, b = start[index[rows]], end[index[rows]]
        closest = closest_on_segments(picked, a, b)
        distance = ((picked - closest) ** 2).sum(-1).clamp_min(1e-12).sqrt()
        # the foot inside the segment: the distance along the normal, smooth through zero (samples on the edge
        # keep their gradient); at an end point: the distance to it, signed by the winding test
        edge = b - a
        normal = torch.stack([-edge[:, 1], edge[:, 0]], dim=-1) / edge.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        across = ((picked - a) * normal).sum(-1) * torch.where(inside_left[rows], 1.0, -1.0).to(normal.dtype)
        at_end = ((closest - a).abs().sum(-1) < 1e-12) | ((closest - b).abs().sum(-1) < 1e-12)
        signed = torch.where(at_end, torch.where(is_inside[rows], distance, -distance), across)
        coverage = coverage.index_put((rows,), torch.sigmoid(signed / settings.softness))
    return coverage.reshape(y1 - y0, x1 - x0), (y0, y1, x0, x1)


def classify(
    samples: Float[Tensor, "P 2"],
    start: Float[Tensor, "M 2"],
    end: Float[Tensor, "M 2"],
    fill_rule: FillRule,
    reach: float,
    settings: RasterSettings,
) -> tuple[Bool[Tensor, " P"], Int[Tensor, " P"], Bool[Tensor, " P"], Bool[Tensor, " P"]]:
    """(inside, nearest segment, near a real boundary, inside on the segment's left) per sample, in chunks
    of ``settings.chunk`` pairs.

    A nearest segment is a real boundary when two probes just either side of it (at the sample's foot on it, kept off
    its end points so that sharp corners probe the right sides) differ in inside-ness: the crossing edges inside a
    self-overlapping non-zero path are not.
    """
    rows = max(1, settings.chunk // max(1, start.shape[0]))
    is_inside, index, near, inside_left = [], [], [], []
    for begin in range(0, samples.shape[0], rows):
        chunk = samples[begin : begin + rows]
        chunk_inside = inside(winding_numbers(chunk, start, end), fill_rule)
        chunk_index, distance = nearest_segment(chunk, start, end)
        chunk_near = distance < reach
        chunk_left = torch.zeros_like(chunk_near)
        candidates = chunk_near.nonzero().squeeze(1)
        if candidates.numel():  # probe either side of the nearest segment, off its ends (sharp corners stay right)
            segment = chunk_index[candidates]
            a, b = start[segment], end[segment]
            edge = b - a
            length = edge.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(edge.dtype).tiny)
            along = ((chunk[candidates] - a) * edge).sum(-1, keepdim=True) / length**2
            margin = (0.1 * settings.softness / length).clamp(max=0.5)
            anchor = a + along.clamp(margin, 1 - margin) * edge
            normal = torch.cat([-edge[:, 1:], edge[:, :1]], dim=-1) / length
            offset = normal * (1e-3 * settings.softness)
            probes = winding_numbers(torch.cat([anchor + offset, anchor - offset]), start, end)
            left, right = inside(probes, fill_rule).chunk(2)
            chunk_near[candidates] = left != right
            chunk_left[candidates] = left
        is_inside.append(chunk_inside)
        index.append(chunk_index)
        near.append(chunk_near)
        inside_left.append(chunk_left)
    return torch.cat(is_inside), torch.cat(index), torch.cat(near), torch.cat(inside_left)


def spread_parameter(t: Tensor, spread: SpreadMethod) -> Tensor:
    """The gradient parameter folded into [0, 1] by the spread method (pad clamps it when the stops are looked up)."""
    if spread == "repeat":
        return t - torch.floor(t)
    if spread == "reflect":
        return 1 - (t.remainder(2) - 1).abs()
    return t


def stop_colors(
    t: Float[Tensor, " P"], offsets: Float[Tensor, " K"], stops: Float[Tensor, "K 4"]
) -> Float[Tensor, "P 4"]:
    """Stops interpolated linearly at ``t`` (non-premultiplied, as SVG), the end stops beyond the ends: the first
    colour plus, per pair of neighbouring stops, its difference times the share of that interval ``t`` has passed
    (a step where two offsets are equal). Linear in the stop colours."""
    low, high = offsets[:-1], offsets[1:]
    width = high - low
    passed = torch.where(
        width > 0, ((t[:, None] - low) / width.clamp_min(1e-12)).clamp(0, 1), (t[:, None] >= low).to(t.dtype)
    )
    return stops[0] + passed @ (stops[1:] - stops[:-1])


def gradient_parameter(gradient: GradientFill, points: Float[Tensor, "P 2"]) -> Float[Tensor, " P"]:
    """Where each point (user units) falls along the gradient: 0 at the start (x1,y1 / the focal point), 1 at the
    end (x2,y2 / the circle)."""
    a, b, c, d, e, f = gradient.transform.to(points.dtype).unbind()
    x, y = points[:, 0] - e, points[:, 1] - f
    determinant = a * d - b * c
    u, v = (d * x - c * y) / determinant, (a * y - b * x) / determinant  # the inverse matrix: gradient space
    g = gradient.geometry.to(points.dtype)
    if gradient.kind == "linear":
        dx, dy = g[2] - g[0], g[3] - g[1]
        return ((u - g[0]) * dx + (v - g[1]) * dy) / (dx * dx + dy * dy).clamp_min(1e-12)
    cx, cy, r, fx, fy = g.unbind()
    # the focal point kept inside the circle (SVG 1.1 moves an outside one onto it; a hair inside stays solvable)
    ex, ey = cx - fx, cy - fy
    reach = torch.sqrt(ex * ex + ey * ey)
    pull = torch.where(reach > 0.999 * r, 0.999 * r / reach.clamp_min(1e-12), torch.ones_like(reach))
    ex, ey = ex * pull, ey * pull
    # t >= 0 with |p - (focal + t (centre - focal))| = t r: a t^2 - 2 b t + |p - focal|^2 = 0, a = |e|^2 - r^2 < 0
    px, py = u - (cx - ex), v - (cy - ey)
    quadratic = ex * ex + ey * ey - r * r
    linear = px * ex + py * ey
    return (linear - torch.sqrt((linear * linear - quadratic * (px * px + py * py)).clamp_min(0))) / quadratic


def gradient_paint(gradient: GradientFill, points: Float[Tensor, "P 2"]) -> Float[Tensor, "P 4"]:
    """RGBA of the gradient at each point (user units)."""
    t = spread_parameter(gradient_parameter(gradient, points), gradient.spread)
    return stop_colors(t, gradient.offsets.to(points.dtype), gradient.stops)


def render(
    scene: VectorScene,
    height: int,
    width: int,
    settings: RasterSettings | None = None,
    background: Float[Tensor, "3"] | None = None,
) -> Float[Tensor, "3 H W"]:
    """The scene's paths composited in order over ``background`` (default white), box-filtered supersamples."""
    settings = settings or RasterSettings()
    reference = next(iter(scene.color_tensors()), torch.ones(3))
    n = settings.samples
    grid = (height * n, width * n)
    if background is None:
        background = torch.ones(3, dtype=reference.dtype, device=reference.device)
    canvas = background[:, None, None].expand(3, *grid).clone()
    scale = (width / scene.width, height / scene.height)
    for path in scene.paths:
        found = path_coverage(path, scale, grid, settings)
        if found is None:
            continue
        coverage, (y0, y1, x0, x1) = found
        if path.gradient is None:
            color = path.color[:, None, None]
        else:  # the paint at each supersample centre of the box, in user units
            points = box_samples((y0, y1, x0, x1), (n * scale[0], n * scale[1]), canvas)
            color = gradient_paint(path.gradient, points).T.reshape(4, y1 - y0, x1 - x0)
        alpha = color[3] * coverage
        under = canvas[:, y0:y1, x0:x1].clone()  # kept for the backward pass; the canvas changes in place
        canvas[:, y0:y1, x0:x1] = under * (1 - alpha) + color[:3] * alpha
    return F.avg_pool2d(canvas[None], n)[0] if n > 1 else canvas
