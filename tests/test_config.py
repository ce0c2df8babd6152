"""Mode configs: precedence, matching, and the exact text of every error."""

import pytest

import hubquant
from hubquant.config import (
    KNOWN_ROLES,
    Config,
    Match,
    Options,
    load_config,
    parse_config,
    shipped_configs,
)
from hubquant.errors import ConfigError

ROLES = ", ".join(KNOWN_ROLES)
RULE_KEYS = "match, mode, group_size, symmetric, clip, algorithm, gptq, awq, optional"
GROUP_SIZE = "expected a positive integer, or -1 for one group per channel"
BLOCKS = (
    "expected a non-empty list of block indices (negative counts from the end) "
    "and/or 'start:stop' slices"
)
PATH = "gemma_backbone/decoder_block_{}/attention/query"


def parse(text: str) -> Config:
    return parse_config(text, "c.yaml")


def error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text)
    message = str(info.value)
    assert "\n" not in message
    return message


def resolve(config: Config, role: str, block: int | None, num_blocks: int = 6):
    path = PATH.format(block) if block is not None else "gemma_backbone/embed"
    return config.resolve(role, block, num_blocks, path)


# Precedence and defaults


def test_empty_config_quantizes_nothing_with_builtin_options():
    config = parse("# nothing\n")
    assert config.default == Options("none", 128, False, "rtn")
    assert config.rules == ()
    assert resolve(config, "attn.q", 0) == (config.default, None)


def test_last_matching_rule_wins_and_unset_keys_come_from_default():
    config = parse(
        "default: {mode: int4, group_size: 64, symmetric: true}\n"
        "rules:\n"
        "  - match: {role: 'attn.*'}\n"
        "    mode: int8\n"
        "    group_size: 32\n"
        "  - match: {role: attn.q}\n"
        "    symmetric: false\n"
    )
    options, rule = resolve(config, "attn.q", 2)
    # rule 2 wins; group_size comes from the default, not from rule 1
    assert rule.number == 2
    assert options == Options("int4", 64, False, "rtn")
    options, rule = resolve(config, "attn.k", 2)
    assert (rule.number, options) == (1, Options("int8", 32, True, "rtn"))
    options, rule = resolve(config, "mlp.up", 2)
    assert (rule, options) == (None, config.default)


def test_rule_settings_keep_only_the_keys_it_sets():
    config = parse("rules:\n  - {symmetric: true, mode: int8}\n")
    assert config.rules[0].settings == (("mode", "int8"), ("symmetric", True))
    assert config.rules[0].match == Match()


def test_group_size_minus_one_means_per_channel():
    assert parse("default: {group_size: -1}").default.group_size == -1


def test_clip_off_reaches_the_plan_and_is_saved_only_when_off(fresh):
    """The shipped int4 config searches clipping in the query and key projections
    only: the others round each group between its own min and max."""
    from hubquant.plan import PlanEntry

    plan = hubquant.plan_for(fresh("llama3"), "int4")
    off = {e.role for e in plan.quantized if not e.clip}
    assert off == {"attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"}
    for e in plan.quantized:
        assert ("clip" in e.to_dict()) == (not e.clip)
        assert PlanEntry.from_dict(e.to_dict()) == e
    assert Options("int4", clip=False).to_dict()["clip"] is False


def test_options_to_dict():
    assert Options("int4", 128, False, "rtn").to_dict() == {
        "mode": "int4",
        "group_size": 128,
        "symmetric": False,
        "algorithm": "rtn",
    }


def test_text_is_kept_for_saving():
    text = "default: {mode: int8}  # keep me\n"
    assert parse(text).text == text


# Matching


@pytest.mark.parametrize(
    "blocks, expected",
    [
        ("[0, -1]", [0, 5]),
        ("[-2]", [4]),
        ("['2:4']", [2, 3]),
        ("[':2', '-1:']", [0, 1, 5]),
        ("['-3:-1']", [3, 4]),
        ("['::2']", [0, 2, 4]),
        ("[9, -9]", []),
    ],
)
def test_blocks_follow_python_indexing(blocks, expected):
    match = parse(f"rules:\n  - match: {{blocks: {blocks}}}").rules[0].match
    assert [b for b in range(6) if match.matches("attn.q", b, 6, "x")] == expected


def test_a_blocks_rule_never_matches_layers_outside_blocks():
    match = parse("rules:\n  - match: {blocks: [':']}").rules[0].match
    assert match.matches("mlp.up", 3, 6, "x")
    assert not match.matches("embed", None, 6, "x")
    # without blocks, a rule matches layers outside blocks too
    assert parse("rules:\n  - {mode: int8}").rules[0].match.matches("embed", None, 6, "x")


def test_role_is_a_glob():
    match = parse("rules:\n  - match: {role: 'mlp.*'}").rules[0].match
    got = [r for r in KNOWN_ROLES if match.matches(r, 0, 1, "x")]
    assert got == ["mlp.gate", "mlp.up", "mlp.down", "mlp.gate_up"]


