"""bench/eval_quality.py's case generator, sizing and scoring (no server: a stand-in tokenizer)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import eval_quality as eq  # noqa: E402


@pytest.fixture(scope="module")
def sentences():
    return eq.filler_sentences()


def test_cases_are_fixed_by_their_seed():
    for task in eq.TASKS:
        assert eq.make_case(task, 7) == eq.make_case(task, 7)
        assert eq.make_case(task, 7)["expect"] != eq.make_case(task, 8)["expect"]


def test_needles_sit_in_the_context_in_order(sentences):
    for task in eq.TASKS:
        case = eq.make_case(task, 3)
        msg = eq.assemble(case, sentences, 200)
        at = [msg.index(n) for n in case["needles"]]
        assert at == sorted(at), task  # a variable chain reads forwards
        assert msg.endswith(case["question"])
        # Spread over the context, not bunched at an end.
        assert at[0] > 0.05 * len(msg) and at[-1] < 0.95 * len(msg)


def test_vartrack_chain_links_every_name():
    case = eq.make_case("vartrack", 11)
    names = case["expect"]
    assert len(set(names)) == 4
    assert case["needles"][0].startswith(f"VAR {names[0]} = ")
    for i in range(1, 4):
        assert case["needles"][i] == f"VAR {names[i]} = VAR {names[i - 1]}."


def test_score_counts_whole_strings_only():
    case = eq.make_case("multivalue", 5)
    e = case["expect"]
    assert eq.score(case, ", ".join(e)) == 1.0
    assert eq.score(case, f"{e[0]} and {e[2]}") == 0.5
    assert eq.score(case, "I do not know.") == 0.0
    assert eq.score(case, e[0] + "9") == 0.0  # inside a longer number: not an answer
    key = eq.make_case("passkey", 5)
    assert eq.score(key, f"The pass key is {key['expect'][0]}.") == 1.0


def test_prompts_are_sized_to_the_target(sentences):
    def tokenize(msg):  # stand-in: four characters a token
        return len(msg) // 4
    for target in (300, 1000, 4000):
        case = eq.make_case("multikey", target)
        msg, n = eq.build_prompt(tokenize, case, sentences, target)
        assert n <= target
        assert n > target - 110  # within one filler sentence (at most 400 characters)
        assert all(needle in msg for needle in case["needles"])


def test_modes_parse_to_server_flags():
    assert eq.parse_mode("bf16_int4") == ["--key-mode", "bf16", "--value-mode", "int4"]
    assert eq.parse_mode("svdq_bf16@8,2,0,0,0,0,0,0") == ["--key-mode", "svdq", "--value-mode", "bf16",
                                                         "--svdq-schedule", "8,2,0,0,0,0,0,0"]
    with pytest.raises(SystemExit):
        eq.parse_mode("svdq")


def test_a_mode_carries_its_own_server_flags():
    assert eq.parse_mode("bf16_bf16") == ["--key-mode", "bf16", "--value-mode", "bf16"]
    assert eq.parse_mode("svdq_bf16@4,2,2,1,1,0,0,0|--sparse-budget 2048 --block-size 64") == [
        "--key-mode", "svdq", "--value-mode", "bf16", "--svdq-schedule", "4,2,2,1,1,0,0,0",
        "--sparse-budget", "2048", "--block-size", "64"]
    with pytest.raises(SystemExit):
        eq.parse_mode("svdq|--sparse-budget 2048")  # no value mode


def test_wilson_interval_brackets_the_rate_and_narrows_with_cases():
    lo, hi = eq.wilson(1.0, 52)
    assert hi == 1.0 and 0.92 < lo < 0.94  # 52 of 52: the interval still reaches below 94%
    lo8, _ = eq.wilson(1.0, 8)
    assert lo8 < 0.7  # 8 of 8 bounds little
    lo, hi = eq.wilson(0.5, 200)
    assert lo < 0.5 < hi and hi - lo < 0.14


def test_a_modes_own_flags_come_after_the_shared_ones():
    from types import SimpleNamespace
    a = SimpleNamespace(kv_cache_bytes="40G", concurrency=16, server_flags="--block-size 64 --max-batch-tokens 8192")
    flags = eq.server_flags("svdq_bf16@4,2,2,1,1,0,0,0|--sparse-budget 2048 --block-size 16", a)
    sizes = [flags[i + 1] for i, f in enumerate(flags) if f == "--block-size"]
    assert sizes == ["64", "16"]  # the server keeps the last: the mode's 16
    assert flags[-2:] == ["--block-size", "16"]


def test_kv_fidelity_takes_modes_in_the_same_syntax():
    import kv_fidelity
    assert kv_fidelity.own_modes("bf16_bf16;svdq_bf16@2,2,1,1,1,1,1,1|--svdq-scope layer") == [
        ("bf16", "bf16", []),
        ("svdq", "bf16", ["--svdq-schedule", "2,2,1,1,1,1,1,1", "--svdq-scope", "layer"])]


def test_cached_sizes_give_the_same_prompts_with_one_tokenize_each(sentences, tmp_path):
    calls = []

    def tokenize(msg):  # stand-in: four characters a token
        calls.append(1)
        return len(msg) // 4
    cases = [(t, L, eq.make_case(t, 1000 * L + i)) for t in ("passkey", "vartrack") for L in (300, 1200) for i in range(2)]
    path = tmp_path / "sizes.json"
    first = eq.sized_prompts(tokenize, cases, sentences, path, "m.gguf")
    bisecting = len(calls)
    calls.clear()
    again = eq.sized_prompts(tokenize, cases, sentences, path, "m.gguf")
    assert again == first
    assert len(calls) == len(cases) < bisecting  # one call a case to confirm its size
    assert first == [eq.build_prompt(tokenize, c, sentences, L) for _, L, c in cases]
    calls.clear()
    eq.sized_prompts(tokenize, cases, sentences, path, "other.gguf")  # another model: sized again
    assert len(calls) == bisecting


def run_eval(model_path, tmp_path, modes):
    import subprocess
    out = tmp_path / "eval.json"
    run = subprocess.run(
        [sys.executable, str(Path(eq.__file__)), "--model", str(model_path), "--lengths", "200", "--cases", "1",
         "--tasks", "passkey", "--max-tokens", "4", "--kv-cache-bytes", "64M", "--concurrency", "1",
         "--modes", modes, "--sizes", str(tmp_path / "sizes.json"), "--json", str(out)],
        capture_output=True, text=True, timeout=600)
    return run, out


def test_a_refused_mode_is_reported_and_the_others_still_run(model_path, tmp_path):
    # Through the real server on the CPU: the first mode is refused when the model loads (a
    # sparse budget with bf16 keys), the second at flag parsing (an unknown flag, after which the
    # server prints its usage); the run goes on to the third mode and says what it skipped, in
    # the server's own words rather than the usage text's last line.
    at_load, at_parse = "bf16_bf16|--sparse-budget 256", "bf16_bf16|--no-such-flag 1"
    run, out = run_eval(model_path, tmp_path, f"{at_load};{at_parse};bf16_bf16")
    assert run.returncode == 0, run.stderr[-2000:]
    result = eq.json.loads(out.read_text())
    assert [r["mode"] for r in result["rows"]] == ["bf16_bf16"]
    assert result["rows"][0]["cases"] == 1 and result["rows"][0]["length"] == 200
    refused = result["meta"]["refused"]
    assert "sparse attention needs page-coded keys" in refused[at_load]
    assert refused[at_parse].startswith("svdq-server:") and "--no-such-flag" in refused[at_parse]
    assert f"refused at start, not measured: {at_load}" in run.stdout


def test_a_run_with_every_mode_refused_fails(model_path, tmp_path):
    run, out = run_eval(model_path, tmp_path, "bf16_bf16|--sparse-budget 256")
    assert run.returncode != 0
    assert "no mode was measured" in run.stderr
    assert eq.json.loads(out.read_text())["rows"] == []
