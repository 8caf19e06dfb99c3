"""SVG in and out for the rasterizer: filled shapes to ``VectorScene`` (svgelements parses and applies transforms)
and back to a file any viewer opens.

Read: every shape (path, rect, circle, ellipse, polygon, polyline...) with a solid fill becomes a ``FilledPath``;
its lines, quadratics and arcs become cubics, an open subpath is closed (as SVG fills it), and transforms and the
viewBox are applied, so points are in the viewport's units. Colours are svgelements' 8 bits per channel, the alpha
is fill-opacity x opacity. What the rasterizer cannot draw (text, images, gradient or pattern fills, strokes,
filters, clips and masks) is named in one warning line; a file with nothing fillable is a ``UserError``.

Write: one ``<path>`` per shape with absolute cubic commands (numbers written exactly, ``repr`` of the float), the
fill as ``#rrggbb`` plus ``fill-opacity``: reading a written file gives back the same points and colours.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from xml.etree.ElementTree import ParseError

import svgelements as se
import torch
from jaxtyping import Float
from torch import Tensor

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.vector.raster import FilledPath, VectorScene

NOT_DRAWN_ATTRIBUTES = ("filter", "clip-path", "mask")
"""Attributes whose effect the rasterizer leaves out (the shape itself is still drawn)."""


def element_name(element: se.SVGElement, position: int) -> str:
    """``tag#id``, or ``tag #n`` (its position among the document's elements) without an id."""
    tag = type(element).__name__.lower()
    return f"{tag}#{element.id}" if getattr(element, "id", None) else f"{tag} #{position}"


def line_controls(start: complex, end: complex) -> list[complex]:
    """A straight segment as a cubic (controls at thirds, so the parametrisation stays uniform)."""
    return [start, start + (end - start) / 3, start + 2 * (end - start) / 3]


def quadratic_controls(start: complex, control: complex, end: complex) -> list[complex]:
    """Degree elevation of a quadratic Bézier to a cubic."""
    return [start, start + 2 * (control - start) / 3, end + 2 * (control - end) / 3]


def cubic_subpaths(shape: se.Shape) -> list[list[complex]]:
    """The shape's closed subpaths, each as [p0, c0, d0, p1, ...] (see ``FilledPath``) in complex numbers."""
    path = se.Path(shape)
    path.reify()
    subpaths: list[list[complex]] = []
    current: list[complex] = []
    first = here = None

    def close() -> None:
        if current and here is not None and first is not None and here != first:
            current.extend(line_controls(here, first))
        if current:
            subpaths.append(list(current))
        current.clear()

    for segment in path.segments():
        if isinstance(segment, se.Move):
            close()
            first = here = complex(segment.end)
            continue
        if isinstance(segment, se.Close):
            close()
            here = first
            continue
        start, end = complex(segment.start), complex(segment.end)
        if isinstance(segment, se.Line):
            pieces = [line_controls(start, end)]
        elif isinstance(segment, se.QuadraticBezier):
            pieces = [quadratic_controls(start, complex(segment.control), end)]
        elif isinstance(segment, se.CubicBezier):
            pieces = [[start, complex(segment.control1), complex(segment.control2)]]
        elif isinstance(segment, se.Arc):
            pieces = [[complex(c.start), complex(c.control1), complex(c.control2)] for c in segment.as_cubic_curves()]
        else:
            raise UserError(f"unsupported SVG path segment {type(segment).__name__}")
        for piece in pieces:
            current.extend(piece)
        here = end
    close()
    return subpaths


