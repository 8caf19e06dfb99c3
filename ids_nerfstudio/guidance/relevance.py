"""Relevance masks: where an edit belongs, from the prior's prediction difference or its attention to the words.

As in Watch Your Steps (Mirzaei et al.), the prior is asked to denoise the *source* latent twice, once with the
target prompt and once with the source prompt (for an image-conditional prior: with and without the instruction,
both conditioned on the source image); the two noise predictions differ where the prompts disagree. The channel
mean of ``|eps_trg - eps_src|``, averaged over a few timesteps and noise draws, is the relevance map; smoothed,
enlarged to the view's pixels, thresholded there against its own peak, it is the view's mask; at the latent's size,
grown and feathered, it multiplies the guidance gradient (a scene's colour loss keeps what lies outside the view's
mask, docs/local-edits.md).

The ``words`` relevance follows the words instead (as Prompt-to-Prompt's attention maps and local blending): the
tokens that differ between the two prompts (for an image-conditional prior: the instruction's content words) are
located by the UNet's cross-attention probabilities to them, recorded with forward hooks through the prior protocol
(``capture_cross_attention``), averaged over layers, heads, timesteps and noise draws and enlarged to the latent's
size. ``combined`` is the geometric mean of the two maps, each normalised to its own peak.

The mask is a function of the source view only, so it is computed once per view and cached by the caller.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ids_nerfstudio.errors import UserError, check_number
from ids_nerfstudio.guidance.formulas import add_noise, random_normal_like
from ids_nerfstudio.prior.base import DiffusionPrior

MASK_OFF, MASK_AUTO = "off", "auto"
NOISE, WORDS, COMBINED = "noise", "words", "combined"
RELEVANCE_SOURCES = (NOISE, WORDS, COMBINED)
"""The relevance maps a mask can be computed from (``MaskConfig.source``)."""
AUTO_RELEVANCE = NOISE
"""What ``auto`` means, chosen by measurement (docs/relevance.md): combined masks fit the named object a little
better but cost both maps' UNet passes, and their effect on a scene edit is not measured, so auto stays noise."""
THRESHOLDS = {NOISE: 0.6, WORDS: 0.7, COMBINED: 0.7}
"""Each source's threshold (fraction of a view's peak) with the edge-aware smoothing: the highest IoU on seeded demo
views among those that leave no more of their other objects in the mask than the unsmoothed masks did
(docs/relevance.md)."""


