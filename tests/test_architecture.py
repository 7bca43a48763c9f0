"""The layout keeps its promises: imports only go down the stages, the engine knows no
feature, public modules only re-export, the compiled-program cache is bounded."""

import ast
import pathlib
import warnings

import jax.numpy as jnp
import pytest

import slt_jax as sj
from slt_jax._src.engine import programs

ROOT = pathlib.Path(sj.__file__).parent
# The stages of docs/architecture.md, in order: a module may import its own stage and
# the ones before it, never a later one.
STAGES = [
    (
        "version",
        "sources",
        "data",
        "theory",
        "validation",
        "posterior",
        "families",
        "io.atomic",
        "io.export",
        "io.adapters",
        "io.torch_bridge",
        "io.tlens",
        "cross_entropy",
        "lm",
        "compilation",
        "userwarn",
    ),
    ("samplers",),
    ("config",),
    ("engine",),
    ("refine", "restricted", "layouts", "observe"),
    ("estimators.diagnostics", "estimators.influence"),
    ("results",),
    ("estimators.llc",),
    ("io.formats", "io.hf", "io.lazy", "io.checkpoints", "io.store", "io.fingerprint"),
    ("plots", "dynamics", "training", "models"),
    ("jobs",),
    ("examples", "cli"),
]


def _stage(dotted: str) -> int:
    """The stage of ``slt_jax._src.<dotted>`` (or ``slt_jax.models...``)."""
    for rank, names in enumerate(STAGES):
        for name in names:
            if dotted == name or dotted.startswith(name + "."):
                return rank
    raise AssertionError(f"module {dotted!r} is in no stage of the layout")


def _is_module(dotted: str) -> bool:
    base = ROOT / "_src" / pathlib.Path(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: pathlib.Path):
    """The ``slt_jax._src`` modules (dotted, below ``_src``) that ``path`` imports."""
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.module:
            continue
        if node.module.startswith("slt_jax.models"):
            yield "models"
            continue
        if not (node.module == "slt_jax._src" or node.module.startswith("slt_jax._src.")):
            continue
        package = node.module.removeprefix("slt_jax._src").lstrip(".")
        for alias in node.names:
            sub = f"{package}.{alias.name}" if package else alias.name
            yield sub if _is_module(sub) else package


def _modules():
    for path in sorted((ROOT / "_src").rglob("*.py")):
        rel = path.relative_to(ROOT / "_src").with_suffix("")
        if rel.name != "__init__":
            yield ".".join(rel.parts), path
    for path in sorted((ROOT / "models").glob("*.py")):
        if path.name != "__init__.py":
            yield "models", path


@pytest.mark.parametrize("name, path", list(_modules()), ids=lambda x: str(x))
def test_imports_only_go_down_the_stages(name, path):
    here = _stage(name)
    for imported in _imports(path):
        assert _stage(imported) <= here, f"{name} imports {imported}, a later stage"


def test_the_engine_imports_no_feature_and_no_job():
    for path in (ROOT / "_src" / "engine").glob("*.py"):
        for imported in _imports(path):
            assert not imported.startswith(("refine", "observe", "jobs", "estimators")), (
                path.name,
                imported,
            )


def test_public_modules_only_re_export():
    for path in [*ROOT.glob("*.py"), ROOT / "kernels" / "__init__.py"]:
        tree = ast.parse(path.read_text())
        for node in tree.body:
            ok = isinstance(node, ast.ImportFrom | ast.Import) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # docstring
            )
            ok = ok or (isinstance(node, ast.Assign) and node.targets[0].id == "__all__")
            ok = ok or (isinstance(node, ast.If) and path.name == "__main__.py")
            assert ok, f"{path.name}:{node.lineno} is not a re-export"


