"""nerfstudio method specifications, built from the guidance registry (``GUIDANCE_METHODS``).

Every guidance NAME gives four methods: ``NAME-edit`` (the registry entry's prior: Stable Diffusion, or
InstructPix2Pix for instruction methods; full-size nerfacto), ``NAME-edit-demo`` (a CPU-sized edit with the
packaged demo prior), and the same two on Gaussian splats (splatfacto): ``NAME-splat-edit`` and
``NAME-splat-edit-demo``. Methods of one representation differ only in their guidance config, prior and views per
step; every guidance flag is on the command line under --pipeline.guidance.*. setup.py registers
``METHOD_SPECIFICATIONS`` under nerfstudio's entry point, with one attribute of this module per method
(``ids-edit`` -> ``ids_edit``).
"""

from __future__ import annotations

from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from ids_nerfstudio.data.datamanagers import EditDataManagerConfig, EditFullImageDataManagerConfig
from ids_nerfstudio.data.dataparser import EditNerfstudioDataParserConfig
from ids_nerfstudio.editing.pipeline import EditPipelineConfig
from ids_nerfstudio.engine.trainer import EditTrainerConfig
from ids_nerfstudio.guidance import GUIDANCE_METHODS, METHOD_VARIANTS, GuidanceConfig, GuidanceMethod
from ids_nerfstudio.model_names import DEMO
from ids_nerfstudio.models.nerfacto import EditNerfactoModelConfig
from ids_nerfstudio.models.splatfacto import EditSplatfactoModelConfig
from ids_nerfstudio.prior import StableDiffusionPriorConfig


def _optimizers() -> dict:
    """nerfacto's optimizer groups (camera_opt included, so stock nerfacto checkpoints load)."""

    def adam(lr: float, lr_final: float, max_steps: int) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps)}  # fmt: skip

    return {"proposal_networks": adam(1e-2, 1e-4, 200000), "fields": adam(1e-2, 1e-4, 200000),
            "camera_opt": adam(1e-3, 1e-4, 5000)}  # fmt: skip


def _refinement_schedulers(warmup_steps: int = 1000) -> dict:
    """PDS's refinement schedules of nerfacto's groups (pds_config.py): a cosine warm-up to the rate, then exponential
    decay toward 1e-3 over nerfstudio's default 100,000 steps."""
    decay = ExponentialDecaySchedulerConfig(lr_final=1e-3, warmup_steps=warmup_steps)
    return {"proposal_networks": decay, "fields": decay}


def full_method(name: str, method: GuidanceMethod) -> EditTrainerConfig:
    """The trainer config of one editing method at full size (nerfacto's defaults, 512 px guidance views)."""
    return edit_method(name, method.config(), method.prior(), views_per_step=method.views_per_step)


