"""The adapterctl command line: a thin root that only wires the verbs and maps errors.

Every failure the library raises on purpose becomes one line on stderr and an exit code;
anything unexpected becomes one line too (set ADAPTERCTL_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from adapterctl.cli import _env

_env.set_thread_defaults()  # before numpy or torch can load

import typer  # noqa: E402 - after the thread defaults, on purpose

from adapterctl.version import __version__  # noqa: E402
from adapterctl.cli import (convert, demo, generate, inspect, lock, ls, merge, prune, pull, push, split, sync,  # noqa: E402
                            tag, train, validate, verify)
from adapterctl.cli._help import TidyCommand  # noqa: E402

app = typer.Typer(
    name="adapterctl",
    help="Typed LoRA adapter files for diffusion models: train them from one photo, inspect, validate, tag, "
         "split, convert, merge, prune and generate with them, and keep libraries of them on the Hub and in CI."
         "\n\n"
         "Examples:\n\n"
         "  adapterctl inspect blora.safetensors\n\n"
         "  adapterctl split blora.safetensors --keep style -o style.safetensors\n\n"
         "  adapterctl convert my_lora.safetensors --to diffusers\n\n"
         "  adapterctl validate adapters/*.safetensors --strict --json\n\n"
         "  adapterctl train photo.png --base tiny --steps 20",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)

for module in (inspect, validate, tag, split, convert, merge, prune, train, generate, ls, lock, verify, push, pull, sync,
               demo):
    module.register(app)
for _info in app.registered_commands:  # --help that reads like a well-kept CLI (cli/_help.py)
    _info.cls = TidyCommand


def _version(value: bool):
    if value:
        print(f"adapterctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Typed LoRA adapter files for diffusion models."""


def _wants_json(argv: list[str]) -> bool:
    return "--json" in argv


def _fail(message: str, code: int, *, error_code: str, argv: list[str], hint: str | None = None) -> int:
    from adapterctl.textsafe import clip

    # Clipped and escaped (newlines included), so that the error is always exactly one line.
    message, hint = clip(message, 2000), clip(hint, 500) if hint else hint
    line = message + (f" (hint: {hint})" if hint else "")
    sys.stderr.write(f"error: {line}\n")
    if _wants_json(argv):
        # Escaped here too: a consumer that prints the decoded message must not get raw controls.
        sys.stdout.write(json.dumps({"ok": False, "error": {"code": error_code, "message": message,
                                                            "hint": hint}}) + "\n")
    return code


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP, raised in the main thread so that every ``finally`` and
    ``except BaseException`` on the way up removes its temporary file or directory. A
    BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, _frame):
    import signal

    for sig in _SIGNALS:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


_SIGNALS: tuple = ()


def install_signal_handlers() -> None:
    global _SIGNALS
    import signal

    _SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)


def run(argv: list[str] | None = None) -> int:
    click = _click_exceptions()

    argv = list(sys.argv[1:] if argv is None else argv)
    with warnings.catch_warnings():
        # A warning printed by a library (numpy, pydantic) would be a second stderr line.
        warnings.simplefilter("ignore")
        return _run(argv, click)


def _run(argv: list[str], click) -> int:
    from adapterctl.errors import AdapterError

    try:
        # With standalone_mode=False, click catches a command's typer.Exit(code) itself and
        # *returns* the code instead of raising it; a command that finishes returns None.
        rv = app(args=argv, prog_name="adapterctl", standalone_mode=False)
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    except typer.Exit as exc:  # --help, --version, or a command's own exit code
        return exc.exit_code
    except click.NoArgsIsHelpError as exc:
        sys.stdout.write(exc.ctx.get_help() + "\n")
        return 0
    except AdapterError as exc:
        return _fail(str(exc), exc.exit_code, error_code=exc.code, argv=argv, hint=exc.hint)
    except click.UsageError as exc:
        # command_path starts with the program name: "adapterctl" for the root, "adapterctl split" below it.
        return _fail(exc.format_message(), 2, error_code="usage_error", argv=argv,
                     hint=f"{exc.ctx.command_path if exc.ctx else 'adapterctl'} --help")
    except Interrupted as exc:
        import signal

        name = signal.Signals(exc.signum).name
        return _fail(f"interrupted by {name}; nothing was written", 128 + exc.signum, error_code="interrupted",
                     argv=argv)
    except typer.Abort:
        return _fail("interrupted by SIGINT; nothing was written", 130, error_code="interrupted", argv=argv)
    except KeyboardInterrupt:
        return _fail("interrupted by SIGINT; nothing was written", 130, error_code="interrupted", argv=argv)
    except OSError as exc:
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return _fail(f"{where}{exc.strerror or exc}", 1, error_code="os_error", argv=argv)
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        if os.environ.get("ADAPTERCTL_DEBUG"):
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc}", 70, error_code="internal_error", argv=argv,
                     hint="rerun with ADAPTERCTL_DEBUG=1 and report the traceback")


def _click_exceptions():
    # typer >= 0.29 vendors click as typer._click; typer.BadParameter is re-exported from there.
    import importlib

    return importlib.import_module(typer.BadParameter.__module__)


def main() -> None:
    install_signal_handlers()
    sys.exit(run())


if __name__ == "__main__":
    main()
