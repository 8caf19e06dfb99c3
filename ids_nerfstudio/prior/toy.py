"""A 2-D class-conditional diffusion model (PDS paper, Fig. 3): the prior protocol on points, for the real guidances.

Each class is an isotropic Gaussian cluster in the plane; a small MLP eps-network, trained in seconds on a CPU
(seeded), predicts the noise of a point ``(B, 2, 1, 1)`` at timestep t given its class. The text of a prompt *is*
the class name: ``encode_text(["a"])`` is a one-hot row and ``""`` the unconditional (null) class, learned by
dropping labels as classifier-free guidance needs. Latents are the points themselves (``encode_images`` and
``decode_latents`` are the identity), so SDS, DDS, IDS and PDS run unchanged on it and their trajectories can be
drawn over the class densities. It has no attention layers: CDS does not run on it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tyro.conf import Suppress

from ids_nerfstudio.configs import InstantiateConfig
from ids_nerfstudio.prior.base import AttentionCapture, classifier_free_guidance

TIME_FREQUENCIES = 16
"""Sinusoidal frequencies of the timestep embedding."""


@dataclass
class ToyPriorConfig(InstantiateConfig):
    """A 2-D class-conditional diffusion prior, trained on ``setup()``."""

    _target: Suppress[type] = field(default_factory=lambda: ToyPrior)
    classes: tuple[str, ...] = ("a", "b")
    """Class names (the prompts the prior understands; "" is the unconditional class)."""
    means: tuple[tuple[float, float], ...] = ((-1.0, 0.0), (1.0, 0.0))
    """Mean of each class's cluster."""
    std: float = 0.25
    """Standard deviation of every cluster (isotropic)."""
    hidden: int = 128
    """Width of the MLP's three hidden layers."""
    train_steps: int = 3000
    """Adam steps of training."""
    batch_size: int = 512
    """Points per training step."""
    label_dropout: float = 0.2
    """Fraction of training points whose label is replaced by the null class (for classifier-free guidance)."""
    seed: int = 0
    """Seed of the weights and of the training draws."""


class EpsNetwork(nn.Module):
    """MLP ``eps(x_t, t, class one-hot)`` on points."""

    def __init__(self, classes: int, hidden: int) -> None:
        super().__init__()
        width = 2 + 2 * TIME_FREQUENCIES + classes
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 2),
        )  # fmt: skip
        self.register_buffer("frequencies", torch.exp(torch.linspace(0, math.log(1000.0), TIME_FREQUENCIES)))

    def forward(self, x: Float[Tensor, "B 2"], t: Int[Tensor, " B"], label: Float[Tensor, "B K"]) -> Tensor:
        phase = (t.float() / 1000)[:, None] * self.frequencies[None]
        return self.net(torch.cat([x, phase.sin(), phase.cos(), label], dim=1))


