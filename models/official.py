"""Import models trained with the official ``nequip`` 0.19.x / ``nequip-allegro`` 0.8.x.

Two file formats are read, and neither is read by running code stored in the file:

* the Lightning checkpoint (``.ckpt``) that ``nequip-train`` writes. It is loaded by
  ``torch.load`` with the restricted unpickler described below, so tensors and plain
  containers come back and nothing else is constructed. The resolved model config is
  ``hyper_parameters["model"]``, the weights are
  ``state_dict["model.sole_model.model.func.*"]``, and when the run used
  ``nequip.train.EMALightningModule`` the exponential-moving-average weights
  (``state_dict["ema.ema_weight_<i>"]``, one per model parameter in parameter order) are
  taken instead of the raw ones, as the official code does for inference.
* the package (``.nequip.zip``) that ``nequip-package build`` writes: a ``torch.package``
  zip holding ``<root>/model/config.yaml`` (the training config), ``package_metadata.txt``
  (versions, type names), ``eager_model.pkl`` (the pickled model, EMA weights already in
  place) and the tensor storages ``<root>/.data/<key>.storage``. Instead of
  ``torch.package.PackageImporter`` (which imports and runs the Python source shipped
  inside the archive), the zip is opened with :mod:`zipfile`, the YAML files with
  ``yaml.safe_load``, and the pickle with the restricted unpickler; the tree of module
  placeholders it returns gives the weights, and its module classes are checked against
  those of an official Allegro model.

The restricted unpickler rebuilds tensors from their storages and turns every other
class or function a pickle names into an inert placeholder that only records its
arguments and state: nothing named in the file is imported or called. Configs must then
hold plain values only.

Supported official options (the model must be ``allegro.model.AllegroModel`` or an
equivalent ``allegro.model.allegro_models.FullAllegroModel``, optionally wrapped in
``nequip.model.modify``):

* ``type_names`` (chemical symbols, or names mapped to elements by the data transform
  ``ChemicalSpeciesToAtomTypeMapper`` or the ZBL ``chemical_species``), ``r_max``,
  ``per_edge_type_cutoff``, ``model_dtype`` float32/float64, ``seed``, ``compile_mode``,
  ``do_derivatives`` (forces are always computed here);
* ``l_max``, ``parity``; for ``FullAllegroModel`` only the ``irreps_edge_sh`` and
  ``tensor_track_allowed_irreps`` that ``AllegroModel`` itself would pass;
* ``radial_chemical_embed``: ``allegro.nn.TwoBodyBesselScalarEmbed`` with any
  ``num_bessels``, ``bessel_trainable``, ``polynomial_cutoff_p``; ``radial_chemical_embed_dim``;
* ``num_layers``, ``num_scalar_features``, ``num_tensor_features``,
  ``tp_path_channel_coupling`` on/off, all ``*_mlp_hidden_layers_depth/width``;
  ``*_mlp_nonlinearity`` silu/mish/gelu/tanh/None (deep linear MLPs included);
* ``avg_num_neighbors`` (float or per type), ``per_type_energy_scales/shifts`` (float or
  per type, trainable or not: the values are read from the weights);
* ``pair_potential``: ``nequip.nn.pair_potential.ZBL`` with ``units: metal`` and
  ``polynomial_cutoff_p: 6``;
* ``weight_individual_irreps: true``, ``forward_normalize: true`` (the defaults);
* model modifiers that leave the energy unchanged or only set values stored in the weights:
  ``modify_PerTypeScaleShift``, ``enable_ForceStressOutput``, ``disable_ForceStressOutput``,
  ``enable_TritonContracter``, ``enable_CuEquivarianceContracter``.

Refused by name (never approximated): any other model ``_target_`` (``NequIPGNNModel``,
``ModelFromCheckpoint``/``ModelFromPackage`` fine-tuning chains, ...), several models in
one file, ``TwoBodySplineScalarEmbed`` or any other radial embedding, pair potentials other
than ZBL (``LennardJones``, ``SimpleLennardJones``, ...), ZBL ``units`` other than
``metal`` or ``polynomial_cutoff_p`` other than 6, ``forward_normalize: false``,
``weight_individual_irreps: false``, nonlinearities ssp/sigmoid/softplus, MLP biases or
parametrizations (spectral/weight norm, orthogonal), a ``FullAllegroModel`` irreps layout
that ``AllegroModel`` would not build, type names that do not resolve to distinct
elements, other model modifiers, files written by nequip other than 0.19.x or
nequip-allegro other than 0.8.x, and weights that have no counterpart here.
"""

from __future__ import annotations

import io
import pickle
import re
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from ase.data import atomic_numbers as _ATOMIC_NUMBERS

from .allegro import AllegroModel
from .checkpoint import file_sha256, refuse_overwriting, save_checkpoint
from .config import ConfigError, ModelConfig

SUPPORTED_VERSIONS = {"nequip": "0.19.", "allegro": "0.8."}

