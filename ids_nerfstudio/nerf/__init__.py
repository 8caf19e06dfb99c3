"""Everything that touches nerfstudio: the editing model, data manager, renderer, pipeline and trainer."""