def edit_method(
    name: str, guidance: GuidanceConfig, prior: StableDiffusionPriorConfig, views_per_step: int = 1
) -> EditTrainerConfig:
    """The trainer config of one editing method."""
    return EditTrainerConfig(
        method_name=name,
        steps_per_eval_batch=500,
        steps_per_save=500,
        max_num_iterations=3000,
        mixed_precision=True,
        pipeline=EditPipelineConfig(
            datamanager=EditDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(),
                train_num_rays_per_batch=4096,
                eval_num_rays_per_batch=4096,
                views_per_step=views_per_step,
            ),  # fmt: skip
            model=EditNerfactoModelConfig(eval_num_rays_per_chunk=1 << 15, average_init_density=0.01),
            guidance=guidance,
            prior=prior,
        ),
        optimizers=_optimizers(),
        update_schedulers=_refinement_schedulers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def demo_method(name: str, method: GuidanceMethod) -> EditTrainerConfig:
    """A CPU-sized edit of a small scene with the packaged demo prior (as instruct-nerf2nerf's in2n-tiny).

    A smaller nerfacto (8 hash levels of 2^17 entries, 32 hidden units, 32 + 16 proposal and 16 field samples per
    ray; no camera optimizer, the demo's poses are exact), 1024 rays per batch, 64 px guidance views rendered with
    one graph (at 64 px a deferred re-render costs more time than its memory saves), DEMO_RECONSTRUCTION
    reconstruction and DEMO_EDIT_STEPS editing steps. The demo prior is a text-to-image model, so instruction
    methods use it as Stable Diffusion (CSD then mixes DDS deltas).
    """
    config = edit_method(name, method.config(), StableDiffusionPriorConfig(model=DEMO), method.views_per_step)
    config.mixed_precision = False
    config.reconstruction_steps = DEMO_RECONSTRUCTION
    config.max_num_iterations = DEMO_EDIT_STEPS
    # nerfacto's 1e-2 lets a small guidance tint grow over the whole floor; with 2^17 entries the former 3e-4
    # left the ball grey (docs/demo-methods.md)
    config.edit_learning_rate = 6e-4
    config.update_schedulers = _refinement_schedulers(warmup_steps=DEMO_REFINEMENT_WARMUP)
    config.steps_per_save = 50
    config.steps_per_eval_batch = 1000
    pipeline = config.pipeline
    pipeline.render_size = 64
    pipeline.dataset_update.csd_iterations = DEMO_CSD_ITERATIONS
    pipeline.render_mode = "full-graph"  # 64 px views: one graph is small and faster than a deferred re-render
    pipeline.regularizer_rays = 512
    pipeline.log_every = 25
    pipeline.datamanager.train_num_rays_per_batch = 1024
    pipeline.datamanager.eval_num_rays_per_batch = 1024
    pipeline.model = EditNerfactoModelConfig(
        camera_optimizer=CameraOptimizerConfig(mode="off"),  # the demo's poses are exact: nothing to optimise
        eval_num_rays_per_chunk=1 << 12,
        average_init_density=0.01,
        hidden_dim=32,
        hidden_dim_color=32,
        num_levels=8,
        max_res=256,
        log2_hashmap_size=17,  # 2^14 left floaters in some seeds' reconstructions (docs/relevance.md)
        appearance_embed_dim=8,
        num_proposal_samples_per_ray=(32, 16),
        num_nerf_samples_per_ray=16,
        proposal_net_args_list=[
            {"hidden_dim": 16, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 64, "use_linear": False},
            {"hidden_dim": 16, "log2_hashmap_size": 12, "num_levels": 4, "max_res": 128, "use_linear": False},
        ],
    )
    config.viewer = ViewerConfig(num_rays_per_chunk=1 << 12)
    return config


def _splat_optimizers(colour_lr: float = 0.0025) -> dict:
    """splatfacto's optimizer groups (camera_opt and bilateral_grid included, so stock splatfacto checkpoints load)."""

    def adam(lr: float, scheduler: ExponentialDecaySchedulerConfig | None = None) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": scheduler}

    def decay(lr_final: float, warmup_steps: int = 0) -> ExponentialDecaySchedulerConfig:
        return ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=30000, warmup_steps=warmup_steps,
                                               lr_pre_warmup=0)  # fmt: skip

    return {"means": adam(1.6e-4, decay(1.6e-6)), "features_dc": adam(colour_lr),
            "features_rest": adam(colour_lr / 20), "opacities": adam(0.05), "scales": adam(0.005),
            "quats": adam(0.001), "camera_opt": adam(1e-4, decay(5e-7, 1000)),
            "bilateral_grid": adam(2e-3, decay(1e-4, 1000))}  # fmt: skip


def full_splat_method(name: str, method: GuidanceMethod) -> EditTrainerConfig:
    """The trainer config of one splat editing method at full size (splatfacto's defaults, 512 px guidance views)."""
    return splat_edit_method(name, method.config(), method.prior(), views_per_step=method.views_per_step)


