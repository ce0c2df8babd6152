"""The ``hubquant`` command: each subcommand calls one library function.

Exit codes: 0 success; 2 anything the user can fix (one line on stderr);
1 an unexpected internal error (traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from hubquant.errors import Terminated
from hubquant.shipped import shipped_files

EXIT_USER, EXIT_INTERNAL = 2, 1


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USER, f"hubquant: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hubquant", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    apply = sub.add_parser("apply", help="quantize a preset and save it")
    apply.add_argument(
        "--preset",
        default=None,
        help="KerasHub preset name, handle or folder (default: the built-in synthetic Gemma, offline)",
    )
    shipped = ", ".join(shipped_files("configs"))
    apply.add_argument("--config", help=f"mode config: a YAML file or a shipped name ({shipped})")
    apply.add_argument("--target-size", help="instead of --config: tune to this budget first")
    apply.add_argument("--target-bits", help="instead of --config: tune to these bits first")
    apply.add_argument("--output", help="output folder (required unless --dry-run)")
    apply.add_argument(
        "--recipe",
        help="recipe YAML file or shipped recipe name (default: chosen by backbone class)",
    )
    apply.add_argument(
        "--format",
        default="preset",
        help="comma list of: preset, keras, safetensors, hf (default: preset)",
    )
    apply.add_argument("--dry-run", action="store_true", help="print the Plan and write nothing")
    apply.add_argument(
        "--strict", action="store_true", help="a rule that matches no layer is an error"
    )
    apply.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    apply.add_argument("--quiet", action="store_true", help="print only errors")
    apply.add_argument("--report", help="also write the per-role report as JSON to this file")
    apply.add_argument(
        "--calibration",
        action="append",
        metavar="FILE",
        help="calibration text file or glob for GPTQ/AWQ rules (repeatable; replaces the "
        "config's calibration files)",
    )

    _tune_parser(sub)

    export = sub.add_parser("export", help="export a hubquant artefact (to Hugging Face)")
    export.add_argument("source", help="a hubquant folder, .keras or .safetensors file")
    export.add_argument("--to", default="hf", help="target format: hf (compressed-tensors)")
    export.add_argument("--output", required=True, help="output folder")
    export.add_argument(
        "--overwrite", action="store_true", help="replace a non-empty output folder"
    )

    ev = sub.add_parser("eval", help="perplexity, KL and top-1 agreement of quantized vs float")
    ev.add_argument(
        "--preset", default=None, help="the original float preset (default: the synthetic one)"
    )
    ev.add_argument("--quantized", required=True, help="a hubquant folder, .keras or .safetensors")
    ev.add_argument("--text", required=True, help="a UTF-8 text file to cut token windows from")
    ev.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    ev.add_argument("--windows", type=int, default=16, help="number of windows (default 16)")
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")

    ins = sub.add_parser("inspect", help="what a hubquant artefact holds (metadata only)")
    ins.add_argument("path", help="a hubquant folder, .keras, .safetensors or Hugging Face export")
    ins.add_argument("--json", action="store_true", help="print JSON instead of text")
    ins.add_argument("--plot", help="draw blocks x roles (bits per weight) as a PNG")

    presets = sub.add_parser("presets", help="list KerasHub presets hubquant has a recipe for")
    presets.add_argument("filter", nargs="?", default="", help="only names containing this")

    for kind in ("recipes", "configs"):
        group = sub.add_parser(kind, help=f"list or show {kind}")
        verbs = group.add_subparsers(dest="verb", parser_class=_Parser)
        verbs.add_parser("list", help=f"list {kind} (recipes: with where each was found)")
        show = verbs.add_parser("show", help=f"print one of the {kind}")
        show.add_argument("name")
        if kind == "recipes":
            _recipe_verbs(verbs)
    return parser


def _tune_parser(sub) -> None:
    tune = sub.add_parser("tune", help="choose each layer's mode to a size budget (a config)")
    tune.add_argument("--preset", default=None, help="float preset (default: the synthetic one)")
    tune.add_argument("--output-config", required=True, help="where to write the tuned config")
    tune.add_argument("--target-size", help="fraction of float bytes (0.25) or a size (1.5GB)")
    tune.add_argument("--target-bits", help="average bits per weight, scales included (4.5)")
    tune.add_argument(
        "--calibration",
        action="append",
        metavar="FILE",
        help="calibration text file or glob (repeatable; default: text the model writes)",
    )
    tune.add_argument(
        "--candidates",
        help="comma list replacing the defaults (none, int8, int4_g32/64/128 with and without "
        "_sym), or +name / -name to add or drop one",
    )
    tune.add_argument("--recipe", help="recipe YAML file or shipped recipe name")
    tune.add_argument(
        "--samples", type=int, help="calibration windows (default 16; 128 for an encoder)"
    )
    tune.add_argument(
        "--seq-len", type=int, help="tokens per window (default 256; 64 for an encoder)"
    )
    tune.add_argument("--report", help="also write every layer's choice and damage as JSON")
    tune.add_argument("--plot", help="also draw the choice as a PNG heatmap (needs matplotlib)")
    tune.add_argument("--quiet", action="store_true", help="print only errors")
    tune.add_argument(
        "--fused",
        action="store_true",
        help="one mode for the layers of a block that read the same input (q/k/v; gate/up)",
    )


def _recipe_verbs(verbs) -> None:
    check = verbs.add_parser("validate", help="check a recipe file without a model")
    check.add_argument("file")
    new = verbs.add_parser("new", help="print a draft recipe for the model a preset describes")
    new.add_argument("preset", help="a preset folder (or its config.json), name or handle")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from hubquant.errors import HubquantError

    Terminated.pending = False
    previous = _on_sigterm()
    try:
        return _dispatch(args)
    except HubquantError as e:
        if args.debug:
            raise
        print(f"hubquant: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"hubquant: {how}; nothing was written.", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # an internal error: say so plainly
        if args.debug:
            raise
        print(
            f"hubquant: internal error: {type(e).__name__}: {_one_line(e)} "
            "(rerun with --debug for a traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm():
    """Make SIGTERM raise ``Terminated`` (main thread only); the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum, frame):
        Terminated.pending = True  # raised again before an output is put in place
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


