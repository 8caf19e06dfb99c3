"""Helpers shared by the tests and the benchmarks: small nerfstudio runs, the control prior, the guidance rules
written out by hand (the oracles of tests/test_guidance*.py and test_fpr.py), reference formulas.

Tests import it as ``helpers`` (pytest puts tests/ on the path); benchmarks add tests/ to ``sys.path`` first.
Fixtures live in conftest.py; nothing here is a test.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ids_nerfstudio.checkpoints import allow_nerfstudio_checkpoints
from ids_nerfstudio.demo.scoring import measure_colour_edit
from ids_nerfstudio.demo.world import render_with_masks
from ids_nerfstudio.guidance import fixed_point_regularization

# ------------------------------------------------------------------------------ reference formulas, priors


def make_latents(batch_size: int, height: int = 8, width: int = 12, seed: int = 0):
    """(z_src, z_trg, noise): a source latent, a nearby target latent and a noise draw, non-square."""
    generator = torch.Generator().manual_seed(seed)
    z_src = torch.randn(batch_size, 4, height, width, generator=generator)
    z_trg = z_src + 0.3 * torch.randn(batch_size, 4, height, width, generator=generator)
    noise = torch.randn(batch_size, 4, height, width, generator=generator)
    return z_src, z_trg, noise


def unet_eps(prior, z_t, t, text_emb):
    """A direct, unbatched-by-us UNet call: the independent reference for every formula test."""
    return prior.unet(z_t, t, encoder_hidden_states=text_emb).sample


def cfg_eps(prior, z_t, t, text_emb, scale):
    """Classifier-free guidance written out with two separate UNet calls."""
    uncond = unet_eps(prior, z_t, t, prior.null_embedding.expand(z_t.shape[0], -1, -1))
    cond = unet_eps(prior, z_t, t, text_emb)
    return uncond + scale * (cond - uncond)


def write_random_unet_demo(folder):
    """The control prior of the demo behaviour tests: the demo prior's diffusers folder with only the UNet replaced
    by a seeded random one of the same architecture. The VAE, text encoder, tokenizer and schedule are the demo's,
    so latents, prompts and the step per latent element are the same: a test that the demo prior passes and this
    fails measures what the UNet learned."""
    import shutil

    from diffusers import UNet2DConditionModel

    from ids_nerfstudio.model_names import DEMO_WEIGHTS

    shutil.copytree(DEMO_WEIGHTS / "diffusion", folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
    unet.save_pretrained(folder / "unet")
    return folder


# ------------------------------------------------------------------------------------ small nerfstudio runs


SMALL_NERFACTO = [
    "--pipeline.datamanager.train-num-rays-per-batch", "64", "--pipeline.datamanager.eval-num-rays-per-batch", "64",
    "--pipeline.model.num-nerf-samples-per-ray", "8", "--pipeline.model.num-proposal-samples-per-ray", "8", "8",
    "--pipeline.model.num-levels", "4", "--pipeline.model.max-res", "64", "--pipeline.model.log2-hashmap-size", "10",
    "--pipeline.model.hidden-dim", "16", "--pipeline.model.hidden-dim-color", "16",
    "--machine.device-type", "cpu", "--vis", "tensorboard",
]  # fmt: skip


EDIT = ["--pipeline.prior.model", "tiny", "--pipeline.render-size", "16"]


PROMPTS = ["--prompt-src", "a photo of balls", "--prompt-trg", "a photo of oranges"]


STOCK_NERFACTO = """
import sys
from ids_nerfstudio.models.lpips import lazy_lpips  # only LPIPS's AlexNet download is avoided: offline
from nerfstudio.scripts.train import entrypoint
sys.argv = ["ns-train", "nerfacto", *sys.argv[1:]]
with lazy_lpips():
    entrypoint()
"""


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    """A child process; ns-render finds its ffmpeg through the plugin (ffmpeg.py), whatever PATH has."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    kwargs.pop("tmp", None)
    kwargs.setdefault("timeout", 600)
    return subprocess.run(command, capture_output=True, text=True, env=env, **kwargs)


