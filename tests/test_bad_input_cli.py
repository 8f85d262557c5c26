"""Bad input, class 9: every `omsjax` error is exit code 2 and one line that names the flag the user typed. Integer
flags are checked once, after parsing and before any work (`cli.entry.check_int_flags`): below their least value
(`--final-samples 0` used to be reported as `num_samples`, `gmm --batch 0` ended in ZeroDivisionError), beyond 64
bits (an OverflowError traceback), a seed beyond 2**31 (JAX keeps only its low 32 bits). A guided schedule file
on an unconditional zoo names the file and the zoo, not the Python hint about `cond=` / `uncond=`."""

import json

import pytest

from omsjax import cli, noise, presets
from omsjax.cli.entry import INT_MINIMUM, build_parser


def run(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_error_line(rc, err, *words):
    assert rc == 2 and err.count("\n") == 1 and err.startswith("omsjax: error: "), err
    for w in words:
        assert w in err, (w, err)


# (argv of a command, the integer flag, a value below its least, that least); `--out` folders are never made.
CASES = [
    (["search", "--nfe", "3", "--out", "{tmp}/s"], "--final-samples", 0, 2),
    (["search", "--nfe", "3", "--out", "{tmp}/s"], "--num-samples", 1, 2),
    (["search", "--nfe", "3", "--out", "{tmp}/s"], "--population", 1, 2),
    (["search", "--nfe", "3", "--out", "{tmp}/s"], "--per-stage", 0, 1),
    (["search", "--nfe", "3", "--out", "{tmp}/s"], "--stages", -1, 0),
    (["search", "--out", "{tmp}/s"], "--nfe", 0, 1),
    (["gmm"], "--batch", 0, 1),
    (["gmm"], "--nfe", 0, 1),
    (["evaluate", "--solver", "ddim", "--nfe", "3"], "--batch-size", 0, 1),
    (["evaluate", "--solver", "ddim", "--nfe", "3"], "--ref-samples", -1, 0),
    (["evaluate", "--solver", "ddim", "--nfe", "3"], "--model", -1, 0),
    (["compare"], "--num-samples", 0, 2),
    (["optimize-steps", "--solver", "DDIM", "--nfe", "3", "--out", "{tmp}/o"], "--train-samples", 1, 2),
    (["optimize-steps", "--solver", "DDIM", "--nfe", "3", "--out", "{tmp}/o"], "--rounds", -1, 0),
    (["stages", "cluster"], "--grid", 2, 3),
    (["stages", "config", "--boundaries", "0.3", "0.6"], "--steps", 0, 1),
    (["zoo"], "--cache-presets", 0, 1),
]


def _argv(case, tmp_path, value):
    argv, flag, _, _ = case
    return [a.format(tmp=tmp_path) for a in argv] + [flag, str(value)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][0]}{c[1]}")
def test_an_int_flag_below_its_least_names_the_flag(case, tmp_path, capsys):
    _, flag, low, least = case
    rc, err = run(capsys, _argv(case, tmp_path, low))
    one_error_line(rc, err, f"{flag} must be an int >= {least}, got {low}")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("case", CASES[:1] + CASES[6:8], ids=lambda c: f"{c[0][0]}{c[1]}")
def test_an_int_flag_beyond_64_bits_names_the_flag(case, tmp_path, capsys):
    rc, err = run(capsys, _argv(case, tmp_path, 2**64 + 1))
    one_error_line(rc, err, f"{case[1]} must be below 2**63, got {2**64 + 1}")


@pytest.mark.parametrize("argv", [["gmm"], ["search", "--nfe", "3", "--out", "{tmp}/s"], ["compare"]])
@pytest.mark.parametrize("seed", [-1, 2**31, 2**70])
def test_a_seed_out_of_range_names_the_flag(argv, seed, tmp_path, capsys):
    rc, err = run(capsys, [a.format(tmp=tmp_path) for a in argv] + ["--seed", str(seed)])
    want = "--seed must be an int >= 0" if seed < 0 else "--seed must be below 2**31 (a seed)"
    one_error_line(rc, err, want, f"got {seed}")


def test_every_int_flag_of_every_command_has_a_least_value():
    """No integer flag escapes the check: each one's `dest` is in `INT_MINIMUM`."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    stack, missing = list(sub.choices.items()), []
    while stack:
        name, p = stack.pop()
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                stack += [(f"{name} {n}", q) for n, q in a.choices.items()]
            elif a.type is int and a.dest not in INT_MINIMUM:
                missing.append(f"{name} {a.option_strings[0]}")
    assert missing == []


def test_a_guided_schedule_on_an_unconditional_zoo_names_file_and_zoo(tmp_path, capsys):
    path = tmp_path / "guided.json"
    path.write_text(presets.with_guidance(presets.ddim(noise.vp_linear(), 3), 2.0).to_json())
    rc, err = run(capsys, ["evaluate", "--schedule", path, "--num-samples", "4"])
    one_error_line(rc, err, f"--schedule {path}: step 0 is guided (scale 2.0)", "is unconditional")
    assert "cond=" not in err


def test_report_stays_json_after_an_error(tmp_path, capsys):
    """An error leaves stdout empty (scripts that parse `--json` output see nothing, not half a report)."""
    rc = cli.main(["gmm", "--batch", "0", "--json"])
    out = capsys.readouterr()
    assert rc == 2 and out.out == "" and json.dumps(out.err)