def _one_line(error: Exception) -> str:
    """The message on one line: a newline (in a path, say) is shown as ``\\n``."""
    return str(error).strip().replace("\r", "\\r").replace("\n", "\\n")


def _dispatch(args) -> int:
    from hubquant import commands

    if args.command == "apply":
        return commands.apply(
            preset=args.preset,
            config=args.config,
            output=args.output,
            recipe=args.recipe,
            formats=args.format,
            dry_run=args.dry_run,
            strict=args.strict,
            overwrite=args.overwrite,
            quiet=args.quiet,
            report=args.report,
            calibration=args.calibration,
            target_size=args.target_size,
            target_bits=args.target_bits,
        )
    if args.command == "tune":
        from hubquant.tune.command import run

        return run(
            preset=args.preset,
            output_config=args.output_config,
            target_size=args.target_size,
            target_bits=args.target_bits,
            calibration=args.calibration,
            candidates=args.candidates,
            recipe=args.recipe,
            samples=args.samples,
            seq_len=args.seq_len,
            report=args.report,
            plot=args.plot,
            quiet=args.quiet,
            fused=args.fused,
        )
    if args.command == "inspect":
        return commands.inspect(args.path, args.json, args.plot)
    if args.command == "eval":
        return commands.evaluate(
            args.preset, args.quantized, args.text, args.seq_len, args.windows, args.json
        )
    if args.command == "export":
        return commands.export(args.source, args.to, args.output, args.overwrite)
    if args.command == "presets":
        return commands.list_presets(args.filter)
    verb = args.verb or "list"  # `hubquant recipes` / `hubquant configs` alone list them
    if args.command == "recipes":
        verbs = {
            "list": lambda: commands.list_recipes(),
            "show": lambda: commands.show_recipe(args.name),
            "validate": lambda: commands.validate_recipe(args.file),
            "new": lambda: commands.new_recipe(args.preset),
        }
        return verbs[verb]()
    if verb == "list":
        return commands.list_shipped(args.command)
    return commands.show_shipped(args.command, args.name)


if __name__ == "__main__":
    sys.exit(main())