class ToyPrior:
    """The toy prior (see the module docstring); trained once when built."""

    image_conditional = False

    def __init__(self, config: ToyPriorConfig) -> None:
        from diffusers import DDPMScheduler

        if len(config.means) != len(config.classes) or "" in config.classes:
            raise ValueError("ToyPriorConfig: one mean per class, and no class may be named ''")
        self.config = config
        self.scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        self._alphas_cumprod = self.scheduler.alphas_cumprod.clone().float()
        self.means = torch.tensor(config.means, dtype=torch.float32)
        generator = torch.Generator().manual_seed(config.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.network = EpsNetwork(len(config.classes) + 1, config.hidden)
        self.train(generator)
        self.network.requires_grad_(False).eval()

    # ------------------------------------------------------------------------------------------ the data
    def sample(self, label: int, count: int, generator: torch.Generator | None = None) -> Float[Tensor, "N 2 1 1"]:
        """``count`` points of class ``label``, as latents."""
        points = self.means[label] + self.config.std * torch.randn(count, 2, generator=generator)
        return points[:, :, None, None]

    def log_density(self, points: Float[Tensor, "N 2"], label: int) -> Float[Tensor, " N"]:
        """Log density of class ``label``'s cluster at ``points`` (for pictures)."""
        squared = ((points - self.means[label]) ** 2).sum(-1) / self.config.std**2
        return -0.5 * squared - math.log(2 * math.pi * self.config.std**2)

    def train(self, generator: torch.Generator) -> None:
        """Denoising score matching with label dropout (classifier-free guidance's null class)."""
        config, classes = self.config, len(self.config.classes)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=2e-3)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.train_steps)
        for _ in range(config.train_steps):
            labels = torch.randint(classes, (config.batch_size,), generator=generator)
            x0 = self.means[labels] + config.std * torch.randn(config.batch_size, 2, generator=generator)
            t = torch.randint(len(self._alphas_cumprod), (config.batch_size,), generator=generator)
            noise = torch.randn(config.batch_size, 2, generator=generator)
            dropped = torch.rand(config.batch_size, generator=generator) < config.label_dropout
            onehot = nn.functional.one_hot(labels.where(~dropped, classes), classes + 1).float()
            x_t = self.scheduler.add_noise(x0, noise, t)
            loss = (self.network(x_t, t, onehot) - noise).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()

    # ------------------------------------------------------------------------------------ the protocol
    @property
    def alphas_cumprod(self) -> Float[Tensor, " T"]:
        """SD's scaled-linear schedule of 1000 steps."""
        return self._alphas_cumprod

    @property
    def device(self) -> torch.device:
        """Always the CPU."""
        return self._alphas_cumprod.device

    def encode_text(self, prompts: Sequence[str]) -> Float[Tensor, "N 1 K"]:
        """One-hot rows of the class names ("" is the null class)."""
        names = (*self.config.classes, "")
        unknown = [p for p in prompts if p not in names]
        if unknown:
            raise ValueError(f"the toy prior knows the classes {self.config.classes} and '', not {unknown}")
        index = torch.tensor([names.index(p) for p in prompts])
        return nn.functional.one_hot(index, len(names)).float()[:, None]

    @property
    def null_embedding(self) -> Float[Tensor, "1 1 K"]:
        """The null class."""
        return self.encode_text([""])

    def predict_noise(
        self,
        z_t: Float[Tensor, "B 2 1 1"],
        t: Int[Tensor, " B"],
        text_emb: Float[Tensor, "B 1 K"] | None,
        guidance_scale: float | None,
        *,
        image_cond: Tensor | None = None,
    ) -> Float[Tensor, "B 2 1 1"]:
        """eps with classifier-free guidance: one network call on the rows [null; class]."""
        if image_cond is not None:
            raise ValueError("the toy prior takes no image condition")
        text_emb = self.null_embedding.expand(z_t.shape[0], -1, -1) if text_emb is None else text_emb
        t = t.expand(z_t.shape[0])
        points = z_t.flatten(1)
        if guidance_scale is None:
            return self.network(points, t, text_emb[:, 0]).view_as(z_t)
        null = self.null_embedding.expand_as(text_emb)
        eps = self.network(torch.cat([points, points]), torch.cat([t, t]), torch.cat([null, text_emb])[:, 0])
        eps_uncond, eps_cond = eps.view(2, *z_t.shape).unbind(0)
        return classifier_free_guidance(eps_uncond, eps_cond, guidance_scale)

    def encode_images(self, images: Float[Tensor, "B 2 1 1"]) -> Float[Tensor, "B 2 1 1"]:
        """Points are their own latents."""
        return images

    def decode_latents(self, latents: Float[Tensor, "B 2 1 1"]) -> Float[Tensor, "B 2 1 1"]:
        """Points are their own latents."""
        return latents

    def capture_self_attention(self, rows: slice | None = None) -> contextlib.AbstractContextManager[AttentionCapture]:
        """The toy network has no attention (CDS cannot run on it)."""
        raise ValueError("the toy prior has no self-attention layers: CDS does not run on it")
