"""The training loop: reconstruct, then edit, through nerfstudio's ``Trainer`` (checkpoints and input checks)."""