_ALLEGRO_TARGETS = ("allegro.model.AllegroModel", "allegro.model.allegro_models.AllegroModel")
_FULL_TARGETS = ("allegro.model.FullAllegroModel", "allegro.model.allegro_models.FullAllegroModel")
_MODIFY_TARGETS = ("nequip.model.modify", "nequip.model.modify_utils.modify")
_BESSEL_TARGETS = (
    "allegro.nn.TwoBodyBesselScalarEmbed",
    "allegro.nn.scalarembed.TwoBodyBesselScalarEmbed",
)
_ZBL_TARGETS = ("nequip.nn.pair_potential.ZBL", "nequip.nn.ZBL")
_TYPE_MAPPER = "ChemicalSpeciesToAtomTypeMapper"
_HARMLESS_MODIFIERS = (
    "modify_PerTypeScaleShift",
    "enable_ForceStressOutput",
    "disable_ForceStressOutput",
    "enable_TritonContracter",
    "enable_CuEquivarianceContracter",
)
_NONLINEARITIES = {None: None, "None": None, "null": None, "silu": "silu", "mish": "mish",
                   "gelu": "gelu", "tanh": "tanh"}  # fmt: skip
# official defaults of FullAllegroModel / TwoBodyBesselScalarEmbed that have an equivalent here
_DEFAULTS: dict[str, Any] = {
    "radial_chemical_embed_dim": None,
    "per_edge_type_cutoff": None,
    "scalar_embed_mlp_hidden_layers_depth": 1,
    "scalar_embed_mlp_hidden_layers_width": 64,
    "scalar_embed_mlp_nonlinearity": "silu",
    "num_layers": 2,
    "num_scalar_features": 64,
    "num_tensor_features": 16,
    "allegro_mlp_hidden_layers_depth": 1,
    "allegro_mlp_hidden_layers_width": 64,
    "allegro_mlp_nonlinearity": "silu",
    "tp_path_channel_coupling": True,
    "readout_mlp_hidden_layers_depth": 1,
    "readout_mlp_hidden_layers_width": 32,
    "readout_mlp_nonlinearity": "silu",
}
_BESSEL_DEFAULTS = {"num_bessels": 8, "bessel_trainable": False, "polynomial_cutoff_p": 6}
# options that do not change the energy model
_IGNORED = ("_target_", "seed", "compile_mode", "do_derivatives", "type_names", "model_dtype",
            "per_type_energy_scales_trainable", "per_type_energy_shifts_trainable")  # fmt: skip
_KNOWN = set(_DEFAULTS) | set(_IGNORED) | {
    "r_max", "l_max", "parity", "irreps_edge_sh", "tensor_track_allowed_irreps",
    "radial_chemical_embed", "avg_num_neighbors", "per_type_energy_scales",
    "per_type_energy_shifts", "pair_potential", "weight_individual_irreps", "forward_normalize",
}  # fmt: skip

# official weight name (below ``...model.func.``) -> ours; MLP layers are renumbered in order
_MLP_PREFIXES = (
    ("radial_chemical_embed.type_embed.basis_linear.mlp.", "basis_linear"),
    ("scalar_embed_mlp.mlp_module.mlp.", "scalar_embed_mlp"),
    ("tensor_embed.env_embed_linear.mlp.", "tensor_embed_linear"),
    ("allegro.first_layer_env_embed_projection.mlp.", "first_layer_projection"),
    ("edge_readout.mlp_module.mlp.", "readout"),
)
_MLP_LAYER = re.compile(r"(?:(\d+)\.weight|weights\.(\d+))")
_LATENT = re.compile(r"allegro\.latents\.(\d+)\.mlp\.(.+)")
_TP_WEIGHTS = re.compile(r"allegro\.tps\.(\d+)\.weights")
_MODEL_KEY = re.compile(r"(?:model\.)?([^.]+)\.model\.func\.(.+)")
_DERIVED = {  # official buffers recomputed from the config, and checked against it
    "edge_norm._rmax_recip",
    "per_type_energy_scale_shift.scales",
    "per_type_energy_scale_shift.shifts",
    "pair_potential.atomic_numbers",
    "pair_potential._qqr2exesquare",
}
_W3J = re.compile(r"allegro\.tps\.\d+\.w3j")


class OfficialImportError(ValueError):
    """An official file that cannot be imported exactly, or cannot be read at all."""


# --------------------------------------------------------------------------- public API


def import_official(path: str | Path) -> tuple[AllegroModel, dict[str, Any]]:
    """Read an official ``.ckpt`` or ``.nequip.zip`` and rebuild the model here.

    Returns the model (in the official ``model_dtype``, evaluation mode) and a provenance
    dict: ``{"imported_from": {"path", "sha256", "format", "versions", "model_target",
    "weights", ...}}``. Raises :class:`OfficialImportError` naming the unsupported option
    or the defect of the file.
    """
    path = Path(path).resolve()
    try:
        if not path.is_file():
            raise OfficialImportError("no such file")
        official = _read_package(path) if _is_package(path) else _read_checkpoint(path)
        _check_versions(official["versions"])
        model = model_from_official(
            official["model_config"], official["state_dict"], official["data_config"]
        )
    except OfficialImportError as error:
        raise OfficialImportError(f"{path}: {error}") from None
    provenance = {
        "imported_from": {
            "path": str(path),
            "sha256": file_sha256(path),
            "format": official["format"],
            "versions": official["versions"],
            "model_target": official["model_config"].get("_target_"),
            **official["extra"],
        }
    }
    return model, provenance


