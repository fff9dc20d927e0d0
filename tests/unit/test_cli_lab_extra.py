"""agent/cli.py: `floodguard demo` and `floodguard bench` need the lab extra, and say in one sentence
how to get it when it is missing, before anything runs."""

from __future__ import annotations

import argparse
from importlib import metadata

import pytest

from agent import cli

DEMO = argparse.Namespace(png="/nonexistent/demo.png", short=True)
BENCH = argparse.Namespace(what="datapath", rest=["--help"])


def _without(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """As if the distribution ``missing`` were not installed."""
    real = metadata.distribution

    def distribution(name: str) -> metadata.Distribution:
        if name == missing:
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)


def test_the_lab_extra_brings_matplotlib_and_is_installed_here() -> None:
    lab = [r for r in metadata.requires("floodguard") or [] if 'extra == "lab"' in r]
    assert [r.split(";")[0].strip() for r in lab] == ["matplotlib>=3.6"]
    # make test installs the extra (scripts/setup.sh): the check passes.
    cli._require_lab_extra("demo")


@pytest.mark.parametrize(("verb", "args", "func"), [("demo", DEMO, cli._demo), ("bench", BENCH, cli._bench)])
def test_without_the_lab_extra_one_sentence_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, verb: str, args: argparse.Namespace, func: cli.Handler
) -> None:
    _without(monkeypatch, "matplotlib")
    with pytest.raises(cli.CliError) as err:
        func(args)
    assert str(err.value) == (
        f"{verb} needs the lab extra, which is not installed (matplotlib missing): "
        f"pip install 'floodguard[lab]' (make {verb} installs it)"
    )

