"""The checks of an edit's two prompts, one each, for ns-train, the viewer's prompt boxes and ids-edit-image."""

from __future__ import annotations

from ids_nerfstudio.errors import UserError


def check_target_prompt(prompt_trg: str, flag: str = "--prompt-trg") -> None:
    """Raise ``UserError`` naming ``flag`` for an empty target prompt (the edit would have no target)."""
    if not prompt_trg.strip():
        raise UserError(f"{flag} is empty: describe the edited scene or image (for csd, the edit instruction)")


def no_op_warning(prompt_src: str, prompt_trg: str, *, instruction: bool) -> str | None:
    """The warning for prompts that make the edit a no-op (equal source and target), or None.

    An instruction prior (InstructPix2Pix) reads the target prompt alone, so equal prompts are fine there.
    """
    if instruction or prompt_src.strip() != prompt_trg.strip():
        return None
    return "--prompt-src equals --prompt-trg: the edit is a no-op"