@dataclass
class MaskConfig:
    """Where the guidance may change the scene (a local edit); the default edits everywhere."""

    source: str = MASK_OFF
    """off: edit everywhere; noise: a relevance mask from the prior's prediction difference on each source view;
    words: from the prior's cross-attention to the words that differ between the prompts (InstructPix2Pix: the
    instruction's words); combined: both maps' geometric mean; auto: the one measured best (docs/relevance.md);
    or given masks (white: edit): for ns-train, "dataset" (the mask_path of each frame in transforms.json) or a folder
    of mask images named like the dataset's images; for ids-edit-image, an image file."""
    timesteps: tuple[float, ...] = (0.3, 0.5, 0.7)
    """auto: the timesteps, as fractions of the schedule, at which the two predictions are compared."""
    samples: int = 4
    """auto: noise draws per timestep (the map is their mean)."""
    threshold: float | None = None
    """auto/noise/words/combined: a pixel of the view is relevant where its smoothed relevance, enlarged to the view's
    pixels, is at least this fraction of the view's peak (None: the source's own, measured in docs/relevance.md:
    noise 0.6, words 0.7, combined 0.7)."""
    dilation: int = 1
    """Latent pixels by which the mask grows (so the edit reaches the object's edges); 0 keeps it as thresholded."""
    feather: float = 1.0
    """Standard deviation, in latent pixels, of the blur that softens the mask's edge (0: a hard 0/1 mask)."""
    view_dilation: int = 2
    """Pixels of the view (or image) by which the view-resolution mask (the relevance thresholded at the view's
    pixels, or the given mask) grows before ``view_feather``, so that the object's rim may change: in a scene where
    the colour loss lets the view change, in 2D what the edit is pasted into the source through."""
    view_feather: float = 1.0
    """Standard deviation, in the view's (or image's) pixels, of the blur that softens the edge of the
    view-resolution mask; a scene's colour loss that keeps the rest weighs each pixel by one minus it (so it also
    holds where the mask is unsure), the 2D editors blend the edit and the source by it."""
    edge_sigma: float = 0.1
    """auto/noise/words/combined: colour distance (RGB in [0, 1]) over which the relevance spreads along the view's
    own colours before it is thresholded (a joint bilateral filter guided by the view), so that the mask stops at
    the object's edges; 0 turns it off (docs/relevance.md measures both)."""
    seed: int = 0
    """auto: seed of the noise draws (a view's mask is the same in every run)."""
    fuse: bool = False
    """Scenes, automatic masks: keep a pixel of a view's mask where most of the views that see its scene point (the
    representation's rendered depth) mark it, so that views agree (docs/relevance.md measures it)."""

    @property
    def enabled(self) -> bool:
        """Whether the guidance gradient is masked at all."""
        return self.source != MASK_OFF

    @property
    def automatic(self) -> bool:
        """Whether the masks come from the prior (``auto``) rather than from files."""
        return self.source == MASK_AUTO or self.source in RELEVANCE_SOURCES

    @property
    def mask_threshold(self) -> float:
        """The threshold in use: ``threshold``, or the relevance source's own."""
        return THRESHOLDS[self.relevance] if self.threshold is None else self.threshold

    @property
    def relevance(self) -> str:
        """The relevance source of an automatic mask (``auto`` resolved)."""
        return AUTO_RELEVANCE if self.source == MASK_AUTO else self.source

    def validate(self, flag_prefix: str = "--mask.") -> None:
        """Raise ``UserError`` naming the flag of the first bad setting."""
        if not self.timesteps or not all(0 < t < 1 for t in self.timesteps):
            raise UserError(f"{flag_prefix}timesteps must be fractions strictly between 0 and 1, got {self.timesteps}")
        if self.samples < 1:
            raise UserError(f"{flag_prefix}samples must be >= 1, got {self.samples}")
        if self.threshold is not None and not 0 < self.threshold <= 1:
            raise UserError(f"{flag_prefix}threshold must be in (0, 1], got {self.threshold}")
        if self.dilation < 0:
            raise UserError(f"{flag_prefix}dilation must be >= 0, got {self.dilation}")
        check_number(f"{flag_prefix}feather", self.feather)
        check_number(f"{flag_prefix}edge-sigma", self.edge_sigma)
        check_number(f"{flag_prefix}view-feather", self.view_feather)
        if self.view_dilation < 0:
            raise UserError(f"{flag_prefix}view-dilation must be >= 0, got {self.view_dilation}")


def _per_view(prompt: str | Sequence[str], batch: int) -> list[str]:
    return [prompt] * batch if isinstance(prompt, str) else list(prompt)


def _noised_sources(
    prior: DiffusionPrior, z_src: Float[Tensor, "B C h w"], config: MaskConfig, generator: torch.Generator | None
) -> Iterator[tuple[Int[Tensor, " B"], Float[Tensor, "B C h w"]]]:
    """(t, z_t) for each of ``config.timesteps`` x ``config.samples`` draws: the source noised with the next draw of
    ``generator`` (every relevance map takes its draws in this order)."""
    steps = len(prior.alphas_cumprod)
    for fraction in config.timesteps:
        t = torch.full((z_src.shape[0],), min(round(fraction * steps), steps - 1), device=z_src.device,
                       dtype=torch.long)  # fmt: skip
        for _ in range(config.samples):
            yield t, add_noise(z_src, random_normal_like(z_src, generator), t, prior.alphas_cumprod)


