"""The harden method registry: one module per method, named after it, each with its help text."""

from __future__ import annotations

import pytest

from ftaudit.errors import UserError
from ftaudit.harden.methods import HARDEN_METHODS, HardenMethod, check_method_options, get_method


def test_one_module_per_method():
    assert list(HARDEN_METHODS) == ["erm", "noise", "trice", "bayesft"]
    for name, cls in HARDEN_METHODS.items():
        assert cls.name == name
        assert issubclass(cls, HardenMethod)
        assert cls.__module__ == f"ftaudit.harden.methods.{name}"
        assert (cls.__doc__ or "").strip(), name  # the help text


def test_unknown_method_suggests_the_closest():
    with pytest.raises(UserError, match="unknown harden method 'tirce'") as info:
        get_method("tirce")
    assert "did you mean 'trice'" in info.value.hint
    assert isinstance(get_method("noise"), HARDEN_METHODS["noise"])


def test_each_method_declares_its_own_options_with_harden_defaults():
    """An option belongs to one method; its default is HardenSettings' (the one source)."""
    from ftaudit.harden.settings import HARDEN_DEFAULTS

    owners: dict[str, str] = {}
    for name, cls in HARDEN_METHODS.items():
        for option, default in cls.options.items():
            assert option not in owners, (option, owners.get(option), name)
            owners[option] = name
            assert default == getattr(HARDEN_DEFAULTS, option, None), option
    assert owners["trials"] == "bayesft" and owners["search_samples"] == "trice"
    assert HARDEN_METHODS["erm"].options == {} and HARDEN_METHODS["noise"].options == {}


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("trice", {"trials": 5}, "--trials is used only by --method bayesft, not trice"),
        ("erm", {"threshold": 3.0}, "--threshold is used only by --method trice, not erm"),
        ("bayesft", {"warmup": 2}, "--warmup is used only by --method trice, not bayesft"),
        ("noise", {"study": "s.db"}, "--study is used only by --method bayesft, not noise"),
    ],
)
def test_another_methods_option_is_refused(method, given, message):
    with pytest.raises(UserError, match=message) as info:
        check_method_options(get_method(method), given, sigma=0.5)
    assert "--method" in info.value.hint


def test_a_method_checks_and_resolves_its_own_options():
    trice = get_method("trice")
    resolved = check_method_options(
        trice, {"trials": HARDEN_METHODS["bayesft"].options["trials"]}, sigma=0.3
    )
    assert resolved == {**trice.options, "trice_end": 0.6}  # end: 2 sigma when not given
    assert set(trice.fingerprint(resolved)) == set(trice.options)
    for bad, message in (
        ({"search_samples": 0}, "--search-samples must be at least 1"),
        ({"threshold": 0.0}, "--threshold must be a positive number"),
        ({"rc_negative": "sign"}, "--rc-negative must be one of"),
        ({"trice_start": 1.0, "trice_end": 0.5}, "0 <= --trice-start <= --trice-end"),
    ):
        with pytest.raises(UserError, match=message):
            check_method_options(trice, bad, sigma=0.3)
    bayesft = get_method("bayesft")
    resolved = check_method_options(bayesft, {"trials": 4}, sigma=0.3)
    assert resolved["trials"] == 4 and resolved["study"] is None
    assert "trials" not in bayesft.fingerprint(resolved)  # a larger --trials resumes the run
    with pytest.raises(UserError, match="--objective-samples must be at least 1"):
        check_method_options(bayesft, {"objective_samples": 0}, sigma=0.3)
    assert check_method_options(get_method("erm"), {}, sigma=0.3) == {}


def test_cli_refuses_a_flag_of_another_method_but_not_a_config_key(tmp_path, run_cli):
    """--trials with --method trice: one line, exit 2; the same key in ftaudit.toml's [harden]
    table (shared by several methods' runs) is not the user's mistake and is left out."""
    missing = tmp_path / "missing.onnx"
    code, out, err = run_cli(
        "harden", missing, "--data", tmp_path / "d.npz", "--sigma", "0.5", "-o",
        tmp_path / "h.onnx", "--method", "trice", "--trials", "5",
    )  # fmt: skip
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--trials is used only by --method bayesft, not trice" in err
    config = tmp_path / "ftaudit.toml"
    config.write_text("[harden]\ntrials = 5\nmethod = 'trice'\n")
    code, _, err = run_cli(
        "harden", missing, "--data", tmp_path / "d.npz", "--sigma", "0.5", "-o",
        tmp_path / "h.onnx", "--config", config,
    )  # fmt: skip
    assert code == 2 and "does not exist" in err and "--trials" not in err