def test_path_is_a_full_match_regex():
    match = parse("rules:\n  - match: {path: '.*block_[01]/.*'}").rules[0].match
    assert match.matches("attn.q", 1, 6, PATH.format(1))
    assert not match.matches("attn.q", 2, 6, PATH.format(2))
    partial = parse("rules:\n  - match: {path: 'attention'}").rules[0].match
    assert not partial.matches("attn.q", 1, 6, PATH.format(1))


def test_describe_and_unmatched_rules():
    config = parse(
        "rules:\n"
        "  - match: {role: 'attn.*', blocks: [0, -1, '2:5']}\n"
        "  - match: {path: 'x.*'}\n"
        "  - {mode: int8}\n"
    )
    described = [rule.describe() for rule in config.rules]
    assert described == [
        "rule 1 (role=attn.*, blocks=[0, -1, 2:5])",
        "rule 2 (path=x.*)",
        "rule 3 (all layers)",
    ]
    assert [rule.number for rule in config.unmatched({1, 3})] == [2]


def test_optional_rules_are_never_reported_unmatched():
    config = parse(
        "rules:\n"
        "  - {match: {role: moe.router}, mode: none, optional: true}\n"
        "  - {match: {role: lm_head}, mode: int8}\n"
    )
    assert [rule.number for rule in config.unmatched(set())] == [2]


# Errors: exact text, one line


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "rules:\n  - match: {role: embed}\n    mode: int8: x\n",
            "c.yaml: line 3, column 15: invalid YAML: mapping values are not allowed "
            "here. Received: text='    mode: int8: x'",
        ),
        (
            "rules:\n  - match: {role: embed}\n    mode: int8\n    match: {}\n",
            "c.yaml: line 4, column 5: invalid YAML: duplicate key 'match' (a missing "
            "'-' can merge two list items). Received: text='    match: {}'",
        ),
        (
            "- mode: int8\n",
            "c.yaml: expected a mapping with keys default, rules, calibration. "
            "Received: config=[{'mode': 'int8'}]",
        ),
        (
            "rule: []\n",
            "c.yaml: key 'rule': unknown key; expected one of default, rules, calibration. "
            "Received: rule=[]",
        ),
        (
            "default: {mdoe: int8}\n",
            "c.yaml: default: key 'mdoe': unknown key; expected one of mode, "
            "group_size, symmetric, clip, algorithm, gptq, awq. Received: mdoe='int8'",
        ),
        (
            "default: {clip: 'no'}\n",
            "c.yaml: default: key 'clip': expected true or false. Received: clip='no'",
        ),
        (
            "rules: {mode: int8}\n",
            "c.yaml: key 'rules': expected a list of rules. Received: rules={'mode': 'int8'}",
        ),
        (
            "rules:\n  - int8\n",
            f"c.yaml: rule 1: expected a mapping with keys {RULE_KEYS}. Received: rule='int8'",
        ),
        (
            "rules:\n  - {mode: int8}\n  - {mode: int8, bits: 4}\n",
            f"c.yaml: rule 2: key 'bits': unknown key; expected one of {RULE_KEYS}. "
            "Received: bits=4",
        ),
        (
            "rules:\n  - match: {rol: embed}\n",
            "c.yaml: rule 1: key 'match.rol': unknown key; expected one of role, "
            "blocks, path. Received: match.rol='embed'",
        ),
        (
            "rules:\n  - match: embed\n",
            "c.yaml: rule 1: key 'match': expected a mapping with keys role, blocks, "
            "path. Received: match='embed'",
        ),
        (
            "default: {mode: int3}\n",
            "c.yaml: default: key 'mode': expected one of: none, int8, int4. Received: mode='int3'",
        ),
        (
            "rules:\n  - {group_size: 0}\n",
            f"c.yaml: rule 1: key 'group_size': {GROUP_SIZE}. Received: group_size=0",
        ),
        (
            "rules:\n  - {group_size: abc}\n",
            f"c.yaml: rule 1: key 'group_size': {GROUP_SIZE}. Received: group_size='abc'",
        ),
        (
            "rules:\n  - {group_size: true}\n",
            f"c.yaml: rule 1: key 'group_size': {GROUP_SIZE}. Received: group_size=True",
        ),
        (
            "default: {symmetric: 'yes'}\n",
            "c.yaml: default: key 'symmetric': expected true or false. Received: symmetric='yes'",
        ),
        (
            "rules:\n  - {algorithm: gptx}\n",
            "c.yaml: rule 1: key 'algorithm': expected one of: rtn, gptq, awq, imatrix. "
            "Received: algorithm='gptx'",
        ),
        (
            "rules:\n  - match: {path: '('}\n",
            "c.yaml: rule 1: key 'match.path': expected a regular expression over "
            "the layer path (RE2 syntax: missing ): (). "
            "Received: match.path='('",
        ),
        (
            "rules:\n  - match: {blocks: [0, 'x']}\n",
            f"c.yaml: rule 1: key 'match.blocks': {BLOCKS}. Received: match.blocks=[0, 'x']",
        ),
        (
            "rules:\n  - match: {blocks: ['::0']}\n",
            f"c.yaml: rule 1: key 'match.blocks': {BLOCKS}. Received: match.blocks=['::0']",
        ),
        (
            "rules:\n  - {match: {role: lm_head}, optional: 'yes'}\n",
            "c.yaml: rule 1: key 'optional': expected true or false. Received: optional='yes'",
        ),
        (
            "rules:\n  - match: {blocks: ['0:1:00']}\n",
            f"c.yaml: rule 1: key 'match.blocks': {BLOCKS}. Received: match.blocks=['0:1:00']",
        ),
        (
            "rules:\n  - match: {blocks: ['::-00']}\n",
            f"c.yaml: rule 1: key 'match.blocks': {BLOCKS}. Received: match.blocks=['::-00']",
        ),
        (
            "rules:\n  - match: {blocks: []}\n",
            f"c.yaml: rule 1: key 'match.blocks': {BLOCKS}. Received: match.blocks=[]",
        ),
    ],
)
def test_error_messages(text, message):
    assert error(text) == message


