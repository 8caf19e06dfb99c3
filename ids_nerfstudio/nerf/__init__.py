"""Everything that touches nerfstudio: the editing model, data manager, renderer, pipeline and trainer.

Importing this package allow-lists the numpy scalar types that nerfstudio checkpoints hold (their learning
rates are numpy float64), so ``torch.load`` keeps ``weights_only=True`` under torch >= 2.6 (nerfstudio issue
3683). ``ns-render`` and ``ns-viewer`` import it when they read an edit run's config.yml.
"""

from ids_nerfstudio.nerf.checkpoints import allow_numpy_scalars_in_checkpoints

allow_numpy_scalars_in_checkpoints()
