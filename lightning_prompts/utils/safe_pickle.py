"""Read the pickled files benchmarks ship (Dassl's few-shot caches, CIFAR's python version) without
letting them run code.

``pickle.load`` calls whatever callable a file names, so a shared cache can run any command. These
readers resolve only an explicit allow-list of globals and refuse everything else *before* it is
imported or called; the objects they build are plain data.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from lightning_prompts.errors import DatasetError


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only ``allowed[(module, name)]`` (a replacement object or callable)."""

    def __init__(self, handle: BinaryIO, allowed: Mapping[tuple[str, str], Any], what: str, **kwargs: Any) -> None:
        super().__init__(handle, **kwargs)
        self.allowed, self.what = dict(allowed), what

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (``__builtin__.list``, ``copy_reg``) as pickle itself maps them; the base class would,
        # but its find_class is the one replaced here
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = self.allowed.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"{self.what} names {module}.{name}, which is not allowed in such a file")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.what} uses persistent ids, which such a file never has")


def restricted_load(path: Path, allowed: Mapping[tuple[str, str], Any], what: str, **kwargs: Any) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; a :class:`DatasetError` naming the file otherwise."""
    try:
        data = path.read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), allowed, what, **kwargs).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise DatasetError(f"{what} {path} cannot be read safely: {error}") from error


# -- CIFAR's python version: dicts of numpy arrays, lists and strings ----------------------------------
def _numpy_allowed() -> dict[tuple[str, str], Any]:
    """The globals numpy needs to rebuild plain (non-object) arrays, under numpy 1 and 2 module names."""
    import numpy as np

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> Any:
        if subtype is not np.ndarray:
            raise pickle.UnpicklingError("only plain numpy arrays are allowed")
        return np.ndarray.__new__(subtype, shape, dtype)

    def dtype(name: Any, align: bool = False, copy: bool = False) -> Any:
        result = np.dtype(name, align, copy)
        if result.hasobject:
            raise pickle.UnpicklingError("numpy arrays of Python objects are not allowed")
        return result

    def scalar(kind: Any, data: Any = None) -> Any:
        if not isinstance(kind, np.dtype) or kind.hasobject or not isinstance(data, bytes):
            raise pickle.UnpicklingError("only numpy scalars of plain dtypes are allowed")
        return np.frombuffer(data, dtype=kind)[0]

    def from_buffer(buffer: Any, kind: Any, shape: Any, order: Any) -> Any:  # protocol 5's arrays (numpy 2)
        if not isinstance(kind, np.dtype) or kind.hasobject or not isinstance(buffer, (bytes, bytearray)):
            raise pickle.UnpicklingError("only numpy arrays of plain dtypes are allowed")
        return np.frombuffer(buffer, dtype=kind).reshape(shape, order=order).copy()

    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(module, "_frombuffer")] = from_buffer
    return allowed


def load_numpy_pickle(path: Path, what: str) -> Any:
    """A pickle of plain containers holding numpy arrays and scalars (Point-BERT/IDPT's ModelNet caches and
    few-shot folds); anything else it names is refused before it is imported."""
    return restricted_load(path, _numpy_allowed(), what, encoding="latin1")


def load_cifar_pickle(path: Path) -> Any:
    """A CIFAR-10/100 python-version file (``train``, ``test``, ``meta``): dicts with lists, bytes,
    strings and uint8 arrays only."""
    return restricted_load(path, _numpy_allowed(), "CIFAR file", encoding="latin1")


# -- Dassl's few-shot caches: dicts of lists of Datum objects ------------------------------------------
class DasslDatum:
    """What a Dassl ``Datum`` holds (image path, label, domain, class name), as plain attributes."""

    FIELDS = ("_impath", "_label", "_domain", "_classname")

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not set(state) <= set(self.FIELDS):
            raise pickle.UnpicklingError(f"a Datum's state must be a dict of {self.FIELDS}, got {type(state).__name__}")
        for key, value in state.items():
            if not isinstance(value, (str, int)):
                raise pickle.UnpicklingError(f"Datum field {key} must be a string or an integer")
            setattr(self, key, value)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` for protocols 0 and 1, limited to a Datum built on ``object``."""
    if cls is not DasslDatum or base is not object or state is not None:
        raise pickle.UnpicklingError("only Dassl Datum objects are allowed")
    return object.__new__(DasslDatum)