def test_the_compiled_program_cache_evicts(monkeypatch):
    """Each new loss function is a new program; past the bound the oldest is dropped, and
    the count of compilations still includes it."""
    monkeypatch.setattr(programs, "MAX_PROGRAMS", 2)
    before = programs.num_compiled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        for scale in (1.0, 2.0, 3.0):
            sj.estimate_llc(
                lambda w, b, s=scale: s * 0.5 * jnp.sum(w**2) + 0.0 * jnp.mean(b),
                jnp.zeros(2),
                jnp.zeros((8, 1)),
                num_chains=2,
                num_steps=20,
                batch_size=8,
                nbeta=10.0,
                step_size=1e-3,
            )
    assert len(programs._PROGRAMS) <= 2
    assert programs.num_compiled() == before + 3


def test_an_evicted_loss_function_is_freed(monkeypatch):
    """Eviction drops the programs that hold a loss function (the chains' and the centre
    losses'), so the function itself can be collected."""
    import gc
    import weakref

    monkeypatch.setattr(programs, "MAX_PROGRAMS", 2)

    def run(loss):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
            sj.estimate_llc(
                loss,
                jnp.zeros(2),
                jnp.zeros((8, 1)),
                num_chains=2,
                num_steps=20,
                batch_size=8,
                nbeta=10.0,
                step_size=1e-3,
            )

    first = lambda w, b: 0.5 * jnp.sum(w**2) + 0.0 * jnp.mean(b)  # noqa: E731
    alive = weakref.ref(first)
    run(first)
    del first
    for scale in (2.0, 3.0):
        run(lambda w, b, s=scale: s * jnp.sum(w**2) + 0.0 * jnp.mean(b))
    gc.collect()
    assert alive() is None


def test_options_are_declared_once_and_shown_everywhere():
    """Every entry point takes the run options as keywords (from LLCConfig) and config=."""
    import inspect

    options = {"num_chains", "num_steps", "num_burnin", "batch_size", "estimator", "sampler"}
    for fn in (
        sj.estimate_llc,
        sj.estimate_llc_checkpoints,
        sj.estimate_refined_llc,
        sj.calibrate,
        sj.estimate_llc_two_temperature,
        sj.llc_function,
    ):
        parameters = set(inspect.signature(fn).parameters)
        assert options <= parameters and "config" in parameters, fn.__name__
    config = sj.LLCConfig(num_chains=3, num_steps=40, step_size=1e-3, batch_size=8, nbeta=10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sj.LLCDiagnosticWarning)
        a = sj.estimate_llc(
            lambda w, b: 0.5 * jnp.sum(w**2), jnp.zeros(2), jnp.zeros((8, 1)), config=config
        )
        b = sj.estimate_llc(
            lambda w, b: 0.5 * jnp.sum(w**2),
            jnp.zeros(2),
            jnp.zeros((8, 1)),
            config=sj.LLCConfig(num_chains=5),
            num_chains=3,
            num_steps=40,
            step_size=1e-3,
            batch_size=8,
            nbeta=10.0,
        )
    assert a.config == b.config and a.config.num_chains == 3
    with pytest.raises(TypeError, match="calibrate does not take `step_size`"):
        sj.calibrate(
            lambda w, b: 0.0, jnp.zeros(2), jnp.zeros((8, 1)), config=sj.LLCConfig(step_size=1e-3)
        )
    with pytest.raises(TypeError, match="sj.LLCConfig"):
        sj.estimate_llc(lambda w, b: 0.0, jnp.zeros(2), jnp.zeros((8, 1)), config={"x": 1})


def _resolve(dotted: str):
    """The object a dotted ``slt_jax...`` path names (module, then attributes)."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def test_cross_references_in_docstrings_resolve():
    """Every ``:mod:``/``:func:``/``:class:``/``:meth:``/``:attr:``/``:data:`` reference to
    a ``slt_jax`` path in the package's docstrings names something that exists."""
    import re

    pattern = re.compile(r":(?:mod|func|class|meth|attr|data):`~?(slt_jax(?:\.\w+)+)`")
    missing = []
    for path in ROOT.rglob("*.py"):
        for dotted in pattern.findall(path.read_text()):
            try:
                _resolve(dotted)
            except (ImportError, AttributeError):
                missing.append(f"{path.relative_to(ROOT)}: {dotted}")
    assert not missing, missing