@torch.no_grad()
def relevance_map(
    prior: DiffusionPrior,
    z_src: Float[Tensor, "B C h w"],
    prompt_trg: str | Sequence[str],
    prompt_src: str | Sequence[str],
    config: MaskConfig,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B 1 h w"]:
    """The mean over ``config.timesteps`` x ``config.samples`` draws of the channel mean of ``|eps_trg - eps_src|``
    on the noised source latent (both predictions share z_t, so classifier-free guidance would only scale it).

    With an image-conditional prior the pair is the instruction and the empty prompt, both given the source image.
    """
    batch = z_src.shape[0]
    prompts_trg = _per_view(prompt_trg, batch)
    if prior.image_conditional:
        prompts_src, image_cond = [""] * batch, z_src
    else:
        prompts_src, image_cond = _per_view(prompt_src, batch), None
    text = torch.cat([prior.encode_text(prompts_trg), prior.encode_text(prompts_src)])
    total = torch.zeros(batch, 1, *z_src.shape[-2:], device=z_src.device)
    for t, z_t in _noised_sources(prior, z_src, config, generator):
        cond = None if image_cond is None else image_cond.repeat(2, 1, 1, 1)
        eps = prior.predict_noise(z_t.repeat(2, 1, 1, 1), t.repeat(2), text, 1.0, image_cond=cond)
        total += (eps[:batch] - eps[batch:]).abs().float().mean(1, keepdim=True)
    return total / (len(config.timesteps) * config.samples)


INSTRUCTION_STOPWORDS = frozenset(
    "a an the of on in at to into it its this that and or with make turn change let be is are as so".split()
)
"""Words of an instruction that name nothing in the image ("make the ball blue": ball and blue are located)."""


def _words(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """The words of a CLIP token list (a word ends at a token with the ``</w>`` suffix) with their positions; the
    start and end tokens are left out."""
    words, current = [], []
    for position, token in enumerate(tokens[1:-1], start=1):
        current.append(position)
        if token.endswith("</w>"):
            words.append(("".join(tokens[p] for p in current).removesuffix("</w>"), current))
            current = []
    if current:
        words.append(("".join(tokens[p] for p in current), current))
    return words


def changed_tokens(tokens_trg: Sequence[str], tokens_src: Sequence[str]) -> tuple[list[int], list[int]]:
    """The positions of the tokens that differ between two prompts' token lists (a longest-matching-block diff, as
    ``difflib`` aligns them), each changed span followed by the next token when that is a word's (not the end
    token): those of the target prompt and those of the source prompt.

    The next token is the changed adjective's noun ("red ball" -> "blue ball": ball); CLIP's text encoder is causal,
    so only the noun's embedding knows both words (docs/relevance.md measures both choices)."""
    trg, src = [], []
    for tag, i0, i1, j0, j1 in difflib.SequenceMatcher(None, tokens_src, tokens_trg, autojunk=False).get_opcodes():
        if tag != "equal":
            src += range(i0, min(i1 + 1, len(tokens_src) - 1))
            trg += range(j0, min(j1 + 1, len(tokens_trg) - 1))
    return sorted(set(trg)), sorted(set(src))


def instruction_tokens(tokens: Sequence[str]) -> list[int]:
    """The positions of an instruction's content words (all but ``INSTRUCTION_STOPWORDS``)."""
    return [p for word, positions in _words(tokens) if word.lower() not in INSTRUCTION_STOPWORDS for p in positions]


def _token_weights(positions: Sequence[Sequence[int]], length: int, device: torch.device) -> Float[Tensor, "R L"]:
    """One row per prompt: 1 / n at its n chosen positions (the mean over them), zeros if it has none."""
    weights = torch.zeros(len(positions), length, device=device)
    for row, chosen in enumerate(positions):
        if chosen:
            weights[row, list(chosen)] = 1 / len(chosen)
    return weights


def word_layers(sizes: dict[str, tuple[int, int]]) -> list[str]:
    """The cross-attention layers whose maps locate words: the up-blocks' coarsest ones (Prompt-to-Prompt averages
    SD's 16 x 16 maps); finer layers locate the words far less well (docs/relevance.md)."""
    up = {name: h * w for name, (h, w) in sizes.items() if name.startswith("up_blocks")}
    return [name for name, area in up.items() if area == min(up.values())]


@torch.no_grad()
def word_relevance_map(
    prior: DiffusionPrior,
    z_src: Float[Tensor, "B C h w"],
    prompt_trg: str | Sequence[str],
    prompt_src: str | Sequence[str],
    config: MaskConfig,
    generator: torch.Generator | None = None,
) -> Float[Tensor, "B 1 h w"]:
    """The UNet's cross-attention to the words that differ, on the noised source latent: for each (timestep, draw)
    one conditional pass per prompt, the ``word_layers``' head-mean probabilities summed over the chosen tokens
    (the mean over them), bilinearly enlarged to the latent's size, averaged over layers, timesteps and draws.

    Text-to-image priors: the target prompt's changed tokens under the target prompt and the source prompt's under
    the source prompt, averaged (Prompt-to-Prompt's local blending uses both words' maps). Image-conditional priors:
    the instruction's content words, conditioned on the source image. A view whose prompts do not differ gets 0.
    """
    batch, size = z_src.shape[0], z_src.shape[-2:]
    prompts_trg, prompts_src = _per_view(prompt_trg, batch), _per_view(prompt_src, batch)
    if prior.image_conditional:
        prompts, image_cond = prompts_trg, z_src
        chosen = [instruction_tokens(prior.tokenize(p)) for p in prompts_trg]
    else:
        prompts, image_cond = prompts_trg + prompts_src, None
        pairs = [changed_tokens(prior.tokenize(a), prior.tokenize(b)) for a, b in zip(prompts_trg, prompts_src,
                                                                                        strict=True)]  # fmt: skip
        chosen = [trg for trg, _ in pairs] + [src for _, src in pairs]
    text = prior.encode_text(prompts)
    weights = _token_weights(chosen, text.shape[1], z_src.device)
    repeats = len(prompts) // batch
    total = torch.zeros(len(prompts), 1, *size, device=z_src.device)
    for t, z_t in _noised_sources(prior, z_src, config, generator):
        with prior.capture_cross_attention() as capture:
            prior.predict_noise(z_t.repeat(repeats, 1, 1, 1), t.repeat(repeats), text, None, image_cond=image_cond)
        layers = []
        for name in word_layers(capture.sizes):
            probabilities = capture.probabilities[name]
            located = torch.einsum("rnl,rl->rn", probabilities, weights.to(probabilities.device))
            located = located.view(-1, 1, *capture.sizes[name]).to(z_src.device)
            layers.append(F.interpolate(located, size=size, mode="bilinear", align_corners=False))
        total += torch.stack(layers).mean(0)
    return total.unflatten(0, (repeats, batch)).mean(0) / (len(config.timesteps) * config.samples)


def _to_peak(x: Float[Tensor, "B 1 h w"]) -> Float[Tensor, "B 1 h w"]:
    return x / x.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)


def relevance(
    prior: DiffusionPrior,
    z_src: Float[Tensor, "B C h w"],
    prompt_trg: str | Sequence[str],
    prompt_src: str | Sequence[str],
    config: MaskConfig,
) -> Float[Tensor, "B 1 h w"]:
    """The relevance map of ``config.relevance`` (noise, words, or combined: the geometric mean of the two, each
    normalised to its peak); every map draws its noise from a generator seeded with ``config.seed``."""
    maps = {}
    for source, function in ((NOISE, relevance_map), (WORDS, word_relevance_map)):
        if config.relevance in (source, COMBINED):
            generator = torch.Generator().manual_seed(config.seed)
            maps[source] = function(prior, z_src, prompt_trg, prompt_src, config, generator)
    if config.relevance == COMBINED:
        return (_to_peak(maps[NOISE]) * _to_peak(maps[WORDS])).sqrt()
    return maps[config.relevance]


def gaussian_blur(x: Float[Tensor, "B 1 h w"], sigma: float) -> Float[Tensor, "B 1 h w"]:
    """A separable Gaussian blur (edges replicated), so a mask's border does not fade toward the image edge."""
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))


