"""SVG in and out for the rasterizer: filled shapes to ``VectorScene`` (svgelements parses and applies transforms)
and back to a file any viewer opens.

Read: every shape (path, rect, circle, ellipse, polygon, polyline...) with a solid fill becomes a ``FilledPath``;
its lines, quadratics and arcs become cubics, an open subpath is closed (as SVG fills it), and transforms and the
viewBox are applied, so points are in the viewport's units. Colours are svgelements' 8 bits per channel, the alpha
is fill-opacity x opacity, a group's opacity multiplied into each shape inside it. Linear and radial gradient fills
(read from the XML: svgelements gives a gradient's attributes, not its stops; ``href`` chains followed) become a
``GradientFill`` in user units, stop alphas times the shape's fill-opacity x opacity. What the rasterizer cannot draw
(text, images, pattern fills, strokes, filters, clips and masks) is named in one warning line; a file with nothing
fillable is a ``UserError``.

Write: one ``<path>`` per shape with absolute cubic commands (numbers written exactly, ``repr`` of the float), the
fill as ``#rrggbb`` plus ``fill-opacity``, or a ``userSpaceOnUse`` gradient in ``<defs>`` with its whole transform
as ``gradientTransform``: reading a written file gives back the same points, gradients and colours.
"""

from __future__ import annotations

import copy
import io
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.etree.ElementTree import ParseError

import numpy as np
import svgelements as se
import torch
from jaxtyping import Float
from torch import Tensor

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.vector.raster import FilledPath, GradientFill, VectorScene

SVG_NS, XLINK_NS = "http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"
CONTAINERS = ("svg", "g", "a", "switch")
"""Elements whose opacity is a group opacity (passed down to the shapes inside them)."""

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
    path = copy.deepcopy(se.Path(shape))  # reify works in place, on segments a Path shares with its element
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


def local_name(node: ET.Element) -> str:
    return node.tag.rpartition("}")[2]


def declarations(node: ET.Element) -> dict[str, str]:
    """The element's presentation attributes with its ``style`` declarations over them."""
    values = {key: value for key, value in node.attrib.items() if "}" not in key}
    for item in node.attrib.get("style", "").split(";"):
        key, _, value = item.partition(":")
        if value.strip():
            values[key.strip()] = value.strip()
    return values


def fraction(value: str | float) -> float:
    """An opacity or offset (a number or a percentage) clamped to [0, 1]."""
    text = str(value).strip()
    number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    return min(1.0, max(0.0, number))


def push_group_opacity(node: ET.Element, inherited: float = 1.0) -> None:
    """Multiply every group's ``opacity`` into the shapes inside it (svgelements would let a shape's own opacity
    replace its group's, and a group's opacity is not an inherited property but a factor on all it holds)."""
    total = inherited * fraction(declarations(node).get("opacity", 1.0))
    if "style" in node.attrib:  # the opacity is written back as one attribute below
        node.set(
            "style", ";".join(d for d in node.attrib["style"].split(";") if d.partition(":")[0].strip() != "opacity")
        )
    node.attrib.pop("opacity", None)
    if local_name(node) in CONTAINERS:
        for child in node:
            push_group_opacity(child, total)
    elif total != 1.0:
        node.set("opacity", repr(total))


def prepared(text: str) -> tuple[str, dict[str, ET.Element]]:
    """The SVG with group opacities multiplied into its shapes, and its elements by id (for gradient fills)."""
    root = ET.fromstring(text)
    push_group_opacity(root)
    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", XLINK_NS)
    return ET.tostring(root, encoding="unicode"), {
        node.attrib["id"]: node for node in root.iter() if "id" in node.attrib
    }


def svg_matrix(matrix: se.Matrix) -> np.ndarray:
    """An svgelements matrix as a 3 x 3 array acting on column vectors (x, y, 1)."""
    return np.array([[matrix.a, matrix.c, matrix.e], [matrix.b, matrix.d, matrix.f], [0.0, 0.0, 1.0]])


def gradient_chain(node: ET.Element, by_id: dict[str, ET.Element]) -> tuple[dict[str, str], list[ET.Element]]:
    """A gradient's attributes and stops, with those it leaves out taken from the gradients it ``href``s."""
    attributes: dict[str, str] = {}
    stops: list[ET.Element] = []
    seen: set[int] = set()
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for key, value in declarations(node).items():
            attributes.setdefault(key, value)
        stops = stops or [child for child in node if local_name(child) == "stop"]
        reference = node.attrib.get(f"{{{XLINK_NS}}}href", node.attrib.get("href", ""))
        node = by_id.get(reference[1:]) if reference.startswith("#") else None
    return attributes, stops


