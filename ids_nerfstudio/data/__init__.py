"""The scene's data: data managers (training batches and the editing step's views), the dataparser, PLY point
clouds and the checks of a dataset before a run starts. ``ply`` imports no nerfstudio (the demo world uses it)."""