def _new_object(cls: Any, *args: Any) -> Any:
    """``copyreg.__newobj__``, limited to a Datum."""
    if cls is not DasslDatum or args:
        raise pickle.UnpicklingError("only Dassl Datum objects are allowed")
    return object.__new__(DasslDatum)


DASSL_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("dassl.data.datasets.base_dataset", "Datum"): DasslDatum,
    ("dassl.data.datasets", "Datum"): DasslDatum,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _new_object,
    ("builtins", "object"): object,
}


def load_dassl_fewshot_cache(path: Path) -> Any:
    """Dassl's ``split_fewshot/shot_K-seed_S.pkl``: ``{split: [Datum, …]}`` and nothing else."""
    content = restricted_load(path, DASSL_ALLOWED, "Few-shot cache")
    if not isinstance(content, dict) or not all(
        isinstance(items, list) and all(isinstance(item, DasslDatum) for item in items) for items in content.values()
    ):
        raise DatasetError(f"Few-shot cache {path} is not a {{split: [Datum, …]}} mapping.")
    return content


# -- PyG's raw dataset files: Planetoid's pickled scipy matrices, numpy arrays and adjacency dicts -------------
class SparseMatrixState:
    """A pickled scipy sparse matrix as its arrays; :meth:`todense` and :meth:`tocsr` rebuild it with scipy from
    those arrays alone (the file never chooses what is called). One subclass per format (``kind``)."""

    kind = ""
    ARRAYS = {"csr": ("data", "indices", "indptr"), "csc": ("data", "indices", "indptr"), "coo": ("data", "row", "col")}

    def __setstate__(self, state: Any) -> None:
        import numpy as np

        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"a sparse matrix's state must be a dict, got {type(state).__name__}")
        arrays = self.ARRAYS[self.kind]
        if not all(isinstance(state.get(name), np.ndarray) for name in arrays):
            raise pickle.UnpicklingError(f"a {self.kind} matrix needs the arrays {arrays}")
        shape = state.get("_shape")
        if not (isinstance(shape, tuple) and len(shape) == 2 and all(isinstance(n, int) for n in shape)):
            raise pickle.UnpicklingError("a sparse matrix's shape must be two integers")
        self.arrays, self.shape = tuple(state[name] for name in arrays), shape

    def tocsr(self) -> Any:
        import scipy.sparse as sparse

        if self.kind == "coo":
            data, row, col = self.arrays
            return sparse.coo_matrix((data, (row, col)), shape=self.shape).tocsr()
        build = sparse.csr_matrix if self.kind == "csr" else sparse.csc_matrix
        return build(self.arrays, shape=self.shape).tocsr()

    def todense(self) -> Any:
        return self.tocsr().todense()


class CSRMatrixState(SparseMatrixState):
    kind = "csr"


class CSCMatrixState(SparseMatrixState):
    kind = "csc"


class COOMatrixState(SparseMatrixState):
    kind = "coo"


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (text to latin-1 bytes), nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError("only latin-1 text may be encoded to bytes")
    return text.encode("latin1")


def _graph_data_allowed() -> dict[tuple[str, str], Any]:
    """Plain containers, numpy arrays and scipy sparse matrices (as :class:`SparseMatrixState`)."""
    import builtins
    import collections

    def reconstructor(cls: Any, base: Any, state: Any) -> Any:  # protocols 0 and 1
        if (
            not (isinstance(cls, type) and issubclass(cls, SparseMatrixState))
            or base is not object
            or state is not None
        ):
            raise pickle.UnpicklingError("only sparse matrices may be reconstructed")
        return cls()

    allowed = {**_numpy_allowed(), ("copyreg", "_reconstructor"): reconstructor, ("_codecs", "encode"): _encode}
    for cls in (CSRMatrixState, CSCMatrixState, COOMatrixState):
        for module in ("scipy.sparse", f"scipy.sparse.{cls.kind}", f"scipy.sparse._{cls.kind}"):
            allowed[(module, f"{cls.kind}_matrix")] = cls
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    for name in ("list", "dict", "set", "tuple", "int", "float", "str", "bytes", "frozenset", "object"):
        allowed[("builtins", name)] = getattr(builtins, name)
    return allowed


def load_graph_data_pickle(handle: BinaryIO, what: str, **kwargs: Any) -> Any:
    """Unpickle an open file of plain containers, numpy arrays and scipy sparse matrices (Planetoid's raw
    ``ind.<name>.*`` files); anything else it names is refused before it is imported."""
    return RestrictedUnpickler(handle, _graph_data_allowed(), what, **kwargs).load()