def test_planted_typo_in_a_role_is_an_unknown_role():
    text = (
        "default: {mode: int4}\n"
        "rules:\n"
        "  - match: {role: embed}\n"
        "    mode: int8\n"
        "  - match: {role: atn.q}\n"
        "    mode: int8\n"
    )
    assert error(text) == (
        "c.yaml: rule 2: key 'match.role': unknown role: expected a role or glob "
        f"matching one of {ROLES}. Received: match.role='atn.q'"
    )


def test_a_glob_must_match_a_known_role():
    assert "unknown role" in error("rules:\n  - match: {role: 'atn.*'}\n")
    assert parse("rules:\n  - match: {role: 'moe.*'}\n").rules[0].match.role == "moe.*"


def test_long_values_are_shortened():
    message = error(f"rules:\n  - {{mode: {'x' * 200}}}\n")
    assert message.endswith("Received: mode='" + "x" * 76 + "...")


# Loading


@pytest.mark.parametrize("name", ["int4", "int4.yaml"])
def test_shipped_configs_load_by_name(name):
    config = load_config(name)
    assert config.source == "configs/int4.yaml"  # where it ships, not the install path
    assert config.default == Options("int4", 128, False, "rtn")


def test_shipped_configs_say_what_they_promise():
    assert set(shipped_configs()) == {"encoder_int4", "int4", "int4_gptq", "int8", "mixed"}
    int8, int4, mixed = (load_config(n) for n in ("int8", "int4", "mixed"))
    for role in KNOWN_ROLES:
        expected = "none" if role.endswith("router") else "int8"  # routers stay exact
        assert resolve(int8, role, 2)[0].mode == expected
    for config in (int4, mixed):
        assert resolve(config, "moe.router", 2)[0].mode == "none"
        assert resolve(config, "moe.shared_router", 2)[0].mode == "none"
    for role, mode in [("embed", "int8"), ("lm_head", "int8"), ("mlp.up", "int4")]:
        assert resolve(int4, role, None if role != "mlp.up" else 2)[0].mode == mode
    modes = {
        (role, block): resolve(mixed, role, block)[0].mode
        for role in ("attn.q", "attn.o", "mlp.gate", "mlp.down")
        for block in range(6)
    }
    int4_layers = {key for key, mode in modes.items() if mode == "int4"}
    assert int4_layers == {(r, b) for r in ("mlp.gate", "mlp.down") for b in (1, 2, 3, 4)}
    assert resolve(mixed, "embed", None)[0].mode == "int8"
    assert resolve(mixed, "lm_head", None)[0].mode == "int8"
    encoder = load_config("encoder_int4")  # #18: tuned on all-MiniLM-L6-v2 at 0.20
    for role in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"):
        options = resolve(encoder, role, 0)[0]
        assert (options.mode, options.group_size) == ("int8", -1), role
    embed = resolve(encoder, "embed", None)[0]
    assert (embed.mode, embed.group_size, embed.symmetric) == ("int4", 64, False)
    assert resolve(encoder, "pooler", None)[0].group_size == 128


@pytest.mark.parametrize("name", sorted(shipped_configs()))
def test_every_shipped_config_loads_and_names_its_purpose(name):
    config = load_config(name)
    assert config.source == f"configs/{name}.yaml"
    assert config.text.startswith("# ")  # `hubquant configs list` shows the first comment


def test_config_file_by_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("default: {mode: int8}\n")
    config = load_config(path)
    assert (config.source, config.default.mode) == (str(path), "int8")
    assert load_config(str(path)).default.mode == "int8"


def test_unknown_config_names_the_shipped_ones():
    with pytest.raises(ConfigError) as info:
        load_config("int3")
    assert str(info.value) == (
        "config 'int3' not found: not a file and not a shipped config "
        "(shipped: encoder_int4, int4, int4_gptq, int8, mixed)"
    )


def test_file_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rules:\n  - {mode: int9}\n")
    with pytest.raises(ConfigError, match=f"^{path}: rule 1: key 'mode'"):
        load_config(path)
