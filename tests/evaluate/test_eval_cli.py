"""``python -m dustin eval`` end to end: ``--tiny`` and a local pair in subprocesses (the files it writes and their
values), the loud failure when exact mode differs from ar, and the refusals of bad settings."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

import dustin.evaluate
from dustin.cli import main
from dustin.freerun import Arm, ArmRun, agreement, exact_mismatches
from dustin.stats import GenerateStats
from dustin.tiny import synthetic_text
from helpers import tiny_model, word_tokenizer

FIDELITY = ["agreement", "kl", "nll_sparse", "nll_dense", "ppl_ratio", "recovery_mean", "recovery_min",
            "estimated_recovery", "context", "budget", "selector", "pair", "machine", "dtype", "gamma"]
FREE = ["arm", "agreement_with_ar", "first_divergence", "equals_ar", "tau", "tokens_per_target_pass",
        "decode_tokens_per_s", "speedup_vs_ar", "context", "budget", "selector", "pair", "machine", "dtype"]
NEEDLE = ["arm", "budget", "depth", "expected", "answer", "correct", "needle_start", "context", "pair", "machine"]


def _eval(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "dustin", "eval", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_tiny_end_to_end(tmp_path):
    out = tmp_path / "out"
    result = _eval("--tiny", "--selectors", "dustin,history,oracle", "--budgets", "32", "96", "--max-new-tokens", "6",
                   "--free-arms", "guarded,sparse-ar", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in out.iterdir()} >= {"fidelity.csv", "fidelity_layers.csv", "free.csv", "needle.csv",
                                                "settings.json", "fidelity.png", "free.png"}
    fidelity = _rows(out / "fidelity.csv")
    assert set(FIDELITY) <= set(fidelity[0]) and len(fidelity) == 6
    assert {(r["budget"], r["selector"]) for r in fidelity} == {(b, s) for b in ("32", "96")
                                                                for s in ("dustin", "history", "oracle")}
    for r in fidelity:
        assert 0.0 <= float(r["agreement"]) <= 1.0 and float(r["kl"]) >= -1e-9 and float(r["ppl_ratio"]) > 0
        assert 0.0 < float(r["recovery_min"]) <= float(r["recovery_mean"]) <= 1.0 + 1e-6
        assert r["pair"] == "tiny-random" and r["dtype"] == "float32" and r["context"] == "384"
    free = {r["arm"]: r for r in _rows(out / "free.csv")}
    assert set(FREE) <= set(next(iter(free.values())))
    assert list(free) == ["ar", "dense", "sparse@32", "exact@32", "guarded@32", "sparse-ar@32:history",
                          "sparse@96", "exact@96", "guarded@96", "sparse-ar@96:history"]
    assert float(free["sparse-ar@32:history"]["tau"]) == 1.0  # the target alone: one token per pass
    assert all(free[a]["equals_ar"] == "True" and free[a]["first_divergence"] == "" for a in ("dense", "exact@32"))
    assert float(free["ar"]["speedup_vs_ar"]) == 1.0 and float(free["dense"]["tau"]) >= 1.0
    needle = _rows(out / "needle.csv")
    assert set(NEEDLE) <= set(needle[0]) and len(needle) == 5 * 5  # 5 depths x (ar + 2 budgets x sparse, exact)
    assert {r["depth"] for r in needle} == {"0.1", "0.3", "0.5", "0.7", "0.9"}
    assert "fidelity: agreement of sparse and dense argmax" in result.stdout and "needle retrieval" in result.stdout


def _saved_pair(tmp_path):
    tokenizer = word_tokenizer()
    target, draft = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, num_hidden_layers=1)
    for name, model in (("target", target), ("draft", draft)):
        model.save_pretrained(tmp_path / "pair" / name)
        tokenizer.save_pretrained(tmp_path / "pair" / name)
    text = tmp_path / "text.txt"
    text.write_text(synthetic_text(4000, seed=2).lower())
    return str(tmp_path / "pair"), str(text)


def test_a_local_pair_end_to_end(tmp_path):
    """The real-pair path (checkpoints and tokenizer from disk, text files) on a tiny pair saved to a temp dir."""
    pair_dir, text = _saved_pair(tmp_path)
    out = tmp_path / "out"
    result = _eval("--pair-dir", pair_dir, "--text-file", text, "--parts", "fidelity,free", "--contexts", "320",
                   "--budgets", "32", "--selectors", "dustin,streaming", "--windows", "2", "--max-new-tokens", "4",
                   "--n-sink", "2", "--window", "8", "--no-plots", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    fidelity = _rows(out / "fidelity.csv")
    assert [r["selector"] for r in fidelity] == ["dustin", "streaming"]
    assert all(r["pair"] == pair_dir and r["profile"] == "default" and r["backend"] == "eager" for r in fidelity)
    assert len(_rows(out / "free.csv")) == 4 and not (out / "needle.csv").exists() and not list(out.glob("*.png"))


def test_exact_differing_from_ar_fails_loudly(tmp_path, monkeypatch, capsys):
    real = dustin.evaluate.run_arm

    def corrupted(*args, **kwargs):
        run = real(*args, **kwargs)
        if run.arm.kind == "exact":
            run.tokens[0, -1] += 1
        return run

    monkeypatch.setattr(dustin.evaluate, "run_arm", corrupted)
    code = main(["eval", "--tiny", "--parts", "free", "--budgets", "32", "--max-new-tokens", "4", "--no-plots",
                 "--out", str(tmp_path / "out")])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED: exact mode did not reproduce ar" in err and "exact@32 differs from ar in rows [0]" in err
    assert (tmp_path / "out" / "free.csv").exists()  # what was measured is kept


@pytest.mark.parametrize("args, message", [
    (["--parts", "fidelity,bogus"], "--parts: expected distinct comma-separated names of fidelity, free, needle"),
    (["--selectors", "dustin,nope"], "--selectors: expected distinct comma-separated names of dustin"),
    (["--budgets", "32"], "--budgets 32: DustinConfig: n_sink (4) + window (64) must not exceed budget (32)"),
    (["--tiny", "--contexts", "8"], "--contexts must be distinct integers >= 16"),
    (["--tiny", "--windows", "0"], "--windows must be >= 1"),
    (["--tiny", "--free-arms", "guarded,hf"], "--free-arms: expected distinct comma-separated names of guarded, "
                                              "sparse-ar"),
    (["--tiny", "--text", "essays"], "--text is for real pairs"),
    (["--tiny", "--contexts", "128"], "--contexts 128: context 128 leaves"),
])
def test_bad_settings_are_refused(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        main(["eval", *args, "--out", str(tmp_path / "out")])
    assert message in str(error.value) + capsys.readouterr().err


def test_a_text_too_short_is_refused_before_any_model_call(tmp_path):
    pair_dir, text = _saved_pair(tmp_path)
    expected = r"--text .*text.txt: \d+ tokens, but this evaluation needs 8257: use a longer text"
    with pytest.raises(SystemExit, match=expected):
        main(["eval", "--pair-dir", pair_dir, "--text-file", text, "--contexts", "8192", "--parts", "fidelity",
              "--budgets", "512", "--windows", "12", "--out", str(tmp_path / "out")])


def test_agreement_and_exact_mismatch_by_hand():
    ar = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert agreement(ar.clone(), ar) == (1.0, None)
    other = ar.clone()
    other[1, 2] = 0
    other[0, 3] = 0
    assert agreement(other, ar) == (0.75, 2)
    runs = [ArmRun(Arm("ar"), ar, GenerateStats()), ArmRun(Arm("exact", 64, "dustin"), other, GenerateStats()),
            ArmRun(Arm("exact", 128, "dustin"), ar.clone(), GenerateStats())]
    assert exact_mismatches(runs, "here") == ["here: exact@64 differs from ar in rows [0, 1] (first at new token 2, "
                                              "agreement 0.750); exact mode must reproduce the target's greedy output"]
    with pytest.raises(ValueError, match="needs a budget"):
        Arm("sparse")
    with pytest.raises(ValueError, match="takes no budget"):
        Arm("ar", 64)
