"""Run README.md's first edits as a newcomer would: its commands, verbatim, on a PATH with no system ffmpeg.

The first bash block of "First edit: a scene", "Gaussian splats" and "First edit: one image" are run in that order
in an empty folder, with the virtual environment's bin first on PATH and every other folder that holds an ``ffmpeg``
left out. Only sizes change, by flags appended at the end (so the run takes a few minutes): fewer steps and frames.
``<timestamp>`` is the run folder ns-train made for that path. Exits non-zero with the failing command on the first
failure.

``--full`` runs the scene section at full size instead (no flag appended) and prints its time and the peak memory of
its largest process; ``--picture docs/first-scene-edit.png --animation docs/first-scene-edit.gif`` copies the
contact sheet its ids-eval wrote and the before/after animation it made there (the README's pictures, made by its
own commands); ``--keep DIR`` runs in DIR (kept) instead of a temporary folder, for benchmarks/first_block.py.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## First edit: a scene", "## Gaussian splats", "## First edit: one image")
SMALLER = {  # program (and subcommand) -> flags appended to make the run small
    "ns-train": ["--reconstruction-steps", "30", "--max-num-iterations", "2"],
    "ns-render interpolate": ["--interpolation-steps", "1"],
    "ids-edit-image": ["--steps", "2"],
}


def first_bash_block(text: str, heading: str) -> list[str]:
    """The commands of the first ```bash block after ``heading``: continuations joined, comments dropped."""
    section = text[text.index(heading) :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        line = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\") and current.strip():
            commands.append(current.strip())
            current = ""
    return commands


def path_without_ffmpeg(venv_bin: Path) -> str:
    folders = [f for f in os.environ.get("PATH", "").split(os.pathsep) if f and not Path(f, "ffmpeg").exists()]
    return os.pathsep.join([str(venv_bin), *folders])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the scene section only, at the README's sizes")
    parser.add_argument("--picture", type=Path, help="with --full: copy ids-eval's contact sheet here")
    parser.add_argument("--animation", type=Path, help="with --full: copy the block's before/after animation here")
    parser.add_argument("--keep", type=Path, help="run in this folder (made, kept) instead of a temporary one")
    args = parser.parse_args()
    text = README.read_text()
    env = {**os.environ, "PATH": path_without_ffmpeg(Path(sys.executable).parent), "PYTHONWARNINGS": "ignore"}
    block_started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        folder = str(args.keep.resolve()) if args.keep else temporary
        Path(folder).mkdir(parents=True, exist_ok=True)
        for heading in SECTIONS[:1] if args.full else SECTIONS:
            for command in first_bash_block(text, heading):
                if "<timestamp>" in command:
                    (pattern,) = [word for word in shlex.split(command) if "<timestamp>" in word]
                    (run,) = glob.glob(os.path.join(folder, pattern.replace("<timestamp>", "*")))
                    command = command.replace("<timestamp>", Path(run).parent.name)
                words = shlex.split(command)
                for program, flags in ({} if args.full else SMALLER).items():
                    if words[: len(program.split())] == program.split():
                        words += flags
                print(f"$ {shlex.join(words)}", flush=True)
                started = time.perf_counter()
                result = subprocess.run(words, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, timeout=3600 if args.full else 900)  # fmt: skip
                print(f"  ({time.perf_counter() - started:.0f} s)", flush=True)
                if result.returncode != 0:
                    print(result.stdout[-4000:])
                    print(f"README command failed with exit code {result.returncode}: {command}")
                    return 1
        if args.full:
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
            print(f"the block took {time.perf_counter() - block_started:.0f} s; its largest process peaked at "
                  f"{peak:.2f} GiB resident")  # fmt: skip
        if args.picture is not None:
            (sheet,) = glob.glob(os.path.join(folder, "outputs", "*", "*", "*", "contact_sheet.png"))
            shutil.copyfile(sheet, args.picture)
            print(f"copied {sheet} to {args.picture}")
        if args.animation is not None:
            (animation,) = glob.glob(os.path.join(folder, "*.gif"))
            shutil.copyfile(animation, args.animation)
            print(f"copied {animation} to {args.animation}")
        sections = 1 if args.full else len(SECTIONS)
        print(f"README's first edits ran verbatim ({sections} sections), without a system ffmpeg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