def save(source: str | Path, output: str | Path) -> dict[str, Any]:
    """Import the official file ``source`` and write it as our checkpoint ``output``.

    Returns the provenance stored in the checkpoint.
    """
    refuse_overwriting(output, source)
    model, provenance = import_official(source)
    save_checkpoint(output, model, provenance=provenance)
    return provenance


def model_from_official(
    model_config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    data_config: dict[str, Any] | None = None,
) -> AllegroModel:
    """Rebuild an official model from its resolved config and its weights.

    model_config: the official model config (``_target_`` AllegroModel, FullAllegroModel
        or ``nequip.model.modify`` around one of them), as in the training YAML.
    state_dict: the official weights, named as in ``GraphModel.state_dict()``
        (``model.func.*``), optionally under ``sole_model.`` / ``model.sole_model.``.
    data_config: the official ``data`` config, searched for the type-name -> element map.
    """
    model_config = _unwrap_modifiers(model_config)
    _irreps_layout(model_config)  # refuses other model classes before looking at weights
    weights = _strip_prefix(state_dict)
    config = _translate_config(model_config, weights, data_config or {})
    model = AllegroModel(config)
    _load_weights(model, weights)
    _check_derived(model, weights)
    return model.eval()


# --------------------------------------------------------------------------- reading files


def _is_package(path: Path) -> bool:
    if path.name.endswith(".nequip.zip"):
        return True
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/model/package_metadata.txt") for name in archive.namelist())


def _check_versions(versions: dict[str, Any]) -> None:
    for package, prefix in SUPPORTED_VERSIONS.items():
        version = str(versions.get(package))
        if not version.startswith(prefix):
            raise OfficialImportError(
                f"written with {package} {version}; only {package} {prefix}x files are supported"
            )


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The model config, weights (EMA when present) and versions of a Lightning checkpoint."""
    if not zipfile.is_zipfile(path):
        raise OfficialImportError("not a readable nequip checkpoint or package (not a zip archive)")
    try:
        checkpoint = torch.load(
            path, map_location="cpu", pickle_module=_RESTRICTED_PICKLE, weights_only=False
        )
    except Exception as error:  # torch raises RuntimeError/EOFError/... for damaged files
        detail = str(error).strip().splitlines()
        raise OfficialImportError(
            f"not a readable nequip checkpoint ({type(error).__name__}: "
            f"{detail[0] if detail else 'no detail'})"
        ) from None
    try:
        hyper = checkpoint["hyper_parameters"]
        model_config = dict(_plain(hyper["model"], "hyper_parameters.model"))
        info = hyper["info_dict"]
        versions = dict(_plain(info["versions"], "info_dict.versions"))
        data_config = dict(_plain(info.get("data") or {}, "info_dict.data"))
        state = checkpoint["state_dict"]
    except (KeyError, TypeError, AttributeError) as error:
        raise OfficialImportError(
            f"not a nequip training checkpoint (no hyper_parameters.model, "
            f"hyper_parameters.info_dict.versions or state_dict: {error!r})"
        ) from None
    weights = OrderedDict((k, v) for k, v in state.items() if k.startswith("model."))
    extra: dict[str, Any] = {
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "weights": "raw",
    }
    _map_weights(_strip_prefix(weights))  # names unknown weights before the EMA lines up
    ema_keys = [k for k in state if re.fullmatch(r"ema\.ema_weight_\d+", k)]
    if ema_keys:
        _apply_ema(weights, state, len(ema_keys), _unwrap_modifiers(model_config))
        extra["weights"] = "ema"
    return {
        "format": "nequip-lightning-checkpoint",
        "model_config": model_config,
        "data_config": data_config,
        "state_dict": weights,
        "versions": versions,
        "extra": extra,
    }


def _plain(value: Any, where: str) -> Any:
    """``value`` if it holds only YAML-like data; refuses objects the pickle named."""
    if isinstance(value, dict):
        for key, item in value.items():
            _plain(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _plain(item, f"{where}[{index}]")
    elif not (value is None or isinstance(value, str | int | float | bool)):
        kind = getattr(value, "qualname", type(value).__name__)
        raise OfficialImportError(f"{where} holds a {kind} object where plain values belong")
    return value


def _is_parameter(name: str, model_config: dict[str, Any]) -> bool:
    """Whether the official weight ``name`` (below ``model.func.``) is a ``Parameter``."""
    if re.search(r"\.mlp\.(\d+\.weight|weights\.\d+)$", name) or re.search(
        r"(center_embed|neighbor_embed)\.weight$|allegro\.tps\.\d+\.weights$", name
    ):
        return True
    embed = model_config.get("radial_chemical_embed") or {}
    flags = {
        "radial_chemical_embed.bessel_encode.bessel_weights": embed.get("bessel_trainable", False),
        "per_type_energy_scale_shift.scales": model_config.get(
            "per_type_energy_scales_trainable", False
        ),
        "per_type_energy_scale_shift.shifts": model_config.get(
            "per_type_energy_shifts_trainable", False
        ),
    }
    return bool(flags.get(name, False))


def _apply_ema(
    weights: OrderedDict[str, torch.Tensor],
    state: dict[str, Any],
    n_ema: int,
    model_config: dict[str, Any],
) -> None:
    """Replace the raw parameters in ``weights`` by the EMA ones, in parameter order."""
    extra_state = state.get("ema._extra_state") or {}
    if not isinstance(extra_state, dict) or not extra_state.get("is_holding_ema_weights", True):
        raise OfficialImportError(
            "the EMA weights were swapped out when the checkpoint was written "
            "(is_holding_ema_weights=False); the checkpoint is corrupted"
        )
    parameters = []
    for key in weights:
        match = _MODEL_KEY.fullmatch(key[len("model.") :])
        if match and _is_parameter(match[2], model_config):
            parameters.append(key)
    ema = [state[f"ema.ema_weight_{i}"] for i in range(n_ema)]
    if not all(isinstance(value, torch.Tensor) for value in ema):
        raise OfficialImportError("the EMA weights are not all tensors")
    if len(parameters) != n_ema or any(
        weights[k].shape != e.shape for k, e in zip(parameters, ema, strict=True)
    ):
        raise OfficialImportError(
            f"its {n_ema} EMA weights do not line up with the model's {len(parameters)} parameters"
        )
    for key, value in zip(parameters, ema, strict=True):
        weights[key] = value


class _Placeholder:
    """Inert stand-in for a class or function named in a pickle: records, never runs."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
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


