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

The restricted unpickler (:mod:`.safe_unpickle`) rebuilds tensors from their storages and
turns every other class or function a pickle names into an inert placeholder that only
records its arguments and state: nothing named in the file is imported or called.
Configs must then hold plain values only. The config is translated by
:mod:`.official_config`, the weights mapped by :mod:`.official_weights`.

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

import re
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml

from .allegro import AllegroModel
from .checkpoint import file_sha256, refuse_overwriting, save_checkpoint
from .official_config import OfficialImportError, irreps_layout, translate_config, unwrap_modifiers
from .official_weights import apply_ema, check_derived, load_weights, map_weights, strip_prefix
from .safe_unpickle import RESTRICTED_PICKLE, PackageUnpickler, Placeholder, UnpicklingRefused

__all__ = ["OfficialImportError", "import_official", "model_from_official", "save"]

SUPPORTED_VERSIONS = {"nequip": "0.19.", "allegro": "0.8."}


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
    model_config = unwrap_modifiers(model_config)
    irreps_layout(model_config)  # refuses other model classes before looking at weights
    weights = strip_prefix(state_dict)
    config = translate_config(model_config, weights, data_config or {})
    model = AllegroModel(config)
    load_weights(model, weights)
    check_derived(model, weights)
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
            path, map_location="cpu", pickle_module=RESTRICTED_PICKLE, weights_only=False
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
    map_weights(strip_prefix(weights))  # names unknown weights before the EMA lines up
    ema_keys = [k for k in state if re.fullmatch(r"ema\.ema_weight_\d+", k)]
    if ema_keys:
        apply_ema(weights, state, len(ema_keys), unwrap_modifiers(model_config))
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


def _module_weights(module: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every persistent parameter and buffer, in ``state_dict``
    order, of a placeholder ``torch.nn.Module`` tree."""
    state = module.state if isinstance(module, Placeholder) else None
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
        if isinstance(child, Placeholder) and isinstance(child.state, dict):
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
            root_module = PackageUnpickler(pickled, archive, root).load()
            weights = OrderedDict(_module_weights(root_module))
            classes = list(_module_classes(root_module))
            model_config = dict(config["training_module"]["model"])
            versions = dict(metadata["versions"])
            type_names = [metadata["atom_types"][i] for i in range(len(metadata["atom_types"]))]
        except OfficialImportError:
            raise
        except UnpicklingRefused as error:
            raise OfficialImportError(str(error)) from None
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
    inner = unwrap_modifiers(model_config)
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
