"""nerfstudio method specifications of ids-nerfstudio, registered through the ``nerfstudio.method_configs`` entry point.

ids-edit, dds-edit, cds-edit, pds-edit, sds-edit and csd-edit differ only in their guidance config (and CSD in
its prior and views per step); every guidance flag is on the command line under --pipeline.guidance.*.
ids-edit-demo and dds-edit-demo are CPU-sized variants that use the packaged demo prior.
"""

from __future__ import annotations

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.plugins.types import MethodSpecification

from ids_nerfstudio.guidance import CDSConfig, CSDConfig, DDSConfig, GuidanceConfig, IDSConfig, PDSConfig, SDSConfig
from ids_nerfstudio.nerf.datamanager import EditDataManagerConfig
from ids_nerfstudio.nerf.model import EditNerfactoModelConfig
from ids_nerfstudio.nerf.pipeline import EditPipelineConfig
from ids_nerfstudio.nerf.trainer import EditTrainerConfig
from ids_nerfstudio.prior import InstructPix2PixPriorConfig, StableDiffusionPriorConfig


def _optimizers() -> dict:
    """nerfacto's optimizer groups (camera_opt included, so stock nerfacto checkpoints load)."""

    def adam(lr: float, lr_final: float, max_steps: int) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=lr_final, max_steps=max_steps)}  # fmt: skip

    return {"proposal_networks": adam(1e-2, 1e-4, 200000), "fields": adam(1e-2, 1e-4, 200000),
            "camera_opt": adam(1e-3, 1e-4, 5000)}  # fmt: skip


def edit_method(name: str, guidance: GuidanceConfig, prior: StableDiffusionPriorConfig | None = None,
                views_per_step: int = 1) -> EditTrainerConfig:  # fmt: skip
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
            prior=prior or StableDiffusionPriorConfig(),
        ),
        optimizers=_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


def demo_method(name: str, guidance: GuidanceConfig) -> EditTrainerConfig:
    """A CPU-sized edit of a small scene with the packaged demo prior (as instruct-nerf2nerf's in2n-tiny).

    A smaller nerfacto (8 hash levels of 2^14 entries, 32 hidden units, 32 + 16 proposal and 16 field samples per
    ray), 1024 rays per batch, 64 px guidance views, 1000 reconstruction and 150 editing steps.
    """
    config = edit_method(name, guidance)
    config.mixed_precision = False
    config.reconstruction_steps = 1000
    config.max_num_iterations = 150
    config.steps_per_save = 50
    config.steps_per_eval_batch = 1000
    pipeline = config.pipeline
    pipeline.prior = StableDiffusionPriorConfig(model="demo")
    pipeline.render_size = 64
    pipeline.regularizer_rays = 512
    pipeline.log_every = 25
    pipeline.datamanager.train_num_rays_per_batch = 1024
    pipeline.datamanager.eval_num_rays_per_batch = 1024
    pipeline.model = EditNerfactoModelConfig(
        eval_num_rays_per_chunk=1 << 12,
        average_init_density=0.01,
        hidden_dim=32,
        hidden_dim_color=32,
        num_levels=8,
        max_res=256,
        log2_hashmap_size=14,
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


ids_edit = MethodSpecification(
    config=edit_method("ids-edit", IDSConfig()),
    description="Edit a nerfacto scene with IDS (DDS + fixed-point regularization): keeps the scene's identity.",
)
dds_edit = MethodSpecification(config=edit_method("dds-edit", DDSConfig()), description="Edit with DDS.")
cds_edit = MethodSpecification(config=edit_method("cds-edit", CDSConfig()), description="Edit with CDS.")
pds_edit = MethodSpecification(config=edit_method("pds-edit", PDSConfig()), description="Edit with PDS.")
sds_edit = MethodSpecification(config=edit_method("sds-edit", SDSConfig()), description="Edit with SDS.")
csd_edit = MethodSpecification(
    config=edit_method("csd-edit", CSDConfig(), InstructPix2PixPriorConfig(), views_per_step=2),
    description="Edit with CSD-Edit (InstructPix2Pix; --prompt-trg is the instruction; 2 views per step).",
)
ids_edit_demo = MethodSpecification(
    config=demo_method("ids-edit-demo", IDSConfig()),
    description="IDS edit of a small scene with the offline demo prior, sized for a CPU (try ids-demo-scene).",
)
dds_edit_demo = MethodSpecification(
    config=demo_method("dds-edit-demo", DDSConfig()),
    description="DDS edit of a small scene with the offline demo prior, sized for a CPU.",
)
