"""The editing step, apart from any representation: the contract a model implements (``contract``), the pipeline
that renders, guides and returns the editing losses (``pipeline``), and the masks of a local edit (``masks``)."""
