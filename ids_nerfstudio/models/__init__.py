"""The scene representations an edit can change, each a nerfstudio model implementing the editing contract
(editing/contract.py): nerfacto (``nerfacto``, rendered by ``nerfacto_rendering``) and Gaussian splats
(``splatfacto``, rasterized on CPU by ``splat_rasterizer`` and on CUDA by gsplat through ``gsplat_adapter``)."""