SMOOTHING = 0.5
"""Standard deviation, in latent pixels, of the blur before thresholding: the map of a few draws is speckled
(docs/relevance.md gives the IoU at each blur)."""


EDGE_RADIUS, EDGE_SPATIAL_SIGMA, EDGE_PASSES = 5, 4.0, 3
"""The edge-aware smoothing's window radius and spatial standard deviation, in pixels of its grid, and its passes
(chosen on seeded demo views of 64 px, docs/relevance.md)."""
EDGE_GRID = 128
"""The edge-aware smoothing runs at the view's pixels, scaled down to this short side for larger views (a 512 px
Stable Diffusion view: 128; its window then spans as much of the view as half the demo's)."""


def edge_aware_smooth(
    relevance: Float[Tensor, "B 1 H W"], guide: Float[Tensor, "B 3 H W"], colour_sigma: float
) -> Float[Tensor, "B 1 H W"]:
    """A joint bilateral filter: each pixel's relevance becomes the mean of its window's, weighted by distance and
    by how close each neighbour's colour in ``guide`` is to its own, EDGE_PASSES times; the relevance spreads within
    an object and not across its edges. One image at a time (the window's copy of a batch is large)."""
    k = 2 * EDGE_RADIUS + 1
    offsets = torch.arange(-EDGE_RADIUS, EDGE_RADIUS + 1, device=relevance.device, dtype=relevance.dtype)
    spatial = torch.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * EDGE_SPATIAL_SIGMA**2)).view(1, -1, 1)
    smoothed = []
    for value, colours in zip(relevance.split(1), guide.to(relevance).split(1), strict=True):
        height, width = value.shape[-2:]
        windows = F.unfold(F.pad(colours, (EDGE_RADIUS,) * 4, mode="replicate"), k).view(3, k * k, -1)
        distance = (windows - colours.view(3, 1, -1)).square().sum(0, keepdim=True)
        weights = spatial * torch.exp(-distance / (2 * colour_sigma**2))
        weights = weights / weights.sum(1, keepdim=True)
        for _ in range(EDGE_PASSES):
            value = (F.unfold(F.pad(value, (EDGE_RADIUS,) * 4, mode="replicate"), k) * weights).sum(1)
            value = value.view(1, 1, height, width)
        smoothed.append(value)
    return torch.cat(smoothed)