def read_gradient(
    node: ET.Element, by_id: dict[str, ET.Element], shape: se.Shape, alpha: float, viewport: tuple[float, float],
    dtype: torch.dtype, device: torch.device | str,
) -> GradientFill | None:  # fmt: skip
    """The gradient paint of a shape in the scene's user units (None when SVG paints nothing: no stops, or an
    object-bounding-box gradient on a shape without area). ``alpha`` (fill-opacity x opacity) multiplies the stops'."""
    attributes, stop_nodes = gradient_chain(node, by_id)
    if not stop_nodes:
        return None
    kind = "linear" if local_name(node) == "linearGradient" else "radial"
    on_box = attributes.get("gradientUnits", "objectBoundingBox") != "userSpaceOnUse"
    width, height = viewport
    references = {key: width for key in ("x1", "x2", "cx", "fx")} | {key: height for key in ("y1", "y2", "cy", "fy")}
    references["r"] = float(np.hypot(width, height) / np.sqrt(2))

    def length(key: str, default: str) -> float:  # a percentage of the box (1) or of the viewport
        text = attributes.get(key, default)
        return float(se.Length(text).value(relative_length=1.0 if on_box else references[key]))

    if kind == "linear":
        geometry = [length("x1", "0"), length("y1", "0"), length("x2", "100%"), length("y2", "0")]
    else:
        cx, cy = length("cx", "50%"), length("cy", "50%")
        geometry = [cx, cy, length("r", "50%"), length("fx", attributes.get("cx", "50%")),
                    length("fy", attributes.get("cy", "50%"))]  # fmt: skip
    box = np.eye(3)
    if on_box:
        local = copy.deepcopy(se.Path(shape))
        local.transform = se.Matrix()  # the box in the shape's own units (before its transform)
        x0, y0, x1, y1 = local.bbox()
        if not (x1 > x0 and y1 > y0):
            return None
        box = np.array([[x1 - x0, 0.0, x0], [0.0, y1 - y0, y0], [0.0, 0.0, 1.0]])
    matrix = svg_matrix(shape.transform) @ box @ svg_matrix(se.Matrix(attributes.get("gradientTransform", "")))
    offsets, colors = [], []
    for stop in stop_nodes:
        values = declarations(stop)
        offsets.append(max(fraction(values.get("offset", 0.0)), offsets[-1] if offsets else 0.0))
        color = se.Color(values.get("stop-color", "black"))
        opacity = fraction(values.get("stop-opacity", 1.0))
        colors.append([color.red / 255, color.green / 255, color.blue / 255, color.alpha / 255 * opacity * alpha])
    spread = attributes.get("spreadMethod", "pad")
    return GradientFill(
        kind=kind,
        geometry=torch.tensor(geometry, dtype=torch.float64).to(dtype=dtype, device=device),
        transform=torch.tensor(matrix[:2].T.reshape(-1), dtype=torch.float64).to(dtype=dtype, device=device),
        offsets=torch.tensor(offsets, dtype=torch.float64).to(dtype=dtype, device=device),
        stops=torch.tensor(colors, dtype=torch.float64).to(dtype=dtype, device=device),
        spread=spread if spread in ("reflect", "repeat") else "pad",
    )


