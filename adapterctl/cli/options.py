"""Option aliases shared by every command, so flags read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable result on stdout; logs go to stderr.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors; rely on the exit code.")]
ForceOpt = Annotated[bool, typer.Option("--force", "-f", help="Overwrite an existing output.")]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write (default: beside the input).",
                                                   dir_okay=True, resolve_path=False)]
FsyncOpt = Annotated[bool, typer.Option("--fsync", help="fsync the output before the atomic rename (survives a "
                                                        "power loss; slower on large files).")]
StripOpt = Annotated[bool, typer.Option("--strip-metadata",
                                        help="Drop foreign metadata (ss_*, user keys); keep only ModelSpec and ours.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Architecture map to use (default: from the file, else sdxl).")]
# readable=False: the reader checks access itself, so the error is ours (one line, the same in
# every command) and validate gives an unreadable file a verdict instead of failing the batch.
InputArg = Annotated[Path, typer.Argument(help="Adapter .safetensors file or peft adapter directory.",
                                          show_default=False, readable=False)]
LibraryDirArg = Annotated[Path, typer.Argument(metavar="DIR", help="The library directory.", show_default=False,
                                                readable=False)]