def read_svg(
    source: Path | str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", flag: str = "--svg"
) -> VectorScene:
    """Parse an SVG file (or SVG text) into a scene; warns once, naming what it leaves out."""
    text = source.read_text() if isinstance(source, Path) else source
    where = f"{flag} {source}" if isinstance(source, Path) else flag
    try:
        document = se.SVG.parse(io.StringIO(text), reify=True)
    except (ParseError, ValueError, TypeError) as error:
        raise UserError(f"{where}: not a readable SVG ({error}); pass an SVG file") from error
    width, height = float(document.width or 0), float(document.height or 0)
    if not (width > 0 and height > 0):
        raise UserError(f"{where}: the SVG has no size (set width and height or a viewBox)")
    scene = VectorScene(width=width, height=height)
    left_out: list[str] = []
    for position, element in enumerate(document.elements()):
        name = element_name(element, position)
        if isinstance(element, (se.Text, se.Image)):
            left_out.append(f"{name} ({'text' if isinstance(element, se.Text) else 'raster image'})")
            continue
        if not isinstance(element, se.Shape):
            continue
        values = element.values
        fill = str(values.get("fill", "")).strip()
        stroked = element.stroke is not None and element.stroke.value is not None and (element.stroke_width or 0) > 0
        if fill.startswith("url("):
            left_out.append(f"{name} (gradient or pattern fill)")
            continue
        if element.fill is None or element.fill.value is None:
            if stroked:
                left_out.append(f"{name} (stroke without fill)")
            continue
        if stroked:
            left_out.append(f"{name}'s stroke")
        left_out += [f"{name}'s {key}" for key in NOT_DRAWN_ATTRIBUTES if values.get(key) not in (None, "none")]
        subpaths = [points for points in cubic_subpaths(element) if len(points) >= 3]
        if not subpaths:
            continue
        opacity = float(values.get("opacity", 1.0))
        color = element.fill
        scene.paths.append(
            FilledPath(
                subpaths=[
                    torch.tensor([[p.real, p.imag] for p in points], dtype=dtype, device=device) for points in subpaths
                ],
                color=torch.tensor(
                    [color.red / 255, color.green / 255, color.blue / 255, color.alpha / 255 * opacity],
                    dtype=dtype,
                    device=device,
                ),
                fill_rule="evenodd" if values.get("fill-rule") == "evenodd" else "nonzero",
                name=name,
            )
        )
    if left_out:
        warnings.warn(f"{where}: not drawn or edited: {', '.join(left_out)}", stacklevel=2)
    if not scene.paths:
        raise UserError(f"{where}: no filled shape to edit (only strokes, text, images or gradients); pass an SVG "
                        "with filled paths")  # fmt: skip
    return scene


def number(value: float) -> str:
    """A float written so that parsing it gives it back exactly."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def path_data(subpaths: list[Float[Tensor, "N 2"]]) -> str:
    """Absolute ``M x,y C ... Z`` commands, the last cubic ending at the start point."""
    commands = []
    for points in subpaths:
        xy = [(number(x), number(y)) for x, y in points.detach().cpu().double().tolist()]
        ring = [*xy, xy[0]]
        commands.append(f"M {ring[0][0]},{ring[0][1]}")
        for i in range(1, len(ring), 3):
            commands.append("C " + " ".join(f"{x},{y}" for x, y in ring[i : i + 3]))
        commands.append("Z")
    return " ".join(commands)


def svg_text(scene: VectorScene) -> str:
    """The scene as an SVG document (colours rounded to 8 bits per channel, as svgelements reads them)."""
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{number(scene.width)}" height="{number(scene.height)}" '
        f'viewBox="0 0 {number(scene.width)} {number(scene.height)}">'
    ]
    for path in scene.paths:
        r, g, b, a = (min(255, max(0, round(float(c) * 255))) for c in path.color.detach().cpu().tolist())
        lines.append(
            f'  <path d="{path_data(path.subpaths)}" fill="#{r:02x}{g:02x}{b:02x}" fill-opacity="{number(a / 255)}" '
            f'fill-rule="{path.fill_rule}"/>'
        )
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(scene: VectorScene, path: Path) -> None:
    """Write ``svg_text(scene)`` to ``path``."""
    path.write_text(svg_text(scene))
