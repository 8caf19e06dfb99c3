"""nerfstudio method specifications of ids-nerfstudio, registered through the ``nerfstudio.method_configs`` entry point.

ids-edit, dds-edit, cds-edit, pds-edit, sds-edit and csd-edit differ only in their guidance config (and CSD in
its prior and views per step); every guidance flag is on the command line under --pipeline.guidance.*.
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
