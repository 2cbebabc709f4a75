"""`coupalign <verb>`: every verb is wired, documented, and fails with a named error, not a trace."""

from __future__ import annotations

import pytest

from coupalign_core.cli.main import VERBS, build_parser, main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser(verb).parse_args([verb, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: coupalign {verb}")


def test_top_level_help_lists_every_verb(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(verb in out for verb in VERBS)


def test_user_errors_exit_2_with_the_reason(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["demo", "--checkpoint", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert f"checkpoint {missing} does not exist" in capsys.readouterr().err


def test_os_errors_exit_2_with_one_line(tmp_path, capfd):
    """An output path the OS refuses (here: under a regular file) is one logged line, not a traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main(["synth", "--out", str(blocker / "world"), "--num-images", "2", "--no-progress"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "ERROR" in line and "Not a directory" in line]