def binary_mask(
    relevance: Float[Tensor, "B 1 h w"],
    config: MaskConfig,
    size: tuple[int, int] | None = None,
    guide: Float[Tensor, "B 3 H W"] | None = None,
) -> Float[Tensor, "B 1 H W"]:
    """1 where the (lightly smoothed) relevance, enlarged bilinearly to ``size`` (the view's pixels, (H, W); default
    the map's own size), is at least ``threshold`` of each view's peak, else 0. Thresholding at the view's pixels
    puts the mask's edge between latent pixels, where the object's edge is (docs/relevance.md: a band of 4 view
    pixels per latent pixel is a large share of a small object). With ``guide`` (the views, RGB in [0, 1]) and
    ``config.edge_sigma`` > 0 the relevance is first smoothed along the view's colours (``edge_aware_smooth``) at
    the view's pixels (at most EDGE_GRID on the short side)."""
    smoothed = gaussian_blur(relevance, SMOOTHING)
    if guide is not None and config.edge_sigma > 0:
        view = tuple(size or smoothed.shape[-2:])
        grid = tuple(max(1, round(side * min(1.0, EDGE_GRID / min(view)))) for side in view)
        smoothed = F.interpolate(smoothed, size=grid, mode="bilinear", align_corners=False)
        colours = F.interpolate(guide.float(), size=grid, mode="bilinear", align_corners=False, antialias=True)
        smoothed = edge_aware_smooth(smoothed, colours.to(smoothed.device), config.edge_sigma)
    if size is not None and tuple(size) != tuple(smoothed.shape[-2:]):
        smoothed = F.interpolate(smoothed, size=tuple(size), mode="bilinear", align_corners=False)
    peak = smoothed.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1, 1)
    return (smoothed >= config.mask_threshold * peak).to(relevance.dtype)