def ns_train(method: str, data: Path, output: Path, *extra: str, tmp: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nerfstudio.scripts.train", method, "--data", str(data),
               "--output-dir", str(output), *SMALL_NERFACTO, *extra]  # fmt: skip
    return run(command, tmp=tmp)


def checkpoints(output: Path) -> list[Path]:
    return sorted(output.rglob("step-*.ckpt"))


def step_of(checkpoint: Path) -> int:
    return int(checkpoint.stem.split("-")[1])


def resumed_trainer(run: Path, max_num_iterations: int):
    """A trainer resumed from a run's checkpoint (as --load-dir does), set up in this process."""
    import yaml

    (config_path,) = run.rglob("config.yml")
    config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    config.load_dir = checkpoints(run)[0].parent
    config.output_dir = run / "in-process"
    config.max_num_iterations = max_num_iterations
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    return trainer


def fixed_guidance(seen: dict):
    """A guidance stand-in that returns a fixed, seeded gradient and records the source latents it was given."""
    from ids_nerfstudio.guidance import GuidanceOutput
    from ids_nerfstudio.guidance.formulas import guidance_loss

    def forward(z_trg, z_src, prompt_trg, prompt_src, **_):
        grad = torch.randn(z_trg.shape, generator=torch.Generator().manual_seed(1)) * seen.get("scale", 1.0)
        seen.update(z_src=z_src.detach().clone(), grad=grad)
        return GuidanceOutput(grad=grad, loss=guidance_loss(z_trg, grad), t=torch.zeros(len(z_trg), dtype=torch.long))

    return forward


