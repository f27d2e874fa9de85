"""ModelPool: a small LRU of loaded models, shared between threads, within a memory budget."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from lenskit.errors import ModelLoadError
from lenskit.model import ModelPool
from lenskit.model.pool import model_bytes


class _Loader:
    def __init__(self, size: int = 10, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, str]] = []
        self.size, self.delay = size, delay
        self.lock = threading.Lock()

    def __call__(self, spec, device, progress=None):
        with self.lock:
            self.calls.append((spec, device))
        time.sleep(self.delay)
        if spec == "missing":
            raise ModelLoadError("no such model")
        return torch.nn.Linear(self.size, 1, bias=False), f"tokenizer of {spec}"


def test_keeps_several_models_and_evicts_the_least_recent():
    loader = _Loader()
    pool = ModelPool(loader, max_models=2, max_bytes=10**9)
    a = pool.get("a", "cpu")
    pool.get("b", "cpu")
    assert pool.get("a", "cpu") is not a and pool.get("a", "cpu")[0] is a[0]
    assert loader.calls == [("a", "cpu"), ("b", "cpu")]  # both stayed loaded
    pool.get("c", "cpu")  # "b" is the least recently used
    assert pool.keys() == [("a", "cpu"), ("c", "cpu")]
    pool.get("b", "cpu")
    assert loader.calls[-1] == ("b", "cpu") and len(pool) == 2


def test_memory_budget_and_the_newest_model_stays():
    loader = _Loader(size=1000)  # 4000 bytes each
    one = model_bytes(torch.nn.Linear(1000, 1, bias=False))
    pool = ModelPool(loader, max_models=5, max_bytes=int(1.5 * one))
    pool.get("a", "cpu")
    pool.get("b", "cpu")
    assert pool.keys() == [("b", "cpu")]
    tiny = ModelPool(loader, max_models=5, max_bytes=1)
    tiny.get("x", "cpu")
    assert tiny.keys() == [("x", "cpu")]  # over budget alone, but just asked for


def test_one_load_per_key_under_concurrent_requests():
    loader = _Loader(delay=0.2)
    pool = ModelPool(loader, max_models=3)
    got = []
    threads = [threading.Thread(target=lambda: got.append(pool.get("a", "cpu"))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loader.calls == [("a", "cpu")]
    assert all(g[0] is got[0][0] for g in got)


def test_a_failed_load_keeps_nothing():
    pool = ModelPool(_Loader(), max_models=2)
    with pytest.raises(ModelLoadError):
        pool.get("missing", "cpu")
    assert len(pool) == 0
