"""Command line: ``slt-jax demo | llc | plot`` (also ``python -m slt_jax``)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import pathlib
import sys
import time

# What bad input raises (a missing directory, a bad option, a config mismatch, a module
# that cannot be imported); any other exception is a bug and keeps its traceback.
_USER_ERRORS = (ValueError, TypeError, FloatingPointError, ImportError, OSError)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})


def parse_bytes(text: str) -> int:
    """``2000000000``, ``2e9``, ``2GB``, ``1.5GiB`` → a whole number of bytes."""
    stripped = text.strip()
    number = stripped.rstrip("KMGTBikmgtb ")
    unit = stripped[len(number) :].strip().upper()
    try:
        value = float(number) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(
            f"not a byte count: {text!r} (write e.g. 2000000000, 2e9, 2GB or 1.5GiB)"
        ) from None
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"the memory budget must be >= 1 byte, got {text!r}")
    return int(value)


def parse_bytes_free_count(text: str) -> int:
    """A whole count, written ``2000000`` or ``2e6``."""
    return _argument_type(_config().whole_count)(text)


def _config():
    from slt_jax._src import config  # imported late: `slt-jax --help` stays fast

    return config


def _argument_type(parse):
    """``parse`` (text -> value, raising ``ValueError``) as an argparse ``type``."""
    if parse in (int, float, str):
        return parse  # argparse's own messages ("invalid int value: 'x'")

    def convert(text: str):
        try:
            return parse(text)
        except (ValueError, TypeError) as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__
    return convert


def _add_field(group, field, default) -> None:
    """One flag from a configuration field's declaration (:func:`slt_jax._src.config.option`)."""
    meta = field.metadata
    flag = meta.get("flag", "--" + field.name.replace("_", "-"))
    dest = meta.get("keyword", field.name)
    help = meta["help"].format(samplers=_sampler_names())
    if meta.get("switch"):
        group.add_argument(flag, dest=dest, action="store_true", default=default, help=help)
        return
    parse = meta.get("parse") or _parse_of(field)
    extra = {"choices": meta["choices"]} if "choices" in meta else {}
    if "choices" not in meta:  # named after the flag: --chains CHAINS
        extra["metavar"] = meta.get("metavar", flag.lstrip("-").replace("-", "_").upper())
    group.add_argument(
        flag, dest=dest, type=_argument_type(parse), default=default, help=help, **extra
    )


def _parse_of(field):
    """int, float or str, from the field's annotation (``"int | None"`` → int)."""
    kind = str(field.type).split("|")[0].strip()
    return {"int": int, "float": float, "str": str}[kind]


def _sampler_names() -> str:
    from slt_jax._src.samplers.specs import names_help

    return names_help()


def _run_fields():
    """The fields of :class:`~slt_jax.LLCConfig` that are run options, with their group."""
    config = _config()
    fields = [f for f in dataclasses.fields(config.LLCConfig) if f.name in config.OPTIONS]
    return [(f, f.metadata.get("group", "sampler")) for f in fields]


def load_factory(spec: str):
    """``MODULE:NAME`` or ``path/to/file.py:NAME`` → the object ``NAME``."""
    module_name, sep, name = spec.rpartition(":")
    if not sep or not module_name or not name:
        raise ValueError(f"--model must look like MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    if module_name.endswith(".py"):
        path = pathlib.Path(module_name).resolve()
        if not path.exists():
            raise ValueError(f"--model: no file {path}")
        loaded = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loaded)
        sys.modules[path.stem] = module
        loaded.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"--model: {module_name} has no attribute {name!r}") from None


def _model_from_factory(spec: str):
    made = load_factory(spec)()
    if isinstance(made, dict):
        return made["loss_fn"], made["data"], made.get("like")
    if isinstance(made, tuple) and len(made) in (2, 3):
        return (*made, None) if len(made) == 2 else made
    raise ValueError("the --model factory must return (loss_fn, data) or (loss_fn, data, like)")