def splat_edit_method(
    name: str, guidance: GuidanceConfig, prior: StableDiffusionPriorConfig, views_per_step: int = 1
) -> EditTrainerConfig:
    """The trainer config of one editing method on splatfacto: its data manager (whole images), dataparser (the
    point cloud, read without open3d), model and learning rates; the learning rates go on while editing."""
    return EditTrainerConfig(
        method_name=name,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=500,
        steps_per_eval_all_images=1000,
        max_num_iterations=1000,
        mixed_precision=False,
        reconstruction_steps=30000,
        pipeline=EditPipelineConfig(
            datamanager=EditFullImageDataManagerConfig(
                dataparser=EditNerfstudioDataParserConfig(), cache_images_type="uint8", views_per_step=views_per_step
            ),
            model=EditSplatfactoModelConfig(),
            guidance=guidance,
            prior=prior,
        ),
        optimizers=_splat_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def demo_splat_method(name: str, method: GuidanceMethod) -> EditTrainerConfig:
    """A CPU-sized splat edit of the demo scene with the packaged demo prior.

    splatfacto with SH degree 0 (the demo world is Lambertian), full-resolution training from the start, no
    refinement (the Gaussians are the demo scene's point cloud; absgrad, which needs gsplat's CUDA kernels, off),
    64 px guidance views, DEMO_SPLAT_RECONSTRUCTION reconstruction and 150 editing steps.
    """
    config = splat_edit_method(name, method.config(), StableDiffusionPriorConfig(model=DEMO), method.views_per_step)
    config.reconstruction_steps = DEMO_SPLAT_RECONSTRUCTION
    config.max_num_iterations = 150
    config.steps_per_save = 50
    config.steps_per_eval_image = 1000
    config.steps_per_eval_all_images = 100000
    config.optimizers = _splat_optimizers(colour_lr=DEMO_SPLAT_COLOUR_LR)
    pipeline = config.pipeline
    pipeline.render_size = 64
    pipeline.dataset_update.csd_iterations = DEMO_CSD_ITERATIONS
    pipeline.log_every = 25
    pipeline.model = EditSplatfactoModelConfig(
        sh_degree=0, num_downscales=0, use_absgrad=False,
        stop_split_at=0,  # no refinement: the demo's point cloud already samples the world's surfaces, and
        # refining from it triples the Gaussians and slows every step (docs/demo-methods.md)
    )  # fmt: skip
    config.viewer = ViewerConfig(num_rays_per_chunk=1 << 12)
    return config


DEMO_RECONSTRUCTION = 1000
"""Reconstruction steps of the nerfacto demo methods: sized so that the README's first scene block fits its time
budget with every training view reconstructed well (docs/demo-methods.md measures both)."""
DEMO_EDIT_STEPS = 100
"""Editing steps of the nerfacto demo methods (docs/demo-methods.md)."""
DEMO_REFINEMENT_WARMUP = 20
"""Warm-up steps of the demo methods' refinement: PDS's 1000 is 1 / 15 of its 15,000 steps; a demo refinement runs
a few hundred (a view's SDEdit every 10 steps), which a 1000-step warm-up at near-zero rates would leave unfitted."""
DEMO_CSD_ITERATIONS = 20
"""Iterations of the demo methods' joint CSD-Edit (--pipeline.dataset-update.csd-iterations; the official 200 at
lr 2.0): fewer suffice on the demo prior (docs/dataset-update.md measures how many)."""
DEMO_SPLAT_RECONSTRUCTION = 1500
"""Reconstruction steps of the splat demo methods."""
DEMO_SPLAT_COLOUR_LR = 0.01
"""Learning rate of the splat demo's colours (splatfacto: 0.0025)."""

VARIANTS = {
    "-edit": (full_method, ""),
    "-edit-demo": (demo_method, " CPU-sized, with the offline demo prior (try ids-demo-scene)."),
    "-splat-edit": (full_splat_method, " On Gaussian splats (splatfacto)."),
    "-splat-edit-demo": (demo_splat_method, " On Gaussian splats, CPU-sized, with the offline demo prior."),
}
"""How each of the registry's METHOD_VARIANTS is built, and what its description adds."""


def specifications() -> dict[str, MethodSpecification]:
    """``NAME<variant>`` for every registered guidance and variant."""
    specs = {}
    for name, method in GUIDANCE_METHODS.items():
        for variant in METHOD_VARIANTS:
            build, description = VARIANTS[variant]
            method_name = f"{name}{variant}"
            specs[method_name] = MethodSpecification(
                config=build(method_name, method), description=method.summary + description
            )
    return specs


METHOD_SPECIFICATIONS = specifications()
"""Every editing method of the plugin, by its ns-train name."""


def __getattr__(attribute: str) -> MethodSpecification:
    """The entry-point attribute of a method: ``ids_edit`` is ``ids-edit``."""
    try:
        return METHOD_SPECIFICATIONS[attribute.replace("_", "-")]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}") from None
