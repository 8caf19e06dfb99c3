"""Vector graphics: a differentiable rasterizer of filled cubic-Bézier paths and SVG in/out (no diffusion code)."""

from ids_nerfstudio.vector.raster import FilledPath, GradientFill, RasterSettings, VectorScene, render
from ids_nerfstudio.vector.svg import read_svg, svg_text, write_svg

__all__ = ["FilledPath", "GradientFill", "RasterSettings", "VectorScene", "read_svg", "render", "svg_text", "write_svg"]