def _add_sampler_options(p: argparse.ArgumentParser, *, chains=8, steps=1000) -> None:
    """The run options, generated from :class:`~slt_jax.LLCConfig`'s fields (names,
    defaults and help declared there once) and :class:`~slt_jax.Auto`'s, then the
    sweep's own (chunking, memory budget, progress, devices)."""
    config = _config()
    # left at its default, --steps is DefaultSteps (step_size auto then chooses the length)
    defaults = {"num_chains": chains, "num_steps": config.DefaultSteps(steps)}
    g = p.add_argument_group("sampler (see slt_jax.estimate_llc)")
    m = p.add_argument_group("memory, layout and compilation (see slt_jax.Placement)")
    for field, group in _run_fields():
        default = defaults.get(field.name, field.default)
        _add_field(m if group == "memory" else g, field, default)
    for field in dataclasses.fields(config.Auto):
        _add_field(g, field, field.default)
    g.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="checkpoints per compiled call (default: fit the memory budget)",
    )
    g.add_argument(
        "--memory-budget",
        type=parse_bytes,
        default=None,
        help="bytes, e.g. 2000000000, 2e9, 2GB or 1.5GiB (default: the free memory)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.add_argument(
        "--model-parallel",
        type=int,
        default=1,
        metavar="M",
        help="split each chain's parameters over M devices (a mesh of (devices/M) x M, "
        "axes items x model; FSDP unless --partition-rules)",
    )
    m.add_argument(
        "--no-compilation-cache",
        action="store_true",
        help="do not use JAX's persistent compilation cache (default: on, in "
        "$SLT_JAX_CACHE_DIR or ~/.cache/slt_jax/jax)",
    )
    m.add_argument(
        "--dry-run",
        action="store_true",
        help="compile and report memory per device, chunking, layout and time per step; "
        "do not sample",
    )
    d = p.add_argument_group("many hosts (see the README: Cloud TPU, multi-GPU)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (run on every host); on "
        "Cloud TPU and SLURM the cluster is detected",
    )
    d.add_argument("--coordinator", default=None, help="host:port of process 0 (else detected)")
    d.add_argument("--num-processes", type=int, default=None)
    d.add_argument("--process-id", type=int, default=None)


def _sampler_kwargs(args) -> dict:
    """The keyword arguments of ``estimate_llc_checkpoints`` from the parsed flags."""
    options = {field.name: getattr(args, field.name) for field, _ in _run_fields()}
    options["partition_rules"] = _partition_rules(args)
    return dict(
        **options,
        chunk_size=args.chunk_size,
        memory_budget=args.memory_budget,
        progress=not args.no_progress,
        calibrate_on=args.calibrate_on,
        calibration_budget=args.calibration_budget,
        mesh=_mesh(args),
    )


def _partition_rules(args):
    if not getattr(args, "partition_rules", None):
        return None
    with open(args.partition_rules) as f:
        return [tuple(rule) for rule in json.load(f)]