def _rebuild_tensor(
    storage: torch.storage.TypedStorage, offset: int, size: Any, stride: Any, *_: Any
) -> torch.Tensor:
    """``torch._utils._rebuild_tensor_v2`` without the hooks and metadata the file names."""
    return torch._utils._rebuild_tensor(storage, offset, size, stride)


def _rebuild_parameter(data: torch.Tensor, requires_grad: bool, *_: Any) -> torch.nn.Parameter:
    """``torch._utils._rebuild_parameter[_with_state]`` without hooks and extra state."""
    return torch.nn.Parameter(data, bool(requires_grad))


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that never imports or calls anything named in the file.

    Tensors and parameters are rebuilt from their storages (dropping any hooks or extra
    state the file attaches); dtypes, ``OrderedDict`` and sets are real; every other class
    or function becomes an inert :class:`_Placeholder` that only records its arguments and
    state.
    """

    _SAFE = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.placeholders: dict[str, type[_Placeholder]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._SAFE:
            return self._SAFE[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        qualname = f"{module}.{name}"
        if qualname not in self.placeholders:
            self.placeholders[qualname] = type(name, (_Placeholder,), {"qualname": qualname})
        return self.placeholders[qualname]


# what ``torch.load(pickle_module=...)`` needs; torch itself resolves the storage types
_RESTRICTED_PICKLE = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="restricted_pickle"
)
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}  # fmt: skip


class _PackageUnpickler(_RestrictedUnpickler):
    """Restricted unpickler for a ``torch.package`` pickle, reading storages from the zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str) -> None:
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        return super().find_class(module, name)

    def persistent_load(self, saved_id: Any) -> torch.storage.TypedStorage:
        kind = saved_id[0].decode() if isinstance(saved_id[0], bytes) else saved_id[0]
        if kind != "storage":
            raise OfficialImportError(
                f"the packaged model holds a {kind!r} object that only its own code can "
                "rebuild (TorchScript or a custom __reduce_package__)"
            )
        dtype, key, _location, numel = saved_id[1:]
        if not isinstance(dtype, torch.dtype):
            raise OfficialImportError(f"storage {key} has an unknown type")
        raw = bytearray(self.archive.read(f"{self.root}/.data/{key}.storage"))
        flat = (
            torch.frombuffer(raw, dtype=dtype, count=numel)
            if numel
            else torch.empty(0, dtype=dtype)
        )
        return torch.storage.TypedStorage(
            wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True
        )