def read_svg(
    source: Path | str, *, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", flag: str = "--svg"
) -> VectorScene:
    """Parse an SVG file (or SVG text) into a scene; warns once, naming what it leaves out."""
    text = source.read_text() if isinstance(source, Path) else source
    where = f"{flag} {source}" if isinstance(source, Path) else flag
    try:
        text, by_id = prepared(text)
        document = se.SVG.parse(io.StringIO(text), reify=False)  # shapes keep their transform (gradients need it)
    except (ParseError, ValueError, TypeError) as error:
        raise UserError(f"{where}: not a readable SVG ({error}); pass an SVG file") from error
    width, height = float(document.width or 0), float(document.height or 0)
    if not (width > 0 and height > 0):
        raise UserError(f"{where}: the SVG has no size (set width and height or a viewBox)")
    viewbox = document.viewbox
    viewport = (float(viewbox.width), float(viewbox.height)) if viewbox is not None else (width, height)
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
        gradient = None
        if fill.startswith("url("):
            node = by_id.get(fill[4:].partition(")")[0].strip().strip("'\"").lstrip("#"))
            if node is None or local_name(node) not in ("linearGradient", "radialGradient"):
                left_out.append(f"{name} ({'pattern' if node is not None else 'undefined'} fill {fill})")
                continue
        elif element.fill is None or element.fill.value is None:
            if stroked:
                left_out.append(f"{name} (stroke without fill)")
            continue
        if stroked:
            left_out.append(f"{name}'s stroke")
        left_out += [f"{name}'s {key}" for key in NOT_DRAWN_ATTRIBUTES if values.get(key) not in (None, "none")]
        subpaths = [points for points in cubic_subpaths(element) if len(points) >= 3]
        if not subpaths:
            continue
        # fill-opacity (inherited) x opacity (the groups' multiplied in by ``prepared``), read exactly
        alpha = fraction(values.get("fill-opacity", 1.0)) * fraction(values.get("opacity", 1.0))
        color = None
        if fill.startswith("url("):
            gradient = read_gradient(node, by_id, element, alpha, viewport, dtype, device)
            if gradient is None:  # SVG paints nothing
                left_out.append(f"{name} ({fill} paints nothing: no stops, or a box without area)")
                continue
        else:
            own = se.Color(fill).alpha / 255 if fill and fill != "currentColor" else 1.0  # rgba() / #rrggbbaa
            rgb = element.fill
            color = torch.tensor([rgb.red / 255, rgb.green / 255, rgb.blue / 255, own * alpha], dtype=dtype,
                                 device=device)  # fmt: skip
        scene.paths.append(
            FilledPath(
                subpaths=[
                    torch.tensor([[p.real, p.imag] for p in points], dtype=dtype, device=device) for points in subpaths
                ],
                color=color,
                fill_rule="evenodd" if values.get("fill-rule") == "evenodd" else "nonzero",
                name=name,
                gradient=gradient,
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


def color_attributes(rgba: list[float], color: str, opacity: str) -> str:
    """``color="#rrggbb" opacity="a"``: the channels rounded to 8 bits (svgelements reads them so), the alpha exact."""
    r, g, b = (min(255, max(0, round(c * 255))) for c in rgba[:3])
    return f'{color}="#{r:02x}{g:02x}{b:02x}" {opacity}="{number(min(1.0, max(0.0, rgba[3])))}"'


def gradient_element(gradient: GradientFill, identifier: str) -> str:
    """The gradient in user units (its whole transform as gradientTransform), with its stops."""
    keys = ("x1", "y1", "x2", "y2") if gradient.kind == "linear" else ("cx", "cy", "r", "fx", "fy")
    geometry = " ".join(f'{k}="{number(v)}"' for k, v in zip(keys, gradient.geometry.tolist(), strict=True))
    matrix = " ".join(number(v) for v in gradient.transform.tolist())
    stops = "".join(
        f'<stop offset="{number(offset)}" {color_attributes(rgba, "stop-color", "stop-opacity")}/>'
        for offset, rgba in zip(gradient.offsets.tolist(), gradient.stops.detach().cpu().double().tolist(), strict=True)
    )
    tag = f"{gradient.kind}Gradient"
    return (f'<{tag} id="{identifier}" gradientUnits="userSpaceOnUse" {geometry} gradientTransform="matrix({matrix})" '
            f'spreadMethod="{gradient.spread}">{stops}</{tag}>')  # fmt: skip


def svg_text(scene: VectorScene) -> str:
    """The scene as an SVG document (colour channels rounded to 8 bits, as svgelements reads them; all else exact)."""
    lines = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{number(scene.width)}" height="{number(scene.height)}" '
        f'viewBox="0 0 {number(scene.width)} {number(scene.height)}">'
    ]
    gradients = [(f"fill{i}", path.gradient) for i, path in enumerate(scene.paths) if path.gradient is not None]
    if gradients:
        lines += ["  <defs>", *(f"    {gradient_element(g, identifier)}" for identifier, g in gradients), "  </defs>"]
    for i, path in enumerate(scene.paths):
        if path.gradient is None:
            fill = color_attributes(path.color.detach().cpu().double().tolist(), "fill", "fill-opacity")
        else:
            fill = f'fill="url(#fill{i})"'
        lines.append(f'  <path d="{path_data(path.subpaths)}" {fill} fill-rule="{path.fill_rule}"/>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_svg(scene: VectorScene, path: Path) -> None:
    """Write ``svg_text(scene)`` to ``path``."""
    path.write_text(svg_text(scene))
