"""The CLI end to end, in a subprocess, on checkpoints this test saves to a temp dir (offline)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from transformers import AutoTokenizer

from helpers import tiny_model, word_tokenizer


def _save(path, model, tokenizer):
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _saved_pair(tmp_path):
    """A tiny (target, draft) pair saved as local checkpoints: (tokenizer, target, draft, target_dir, draft_dir)."""
    tokenizer = word_tokenizer()
    target, draft = tiny_model("qwen2", seed=0), tiny_model("qwen2", seed=1, num_hidden_layers=1)
    # This random target's first choice after the test prompts is eos, which would make every continuation empty
    # (a comparison that cannot fail): a zero eos row keeps it from winning the argmax.
    target.lm_head.weight.data[target.config.eos_token_id] = 0
    return (tokenizer, target, draft, _save(tmp_path / "target", target, tokenizer),
            _save(tmp_path / "draft", draft, tokenizer))


def _cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.run([sys.executable, "-m", "dustin", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_generate_end_to_end(tmp_path):
    tokenizer, target, draft, t_dir, d_dir = _saved_pair(tmp_path)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("the quick brown fox")
    result = _cli("generate", "--target", t_dir, "--draft", d_dir, "--prompt-file", str(prompt_file),
                  "--max-new-tokens", "12", "--gamma", "3", "--backend", "eager", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tokenizer = AutoTokenizer.from_pretrained(t_dir)  # what the CLI tokenizes with (after a save/load round trip)
    ids = tokenizer("the quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        expected = target.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0)
    text = tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    assert expected.shape[1] == ids.shape[1] + 12 and len(text) >= 12  # a real continuation, no early eos
    assert text in result.stdout  # streamed text == the target's own greedy continuation
    assert "tau (tokens / verification)" in result.stderr and "prefill" in result.stderr


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = _cli("generate", "--target", str(tmp_path / "nope"), "--draft", str(tmp_path / "nope"),
                  "--prompt", "hi", "--max-new-tokens", "3", cwd=tmp_path)
    assert result.returncode != 0
    assert "is not a directory (expected a local Hugging Face checkpoint)" in result.stderr


def test_generate_exact_mode_with_profile(tmp_path):
    """--mode exact with a profile JSON: lossless, so the text is still the target's greedy continuation."""
    from dustin.profile import default_profile

    tokenizer, target, draft, t_dir, d_dir = _saved_pair(tmp_path)
    profile = tmp_path / "profile.json"
    default_profile(target, draft, warn=False).save(str(profile))
    prompt = "the quick brown fox jumps over the lazy dog and the cat"
    result = _cli("generate", "--target", t_dir, "--draft", d_dir, "--prompt", prompt, "--max-new-tokens", "10",
                  "--mode", "exact", "--budget", "8", "--n-sink", "2", "--window", "2", "--profile", str(profile),
                  "--backend", "eager", "--no-stream", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tokenizer = AutoTokenizer.from_pretrained(t_dir)  # what the CLI tokenizes with (after a save/load round trip)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = target.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    text = tokenizer.decode(expected[0, ids.shape[1]:], skip_special_tokens=True)
    assert expected.shape[1] == ids.shape[1] + 10 and len(text) >= 10  # a real continuation, no early eos
    assert text in result.stdout
    assert "no calibration profile" not in result.stderr


def test_missing_profile_is_a_clear_error(tmp_path):
    tokenizer = word_tokenizer()
    model = tiny_model("qwen2", seed=0)
    t_dir = _save(tmp_path / "target", model, tokenizer)
    result = _cli("generate", "--target", t_dir, "--draft", t_dir, "--prompt", "hi", "--max-new-tokens", "3",
                  "--mode", "sparse", "--profile", str(tmp_path / "none.json"), cwd=tmp_path)
    assert result.returncode != 0
    assert "--profile" in result.stderr and "is not a file" in result.stderr
