"""hubquant tune: the budget is kept, the choice is the least damage, the
config it writes is an ordinary one, and bad input is one line."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

import hubquant
from hubquant import cli
from hubquant.config import load_config
from hubquant.errors import HubquantError
from hubquant.tune.allocate import allocate
from hubquant.tune.budget import parse_budget
from hubquant.tune.candidates import parse_candidates, shipped_clip


def _brute_force(damage, sizes, budget):
    best = np.inf
    for choice in itertools.product(*(range(d.size) for d in damage)):
        rows = np.arange(len(choice))
        if sizes[rows, choice].sum() <= budget and damage[rows, choice].sum() < best:
            best = damage[rows, choice].sum()
    return best


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_the_least_damage_within_the_budget(seed):
    rng = np.random.default_rng(seed)
    sizes = np.sort(rng.integers(100, 5000, (6, 4)), axis=1)[:, ::-1].copy()
    damage = np.sort(rng.random((6, 4)), axis=1)  # smaller sizes do more damage
    budget = int(sizes.min(1).sum() + rng.random() * (sizes.max(1).sum() - sizes.min(1).sum()))
    chosen = allocate(damage, sizes, budget)
    rows = np.arange(6)
    assert sizes[rows, chosen].sum() <= budget
    # Sizes are small next to 2^16 budget units here, so rounding loses nothing.
    assert damage[rows, chosen].sum() == pytest.approx(_brute_force(damage, sizes, budget))


def test_a_budget_below_every_choice_says_what_is_reachable():
    sizes = np.array([[400, 100], [400, 100]])
    with pytest.raises(HubquantError, match=re.escape("below the smallest reachable size, 200")):
        allocate(np.zeros((2, 2)), sizes, 150)


@pytest.mark.parametrize(
    ("size", "bits", "kind", "value"),
    [
        ("0.25", None, "fraction", 0.25),
        ("1.5GB", None, "bytes", 1.5e9),
        ("800MiB", None, "bytes", 800 * 2**20),
        (None, "4.5", "bits", 4.5),
    ],
)
def test_budgets(size, bits, kind, value):
    budget = parse_budget(size, bits)
    assert (budget.kind, budget.value) == (kind, value)


@pytest.mark.parametrize(
    ("size", "bits", "message"),
    [
        ("0.25", "4", "give one budget"),
        (None, None, "give one budget"),
        ("a lot", None, "--target-size must be a fraction of float (e.g. 0.25) or a size"),
        ("0", None, "--target-size must be above 0"),
        (None, "40", "--target-bits must be in (0, 32]"),
    ],
)
def test_bad_budgets(size, bits, message):
    with pytest.raises(HubquantError, match=re.escape(message)):
        parse_budget(size, bits)


def test_candidates_replace_add_and_drop():
    assert [c.name for c in parse_candidates("int8,int4_g64")] == ["int8", "int4_g64"]
    names = [c.name for c in parse_candidates("-none,+int4_g256_sym")]
    assert "none" not in names and names[-1] == "int4_g256_sym" and "int8" in names
    with pytest.raises(HubquantError, match="unknown candidate 'int3'"):
        parse_candidates("int3")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, float_presets):
    """``hubquant tune`` on the tiny Llama at a quarter of float, run once."""
    folder = tmp_path_factory.mktemp("tune")
    config, report = folder / "tuned.yaml", folder / "tune.json"
    argv = ["tune", "--preset", str(float_presets["llama3"]), "--target-size", "0.25"]
    argv += ["--output-config", str(config), "--report", str(report)]
    argv += ["--samples", "6", "--seq-len", "16", "--quiet", "--plot", str(folder / "t.png")]
    assert cli.main(argv) == 0
    return config, report


def test_the_picture_is_a_png(tuned):
    assert (tuned[0].parent / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tuned_config_applies_within_the_budget(tuned, fresh):
    import json

    config, report = tuned
    text = config.read_text()
    assert text.startswith("# Tuned by hubquant tune for ")
    assert "Measured on held-out calibration windows: KL" in text
    lm = fresh("llama3")
    plan = hubquant.quantize(lm, load_config(config))
    data = json.loads(report.read_text())
    totals = plan.totals()
    assert totals["bytes_after"] == data["chosen_bytes"] <= data["budget_bytes"]
    assert data["budget_bytes"] == int(0.25 * totals["bytes_before"])
    by_path = {(e.path, e.role): e for e in plan.entries}
    for row in data["layers"]:  # every layer got what tune chose
        entry = by_path[(row["path"], row["role"])]
        name = entry.mode if entry.mode != "int4" else f"int4_g{entry.group_size}"
        assert row["choice"] == name + ("_sym" if entry.mode == "int4" and entry.symmetric else "")
    # int4 rounds as the shipped int4 config does: the clip search in q and k only
    int4 = [e for e in plan.entries if e.mode == "int4"]
    assert int4
    assert all(e.clip == (e.role in ("attn.q", "attn.k")) for e in int4)


def test_more_bytes_never_predict_more_damage(float_presets):
    import keras_hub

    from hubquant.tune import tune

    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["llama3"]))
    tokens = np.random.default_rng(0).integers(4, 200, (3, 16))
    every = parse_candidates(None)
    small = tune(lm, parse_budget("0.2", None), tokens, every, report=lambda *a: None)
    chosen = [c.name for c in small.choices()]
    large = tune(lm, parse_budget("0.4", None), tokens, every, report=lambda *a: None)
    assert large.predicted <= small.predicted
    assert small.chosen_bytes <= small.budget_bytes and large.chosen_bytes <= large.budget_bytes
    assert chosen != [c.name for c in large.choices()]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--target-size", "0.01"], "below the smallest reachable size"),
        (["--target-size", "10GB"], "is above the float model"),
        (["--target-size", "0.3", "--target-bits", "4"], "give one budget"),
        (["--target-size", "0.3", "--candidates", "int4_g0"], "unknown candidate 'int4_g0'"),
        (["--target-size", "0.3", "--samples", "0"], "--samples must be at least 1"),
        (["--target-size", "0.3", "--plot", "/nonexistent/p.png"], "--plot: cannot write"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(capsys, tmp_path, float_presets, extra, message):
    out = tmp_path / "tuned.yaml"
    argv = ["tune", "--preset", str(float_presets["llama3"]), "--output-config", str(out)]
    code = cli.main([*argv, "--samples", "3", "--seq-len", "8", *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hubquant: error: ") and len(err.splitlines()) == 1
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_output_config_is_refused_before_any_work(capsys, tmp_path):
    out = tmp_path / "missing" / "tuned.yaml"
    code = cli.main(["tune", "--target-size", "0.3", "--output-config", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"--output-config: cannot write '{out}': folder '{out.parent}' does not exist." in err


def test_apply_tunes_to_a_budget_in_one_step(capsys, tmp_path, float_presets):
    out = tmp_path / "tuned"
    argv = ["apply", "--preset", str(float_presets["llama3"]), "--target-bits", "6"]
    code = cli.main([*argv, "--output", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    plan = hubquant.load(out).backbone.hubquant_plan
    assert plan.config_text.startswith("# Tuned by hubquant tune for ")  # saved like any config
    totals = plan.totals()
    assert totals["bytes_after"] * 8 <= 6 * totals["params"]
    assert cli.main(["inspect", str(out), "--plot", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give --config (a mode config) or a budget"),
        (["--config", "int4", "--target-size", "0.2"], "one of the two"),
    ],
)
def test_apply_takes_a_config_or_a_budget(capsys, tmp_path, extra, message):
    code = cli.main(["apply", "--output", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_fused_layers_share_one_choice(float_presets):
    import keras_hub

    from hubquant.tune import tune

    lm = keras_hub.models.CausalLM.from_preset(str(float_presets["llama3"]))
    tokens = np.random.default_rng(0).integers(4, 200, (3, 16))
    every = parse_candidates(None)
    result = tune(lm, parse_budget("0.22", None), tokens, every, report=lambda *a: None, fused=True)
    chosen = {(r["block"], r["role"]): r["choice"] for r in result.rows()}
    for block in (0, 1):
        assert len({chosen[(block, role)] for role in ("attn.q", "attn.k", "attn.v")}) == 1
        assert chosen[(block, "mlp.gate")] == chosen[(block, "mlp.up")]
    assert result.chosen_bytes <= result.budget_bytes


@pytest.mark.parametrize("family", ["qwen3_moe", "mixtral"])
def test_each_expert_layer_takes_one_choice_that_the_config_gives_back(family):
    import families
    import keras_hub

    from hubquant.config import parse_config
    from hubquant.tune import tune
    from hubquant.tune.writer import config_text

    task = {
        "qwen3_moe": keras_hub.models.Qwen3MoeCausalLM,
        "mixtral": keras_hub.models.MixtralCausalLM,
    }
    lm = task[family](backbone=getattr(families, f"{family}_backbone")(), preprocessor=None)
    tokens = np.random.default_rng(0).integers(4, 200, (3, 12))
    result = tune(
        lm, parse_budget("0.22", None), tokens, parse_candidates(None), report=lambda *a: None
    )
    plan = hubquant.plan_for(
        lm, parse_config(config_text(result.entries, result.choices(), []), "t")
    )
    got = {(e.path, e.role, e.matrix): e for e in plan.entries}
    for entry, chosen in zip(result.entries, result.choices(), strict=True):
        applied = got[(entry.path, entry.role, entry.matrix)]
        assert applied.mode == chosen.mode, entry.path
        if chosen.mode == "int4":
            assert (applied.group_size, applied.symmetric) == (chosen.group_size, chosen.symmetric)
            assert applied.clip == chosen.clip == shipped_clip(entry)  # as int4.yaml rounds
