"""A small least-recently-used pool of loaded models, shared safely between threads.

The app serves several browser sessions from one process; each may use another model. The
pool keeps the most recently used models within a count and a memory budget, loads each
(spec, device) once even when two sessions ask for it at the same moment, and never evicts
the model just asked for.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from lenskit.progress import Progress

__all__ = ["MEMORY_ENV", "ModelPool", "model_bytes"]

#: Environment variable: the pool's memory budget in GiB (default: half the machine's memory).
MEMORY_ENV = "LENSKIT_MODEL_MEMORY_GB"


def model_bytes(model: Any) -> int:
    """Bytes held by a model's parameters and buffers."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _default_budget() -> int:
    env = os.environ.get(MEMORY_ENV, "").strip()
    if env:
        try:
            return int(float(env) * 2**30)
        except ValueError:
            pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


class ModelPool:
    """LRU of ``(model, tokenizer)`` pairs keyed by ``(spec, device)``.

    Args:
        loader: ``loader(spec, device=..., progress=...) -> (model, tokenizer)``, by default
            :func:`lenskit.load_model`.
        max_models: most models kept at once.
        max_bytes: memory budget of the kept models' weights (default ``$LENSKIT_MODEL_MEMORY_GB``
            GiB, else half the machine's memory). The newest model is kept even when it alone
            is over the budget.
    """

    def __init__(
        self,
        loader: Callable[..., tuple[Any, Any]] | None = None,
        *,
        max_models: int = 3,
        max_bytes: int | None = None,
    ) -> None:
        if loader is None:
            from lenskit.model.load import load_model

            loader = load_model
        self._loader = loader
        self.max_models = max(1, int(max_models))
        self.max_bytes = _default_budget() if max_bytes is None else int(max_bytes)
        self._entries: OrderedDict[tuple[str, str], tuple[Any, Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, str], threading.Lock] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def keys(self) -> list[tuple[str, str]]:
        """The kept ``(spec, device)`` keys, least recently used first."""
        with self._lock:
            return list(self._entries)

    def get(self, spec: str, device: str, progress: Progress | None = None) -> tuple[Any, Any]:
        """The model and tokenizer for ``(spec, device)``, loading them on first use.

        Raises what the loader raises (:class:`~lenskit.errors.ModelLoadError`); a failed
        load keeps nothing.
        """
        key = (spec, device)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                model, tokenizer, _ = self._entries[key]
                return model, tokenizer
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:  # one load per key; a second asker waits for it and takes the result
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    model, tokenizer, _ = self._entries[key]
                    return model, tokenizer
            try:
                model, tokenizer = self._loader(spec, device=device, progress=progress)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self._entries[key] = (model, tokenizer, model_bytes(model))
                self._evict(keep=key)
            return model, tokenizer

    def _evict(self, keep: tuple[str, str]) -> None:
        def over() -> bool:
            total = sum(size for _, _, size in self._entries.values())
            return len(self._entries) > self.max_models or total > self.max_bytes

        for key in list(self._entries):
            if not over():
                break
            if key != keep:
                del self._entries[key]

    def clear(self) -> None:
        """Forget every kept model."""
        with self._lock:
            self._entries.clear()
