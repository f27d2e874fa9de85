"""Dataset mode: batched read-out at the aligned columns, targets, resume, summaries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_chatml_tokenizer, make_tiny_model, strong_model

import lenskit
from lenskit.dataset import batch as batch_module
from lenskit.dataset.run import run_dataset
from lenskit.dataset.targets import answer_token, control_token, derangement, later_tokens
from lenskit.errors import InputError
from lenskit.model.generate import greedy_generate, greedy_generate_batch

PROMPTS = [
    {"prompt": "What is the capital of France?", "answer": "Paris", "category": "capitals"},
    {"prompt": "What is the capital of Japan? Please answer briefly.", "answer": "Tokyo",
     "category": "capitals"},
    {"prompt": "one two three", "answer": "four", "category": "count"},
    {"prompt": "Hello! How can I help you today?", "category": "misc"},
    {"prompt": "Sydney Melbourne Canberra Brisbane Perth Adelaide Hobart Darwin", "answer": "Perth",
     "category": "count"},
]  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def llama(tok):
    return strong_model(make_tiny_model("llama", len(tok)))


@pytest.fixture(scope="module")
def run(tok, llama, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_dataset(llama, tok, PROMPTS, max_new_tokens=6, batch_size=2, output_dir=out)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen2"])
def test_batched_generation_equals_one_by_one(tok, family):
    model = strong_model(make_tiny_model(family, len(tok)))
    ids = [lenskit.encode_prompt(tok, p["prompt"]).input_ids for p in PROMPTS]
    assert len({len(i) for i in ids}) > 1  # different lengths: padding matters
    assert greedy_generate_batch(model, ids, 7) == [greedy_generate(model, i, 7) for i in ids]


def test_batched_cells_equal_run_lens(tok, llama, run):
    """Every record equals a per-prompt run_lens with the answer / next token as target."""
    records, prompts = run.records, run.prompts
    assert len(records) == len(PROMPTS) * len(run.rows) * len(run.columns)
    for _, p in prompts.iterrows():
        i = int(p["prompt_index"])
        enc = lenskit.encode_prompt(tok, PROMPTS[i]["prompt"])
        cols = [enc.template_positions[0] + c for c in run.columns]
        mine = records[records["prompt_index"] == i].sort_values(["row", "column"])
        for name in ("next", "answer"):
            target = p[f"{name}_id"]
            if pd.isna(target):
                assert mine[f"{name}_rank"].isna().all()
                continue
            lens = lenskit.run_lens(llama, tok, PROMPTS[i]["prompt"], target=int(target), top_k=10)
            expect_prob = lens.target_prob[:, cols].ravel()
            np.testing.assert_allclose(mine[f"{name}_prob"], expect_prob, rtol=1e-4, atol=1e-7)
            np.testing.assert_array_equal(mine[f"{name}_rank"], lens.target_rank[:, cols].ravel())
        np.testing.assert_allclose(mine["entropy"], lens.entropy[:, cols].ravel(), rtol=1e-4)
        np.testing.assert_allclose(
            mine["kl_to_final"], lens.kl_to_final[:, cols].ravel(), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_array_equal(mine["top1_id"], lens.top_ids[:, cols, 0].ravel())


def test_later_rank_is_the_best_of_the_replys_new_tokens(tok, llama, run):
    p = run.prompts.iloc[0]
    later = list(p["later_ids"])
    assert later and not set(later) & set(
        lenskit.encode_prompt(tok, PROMPTS[0]["prompt"]).input_ids
    )
    enc = lenskit.encode_prompt(tok, PROMPTS[0]["prompt"])
    cols = [enc.template_positions[0] + c for c in run.columns]
    ranks = [
        lenskit.run_lens(llama, tok, PROMPTS[0]["prompt"], target=t).target_rank for t in later
    ]
    best = np.min(np.stack(ranks), axis=0)[:, cols].ravel()
    mine = run.records[run.records["prompt_index"] == 0].sort_values(["row", "column"])
    np.testing.assert_array_equal(mine["later_rank"], best)


def test_next_token_is_the_out_rows_top1_at_the_last_slot(run):
    last = run.summary("next_hit", k=1)
    assert last.loc["out", run.columns[-1]] == 1.0  # the model's own prediction, exactly
    assert run.summary("next_rank").loc["out", run.columns[-1]] == 0.0


def test_results_do_not_depend_on_the_batch_size(tok, llama, run, tmp_path):
    one = run_dataset(llama, tok, PROMPTS, max_new_tokens=6, batch_size=1, output_dir=tmp_path)
    for stat in ("entropy", "answer_prob", "control_rank", "later_rank"):
        np.testing.assert_allclose(one.summary(stat), run.summary(stat), rtol=1e-6)
    np.testing.assert_array_equal(one.prompts["control_id"], run.prompts["control_id"])


def test_control_tokens(tok, run):
    prompts = run.prompts
    for _, p in prompts.iterrows():
        i = int(p["prompt_index"])
        prompt_ids = set(lenskit.encode_prompt(tok, PROMPTS[i]["prompt"]).input_ids)
        control = int(p["control_id"])
        assert control not in prompt_ids and control not in set(p["reply_ids"])
        if not pd.isna(p["answer_id"]):
            assert control != int(p["answer_id"])
    perm = derangement(50, seed=3)
    assert sorted(perm) == list(range(50)) and all(perm[i] != i for i in range(50))
    assert (derangement(50, 3) == perm).all() and not (derangement(50, 4) == perm).all()
    # walking the cycle past a partner whose token is banned
    picked = control_token(0, np.array([1, 2, 0]), lambda j: {1: 7, 2: 9}[j], {7}, [])
    assert picked == 9


def test_answer_is_found_in_the_reply(tok):
    reply = tok.encode(" The capital of France is Paris.", add_special_tokens=False)
    answer_id, correct, where = answer_token(tok, reply, "paris")
    assert correct and tok.decode([answer_id]).strip() == "Paris"
    assert tok.decode(reply[where:]).strip().startswith("Paris")
    missing, ok, where = answer_token(tok, reply, "Tokyo")
    assert not ok and where is None
    assert missing == tok.encode(" Tokyo", add_special_tokens=False)[0]
    # a whole word only: "aris" is inside "Paris", "capita" starts "capital"
    assert not answer_token(tok, reply, "aris")[1]
    assert not answer_token(tok, reply, "capita")[1]
    assert later_tokens([5, 6, 7, 6, 2], [7], {2}) == (6,)


def test_summaries_intervals_and_json(run):
    rate, (low, high) = run.summary("answer_hit", k=10), run.interval("answer_hit", k=10)
    assert ((low <= rate) & (rate <= high)).to_numpy()[~rate.isna().to_numpy()].all()
    lift = run.summary("lift", k=10)
    records = run.records
    both = records[records["answer_rank"].notna() & records["control_rank"].notna()]
    d = (both["answer_rank"] < 10).astype(float) - (both["control_rank"] < 10).astype(float)
    expect_lift = d.groupby([both["layer"], both["column"]]).mean()
    assert lift.loc["2", 0] == pytest.approx(expect_lift.loc[("2", 0)])
    assert lift.loc["out", 3] == pytest.approx(expect_lift.loc[("out", 3)])
    all_answered = records[records["answer_rank"].notna()]  # every answered prompt: no pairing
    hits = (
        (all_answered["answer_rank"] < 10)
        .groupby([all_answered["layer"], all_answered["column"]])
        .mean()
    )
    assert run.summary("answer_hit", 10).loc["1", -1] == pytest.approx(hits.loc[("1", -1)])
    by_cat = run.summary("entropy", category="capitals")
    expect = records[records["category"] == "capitals"].groupby(["layer", "column"])["entropy"]
    assert by_cat.loc["1", 0] == pytest.approx(expect.mean().loc[("1", 0)])
    again = lenskit.DatasetResult.from_json(run.to_json())
    pd.testing.assert_frame_equal(again.summary("entropy"), run.summary("entropy"))
    with pytest.raises(InputError, match="records"):
        _ = again.records
    with pytest.raises(InputError, match="unknown statistic"):
        run.summary("entropie")
    merged = run.merge(run)
    assert merged.n_prompts == 2 * run.n_prompts
    pd.testing.assert_frame_equal(merged.summary("entropy"), run.summary("entropy"))


def test_wilson_interval_matches_the_formula():
    from lenskit.dataset.stats import _wilson

    p, low, high = _wilson(np.array([3.0]), np.array([10.0]))
    z = 1.959963984540054
    centre = (0.3 + z * z / 20) / (1 + z * z / 10)
    half = z * np.sqrt(0.3 * 0.7 / 10 + z * z / 400) / (1 + z * z / 10)
    assert p[0] == 0.3 and low[0] == pytest.approx(centre - half)
    assert high[0] == pytest.approx(centre + half)


def test_a_killed_run_resumes(tok, llama, run, tmp_path, monkeypatch):
    real = batch_module.run_batch
    calls: list[list[int]] = []

    def dies_after_one(plan, indices):
        calls.append(list(indices))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed in the second batch
        return real(plan, indices)

    monkeypatch.setattr("lenskit.dataset.run.run_batch", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(llama, tok, PROMPTS, max_new_tokens=6, batch_size=2, output_dir=tmp_path)
    assert (tmp_path / "parts").is_dir() and not (tmp_path / "summary.json").exists()
    calls.clear()
    monkeypatch.setattr(
        "lenskit.dataset.run.run_batch", lambda p, i: calls.append(list(i)) or real(p, i)
    )
    resumed = run_dataset(llama, tok, PROMPTS, max_new_tokens=6, batch_size=2, output_dir=tmp_path)
    assert calls == [[2, 3], [4]]  # prompts 0 and 1 were done
    for stat in ("entropy", "answer_rank", "lift"):
        np.testing.assert_allclose(resumed.summary(stat), run.summary(stat), rtol=1e-9)
    assert sorted(resumed.prompts["prompt_index"]) == list(range(len(PROMPTS)))


def test_another_run_in_the_same_directory_is_refused(tok, llama, run):
    with pytest.raises(InputError, match="other options.*--overwrite"):
        run_dataset(llama, tok, PROMPTS, max_new_tokens=5, output_dir=run.directory)
    with pytest.raises(InputError, match="another prompt set"):
        run_dataset(llama, tok, PROMPTS[:3], max_new_tokens=6, output_dir=run.directory)


def test_a_run_does_not_resume_through_another_tuned_lens(tok, llama, tmp_path):
    first, second = lenskit.TunedLens.from_model(llama), lenskit.TunedLens.from_model(llama)
    with torch.no_grad():
        second.translators[1].bias.fill_(0.5)
    run_dataset(llama, tok, PROMPTS[:2], max_new_tokens=2, output_dir=tmp_path, lens=first)
    with pytest.raises(InputError, match="other options"):
        run_dataset(llama, tok, PROMPTS[:2], max_new_tokens=2, output_dir=tmp_path, lens=second)


def test_overwrite_and_foreign_directories(tok, llama, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        run_dataset(llama, tok, PROMPTS[:2], max_new_tokens=2, output_dir=tmp_path)
    res = run_dataset(
        llama, tok, PROMPTS[:2], max_new_tokens=2, output_dir=tmp_path, overwrite=True
    )
    assert res.n_prompts == 2 and (tmp_path / "notes.txt").read_text() == "mine"


def test_bad_input_is_refused_before_model_work(tok, llama):
    with pytest.raises(InputError, match="at least 2 prompts"):
        run_dataset(llama, tok, PROMPTS[:1])
    with pytest.raises(InputError, match="user_tokens"):
        run_dataset(llama, tok, PROMPTS, user_tokens=0)
    long = {"prompt": "one two three " * 200}
    with pytest.raises(InputError, match="prompt 1.*context"):
        run_dataset(llama, tok, [PROMPTS[0], long])


def test_sweep_statistics(tok, llama, tmp_path):
    res = run_dataset(llama, tok, PROMPTS[:3], max_new_tokens=4, sweep=True, output_dir=tmp_path)
    sweep = res.sweep_records
    mean, low, high, n = res.sweep.mean_kl()
    assert mean.shape == (llama.config.num_hidden_layers, 4)
    expect = sweep.groupby(["block", "gen_index"])["kl"].mean()
    assert mean[1, 0] == pytest.approx(expect.loc[(1, 0)])
    direct = lenskit.intervention_sweep(llama, tok, PROMPTS[0]["prompt"], max_new_tokens=4)
    mine = sweep[sweep["prompt_index"] == 0].sort_values(["block", "gen_index"])
    np.testing.assert_allclose(mine["kl"].to_numpy().reshape(direct.kl.shape), direct.kl, atol=2e-5)