def _module_weights(module: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every persistent parameter and buffer, in ``state_dict``
    order, of a placeholder ``torch.nn.Module`` tree."""
    state = module.state if isinstance(module, _Placeholder) else None
    if not isinstance(state, dict) or "_modules" not in state:
        raise OfficialImportError(f"the packaged model at {prefix or 'its root'} is not a module")
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if value is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise OfficialImportError(f"packaged weight {prefix}{name} is not a tensor")
            yield prefix + name, value
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            yield from _module_weights(child, f"{prefix}{name}.")


# module classes an exactly importable packaged Allegro model may contain
_PACKAGED_MODULES = {
    "torch.nn.modules.container.ModuleDict", "torch.nn.modules.container.ModuleList",
    "torch.nn.modules.container.Sequential", "torch.nn.modules.sparse.Embedding",
    "torch.nn.modules.activation.SiLU", "torch.nn.modules.activation.Mish",
    "torch.nn.modules.activation.GELU", "torch.nn.modules.activation.Tanh",
    "torch.nn.modules.linear.Identity", "nequip.nn.graph_model.GraphModel",
    "nequip.nn.compile.CompileGraphModel", "nequip.nn.grad_output.ForceStressOutput",
    "nequip.nn._graph_mixin.SequentialGraphNetwork",
    "nequip.nn.embedding._edge.EdgeLengthNormalizer",
    "nequip.nn.embedding._edge.BesselEdgeLengthEncoding",
    "nequip.nn.embedding._edge.AddRadialCutoffToData",
    "nequip.nn.embedding.cutoffs.PolynomialCutoff", "nequip.nn.mlp.ScalarMLP",
    "nequip.nn.mlp.ScalarMLPFunction", "nequip.nn.mlp.ScalarLinearLayer",
    "nequip.nn.mlp.DeepLinearMLP", "nequip.nn.norm.AvgNumNeighborsNorm",
    "nequip.nn.atomwise.PerTypeScaleShift", "nequip.nn.atomwise.AtomwiseReduce",
    "nequip.nn.pair_potential.ZBL", "nequip.nn.pair_potential._ZBL",
    "allegro.nn._edgeembed.ProductTypeEmbedding",
    "allegro.nn.tensorembed.TwoBodySphericalHarmonicTensorEmbed",
    "allegro.nn._strided._channels.MakeWeightedChannels",
    "allegro.nn._strided._contract.Contracter", "allegro.nn._allegro.Allegro_Module",
    "allegro.nn.edgewise.EdgewiseReduce", "e3nn.o3._spherical_harmonics.SphericalHarmonics",
}  # fmt: skip


def _module_classes(module: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(module path, class)`` for every module of a placeholder module tree."""
    yield prefix or "<root>", module.qualname
    for name, child in (module.state.get("_modules") or {}).items():
        if isinstance(child, _Placeholder) and isinstance(child.state, dict):
            yield from _module_classes(child, f"{prefix}{name}.")


def _read_package(path: Path) -> dict[str, Any]:
    """The model config, weights and versions of a ``nequip-package`` archive."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise OfficialImportError(f"not a readable .nequip.zip package ({error})") from None
    with archive:
        names = set(archive.namelist())
        roots = [
            n[: -len("/model/package_metadata.txt")]
            for n in names
            if n.endswith("/model/package_metadata.txt")
        ]
        if len(roots) != 1:
            raise OfficialImportError(
                "not a nequip package (no single model/package_metadata.txt inside)"
            )
        root = roots[0]
        try:
            metadata = yaml.safe_load(archive.read(f"{root}/model/package_metadata.txt"))
            config = yaml.safe_load(archive.read(f"{root}/model/config.yaml"))
            byteorder = archive.read(f"{root}/byteorder").decode().strip()
            pickled = archive.read(f"{root}/model/eager_model.pkl")
            if byteorder != "little":
                raise OfficialImportError(f"{byteorder}-endian storages are not supported")
            root_module = _PackageUnpickler(pickled, archive, root).load()
            weights = OrderedDict(_module_weights(root_module))
            classes = list(_module_classes(root_module))
            model_config = dict(config["training_module"]["model"])
            versions = dict(metadata["versions"])
            type_names = [metadata["atom_types"][i] for i in range(len(metadata["atom_types"]))]
        except OfficialImportError:
            raise
        except Exception as error:  # any defect of a damaged archive
            raise OfficialImportError(
                f"damaged or incomplete nequip package ({type(error).__name__}: {error})"
            ) from None
    for where, qualname in classes:
        if qualname not in _PACKAGED_MODULES:
            raise OfficialImportError(
                f"the packaged model contains module {qualname} (at {where}), "
                "which has no exact counterpart here"
            )
    inner = _unwrap_modifiers(model_config)
    if list(inner.get("type_names") or []) != type_names:
        raise OfficialImportError(
            f"package metadata type names {type_names} differ from the config's "
            f"{inner.get('type_names')}"
        )
    return {
        "format": "nequip-package",
        "model_config": model_config,
        "data_config": dict(config.get("data") or {}),
        "state_dict": weights,
        "versions": versions,
        "extra": {
            "weights": "packaged (EMA when the run used EMA)",
            "package_version_id": metadata.get("package_version_id"),
        },
    }


# --------------------------------------------------------------------------- translation


def _refuse(option: str, value: Any, why: str) -> OfficialImportError:
    return OfficialImportError(f"unsupported official option {option}={value!r}: {why}")


def _unwrap_modifiers(model_config: dict[str, Any]) -> dict[str, Any]:
    """The inner model config of ``nequip.model.modify``, refusing math-changing modifiers."""
    target = model_config.get("_target_")
    if target not in _MODIFY_TARGETS:
        return model_config
    modifiers = model_config.get("modifiers") or []
    if isinstance(modifiers, dict):
        if set(modifiers) - {"sole_model"}:
            raise _refuse("modifiers", sorted(modifiers), "only a single model is supported")
        modifiers = modifiers.get("sole_model") or []
    for modifier in modifiers:
        name = modifier.get("modifier") if isinstance(modifier, dict) else modifier
        if name not in _HARMLESS_MODIFIERS:
            raise _refuse(
                "modifier", name, f"only {list(_HARMLESS_MODIFIERS)} are known to keep the energy"
            )
    inner = model_config.get("model")
    if not isinstance(inner, dict):
        raise _refuse("model", inner, "nequip.model.modify must wrap a model config")
    return _unwrap_modifiers(dict(inner))


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official weights below ``model.func.``; refuses files holding several models."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    models = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise OfficialImportError(f"weight {key} is not a tensor")
        if key.startswith("func."):
            out[key[len("func.") :]] = value
            continue
        if key.startswith("model.func."):
            out[key[len("model.func.") :]] = value
            continue
        match = _MODEL_KEY.fullmatch(key)
        if match:
            models.add(match[1])
            out[match[2]] = value
    if len(models) > 1:
        raise _refuse("model", sorted(models), "files holding several models are not supported")
    if not out:
        raise OfficialImportError("the file holds no model weights")
    return out


def _element_map(
    type_names: list[str], model_config: dict[str, Any], data_config: dict[str, Any]
) -> list[str]:
    """Chemical symbol of each official type, from the ZBL and type-mapper settings."""
    candidates: list[set[str]] = [set() for _ in type_names]
    pair = model_config.get("pair_potential") or {}
    species = pair.get("chemical_species") if isinstance(pair, dict) else None
    if species is not None:
        if len(species) != len(type_names):
            raise _refuse("pair_potential.chemical_species", species, "one per type expected")
        for found, symbol in zip(candidates, species, strict=True):
            found.add(symbol)
    for mapping in _type_maps(data_config):
        for index, name in enumerate(type_names):
            symbols = [s for s, t in mapping.items() if t == name]
            if len(symbols) > 1:
                raise _refuse(
                    "chemical_species_to_atom_type_map",
                    mapping,
                    f"type {name!r} stands for several elements {symbols}; one species here "
                    "is one element",
                )
            candidates[index].update(symbols)
    elements = []
    for name, found in zip(type_names, candidates, strict=True):
        if not found and name in _ATOMIC_NUMBERS:
            found = {name}
        if len(found) != 1:
            raise _refuse(
                "type_names",
                type_names,
                f"type {name!r} "
                + (
                    "maps to several elements " + str(sorted(found))
                    if found
                    else "is not a chemical symbol and the file does not say which element it is"
                ),
            )
        (symbol,) = found
        if symbol not in _ATOMIC_NUMBERS or _ATOMIC_NUMBERS[symbol] < 1:
            raise _refuse("type_names", type_names, f"{symbol!r} is not a chemical symbol")
        elements.append(symbol)
    if len(set(elements)) != len(elements):
        raise _refuse(
            "type_names",
            type_names,
            f"types map to repeated elements {elements}; one species here is one element",
        )
    return elements


def _type_maps(config: Any) -> Iterator[dict[str, str]]:
    """Every ``ChemicalSpeciesToAtomTypeMapper`` map (symbol -> type name) in a config."""
    if isinstance(config, dict):
        if str(config.get("_target_", "")).endswith(_TYPE_MAPPER):
            mapping = config.get("chemical_species_to_atom_type_map")
            names = config.get("model_type_names") or []
            yield dict(mapping) if mapping is not None else {n: n for n in names}
        for value in config.values():
            yield from _type_maps(value)
    elif isinstance(config, list):
        for value in config:
            yield from _type_maps(value)


def _per_type(value: Any, option: str, rename: dict[str, str]) -> Any:
    """A float or per-type dict, with type names replaced by chemical symbols."""
    if isinstance(value, dict):
        if set(value) != set(rename):
            raise _refuse(option, value, f"must name exactly the types {list(rename)}")
        return {rename[k]: float(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _refuse(option, value, "expected a number or a dict per type")


def _irreps_layout(model_config: dict[str, Any]) -> tuple[int, bool]:
    """``(l_max, parity)`` of AllegroModel, or of a FullAllegroModel that matches it."""
    from e3nn import o3

    target = model_config.get("_target_")
    if target in _ALLEGRO_TARGETS:
        if "l_max" not in model_config:
            raise _refuse("l_max", None, "AllegroModel needs l_max")
        return int(model_config["l_max"]), bool(model_config.get("parity", True))
    if target not in _FULL_TARGETS:
        raise _refuse(
            "_target_", target, "only allegro.model.AllegroModel and FullAllegroModel are supported"
        )
    sh_value, allowed_value = (
        model_config.get("irreps_edge_sh"),
        model_config.get("tensor_track_allowed_irreps"),
    )
    try:
        sh = (
            o3.Irreps.spherical_harmonics(sh_value)
            if isinstance(sh_value, int)
            else o3.Irreps(sh_value)
        )
        allowed = o3.Irreps(allowed_value)
    except (ValueError, TypeError, AssertionError) as error:
        raise _refuse("irreps_edge_sh", sh_value, f"unreadable irreps ({error})") from None
    l_max = sh.lmax
    if sh != o3.Irreps.spherical_harmonics(l_max, p=-1):
        raise _refuse(
            "irreps_edge_sh", sh_value, "only spherical harmonics with p=-1 (1o, 2e, ...)"
        )
    for parity in (True, False):
        expected = (
            o3.Irreps([(1, (deg, p)) for deg in range(l_max + 1) for p in (1, -1)])
            if parity
            else sh
        )
        if allowed == expected:
            return l_max, parity
    raise _refuse(
        "tensor_track_allowed_irreps",
        allowed_value,
        "only the layouts AllegroModel builds (all irreps up to l_max in the order 0e 0o 1e 1o "
        "..., or the spherical harmonics) import exactly",
    )


def _translate_config(
    model_config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    data_config: dict[str, Any],
) -> ModelConfig:
    """Our :class:`ModelConfig` for an official model config, refusing what differs."""
    unknown = sorted(set(model_config) - _KNOWN - {"modifiers", "model"})
    if unknown:
        raise _refuse(
            unknown[0],
            model_config[unknown[0]],
            "not an option of the official Allegro models known here",
        )
    l_max, parity = _irreps_layout(model_config)
    for option, supported in (("weight_individual_irreps", True), ("forward_normalize", True)):
        if model_config.get(option, True) is not supported:
            raise _refuse(option, model_config[option], f"only {supported} is implemented here")
    dtype = model_config.get("model_dtype")
    if dtype not in ("float32", "float64"):
        raise _refuse("model_dtype", dtype, "only float32 and float64")

    type_names = list(model_config.get("type_names") or [])
    if not type_names:
        raise _refuse("type_names", type_names, "the model names no types")
    elements = _element_map(type_names, model_config, data_config)
    rename = dict(zip(type_names, elements, strict=True))

    values: dict[str, Any] = {
        key: model_config.get(key, default) for key, default in _DEFAULTS.items()
    }
    for name in ("scalar_embed", "allegro", "readout"):
        key = f"{name}_mlp_nonlinearity"
        if values[key] not in _NONLINEARITIES:
            raise _refuse(key, values[key], "only silu, mish, gelu, tanh or None")
        values[key] = _NONLINEARITIES[values[key]]

    embed = model_config.get("radial_chemical_embed")
    if not isinstance(embed, dict) or embed.get("_target_") not in _BESSEL_TARGETS:
        target = embed.get("_target_") if isinstance(embed, dict) else embed
        raise _refuse("radial_chemical_embed", target, "only allegro.nn.TwoBodyBesselScalarEmbed")
    extra = sorted(set(embed) - set(_BESSEL_DEFAULTS) - {"_target_"})
    if extra:
        raise _refuse(f"radial_chemical_embed.{extra[0]}", embed[extra[0]], "unknown option")
    bessel = {key: embed.get(key, default) for key, default in _BESSEL_DEFAULTS.items()}

    cutoffs = values.pop("per_edge_type_cutoff")
    if cutoffs is not None:
        if not isinstance(cutoffs, dict) or set(cutoffs) - set(rename):
            raise _refuse("per_edge_type_cutoff", cutoffs, f"keys must be types {type_names}")
        cutoffs = {
            rename[center]: (
                {rename[n]: float(c) for n, c in entry.items()}
                if isinstance(entry, dict)
                else float(entry)
            )
            for center, entry in cutoffs.items()
        }
    avg = model_config.get("avg_num_neighbors")
    if avg is None:
        raise _refuse("avg_num_neighbors", avg, "required by the official model as well")

    return _model_config(
        species=tuple(elements),
        r_max=float(model_config["r_max"]),
        l_max=l_max,
        parity=parity,
        num_bessels=int(bessel["num_bessels"]),
        bessel_trainable=bool(bessel["bessel_trainable"]),
        polynomial_cutoff_p=_number(bessel["polynomial_cutoff_p"]),
        per_edge_type_cutoff=cutoffs,
        avg_num_neighbors=_per_type(avg, "avg_num_neighbors", rename),
        per_type_energy_scales=_scale_shift(weights, "scales", elements),
        per_type_energy_shifts=_scale_shift(weights, "shifts", elements),
        zbl=_zbl(model_config.get("pair_potential")),
        model_dtype=dtype,
        **values,
    )


def _number(value: Any) -> int | float:
    """``6.0`` -> ``6``: integral values as ints, so that equal configs compare equal."""
    return int(value) if float(value).is_integer() else float(value)


def _model_config(**values: Any) -> ModelConfig:
    try:
        return ModelConfig(**values)
    except (ConfigError, TypeError) as error:
        raise OfficialImportError(
            f"the official hyperparameters are not valid here: {error}"
        ) from None


def _scale_shift(
    weights: dict[str, torch.Tensor], which: str, elements: list[str]
) -> float | dict[str, float] | None:
    """Per-type energy scales or shifts as stored in the weights (trained values included)."""
    value = weights.get(f"per_type_energy_scale_shift.{which}")
    if value is None:
        raise OfficialImportError(f"the weights lack per_type_energy_scale_shift.{which}")
    flat = value.detach().to(torch.float64).reshape(-1).tolist()
    if not flat:
        return None
    if len(flat) == 1:
        return flat[0]
    if len(flat) != len(elements):
        raise OfficialImportError(
            f"per_type_energy_scale_shift.{which} has {len(flat)} values for {len(elements)} types"
        )
    return dict(zip(elements, flat, strict=True))


def _zbl(pair: Any) -> bool:
    if pair is None:
        return False
    target = pair.get("_target_") if isinstance(pair, dict) else pair
    if target not in _ZBL_TARGETS:
        raise _refuse("pair_potential", target, "only nequip.nn.pair_potential.ZBL is implemented")
    units = pair.get("units")
    if units != "metal":
        raise _refuse("pair_potential.units", units, "only LAMMPS metal units (eV, Å)")
    cutoff_p = pair.get("polynomial_cutoff_p", 6)
    if float(cutoff_p) != 6.0:
        raise _refuse("pair_potential.polynomial_cutoff_p", cutoff_p, "the ZBL cutoff here has p=6")
    extra = sorted(set(pair) - {"_target_", "units", "chemical_species", "polynomial_cutoff_p"})
    if extra:
        raise _refuse(f"pair_potential.{extra[0]}", pair[extra[0]], "unknown ZBL option")
    return True


# --------------------------------------------------------------------------- weights


def _map_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official weights renamed to ours; refuses weights that have no counterpart."""
    out: dict[str, torch.Tensor] = {}
    mlps: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in weights.items():
        if key in _DERIVED or _W3J.fullmatch(key):
            continue
        if key == "radial_chemical_embed.bessel_encode.bessel_weights":
            out["bessel.frequencies"] = value.reshape(-1)
            continue
        if key in (
            "radial_chemical_embed.type_embed.center_embed.weight",
            "radial_chemical_embed.type_embed.neighbor_embed.weight",
        ):
            out[key.split(".")[-2] + ".weight"] = value
            continue
        match = _TP_WEIGHTS.fullmatch(key)
        if match:
            out[f"tensor_products.{match[1]}.weights"] = value
            continue
        ours, layer = None, None
        match = _LATENT.fullmatch(key)
        if match:
            ours, layer = f"latents.{match[1]}", _MLP_LAYER.fullmatch(match[2])
        for prefix, name in _MLP_PREFIXES:
            if key.startswith(prefix):
                ours, layer = name, _MLP_LAYER.fullmatch(key[len(prefix) :])
        if ours is None or layer is None:
            raise OfficialImportError(
                f"official weight {key!r} has no counterpart here (MLP biases, "
                "parametrizations, other embeddings or pair potentials are not supported)"
            )
        mlps.setdefault(ours, []).append((int(layer[1] or layer[2]), value))
    for name, layers in mlps.items():
        for index, (_, value) in enumerate(sorted(layers, key=lambda item: item[0])):
            out[f"{name}.weights.{index}"] = value
    return out


def _load_weights(model: AllegroModel, weights: dict[str, torch.Tensor]) -> None:
    """Load the official weights; every parameter of ``model`` must receive a value."""
    mapped = _map_weights(weights)
    ours = model.state_dict()
    unexpected = sorted(set(mapped) - set(ours))
    missing = sorted({name for name, _ in model.named_parameters()} - set(mapped))
    if unexpected or missing:
        raise OfficialImportError(
            "the weights do not fit the hyperparameters in the file's config "
            f"(no place for {unexpected}, no value for {missing})"
        )
    for name, value in mapped.items():
        if value.numel() != ours[name].numel():
            raise OfficialImportError(
                f"the weights do not fit the hyperparameters in the file's config: {name} has "
                f"shape {tuple(value.shape)} here {tuple(ours[name].shape)}"
            )
        mapped[name] = value.reshape(ours[name].shape)
    model.load_state_dict(mapped, strict=False)


def _check_derived(model: AllegroModel, weights: dict[str, torch.Tensor]) -> None:
    """Buffers we recompute from the config must equal the official ones."""
    checks = [("edge_norm._rmax_recip", model.pair_cutoff_recip)]
    if model.config.zbl:
        checks.append(("pair_potential.atomic_numbers", model.zbl_atomic_numbers))
    for key, ours in checks:
        official = weights.get(key)
        if official is None:
            raise OfficialImportError(f"the weights lack {key}")
        official = official.to(torch.float64)
        if not torch.allclose(
            official.expand_as(ours) if official.numel() == 1 else official.reshape(ours.shape),
            ours.to(torch.float64),
            rtol=1e-12,
            atol=0.0,
        ):
            raise OfficialImportError(
                f"{key} in the weights ({official.tolist()}) disagrees with the config "
                f"({ours.tolist()}); the file's config and weights do not belong together"
            )
    if model.config.zbl:
        coulomb = weights.get("pair_potential._qqr2exesquare")
        if coulomb is None or abs(float(coulomb) - 0.5 * 14.399645) > 1e-9:
            raise OfficialImportError(
                "the ZBL constant in the weights is not the LAMMPS metal-units one"
            )
