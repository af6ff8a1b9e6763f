"""Property-based hostile input: malformed recipes and CLI arguments always end in one line and exit 2."""

from __future__ import annotations

import string
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdcompress.cli import main

VALID = {
    "name": "h",
    "levels": [1],
    "teacher": {"source": "builtin", "path": "vgg19", "pretrained": "none"},
    "collaborator": {"source": "train"},
    "data": {"train": ["skimage"], "resize": 40, "crop": 32},
    "stages": {
        "collaborator": {"steps": 1, "batch": 2},
        "distill": {"steps": 1, "batch": 2},
        "decoder": {"steps": 1, "batch": 2},
    },
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(string.printable, max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                                 max_size=3), max_leaves=6)
PATHS = [("levels",), ("teacher", "source"), ("teacher", "path"), ("student", "width"), ("data", "train"),
         ("data", "crop"), ("stages", "distill", "steps"), ("stages", "distill", "lr"), ("embed", "taps"),
         ("objective", "kind"), ("device",), ("stages",), ("output", "log_every"), ("bogus",)]


def corrupt(path: tuple[str, ...], value: object) -> dict:
    import copy

    recipe = copy.deepcopy(VALID)
    node = recipe
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    return recipe


def assert_clean_failure(result, where: Path) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert not where.exists()


def _is_valid(recipe: dict, tmp: Path) -> bool:
    from cdcompress.distill.recipe import RecipeError, check_paths, validate

    try:
        check_paths(validate(recipe, "x"), "x")
    except RecipeError:
        return False
    return True


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(PATHS), value=values)
def test_malformed_recipes_fail_in_one_line(tmp_path: Path, path: tuple[str, ...], value: object) -> None:
    recipe = corrupt(path, value)
    if _is_valid(recipe, tmp_path):
        return  # the mutation happened to be valid; only invalid recipes are under test here
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["distill", "--recipe", str(file), "--out", str(tmp_path / "never")])
    assert_clean_failure(result, tmp_path / "never")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(string.printable, max_size=200))
def test_arbitrary_yaml_text_fails_cleanly(tmp_path: Path, text: str) -> None:
    file = tmp_path / "r.yaml"
    file.write_text(text)
    result = CliRunner().invoke(main, ["distill", "--recipe", str(file), "--out", str(tmp_path / "never")])
    assert_clean_failure(result, tmp_path / "never")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(overrides=st.lists(st.text(string.ascii_letters + "._=-[]{}:0123456789 ", max_size=30), min_size=1, max_size=3))
def test_arbitrary_overrides_fail_cleanly_or_validate(tmp_path: Path, overrides: list[str]) -> None:
    file = tmp_path / "r.yaml"
    file.write_text(yaml.safe_dump(VALID))
    args = ["recipes", "show", str(file)]
    for item in overrides:
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    if result.exit_code == 0:
        assert yaml.safe_load(result.output)["name"]
    else:
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output


@settings(max_examples=30, deadline=None)
@given(args=st.lists(st.sampled_from(["inspect", "eval", "recon", "convert", "--level", "9", "--size", "-1", "x",
                                      "--from", "nowhere", "--out", "--json", "vgg19", "recipes", "show"]),
                     min_size=1, max_size=5))
def test_random_cli_arguments_never_traceback(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code in (0, 1, 2), result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