# ---- one owner per concept -------------------------------------------------------------------

# A job module whose result type sits in a companion module beside it (docs/architecture.md).
_COMPANIONS = {
    "slt_jax._src.jobs.refined_sweep": "slt_jax._src.jobs.refined_result",
    "slt_jax._src.jobs.calibrate": "slt_jax._src.jobs.calibration",
}


def _public_result_types() -> dict[type, set[str]]:
    """``{result class: modules of the public functions that return it}``."""
    import inspect
    import typing

    made: dict[type, set[str]] = {}
    for name in sj.__all__:
        function = getattr(sj, name)
        if inspect.isclass(function) or not callable(function):
            continue
        function = inspect.unwrap(function)
        returned = typing.get_type_hints(function).get("return")
        if inspect.isclass(returned) and returned.__module__.startswith("slt_jax._src"):
            made.setdefault(returned, set()).add(function.__module__)
    return made


def test_result_types_live_beside_what_makes_them():
    """The rule of docs/architecture.md: a result type is in the module of the job or
    estimator that makes it (or its companion); only one that several jobs make, or that
    the io layer reads back, is in ``_src/results.py``."""
    made = _public_result_types()
    assert {cls.__name__ for cls in made} >= {
        "LLCResult",
        "RefinedLLCResult",
        "RefinedCheckpointsResult",
        "TwoTemperatureResult",
        "Calibration",
        "EssentialDynamics",
    }
    for cls, makers in made.items():
        beside = {m for m in makers} | {_COMPANIONS.get(m) for m in makers}
        readers = {m for m in makers if not m.startswith("slt_jax._src.io.")}
        if cls.__module__ == "slt_jax._src.results":
            assert len(readers) > 1 or readers != makers, (cls, makers)  # shared
        else:
            assert cls.__module__ in beside, (cls, cls.__module__, makers)


def _code_strings(path: pathlib.Path) -> set[str]:
    """The string constants of a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_what_a_model_family_is_lives_in_its_record():
    """The Hugging Face reader and ``sj.lm`` know no family by name, prefix or class: they
    read ``_src/families.py``; the layouts name only layout kinds (shared by families)."""
    from slt_jax._src import families

    facts = set()
    for record in families.FAMILIES.values():
        facts |= {record.model_type, record.prefix, record.head, *record.head_aliases}
        facts |= {record.native, record.native_config}
    for path in (ROOT / "_src" / "io" / "hf.py", ROOT / "models" / "hf_lm.py"):
        assert not _code_strings(path) & facts, (path.name, _code_strings(path) & facts)
        imported = {
            n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom)
        }
        assert not any(m and m.startswith("slt_jax.models.") for m in imported), path.name
        assert "isinstance(model" not in path.read_text()
    kinds_only = _code_strings(ROOT / "_src" / "layouts.py") & facts
    assert kinds_only <= {r.layout for r in families.FAMILIES.values()}, kinds_only
    for record in families.FAMILIES.values():  # every record's classes import
        model_cls, config_cls = families.native(record)
        assert hasattr(config_cls, "from_dict") and hasattr(config_cls, "to_dict")


def test_one_atomic_write():
    """``os.replace`` (the rename that makes a write atomic) appears in the atomic write's
    module, and in the Hugging Face writer that renames its several temporary files in order."""
    allowed = {ROOT / "_src" / "io" / "atomic.py", ROOT / "_src" / "io" / "hf.py"}
    for path in ROOT.rglob("*.py"):
        if path not in allowed:
            assert "os.replace(" not in path.read_text(), path
            assert "fsync(" not in path.read_text(), path
