"""LAMMPS ``pair_style mliap unified`` model running an Allegro ``pairs`` export.

LAMMPS (built with ML-IAP and Python, see docs/lammps.md) hands
:meth:`AllegroMLIAP.compute_forces` each rank's full neighbor list of its local atoms:
``data.pair_i`` (local centers), ``data.pair_j`` (local or ghost neighbors),
``data.rij`` = x_j - x_i (Å), ``data.elems`` (element index of every local and ghost
atom, into ``element_types``), ``data.nlocal``, ``data.nlistatoms`` and ``data.iatoms``
(the local atoms in the list). The ``pairs`` export turns these into per-atom energies
and pair forces ∂E/∂r_ij; LAMMPS adds each pair force to i, subtracts it from j,
tallies the virial from it and sends the ghost forces back to their owners (which is why
``newton on`` is required). Allegro is strictly local, so nothing else is exchanged
between ranks.

The object is pickled into the ``.pkl`` file ``pair_style mliap unified FILE.pkl 0``
loads: the pickle holds the absolute path of the ONNX file and the session options, not
the ONNX bytes or the session, which ``__setstate__`` opens again. Keep the ONNX file at
that path (or pickle again after moving it).

If ``lammps.mliap`` (the LAMMPS Python module) is importable, the class derives from its
abstract ``MLIAPUnified``; otherwise from a stand-in with the same attributes. LAMMPS
only reads the attributes and calls the methods, so either works; the pickle names only
this class.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Session, open_session
from .metadata import (
    ATOMIC_ENERGIES,
    ATOMIC_ENERGIES_UNSHIFTED,
    EDGE_INDEX,
    EDGE_VECTORS,
    N_LOCAL,
    PAIR_FORCES,
    SPECIES,
    MetadataError,
    read_metadata,
)

try:
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except (ImportError, OSError):  # no LAMMPS Python module (OSError: no shared libpython)

    class MLIAPUnified:  # type: ignore[no-redef]
        """Stand-in for ``lammps.mliap.mliap_unified_abc.MLIAPUnified``: its attributes
        and its ``pickle`` method."""

        def __init__(
            self,
            interface: Any = None,
            element_types: list[str] | None = None,
            ndescriptors: int | None = None,
            nparams: int | None = None,
            rcutfac: float | None = None,
        ) -> None:
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac

        def pickle(self, fname: str | Path) -> None:
            with open(fname, "wb") as file:
                pickle.dump(self, file)


class AllegroMLIAP(MLIAPUnified):
    """An Allegro ``pairs`` export as a LAMMPS ML-IAP unified model.

    model_path: the ``.onnx`` file (target ``pairs``).
    element_types: element names LAMMPS may map types to (``pair_coeff * * Cu Au``);
        default the model's species. Each must be one of the model's species.
    backend, threads, device_id: see :func:`~allegro_deploy.runtime.backends.open_session`;
        with several MPI ranks per node, give each rank its share of cores in ``threads``.

    ``rcutfac`` is half the model's largest pair cutoff (its r_max, unless every pair's
    cutoff is smaller): LAMMPS' neighbor cutoff for the dummy ML-IAP
    descriptor is twice ``rcutfac``. ``ndescriptors`` and ``nparams`` are 1: LAMMPS sizes
    unused descriptor arrays by them and refuses None.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        element_types: Sequence[str] | None = None,
        backend: str = "auto",
        threads: int | None = None,
        device_id: int = 0,
    ) -> None:
        path = Path(model_path).resolve()
        metadata = read_metadata(path)
        if metadata.target != "pairs":
            raise MetadataError(
                f"{path} is a {metadata.target!r} export; pair_style mliap unified needs a "
                "'pairs' export (allegro-deploy export --target pairs)"
            )
        element_types = list(metadata.species if element_types is None else element_types)
        unknown = [e for e in element_types if e not in metadata.species]
        if unknown:
            raise ValueError(
                f"element_types {unknown} are not species of {path} {list(metadata.species)}"
            )
        super().__init__(None, element_types, 1, 1, 0.5 * metadata.cutoff)
        self.model_path = path
        self.backend = backend
        self.threads = threads
        self.device_id = device_id
        # Species index of each element index; the extra last entry serves element -1,
        # which LAMMPS gives atoms of types mapped to NULL: they are never in a pair.
        self._species_of_element = np.array(
            [metadata.species.index(e) for e in element_types] + [0], dtype=np.int64
        )
        # a float32-only file takes float32 edge vectors and leaves the energy shifts to us
        self._float64 = metadata.float64
        self._energy_shifts = np.array(metadata.energy_shifts, dtype=np.float64)
        self._session: Session = open_session(path, backend, threads=threads, device_id=device_id)
        self._warned_ghost_centers = False

    def __getstate__(self) -> dict[str, Any]:
        """What a pickle keeps: the file path and the options (no session, no ONNX bytes,
        not the LAMMPS ``interface``)."""
        return {
            "model_path": str(self.model_path),
            "element_types": list(self.element_types),
            "backend": self.backend,
            "threads": self.threads,
            "device_id": self.device_id,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Reload the metadata and open the session again from the pickled state."""
        if not Path(state["model_path"]).is_file():
            raise FileNotFoundError(
                f"this AllegroMLIAP pickle runs {state['model_path']}, which does not exist "
                "(moved or deleted after pickling?): put the .onnx back there, or pickle "
                "AllegroMLIAP(new_path) again"
            )
        self.__init__(**state)

    def compute_forces(self, data: Any) -> None:
        """Energies and pair forces of the local atoms of ``data`` (LAMMPS' MLIAPDataPy).

        Writes ``data.eatoms`` (nlistatoms,) eV, ``data.energy`` eV, and calls
        ``data.update_pair_forces`` with ∂E/∂r_ij (npairs, 3) eV/Å.
        """
        n_listed = int(data.nlistatoms)
        if n_listed == 0:  # LAMMPS cannot take zero-length arrays
            data.energy = 0.0
            return
        n_pairs, n_local = int(data.npairs), int(data.nlocal)
        vector_dtype = np.float64 if self._float64 else np.float32
        if n_pairs:
            edge_vectors = np.asarray(data.rij, dtype=vector_dtype)
            edge_index = np.stack([data.pair_i, data.pair_j]).astype(np.int64)
        else:
            edge_vectors = np.zeros((0, 3), dtype=vector_dtype)
            edge_index = np.zeros((2, 0), dtype=np.int64)
        # Pairs centred on ghost atoms (``pair_style mliap unified FILE 1``) only change
        # ghost energies, which are not this rank's: their pair forces are zero.
        local = edge_index[0] < n_local
        if not local.all():
            if not self._warned_ghost_centers:
                warnings.warn(
                    f"LAMMPS passes pairs centred on ghost atoms ({int((~local).sum())} of "
                    f"{n_pairs}): Allegro needs only the local atoms' neighbors, so end the "
                    "pair_style line with 0 (pair_style mliap unified FILE 0) to save "
                    "LAMMPS that work; they are left out of the model",
                    stacklevel=2,
                )
                self._warned_ghost_centers = True
            edge_vectors, edge_index = edge_vectors[local], edge_index[:, local]
        species = self._species_of_element[np.asarray(data.elems)]
        outputs = self._session.run(
            {
                EDGE_VECTORS: edge_vectors,
                SPECIES: species,
                EDGE_INDEX: edge_index,
                N_LOCAL: np.array(n_local, dtype=np.int64),
            }
        )
        listed = np.asarray(data.iatoms)[:n_listed]
        if self._float64:
            atomic_energies = outputs[ATOMIC_ENERGIES][listed]
        else:
            unshifted = np.asarray(outputs[ATOMIC_ENERGIES_UNSHIFTED], np.float64)[listed]
            atomic_energies = unshifted + self._energy_shifts[species[listed]]
        data.eatoms = np.ascontiguousarray(atomic_energies, dtype=np.float64)
        data.energy = float(atomic_energies.sum())
        if n_pairs:
            pair_forces = np.zeros((n_pairs, 3), dtype=np.float64)
            pair_forces[local] = outputs[PAIR_FORCES]
            data.update_pair_forces(pair_forces)

    def compute_descriptors(self, data: Any) -> None:
        """Unused: Allegro has no separate descriptor step."""

    def compute_gradients(self, data: Any) -> None:
        """Unused: forces come from :meth:`compute_forces`."""

    def __repr__(self) -> str:
        return (
            f"AllegroMLIAP({str(self.model_path)!r}, element_types={self.element_types}, "
            f"rcutfac={self.rcutfac}, backend={self.backend!r})"
        )