def soften(mask: Float[Tensor, "B 1 h w"], config: MaskConfig) -> Float[Tensor, "B 1 h w"]:
    """Grow a 0/1 mask by ``dilation`` pixels and blur its edge by ``feather``: values in [0, 1]."""
    if config.dilation > 0:
        size = 2 * config.dilation + 1
        mask = F.max_pool2d(mask, size, stride=1, padding=config.dilation)
    return gaussian_blur(mask, config.feather).clamp(0, 1)


def paste_weight(mask: Float[Tensor, "B 1 H W"], config: MaskConfig) -> Float[Tensor, "B 1 H W"]:
    """A view-pixel mask (the thresholded relevance, or a given mask) grown by ``view_dilation`` and feathered by
    ``view_feather`` pixels of the view: where a scene's colour loss lets the view change, and what the 2D editors
    paste their edit through."""
    return soften(mask, replace(config, dilation=config.view_dilation, feather=config.view_feather))


def view_mask(
    prior: DiffusionPrior,
    z_src: Float[Tensor, "B C h w"],
    prompt_trg: str | Sequence[str],
    prompt_src: str | Sequence[str],
    config: MaskConfig,
    size: tuple[int, int] | None = None,
    image: Float[Tensor, "B 3 H W"] | None = None,
) -> Float[Tensor, "B 1 H W"]:
    """The automatic mask at the view's pixels (``size``, (H, W); default the latent's own): ``relevance``
    thresholded there (``binary_mask``: 0 or 1), its edges following ``image`` (the source views, RGB in [0, 1];
    default the VAE's decoding of ``z_src``)."""
    if image is None and config.edge_sigma > 0:
        with torch.no_grad():
            image = prior.decode_latents(z_src)
    return binary_mask(relevance(prior, z_src, prompt_trg, prompt_src, config), config, size, image)


def latent_mask(mask: Float[Tensor, "B 1 H W"], height: int, width: int) -> Float[Tensor, "B 1 h w"]:
    """A given image-resolution mask at latent resolution (area average: a latent pixel is as relevant as the share
    of its image pixels that are)."""
    return F.interpolate(mask.float(), size=(height, width), mode="area").clamp(0, 1)


def paste_into_source(
    edit: Float[Tensor, "B 3 H W"], source: Float[Tensor, "B 3 H W"], mask: Float[Tensor, "B 1 h w"]
) -> Float[Tensor, "B 3 H W"]:
    """The edit where the mask (a view-pixel or a latent one, bilinearly enlarged to the images' size) is white, the
    source where it is black, blended in between: outside the mask the result keeps the source's own pixels rather
    than the VAE's reconstruction of them (as diffusers' inpainting pipelines paste the original back)."""
    weight = F.interpolate(mask.float(), size=edit.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)
    weight = weight.to(edit.device, edit.dtype)
    return weight * edit + (1 - weight) * source.to(edit.device, edit.dtype)


def given_mask(
    mask: Float[Tensor, "B 1 H W"], like: Float[Tensor, "B C h w"], config: MaskConfig
) -> Float[Tensor, "B 1 h w"]:
    """A given image-resolution mask as the guidance uses it: at the latent's size (a latent pixel is in when more
    than half its pixels are), grown and feathered by ``config``, on the latent's device."""
    return soften(latent_mask(mask, *like.shape[-2:]).round(), config).to(like.device)
