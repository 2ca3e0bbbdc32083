"""A pickle reader that never imports or calls anything the file names.

For official nequip files (``models/official.py``): tensors and parameters are rebuilt from
their storages (dropping any hooks or extra state the file attaches); dtypes,
``OrderedDict`` and sets are real; every other class or function becomes an inert
:class:`Placeholder` that only records its arguments and state. Small on purpose, so it
can be audited on its own: nothing here resolves a name from the file to code.
"""

from __future__ import annotations

import io
import pickle
import types
import zipfile
from collections import OrderedDict
from typing import Any

import torch


class UnpicklingRefused(ValueError):
    """The pickle holds an object this reader will not rebuild; the message says which."""


class Placeholder:
    """Inert stand-in for a class or function named in a pickle: records, never runs."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = super().__new__(cls)
        obj.args, obj.state, obj.items = args, None, {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for value in values:
            self.append(value)


def rebuild_tensor(
    storage: torch.storage.TypedStorage, offset: int, size: Any, stride: Any, *_: Any
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without the hooks and metadata the file names."""
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def rebuild_parameter(data: torch.Tensor, requires_grad: bool, *_: Any) -> torch.nn.Parameter:
    """``torch._utils._rebuild_parameter[_with_state]`` without hooks and extra state."""
    return torch.nn.Parameter(data, bool(requires_grad))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that never imports or calls anything named in the file.

    Tensors and parameters are rebuilt from their storages (dropping any hooks or extra
    state the file attaches); dtypes, ``OrderedDict`` and sets are real; every other class
    or function becomes an inert :class:`Placeholder` that only records its arguments and
    state.
    """

    _SAFE = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.placeholders: dict[str, type[Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return self._SAFE[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        qualname = f"{module}.{name}"
        if qualname not in self.placeholders:
            self.placeholders[qualname] = type(name, (Placeholder,), {"qualname": qualname})
        return self.placeholders[qualname]


# what ``torch.load(pickle_module=...)`` needs; torch itself resolves the storage types
RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=RestrictedUnpickler, load=pickle.load, __name__="restricted_pickle"
)
STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}  # fmt: skip


class PackageUnpickler(RestrictedUnpickler):
    """Restricted unpickler for a ``torch.package`` pickle, reading storages from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in STORAGE_DTYPES:
            return STORAGE_DTYPES[name]
        return super().find_class(module, name)

    def persistent_load(self, saved_id: Any) -> torch.storage.TypedStorage:
        kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise UnpicklingRefused(
                f"the packaged model holds a {kind!r} object that only its own code can "
                "rebuild (TorchScript or a custom __reduce_package__)"
            )
        dtype, key, _location, numel = saved_id[1:]
        if not isinstance(dtype, torch.dtype):
            raise UnpicklingRefused(f"storage {key} has an unknown type")
        raw = bytearray(self.archive.read(f"{self.root}/.data/{key}.storage"))
        flat = (
            torch.frombuffer(raw, dtype=dtype, count=numel)
            if numel
            else torch.empty(0, dtype=dtype)
        )
        return torch.storage.TypedStorage(
            wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True
        )
