"""The ``calibration:`` config section, algorithm options, and calibration tokens.

    calibration:
      files: [data/*.txt]     # text files or globs (UTF-8), read in order
      num_samples: 128        # windows of seq_len tokens, cut at seeded random offsets
      seq_len: 512
      seed: 0

Per rule, ``gptq: {damping: 0.01, act_order: false, block_size: 128}`` and
``awq: {grid: 20, clip: true}`` tune the algorithm a rule selects.
"""

from __future__ import annotations

import glob
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from hubquant.errors import ConfigError, HubquantError
from hubquant.yaml_data import check_mapping, message

CALIBRATION_KEYS = ("files", "num_samples", "seq_len", "seed")


def _positive_int(v) -> bool:
    return type(v) is int and v > 0


# Option name -> (default, check, what is expected)
ALGORITHM_OPTIONS = {
    "gptq": {
        "damping": (
            0.01,
            lambda v: type(v) in (int, float) and 0 < v <= 1,
            "a number in (0, 1]: the fraction of the mean Hessian diagonal added to it",
        ),
        "act_order": (False, lambda v: isinstance(v, bool), "true or false"),
        "block_size": (128, _positive_int, "a positive integer (columns per lazy update)"),
    },
    "awq": {
        "grid": (20, _positive_int, "a positive integer (points searched for alpha in [0, 1))"),
        "clip": (True, lambda v: isinstance(v, bool), "true or false"),
    },
}


MAX_CALIBRATION_TOKENS = 1 << 22  # activations of 4M tokens already fill a large machine


@dataclass(frozen=True)
class Calibration:
    files: tuple[str, ...] = ()
    num_samples: int = 128
    seq_len: int = 512
    seed: int = 0
    source: str = field(default="", compare=False)  # where it was read, not data

    def with_files(self, files: tuple[str, ...]) -> Calibration:
        return replace(self, files=tuple(files))

    def to_dict(self) -> dict:
        """The section as a config would give it (``source`` is where it came from, not data)."""
        data = {k: v for k, v in asdict(self).items() if k != "source"}
        return {**data, "files": list(self.files)}


def parse_calibration(raw: object, source: str) -> Calibration | None:
    """The validated ``calibration:`` section, or None when absent."""
    if raw is None:
        return None
    where = f"{source}: calibration"
    raw = check_mapping(raw, CALIBRATION_KEYS, source, "calibration", nested=True)
    files = raw.get("files", [])
    if isinstance(files, str):
        files = [files]
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise ConfigError(message(where, "files", "expected a list of file paths or globs", files))
    for key in ("num_samples", "seq_len"):
        if key in raw and not _positive_int(raw[key]):
            raise ConfigError(message(where, key, "expected a positive integer", raw[key]))
    if "seed" in raw and not (type(raw["seed"]) is int and raw["seed"] >= 0):
        raise ConfigError(message(where, "seed", "expected a non-negative integer", raw["seed"]))
    given = {k: raw[k] for k in ("num_samples", "seq_len", "seed") if k in raw}
    cal = Calibration(files=tuple(files), source=source, **given)
    tokens = cal.num_samples * cal.seq_len
    if tokens > MAX_CALIBRATION_TOKENS:
        raise ConfigError(
            f"{source}: calibration asks for {cal.num_samples} x {cal.seq_len} = "
            f"{tokens:,} tokens; hubquant takes at most {MAX_CALIBRATION_TOKENS:,} "
            "(e.g. 8192 x 512): lower num_samples or seq_len."
        )
    return cal


def check_algorithm_options(name: str, raw: dict, where: str) -> tuple:
    """A rule's ``gptq:`` or ``awq:`` mapping, checked, as sorted (key, value) pairs."""
    known = ALGORITHM_OPTIONS[name]
    for key, value in raw.items():
        if key not in known:
            expected = f"unknown key; expected one of {', '.join(known)}"
            raise ConfigError(message(where, f"{name}.{key}", expected, value))
        _, check, expected = known[key]
        if not check(value):
            raise ConfigError(message(where, f"{name}.{key}", f"expected {expected}", value))
    return tuple(sorted(raw.items()))


def default(algorithm: str, option: str):
    """The default of one option of ``algorithm`` (stated once, in ALGORITHM_OPTIONS)."""
    return ALGORITHM_OPTIONS[algorithm][option][0]


def algorithm_options(algorithm: str, given: dict | None) -> dict:
    """Every option of ``algorithm`` (``gptq`` or ``awq``), defaults filled in."""
    defaults = {k: d for k, (d, _, _) in ALGORITHM_OPTIONS[algorithm].items()}
    return {**defaults, **(given or {})}


def require_calibration(config) -> None:
    """A config whose rules select GPTQ or AWQ must say where its text is."""
    cal = config.calibration
    if cal is not None and cal.files:
        return
    who = _first_calibrated(config)
    if who is None:
        return
    where, algorithm = who
    raise ConfigError(
        f"{config.source}: {where} sets algorithm '{algorithm}', which needs calibration "
        "text: add a 'calibration:' section with 'files' (or pass --calibration FILE). "
        f"Received: calibration={None if cal is None else list(cal.files)}"
    )


def _first_calibrated(config) -> tuple[str, str] | None:
    if config.default.algorithm != "rtn":
        return "default", config.default.algorithm
    for rule in config.rules:
        algorithm = dict(rule.settings).get("algorithm", config.default.algorithm)
        if algorithm != "rtn":
            return rule.describe(), algorithm
    return None


def read_texts(cal: Calibration) -> str:
    """The calibration files' text, in order (globs expanded and sorted)."""
    paths = []
    for spec in cal.files:
        found = sorted(glob.glob(str(Path(spec).expanduser())))
        if not found:
            raise ConfigError(
                f"{cal.source}: calibration: key 'files': no file matches '{spec}'. "
                f"Received: files={list(cal.files)}"
            )
        paths.extend(found)
    texts = []
    for path in paths:
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read calibration text: {exc}") from None
    return "\n\n".join(texts)


def calibration_tokens(model, cal: Calibration) -> np.ndarray:
    """``[num_samples, seq_len]`` int32 token windows cut from the files at
    seeded random offsets, tokenized with the model's own tokenizer (the source
    folder's ``tokenizer.json`` where KerasHub's class does not reproduce it)."""
    from hubquant.text import token_ids

    tokenizer = getattr(getattr(model, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise HubquantError(
            "calibration needs the preset's tokenizer, and this model has none "
            "(a backbone without a preprocessor); load a task preset (e.g. a CausalLM)."
        )
    source = getattr(model, "hubquant_source", None)
    ids = token_ids(tokenizer, read_texts(cal), source)
    if len(ids) < cal.seq_len:
        raise HubquantError(
            f"calibration text has {len(ids)} tokens, fewer than one window of "
            f"seq_len={cal.seq_len}; give more text or a smaller seq_len."
        )
    rng = np.random.default_rng(cal.seed)
    starts = rng.integers(0, len(ids) - cal.seq_len + 1, cal.num_samples)
    return ids[starts[:, None] + np.arange(cal.seq_len)].astype("int32")
