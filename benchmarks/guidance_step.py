"""Benchmark one guidance step: UNet evaluations, time per step and peak memory, for every guidance.

    python benchmarks/guidance_step.py                  # CPU, tiny prior
    python benchmarks/guidance_step.py --device cuda    # GPU: also a full-size SD-1.5 UNet (random weights, fp16)

On a GPU it also times an IDS step with every attention processor swapped for an explicit bmm attention
(``diffusers.models.attention_processor.AttnProcessor``), which is what the official IDS code does, and
reports the speed-up and the largest difference between the two fp16 outputs. The row ``ids-identity`` is IDS with
``fpr_jacobian="identity"`` (FPR without the UNet's backward pass).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import torch
from _common import PeakMemory

from ids_nerfstudio.guidance import GUIDANCE_METHODS, GuidanceConfig, IDSConfig
from ids_nerfstudio.prior import DiffusionComponents, StableDiffusionPrior, tiny_stable_diffusion
from ids_nerfstudio.prior.tiny import tiny_components
from ids_nerfstudio.tokenizers import clip_tokenizer


def full_size_prior(device: str) -> StableDiffusionPrior:
    """SD-1.x UNet, VAE and CLIP-L text encoder architectures with random weights (the real model's FLOPs)."""

    def build() -> DiffusionComponents:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        tiny = tiny_components(0, 4)
        tokenizer = clip_tokenizer()
        text = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                max_position_embeddings=77,
            )
        )
        vae = AutoencoderKL(  # SD's VAE: 4 levels, 8x downsampling
            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        )  # fmt: skip
        unet = UNet2DConditionModel(cross_attention_dim=768)
        return DiffusionComponents(unet, vae, text, tokenizer, tiny.alphas_cumprod)

    return StableDiffusionPrior("full-size-random", device=device, dtype="float16", components_factory=build)


def count_unet_work(prior: StableDiffusionPrior) -> tuple[Counter, object]:
    """Count UNet calls by (rows, with backward) through a forward hook."""
    counts: Counter = Counter()

    def hook(_module, args, _output):
        counts[(args[0].shape[0], torch.is_grad_enabled() and args[0].requires_grad)] += 1

    return counts, prior.unet.register_forward_hook(hook)


def describe(counts: Counter, steps: int) -> str:
    parts = []
    for (rows, backward), n in sorted(counts.items()):
        kind = "fwd+bwd" if backward else "fwd"
        parts.append(f"{n // steps}x{kind}({rows} rows)")
    return " + ".join(parts)


def rows() -> dict[str, GuidanceConfig]:
    """Every guidance with its defaults, and IDS with the identity FPR Jacobian."""
    configs = {name: method.config() for name, method in GUIDANCE_METHODS.items()}
    configs["ids-identity"] = IDSConfig(fpr_jacobian="identity")
    return configs


def bench(prior, config: GuidanceConfig, latents: tuple[torch.Tensor, torch.Tensor], steps: int, device: torch.device):
    guidance = config.setup(prior=prior)
    z_src, z_trg = latents
    generator = torch.Generator(device=device).manual_seed(0)
    guidance(z_trg, z_src, "a photo of a dog", "a photo of a cat", generator=generator)  # warm-up
    counts, handle = count_unet_work(prior)
    with PeakMemory(device) as memory:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            out = guidance(z_trg, z_src, "a photo of a dog", "a photo of a cat", generator=generator)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = (time.perf_counter() - start) / steps
    handle.remove()
    return describe(counts, steps), seconds, memory.peak, out


def compare_with_explicit_attention(prior, latents, steps: int, device: torch.device) -> None:
    """IDS with SDPA (ours) against IDS with explicit bmm attention processors (the official code's choice)."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    z_src, z_trg = latents
    t = torch.full((z_src.shape[0],), 500, device=device)
    noise = torch.randn(z_src.shape, generator=torch.Generator(device=device).manual_seed(1), device=device)
    results = {}
    for label, processor in (("explicit bmm attention", AttnProcessor()), ("SDPA (ours)", AttnProcessor2_0())):
        prior.unet.set_attn_processor(processor)
        guidance = GUIDANCE_METHODS["ids"].config().setup(prior=prior)
        out = guidance(z_trg, z_src, "a photo of a dog", "a photo of a cat", t=t, noise=noise)
        with PeakMemory(device) as memory:
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                guidance(z_trg, z_src, "a photo of a dog", "a photo of a cat", t=t, noise=noise)
            torch.cuda.synchronize(device)
        results[label] = ((time.perf_counter() - start) / steps, memory.peak, out.grad)
        print(f"  IDS step, {label:24s} {results[label][0] * 1e3:8.1f} ms   peak {results[label][1] / 2**20:8.0f} MiB")
    (slow, slow_mem, slow_grad), (fast, fast_mem, fast_grad) = results.values()
    print(
        f"  speed-up {slow / fast:.2f}x, memory ratio {fast_mem / slow_mem:.2f}, "
        f"max |grad difference| {(slow_grad - fast_grad).abs().max().item():.3g} "
        f"(grad magnitude {fast_grad.abs().mean().item():.3g})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per guidance")
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()
    device = torch.device(args.device)

    setups = [
        (
            "tiny prior, 32x32 latents, fp32" if device.type == "cpu" else "tiny prior, 32x32 latents",
            tiny_stable_diffusion(device=device, dtype="float32"),
            32,
        )
    ]
    if device.type == "cuda":
        setups.append(("full-size SD-1.5 UNet (random weights), 64x64 latents, fp16", full_size_prior(args.device), 64))
    for title, prior, size in setups:
        print(f"\n== {title}, batch {args.batch_size}, device {device} ==")
        generator = torch.Generator(device=device).manual_seed(0)
        z_src = torch.randn(args.batch_size, 4, size, size, generator=generator, device=device)
        latents = (z_src, z_src + 0.1 * torch.randn(z_src.shape, generator=generator, device=device))
        print(f"{'guidance':12s} {'UNet work per step':46s} {'ms/step':>9s} {'peak MiB':>9s}")
        for name, config in rows().items():
            work, seconds, peak, _ = bench(prior, config, latents, args.steps, device)
            print(f"{name:12s} {work:46s} {seconds * 1e3:9.1f} {peak / 2**20:9.1f}")
        if device.type == "cuda":
            compare_with_explicit_attention(prior, latents, args.steps, device)


if __name__ == "__main__":
    main()
