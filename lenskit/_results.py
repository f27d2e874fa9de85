"""What the result dataclasses (:class:`~lenskit.lens.LensResult`,
:class:`~lenskit.interventions.SweepResult`) share: field coercion and the dict/JSON round trip.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np

_R = TypeVar("_R", bound="ResultRecord")


class ResultRecord:
    """Mixin for a numpy-only result dataclass.

    Gives ``__post_init__`` validated array coercion (errors name the class and the field) and
    ``to_dict`` / ``to_json`` / ``from_dict`` / ``from_json``.
    """

    def _array(self, name: str, dtype: Any, ndim: int) -> np.ndarray:
        """Field ``name`` as an ``ndim``-dimensional array of ``dtype``."""
        return self._check_ndim(name, np.asarray(getattr(self, name), dtype=dtype), ndim)

    def _str_array(self, name: str, ndim: int) -> np.ndarray:
        """Field ``name`` as an ``ndim``-dimensional object array of its elements (strings)."""
        value = getattr(self, name)
        arr = np.empty(np.shape(value), dtype=object)
        arr[...] = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=object)
        return self._check_ndim(name, arr, ndim)

    def _check_ndim(self, name: str, arr: np.ndarray, ndim: int) -> np.ndarray:
        if arr.ndim != ndim:
            raise ValueError(
                f"{type(self).__name__}.{name} must have {ndim} dimensions, got shape {arr.shape}"
            )
        return arr

    def _check_shapes(self, expected: dict[str, tuple[int, ...]], sizes: str) -> None:
        """Raise ValueError naming the first field whose shape is not ``expected[field]``;
        ``sizes`` (e.g. ``"R=31, T=12"``) goes into the message."""
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(
                    f"{type(self).__name__}.{name} has shape {got}, expected {shape} ({sizes})"
                )

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists, not arrays) for JSON."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            out[f.name] = value.tolist() if isinstance(value, np.ndarray) else value
        return out

    def to_json(self, **kwargs: Any) -> str:
        """JSON text; NaN/inf are written as JSON's NaN/Infinity extensions."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls: type[_R], data: dict[str, Any]) -> _R:
        """The inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}.from_dict: unknown fields {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[_R], text: str) -> _R:
        """The inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
