"""Run several editing methods on one scene with the same settings, measure them, tabulate (behind ``ids-compare``)::

    ids-compare --data DATA --prompt-src "..." --prompt-trg "..." --methods ids-edit dds-edit cds-edit pds-edit
    ids-compare ... --methods csd-edit "csd-edit --pipeline.dataset-update.mode csd" \
        "csd-edit --pipeline.dataset-update.mode in2n" "pds-edit --refinement-steps 15000"

A method may carry ns-train flags of its own (one quoted entry: the method's name, then its flags): the modes of a
method (a dataset update, a refinement stage) are compared as methods, each entry its own run and row. Every method
gets the same seed, steps and views (and ``--load-dir`` when given); each run is measured with ``ids-eval``;
``comparison.md``, ``comparison.json`` and ``comparison.png`` (the methods' contact sheets, stacked) land in
``--output-dir``. ``--dry-run`` prints the commands instead. Arguments after ``--`` go to every ``ns-train`` call
(e.g. ``-- --pipeline.prior.model tiny``).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro
from PIL import Image

from ids_nerfstudio.errors import UserError
from ids_nerfstudio.files import write_atomic
from ids_nerfstudio.guidance import nerfstudio_method_names
from ids_nerfstudio.sheets import stacked_with_titles
from ids_nerfstudio.tools.scene_eval import EvalArgs, evaluate, number

COLUMNS = ("clip_score", "clip_directional_similarity", "lpips_to_source", "background_psnr", "consistency_clip")


@dataclass
class CompareArgs:
    """Run and compare editing methods on one scene."""

    data: Path
    """nerfstudio dataset folder."""
    prompt_src: str
    """Prompt describing the source scene."""
    prompt_trg: str
    """Prompt describing the edited scene."""
    methods: list[str] = field(default_factory=lambda: ["ids-edit", "dds-edit", "cds-edit", "pds-edit"])
    """Methods to compare; an entry may add that method's flags ("csd-edit --pipeline.dataset-update.mode in2n")."""
    load_dir: Path | None = None
    """nerfstudio_models folder of a source reconstruction shared by all methods (else each reconstructs)."""
    output_dir: Path = Path("outputs/compare")
    """Where the runs and the comparison go."""
    max_num_iterations: int = 3000
    """Editing steps of every method."""
    seed: int = 42
    """Seed of every run (nerfstudio's --machine.seed)."""
    dry_run: bool = False
    """Print the commands without running them."""
    extra: tyro.conf.Suppress[list[str]] = field(default_factory=list)
    """Arguments after -- are passed to every ns-train call."""


def split_entry(entry: str) -> tuple[str, list[str]]:
    """A --methods entry's method name and its own flags."""
    words = shlex.split(entry)
    return (words[0], words[1:]) if words else ("", [])


def entry_folder(entry: str) -> str:
    """The output folder of a --methods entry: the method's name, then its flags, in letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9.]+", "-", entry)).strip("-")


def config_path(args: CompareArgs, entry: str) -> Path:
    """Where the run of a --methods entry writes its config.yml."""
    method = split_entry(entry)[0]
    return args.output_dir / entry_folder(entry) / "compare" / method / "run" / "config.yml"


def train_command(args: CompareArgs, entry: str) -> list[str]:
    """The ns-train command of one --methods entry; it exits when training ends, whatever --vis the extras choose."""
    method, flags = split_entry(entry)
    command = [sys.executable, "-m", "nerfstudio.scripts.train", method, "--data", str(args.data),
               "--prompt-src", args.prompt_src, "--prompt-trg", args.prompt_trg,
               "--output-dir", str(args.output_dir / entry_folder(entry)), "--experiment-name", "compare",
               "--timestamp", "run", "--max-num-iterations", str(args.max_num_iterations),
               "--machine.seed", str(args.seed)]  # fmt: skip
    if args.load_dir is not None:
        command += ["--load-dir", str(args.load_dir)]
    # last, so that it wins: nerfstudio's viewer otherwise keeps the process waiting for ctrl+c after training
    return command + args.extra + flags + ["--viewer.quit-on-train-completion", "True"]


def compare(args: CompareArgs) -> Path:
    """Run every method, evaluate it, and write the comparison; returns the output folder."""
    known = nerfstudio_method_names()
    unknown = [m for m in args.methods if split_entry(m)[0] not in known]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    folders = [entry_folder(m) for m in args.methods]
    repeated = sorted({m for m, folder in zip(args.methods, folders, strict=True) if folders.count(folder) > 1})
    if repeated:
        raise UserError(f"--methods: {', '.join(repeated)} would share a run folder; give each entry once")
    if not args.data.exists():
        raise UserError(f"--data {args.data} does not exist")
    commands = {method: train_command(args, method) for method in args.methods}
    if args.dry_run:
        for command in commands.values():
            print(shlex.join(command))
        return args.output_dir
    rows, sheets = {}, []
    for method, command in commands.items():
        print(f"== {method}: {shlex.join(command)}")
        result = subprocess.run(command)
        if result.returncode != 0:
            raise UserError(f"{method}: ns-train failed with exit code {result.returncode} (see its output above)")
        run_dir = evaluate(EvalArgs(load_config=config_path(args, method)))
        rows[method] = json.loads((run_dir / "metrics.json").read_text())["mean"]
        sheets.append(Image.open(run_dir / "contact_sheet.png").convert("RGB"))

    header = "| method | " + " | ".join(COLUMNS) + " |\n|---" + "|---" * len(COLUMNS) + "|\n"
    table = header + "".join(f"| {m} | " + " | ".join(number(r[c]) for c in COLUMNS) + " |\n" for m, r in rows.items())
    combined = stacked_with_titles(sheets, list(rows))  # one titled block per method, in the table's order
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(args.output_dir / "comparison.md", lambda p: p.write_text(table))
    write_atomic(args.output_dir / "comparison.json", lambda p: p.write_text(json.dumps(rows, indent=2)))
    write_atomic(args.output_dir / "comparison.png", lambda p: combined.save(p, format="PNG"))
    print(table)
    return args.output_dir