def parameter_grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def checksums(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def check_live_viewer(trainer, scene: Path, monkeypatch, tmp_path: Path) -> None:
    """nerfstudio's viewer of a running edit: the pipeline's editing controls are shown, and every editing step is
    (nerfstudio alone waits for a re-render)."""
    from nerfstudio.configs.base_config import ViewerConfig
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.viewer.viewer import Viewer
    from nerfstudio.viewer.viewer_elements import ViewerElement

    viewer = Viewer(ViewerConfig(websocket_host="127.0.0.1", websocket_port=free_port()),
                    log_filename=tmp_path / "viewer_log.txt", datapath=scene, pipeline=trainer.pipeline,
                    trainer=trainer, train_lock=trainer.train_lock)  # fmt: skip
    try:
        controls = [v for v in vars(trainer.pipeline).values() if isinstance(v, ViewerElement)]
        assert controls and all(control.gui_handle is not None for control in controls), "editing controls shown"
        monkeypatch.setattr(trainer.config, "vis", "viewer")
        monkeypatch.setattr(trainer, "viewer_state", viewer, raising=False)
        first = int(trainer.pipeline.edit_start_step) + 5
        Trainer._update_viewer_state(trainer, first)
        assert viewer.stats_markdown.content.startswith("Step: 0"), "nerfstudio alone waits for a re-render"
        for step in (first, first + 1):
            trainer._update_viewer_state(step)
            assert viewer.stats_markdown.content.split()[:2] == ["Step:", str(step)], viewer.stats_markdown.content
    finally:
        viewer.viser_server.stop()


# --------------------------------------------------------------------------- the demo scene's edits measured


DEMO_RECONSTRUCTION_STEPS = 1000  # at 400 the ball is still dark after 80 editing steps
DEMO_EDIT_STEPS = 100  # the demo methods' (at 80 the unmasked edit's floor tint ends at 24.3 dB, < 25)

DEMO_PROMPTS = [
    "--prompt-src",
    "a photo of a red ball on a grey floor",
    "--prompt-trg",
    "a photo of a blue ball on a grey floor",
]


def demo_ns_train(*args: str | Path, method: str = "ids-edit-demo") -> Path:
    """``ns-train METHOD`` on the CPU, with Python's default warning filters; returns the run's config.yml. Its
    stderr is kept as ``stderr.txt`` in the output folder (test_demo_nerf.py lists the warnings it holds)."""
    output = Path(args[args.index("--output-dir") + 1])
    command = [sys.executable, "-m", "nerfstudio.scripts.train", method, "--machine.device-type", "cpu",
               "--vis", "tensorboard", *DEMO_PROMPTS, *map(str, args)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (output / "stderr.txt").write_text(result.stderr)
    (config,) = output.rglob("config.yml")
    return config


# (file the warning names, category): printed while `import nerfstudio.scripts.train` runs, before any plugin loads,
# by stock nerfstudio runs as well (docs/scene-editing.md#what-a-run-prints).
NERFSTUDIO_IMPORT_TIME_WARNINGS = {
    ("torch/jit/_script.py", "FutureWarning"),  # nerfstudio/cameras/camera_utils.py's @torch.jit.script
    ("nerfstudio/field_components/activations.py", "FutureWarning"),  # torch.cuda.amp.custom_fwd / custom_bwd
}


def printed_warnings(stderr: str) -> list[tuple[str, str, str]]:
    """(file, category, message) of every warning line on a run's stderr; files inside site-packages are named
    from there (``torch/jit/_script.py``)."""
    found = []
    for line in stderr.splitlines():
        match = re.match(r"^(\S+\.py):\d+: (\w+Warning): (.*)$", line.strip())
        if match:
            found.append((match.group(1).replace(os.sep, "/").split("site-packages/")[-1], *match.group(2, 3)))
    return found


def training_views(config: Path) -> tuple[list[np.ndarray], list[Path]]:
    """The run's renders (H, W, 3) of its training cameras in the field's inference mode (average appearance),
    and their image files."""
    from nerfstudio.utils.eval_utils import eval_setup

    allow_nerfstudio_checkpoints()
    _, pipeline, _, _ = eval_setup(config, test_mode="test")
    dataset = pipeline.datamanager.train_dataset
    views = []
    for index in range(len(dataset)):
        outputs = pipeline.model.get_outputs_for_camera(dataset.cameras[index : index + 1].to(pipeline.device))
        views.append(outputs["rgb"].clamp(0, 1).cpu().numpy())
    return views, list(pipeline.datamanager.train_dataparser_outputs.image_filenames)


def ball_masks(scene: Path, image_files: list[Path]) -> list[np.ndarray]:
    """The ray-traced ball mask of each view."""
    transforms = json.loads((scene / "transforms.json").read_text())
    poses = {frame["file_path"]: np.array(frame["transform_matrix"]) for frame in transforms["frames"]}
    return [
        render_with_masks(poses[str(Path(name).relative_to(scene))], transforms["w"], transforms["h"],
                          transforms["fl_x"])[1][0]
        for name in image_files
    ]  # fmt: skip


def edit_results(runs, prior: str):
    scene, reconstruction, edits = runs
    (before, image_files), (after, _) = training_views(reconstruction), training_views(edits[prior])
    masks = ball_masks(scene, image_files)
    return [measure_colour_edit(b, a, m) for b, a, m in zip(before, after, masks, strict=True)]


def blue_shift(result) -> float:
    """How far the ball's chromaticity moved toward blue (the blue share of r + g + b, after minus before)."""
    return float(result.mean_after[2] / result.mean_after.sum() - result.mean_before[2] / result.mean_before.sum())


def passes(results) -> bool:
    """In at least 3 of 4 views the ball is named blue and its blue share rose by 0.2 (red's is about 0.15),
    and the rest of the scene is kept to 25 dB on average."""
    blue = np.mean([r.after == "blue" and blue_shift(r) > 0.2 for r in results])
    return bool(blue >= 0.75 and np.mean([r.background_psnr for r in results]) >= 25.0)


def describe(results) -> str:
    shifts = [round(blue_shift(r), 2) for r in results]
    rest = [r.background_psnr for r in results]
    return f"{[r.after for r in results]}, blue shift {shifts}, rest {np.mean(rest):.1f} dB (worst {min(rest):.1f})"


# ------------------------------------------------------------------ the guidance rules written out by hand


TOL = {"rtol": 1e-4, "atol": 1e-4}


PROMPT_SRC, PROMPT_TRG = "a photo of a cat", "a photo of a dog"


def timesteps(batch_size: int, values=(120, 480, 830)) -> torch.Tensor:
    return torch.tensor(values[:batch_size])


def embeddings(prior, batch_size):
    return prior.encode_text([PROMPT_SRC] * batch_size), prior.encode_text([PROMPT_TRG] * batch_size)


def noised(prior, z0, noise, t):
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def tweedie(prior, z_t, eps, t):
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


def hand_fpr(prior, z_src, noise, t, emb_src, iters, scale, scale_cfg=7.5):
    """Algorithm 1 of the IDS paper, one sample's norm at a time (per-sample distance)."""
    z_t = noised(prior, z_src, noise, t)
    for _ in range(iters):
        z_t = z_t.detach().requires_grad_(True)
        x0 = tweedie(prior, z_t, cfg_eps(prior, z_t, t, emb_src, scale_cfg), t)
        distance = sum(torch.linalg.vector_norm(x0[i] - z_src[i]) for i in range(z_t.shape[0]))
        (step,) = torch.autograd.grad(distance, z_t)
        z_t = z_t - scale * step
    return z_t.detach()


def noised_sources(prior):
    """Two source latents, noised at two timesteps, with the source score FPR corrects them by (CFG 7.5)."""
    z_src, _, noise = make_latents(2)
    t = timesteps(2)
    emb_src, _ = embeddings(prior, 2)
    return z_src, t, emb_src, noised(prior, z_src, noise, t), lambda z: prior.predict_noise(z, t, emb_src, 7.5)


def official_pds(prior, z_trg, z_src, t, noise, noise_prev, emb_trg, emb_src, scale=100.0):
    """PDS as the official code (KAIST-Visual-AI-Group/PDS, pds.py) computes it: per branch, CFG at 100 and the
    posterior of the single step beta_t = betas[t] (alpha_t = 1 - beta_t), for x_t' at t' = t - 2."""
    ac = prior.alphas_cumprod
    a_t, a_p = ac[t].view(-1, 1, 1, 1), ac[t - 2].view(-1, 1, 1, 1)
    beta_t = 1 - ac[t].double() / ac[t - 1].double()  # diffusers' betas[t], recovered from the schedule
    beta_t = beta_t.float().view(-1, 1, 1, 1)
    sigma = ((1 - a_p) / (1 - a_t) * beta_t).sqrt()

    def zt(z0, emb):
        x_t = noised(prior, z0, noise, t)
        pred_x0 = tweedie(prior, x_t, cfg_eps(prior, x_t, t, emb, scale), t)
        mu = a_p.sqrt() * beta_t / (1 - a_t) * pred_x0 + (1 - beta_t).sqrt() * (1 - a_p) / (1 - a_t) * x_t
        return (noised(prior, z0, noise_prev, t - 2) - mu) / sigma

    return zt(z_trg, emb_trg) - zt(z_src, emb_src)


def pds_inputs(batch_size):
    z_src, z_trg, noise = make_latents(batch_size)
    noise_prev = make_latents(batch_size, seed=7)[2]
    t = timesteps(batch_size, (121, 481, 831))  # on the 500-step DDIM grid (stride 2, offset 1)
    return z_src, z_trg, noise, noise_prev, t


def hand_patch_nce(ref, trg, temperature=0.07):
    """PatchNCE for one sample written as a loop: ref, trg are (P, C) normalised patches."""
    losses = []
    for i in range(ref.shape[0]):
        logits = [ref[i] @ trg[i]] + [ref[i] @ trg[j] if j != i else torch.tensor(-10.0) for j in range(ref.shape[0])]
        logits = torch.stack(logits) / temperature
        losses.append(-F.log_softmax(logits, dim=0)[0])
    return torch.stack(losses).mean()


def up_attention_features(prior, z_t, t, emb):
    """Up-block attn1 outputs and their spatial sizes, recorded by hooks written here (not the library's)."""
    features, sizes = {}, {}
    handles = []
    for name, module in prior.unet.named_modules():
        if name.startswith("up_blocks") and name.endswith("attn1"):
            handles.append(module.register_forward_hook(lambda m, a, o, n=name: features.__setitem__(n, o)))
    for name, module in prior.unet.named_modules():
        if name.startswith("up_blocks") and hasattr(module, "transformer_blocks"):
            handles.append(module.register_forward_pre_hook(lambda m, a, n=name: sizes.__setitem__(n, a[0].shape[-2:])))
    unet_eps(prior, z_t, t, emb)
    for handle in handles:
        handle.remove()
    return features, {n: next(s for p, s in sizes.items() if n.startswith(p)) for n in features}


def hand_cut_grad(prior, z_trg, z_src, noise, t, emb_ref, emb_cur):
    """Gradient on z_trg of the summed per-sample PatchNCE between up-block attn1 features (every patch used)."""
    batch_size = z_trg.shape[0]
    ref, sizes = up_attention_features(prior, noised(prior, z_src, noise, t), t, emb_ref)
    leaf = z_trg.clone().requires_grad_(True)
    cur, _ = up_attention_features(prior, noised(prior, leaf, noise, t), t, emb_cur)
    total = 0
    for b in range(batch_size):
        for name in ref:
            h, w = sizes[name]
            r, c = (
                f[b].T.reshape(1, -1, h, w).detach() if f is ref[name] else f[b].T.reshape(1, -1, h, w)
                for f in (ref[name], cur[name])
            )
            for ps in (1, 2):
                rp, cp = (F.avg_pool2d(x, ps) if ps > 1 else x for x in (r, c))
                rp, cp = (F.normalize(x, dim=1)[0].flatten(1).T for x in (rp, cp))
                total = total + hand_patch_nce(rp.detach(), cp)
    return torch.autograd.grad(total, leaf)[0]


def corrected_noise(prior, z_src, noise, t, source_score, iters=2, distance="l2"):
    """eps* = (z_t* - sqrt(a) z_src) / sqrt(1 - a) from ``fixed_point_regularization``'s z_t* (IDS Eq. 8)."""
    z_t = noised(prior, z_src, noise, t)
    z_star, _ = fixed_point_regularization(
        source_score, z_t, z_src, t, prior.alphas_cumprod, iters=iters, scale=1.0, distance=distance
    )
    a = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return (z_star - a.sqrt() * z_src) / (1 - a).sqrt()


def hand_dds(prior, z_trg, z_src, noise, t, emb_trg, emb_src, scale=7.5):
    return cfg_eps(prior, noised(prior, z_trg, noise, t), t, emb_trg, scale) - cfg_eps(
        prior, noised(prior, z_src, noise, t), t, emb_src, scale
    )


def hand_csd(prior, z_trg, delta, noise, t):
    """CSD's SVGD update over the batch written out (kernel on the noisy target latents, repelling term)."""
    n = z_trg.shape[0]
    x = noised(prior, z_trg, noise, t).flatten(1).double()
    d2 = torch.stack([torch.stack([(x[i] - x[j]).pow(2).sum() for j in range(n)]) for i in range(n)])
    if n > 1:
        h = d2[~torch.eye(n, dtype=torch.bool)].median() / math.log(n)
    else:
        h = torch.tensor(1.0, dtype=torch.float64)
    rows = []
    for i in range(n):
        total = sum(torch.exp(-d2[j, i] / h) * (delta[j].flatten().double() + 2 / h * (x[j] - x[i])) for j in range(n))
        rows.append((1 - prior.alphas_cumprod[t[i]]) / n * total)
    return torch.stack(rows).view_as(delta).float()


def feathered_left_half(width: int = 24, white: int = 12, sigma: float = 1.0) -> torch.Tensor:
    """Per column, a mask white on its ``white`` left columns blurred along rows by a Gaussian of ``sigma`` pixels
    cut at 3 sigma (edge columns repeated): sum_k g(k) [c + k < white] / sum_k g(k)."""
    offsets = np.arange(-3 * int(sigma), 3 * int(sigma) + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    columns = np.clip(np.arange(width)[:, None] + offsets[None], 0, width - 1)
    return torch.from_numpy(((columns < white) * kernel).sum(1) / kernel.sum()).float()
