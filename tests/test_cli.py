import pytest

from lmtailor.cli import build_parser, main


def _commands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        nested = [a for a in p._actions if getattr(a, "choices", None) and a.dest == "data_command"]
        if nested:
            out += [[name, n] for n in nested[0].choices]
        else:
            out.append([name])
    return out


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: lmtailor" in capsys.readouterr().out


def test_demo_names_the_packaged_examples_on_a_typo(capsys):
    from lmtailor.cli import main, packaged_examples

    assert {"demo", "architectures"} <= set(packaged_examples())
    assert main(["demo", "nope"]) != 0
    said = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "architectures, demo" in said


def test_every_packaged_example_validates(capsys):
    from lmtailor.cli import packaged_example, packaged_examples
    from lmtailor.config import load_experiment

    for name in packaged_examples():
        load_experiment(packaged_example(f"{name}.yaml"))