def _mesh(args):
    """``None`` (every device holds items) or an items × model mesh."""
    size = getattr(args, "model_parallel", 1)
    if size == 1:
        return None
    import jax
    import numpy as np

    devices = jax.devices()
    if size < 1 or len(devices) % size:
        raise SystemExit(f"--model-parallel {size} does not divide the {len(devices)} devices.")
    grid = np.array(devices).reshape(len(devices) // size, size)
    return jax.sharding.Mesh(grid, ("items", "model"))


def _initialize_distributed(args: argparse.Namespace) -> None:
    if not getattr(args, "distributed", False):
        return
    import jax

    # CPU processes need a collectives implementation to share results (GPU and TPU have
    # their own; this setting only concerns the CPU backend).
    if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    options = {
        "coordinator_address": args.coordinator,
        "num_processes": args.num_processes,
        "process_id": args.process_id,
    }
    jax.distributed.initialize(**{k: v for k, v in options.items() if v is not None})


def llc(args: argparse.Namespace) -> None:
    """Estimate the LLC of every checkpoint in a directory; stream results to --out."""
    _initialize_distributed(args)
    import jax

    import slt_jax as sj

    if not args.no_compilation_cache:
        sj.enable_compilation_cache()
    heads = None
    tokens, wanted_heads = getattr(args, "tokens", None), getattr(args, "heads", None)
    if args.model is not None:
        if tokens is not None or wanted_heads is not None:
            raise ValueError(
                "--tokens and --heads are for a Hugging Face run directory; "
                "with --model the factory gives the loss and the data."
            )
        loss_fn, data, like = _model_from_factory(args.model)
        checkpoints = args.checkpoints
    elif tokens is None:
        raise ValueError(
            "give --model MODULE:FACTORY, or --tokens FILE for a directory of Hugging Face "
            "checkpoints (GPT-2, GPT-NeoX)."
        )
    else:
        loss_fn, checkpoints, data, heads = _language_model(args)
        like = None
    start = time.perf_counter()
    if args.dry_run:
        plan = sj.estimate_llc_checkpoints(
            loss_fn,
            checkpoints,
            data,
            like=like,
            format=getattr(args, "format", None),
            dry_run=True,
            **_sampler_kwargs(args),
        )
        if jax.process_index() == 0:
            print(plan.summary())
        return
    result = sj.estimate_llc_checkpoints(
        loss_fn,
        checkpoints,
        data,
        like=like,
        format=getattr(args, "format", None),
        out=args.out,
        **_sampler_kwargs(args),
    )
    if jax.process_index() == 0:
        if result.calibration is not None:
            c = result.calibration
            print(
                f"step_size auto (calibrated on step {c.calibrate_on}, "
                f"{'verified' if c.trusted else 'NOT verified'}): step_size={c.step_size:g}, "
                f"localization={c.localization:g}, nbeta={c.nbeta:.4g}\n{c.explanation}\n"
            )
        print(result.summary())
        print(
            f"{len(result.steps)} checkpoints in {time.perf_counter() - start:.1f}s on "
            f"{jax.device_count()} device(s); results in {args.out} (slt_jax.load_results)"
        )
    if heads:
        _head_sweep(args, loss_fn, checkpoints, data, heads, result)


def _language_model(args):
    """The loss, checkpoints, token windows and head refinements of a Hugging Face run."""
    import slt_jax as sj

    model, checkpoints = sj.lm.load_checkpoints(args.checkpoints)
    loss_fn, _ = sj.lm.next_token_loss(model)
    data = sj.TokenWindows(
        args.tokens,
        seq_len=args.seq_len + 1,
        stride=args.stride,
        dtype=args.token_dtype,
        vocab_size=model.config.vocab_size,
    )
    heads = None
    if args.heads is not None:
        first = checkpoints.template  # the masks need the shapes only: nothing is read
        layout = sj.lm.layout(model)
        if args.heads.strip().lower() == "all":
            heads = sj.refine.heads(first, layout)
        else:
            names = [n.strip() for n in args.heads.split(",") if n.strip()]
            heads = sj.refine.components(first, names, layout)
    return loss_fn, checkpoints, data, heads


def _head_sweep(args, loss_fn, checkpoints, data, heads, result) -> None:
    """Refined LLCs of ``heads`` at every checkpoint, with the sweep's setting."""
    import dataclasses

    import slt_jax as sj

    config = dataclasses.replace(
        result.config, num_examples=None, schedule=None, step_size_schedule=None
    )
    out = pathlib.Path(args.out) / "heads"
    table = sj.estimate_refined_llc_checkpoints(
        loss_fn, checkpoints, data, heads, config=config, out=out, progress=not args.no_progress
    )
    print(f"refined LLCs of {len(table)} heads in {out} (slt_jax.load_refined_results)")


def plot(args: argparse.Namespace) -> None:
    """Write a PNG of the LLC against training step."""
    import slt_jax as sj

    if args.output is None:  # next to the results directory: run.v2 → run.v2.png
        results = pathlib.Path(args.results).resolve()
        output = str(results.parent / (results.name + ".png"))
    else:
        output = args.output
    sj.plot_llc(sj.load_results(args.results), output)
    print(f"wrote {output}")


def demo(args: argparse.Namespace) -> None:
    """Train an MLP on digits writing a checkpoint set, then run the LLC sweep on it."""
    import shutil

    from flax import nnx

    import slt_jax as sj

    root = pathlib.Path(args.out)
    checkpoints, results = root / "checkpoints", root / "llc"
    shutil.rmtree(root, ignore_errors=True)
    data = sj.examples.load_digits()
    model = sj.examples.MLP((64, 32, 10), rngs=nnx.Rngs(args.seed))
    steps = sj.examples.log_spaced_steps(
        args.train_steps, args.checkpoints, start=max(1, args.train_steps // 20)
    )
    start = time.perf_counter()
    final = sj.examples.train_classifier(
        model,
        data,
        num_steps=args.train_steps,
        checkpoint_dir=str(checkpoints),
        checkpoint_steps=tuple(steps),
    )
    print(
        f"trained an MLP 64-32-10 on digits (n={len(data[1])}) for {args.train_steps} steps "
        f"in {time.perf_counter() - start:.1f}s (final loss {final:.4f}); "
        f"{len(steps)} checkpoints in {checkpoints}"
    )
    print(
        f"equivalent command: slt-jax llc {checkpoints} --model slt_jax.examples:digits_mlp "
        f"--out {results} --steps {args.num_steps}"
    )
    args.model, args.checkpoints, args.out = (
        "slt_jax.examples:digits_mlp",
        str(checkpoints),
        str(results),
    )
    llc(args)
    args.results, args.output = str(results), str(root / "llc.png")
    plot(args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="slt-jax", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("demo", help="train a small model, sweep its checkpoints, plot")
    p.add_argument("--out", default="results/demo", help="where everything is written")
    p.add_argument("--train-steps", type=int, default=2000)
    p.add_argument(
        "--checkpoints",
        type=int,
        default=12,
        help="log-spaced checkpoints from step train_steps/20 to the end",
    )
    _add_sampler_options(p, steps=1000)
    p.set_defaults(func=demo)

    p = commands.add_parser("llc", help="LLC of every checkpoint in a directory")
    p.add_argument(
        "checkpoints",
        help="checkpoint directory (orbax, safetensors, msgpack), or a directory of Hugging "
        "Face model directories (step100/, checkpoint-1000/: config.json + safetensors)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="MODULE:FACTORY or FILE.py:FACTORY returning (loss_fn, data[, like]); "
        "not needed for Hugging Face checkpoints with --tokens",
    )
    lm = p.add_argument_group("language models (Hugging Face GPT-2 / GPT-NeoX checkpoints)")
    lm.add_argument("--tokens", default=None, help="token file: .npy, or raw ids of --token-dtype")
    lm.add_argument("--token-dtype", default="uint16", help="ids of a raw token file")
    lm.add_argument("--seq-len", type=int, default=128, help="predicted tokens per window")
    lm.add_argument(
        "--stride", type=int, default=None, help="tokens between windows (default: no overlap)"
    )
    lm.add_argument(
        "--heads",
        default=None,
        help="also the refined LLC of these components at every checkpoint: 'all' (every "
        "attention head) or names such as 'l0h1,l1h0,l0 mlp,embed'; written to OUT/heads",
    )
    p.add_argument("--out", required=True, help="results directory (resumable)")
    p.add_argument(
        "--format",
        choices=("safetensors", "msgpack", "orbax", "hf"),
        default=None,
        help="read only checkpoints of this format (default: the one in the directory)",
    )
    _add_sampler_options(p)
    p.set_defaults(func=llc)

    p = commands.add_parser("plot", help="PNG of the LLC against training step")
    p.add_argument("results", help="a results directory written by `slt-jax llc`")
    p.add_argument("--output", default=None, help="PNG path (default RESULTS.png)")
    p.set_defaults(func=plot)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except _USER_ERRORS as error:  # bad input, not a bug: a message, not a traceback
        print(f"slt-jax: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
