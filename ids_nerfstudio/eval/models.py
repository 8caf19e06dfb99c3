"""The networks behind the metrics: CLIP (transformers) and LPIPS (torchmetrics), loaded lazily.

Both take the usual hub id / name or a local path, or a packaged name (``model_names``): ``tiny``, a seeded
random-weight model built offline for tests and smoke runs (its numbers mean nothing), and for CLIP ``demo``, the
CLIP trained with the demo prior on the demo world, which ships in the package.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ids_nerfstudio.errors import UserError, first_line
from ids_nerfstudio.model_names import DEFAULT_CLIP_MODEL, DEFAULT_LPIPS_NET, resolve_model
from ids_nerfstudio.tokenizers import clip_tokenizer

MIN_LPIPS_SIZE = 64
LPIPS_NETS = ("alex", "vgg", "squeeze")
"""torchmetrics' LPIPS backbones."""
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class MetricModelError(UserError):
    """A metric's network could not be found or loaded."""


def clip_normalize(images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B 3 H W"]:
    """CLIP's input normalisation of images in [0, 1] (already at CLIP's input size)."""
    mean, std = (torch.tensor(v, device=images.device)[:, None, None] for v in (CLIP_MEAN, CLIP_STD))
    return (images - mean) / std


def _projected(output) -> Tensor:
    """CLIP's projected features: a tensor in transformers 4, the pooler output of a ModelOutput in 5."""
    return output if isinstance(output, Tensor) else output.pooler_output


class ClipEmbedder:
    """Unit-norm CLIP embeddings of images in [0, 1] and of prompts. Loads on first use."""

    def __init__(self, model: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu") -> None:
        self.model_name, self.device = model, torch.device(device)
        self._model = self._tokenizer = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

        try:
            source = resolve_model(self.model_name, "clip")
        except (FileNotFoundError, LookupError) as error:
            raise MetricModelError(f"CLIP model {self.model_name!r}: {error}") from error
        if source.random_weights:
            self._tokenizer = clip_tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                text = {
                    "vocab_size": len(self._tokenizer),
                    "hidden_size": 32,
                    "intermediate_size": 37,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 4,
                    "max_position_embeddings": 77,
                }
                vision = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                          "num_hidden_layers": 2, "num_attention_heads": 4}  # fmt: skip
                self._model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
        else:
            if Path(self.model_name).expanduser().exists() is False and self.model_name.startswith(("/", ".", "~")):
                raise MetricModelError(f"--clip-model {self.model_name} does not exist")
            try:
                self._model = CLIPModel.from_pretrained(source.location, torch_dtype=torch.float32)
                self._tokenizer = CLIPTokenizer.from_pretrained(source.location)
            except (OSError, ValueError) as error:
                raise MetricModelError(
                    f"could not load CLIP model {self.model_name!r} ({first_line(error)}); fetch it once with "
                    f"`huggingface-cli download {self.model_name}` or pass a local folder with --clip-model"
                ) from error
        self._model.requires_grad_(False).eval().to(self.device)

    @torch.no_grad()
    def images(self, images: Float[Tensor, "B 3 H W"]) -> Float[Tensor, "B D"]:
        """Resize (short side, bicubic), centre-crop, normalise, embed."""
        self._load()
        size = self._model.config.vision_config.image_size
        x = images.to(self.device).float()
        scale = size / min(x.shape[-2:])
        resized = (max(size, round(x.shape[-2] * scale)), max(size, round(x.shape[-1] * scale)))
        x = F.interpolate(x, size=resized, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top : top + size, left : left + size]
        return F.normalize(_projected(self._model.get_image_features(pixel_values=clip_normalize(x))), dim=-1)

    @torch.no_grad()
    def texts(self, prompts: Sequence[str]) -> Float[Tensor, "N D"]:
        """Embed prompts."""
        self._load()
        tokens = self._tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        return F.normalize(_projected(self._model.get_text_features(**tokens)), dim=-1)


class LpipsDistance:
    """LPIPS (Zhang et al.) with torchmetrics' network: ``alex`` (default), ``vgg``, ``squeeze`` or ``tiny``.

    The linear calibration weights ship with torchmetrics; the ImageNet backbone is torchvision's (downloaded
    once into torch's hub cache). ``tiny`` uses a random AlexNet backbone, built offline.
    """

    def __init__(self, net: str = DEFAULT_LPIPS_NET, device: str | torch.device = "cpu") -> None:
        self.net, self.device = net, torch.device(device)
        self._model = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from torchmetrics.functional.image.lpips import _LPIPS

        try:
            random_weights = resolve_model(self.net, "lpips").random_weights
        except LookupError as error:
            raise MetricModelError(f"--lpips-net {self.net!r}: {error}") from error
        if self.net not in LPIPS_NETS and not random_weights:
            raise MetricModelError(f"--lpips-net {self.net!r}: choose {', '.join(LPIPS_NETS)} or tiny")
        try:  # a random-weight net is AlexNet with random backbone weights (its numbers mean nothing)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                self._model = _LPIPS(net=DEFAULT_LPIPS_NET if random_weights else self.net, pnet_rand=random_weights)
        except Exception as error:  # noqa: BLE001 - torchvision download errors have many types
            raise MetricModelError(
                f"could not load the LPIPS {self.net} backbone ({first_line(error)}); run once with network so "
                "torchvision caches its ImageNet weights, or use --lpips-net tiny for a smoke run"
            ) from error
        self._model.requires_grad_(False).eval().to(self.device)

    @torch.no_grad()
    def __call__(self, a: Float[Tensor, "B 3 H W"], b: Float[Tensor, "B 3 H W"]) -> Float[Tensor, " B"]:
        """LPIPS distance per sample between images in [0, 1]."""
        self._load()
        a, b = (x.to(self.device).float() * 2 - 1 for x in (a, b))
        if min(a.shape[-2:]) < MIN_LPIPS_SIZE:  # AlexNet's pooling needs some room: upsample tiny images
            scale = MIN_LPIPS_SIZE / min(a.shape[-2:])
            size = (round(a.shape[-2] * scale), round(a.shape[-1] * scale))
            a, b = (F.interpolate(x, size=size, mode="bilinear", align_corners=False) for x in (a, b))
        return self._model(a, b).flatten()
