"""ASE calculator on an exported model (numpy + ONNX Runtime, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .potential import Potential


class AllegroCalculator(Calculator):
    """Energy, forces, per-atom energies and stress from an exported ``structures`` model.

    model: path of the exported file, or an already loaded :class:`Potential` (shares
        its session).
    backend, options: passed to :meth:`Potential.load` (threads, device_id,
        session_options, edge_budget, min_distance).

    Results: ``energy`` and ``free_energy`` (eV, equal), ``forces`` (N, 3) eV/Å,
    ``energies`` (N,) eV per atom, and ``stress`` (6,) eV/Å³ in Voigt order xx yy zz yz
    xz xy (ASE sign) only when the cell is periodic along all three lattice vectors (for
    other systems, asking for the stress raises ``PropertyNotImplementedError``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, model: str | Path | Potential, backend: str = "auto", **options: Any):
        super().__init__()
        if isinstance(model, Potential):
            if options or backend != "auto":
                raise ValueError("backend and options apply only when loading from a path")
            self.potential = model
        else:
            self.potential = Potential.load(model, backend, **options)

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        result = self.potential.evaluate(self.atoms)
        self.results = {
            "energy": result.energy,
            "free_energy": result.energy,
            "forces": result.forces,
            "energies": result.atomic_energies,
        }
        if result.stress is not None:
            self.results["stress"] = full_3x3_to_voigt_6_stress(result.stress)
        elif "stress" in properties:
            raise PropertyNotImplementedError(
                f"stress needs a cell periodic along all three lattice vectors; "
                f"this system has pbc={self.atoms.pbc.tolist()}"
            )
