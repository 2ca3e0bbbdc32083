"""i-PI socket client serving an Allegro :class:`~allegro_deploy.runtime.potential.Potential`.

i-PI (the server) integrates the dynamics; this client (the driver) evaluates energies,
forces and virials on the positions it is sent. No torch and no ASE socket code: the
protocol is spoken here directly, over a UNIX or a TCP socket.

Protocol (every message starts with a 12-byte ASCII header padded with spaces; numbers
are native little-endian int32 / float64; atomic units, Hartree and Bohr):

server -> client
    ``STATUS``    the client answers ``READY`` or, holding a result, ``HAVEDATA``.
    ``INIT``      int32 bead index, int32 length, that many bytes of init string.
    ``POSDATA``   cell h (9 float64, h[:, k] is lattice vector k), inverse cell
                  (9 float64), int32 N, positions (N x 3 float64).
    ``GETFORCE``  the client answers ``FORCEREADY``, float64 energy, int32 N, forces
                  (N x 3 float64), virial (9 float64, column-major, -V·stress), int32
                  length and bytes of an extra string (empty here).
    ``EXIT``      the client returns.

i-PI sends only positions and the cell, so the client is given the atomic numbers (in
i-PI's atom order) and the periodicity up front. i-PI's cell is upper triangular in its
column convention (lower triangular as rows of lattice vectors); the model is rotation
invariant, so the client evaluates in i-PI's frame whatever the input file's cell was.

Unit conversions use ASE's constants (``ase.units``), exactly as ASE's ``SocketClient``;
i-PI's own constants agree with them to about 8 significant digits.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from ase.units import Bohr, Hartree

from .potential import Result, Structure

HEADER_BYTES = 12
UNIX_SOCKET_PREFIX = "/tmp/ipi_"
"""Where i-PI puts the UNIX socket of ``<address>NAME</address>`` (its ``sockets_prefix``)."""

_log = logging.getLogger(__name__)


class IPIProtocolError(RuntimeError):
    """The server sent something the i-PI protocol does not allow here."""


class _Evaluator(Protocol):
    def evaluate(self, structures: Structure) -> Result: ...


@dataclass(frozen=True)
class Address:
    """Where an i-PI server listens.

    family: ``socket.AF_UNIX`` or ``socket.AF_INET``/``AF_INET6``.
    target: the socket file path (UNIX) or ``(host, port)`` (TCP).
    """

    family: int
    target: str | tuple[str, int]

    @classmethod
    def parse(cls, text: str) -> Address:
        """``unix:NAME`` (i-PI's ``/tmp/ipi_NAME``), ``unix:/PATH`` (that socket file),
        ``HOST:PORT`` or ``[IPv6]:PORT``."""
        text = text.strip()
        if text.startswith("unix:"):
            name = text[len("unix:") :]
            if not name:
                raise ValueError(f"address {text!r} names no socket; use unix:NAME")
            path = name if name.startswith("/") else UNIX_SOCKET_PREFIX + name
            return cls(socket.AF_UNIX, path)
        host, sep, port_text = text.rpartition(":")
        family = socket.AF_INET
        if host.startswith("[") and host.endswith("]"):
            host, family = host[1:-1], socket.AF_INET6
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not sep or not host or not 0 < port < 65536:
            raise ValueError(
                f"cannot read the i-PI address {text!r}; expected HOST:PORT "
                "(e.g. localhost:31415) or unix:NAME (i-PI's /tmp/ipi_NAME)"
            )
        return cls(family, (host, port))

    def __str__(self) -> str:
        if self.family == socket.AF_UNIX:
            return f"unix:{self.target}"
        host, port = self.target
        return f"[{host}]:{port}" if self.family == socket.AF_INET6 else f"{host}:{port}"


def connect(address: Address, *, wait: float = 0.0) -> socket.socket:
    """A socket connected to ``address``.

    wait: seconds to keep retrying (every 0.1 s) while no server listens there yet, for
        a client started before or together with i-PI. ``TimeoutError`` after that.
    """
    deadline = time.monotonic() + wait
    while True:
        sock = socket.socket(address.family, socket.SOCK_STREAM)
        try:
            sock.connect(address.target)
        except socket.gaierror as error:
            sock.close()
            raise ConnectionError(f"cannot resolve the i-PI host of {address}: {error}") from None
        except (FileNotFoundError, ConnectionRefusedError) as error:
            sock.close()
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no i-PI server listening at {address} (waited {wait:g} s): {error}"
                ) from None
            time.sleep(0.1)
            continue
        except BaseException:
            sock.close()
            raise
        if address.family != socket.AF_UNIX:
            # Headers and arrays go out in separate sends: without this, Nagle's algorithm
            # and delayed ACKs add tens of milliseconds to every step.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class IPIClient:
    """Evaluates ``potential`` on every configuration an i-PI server sends.

    potential: anything with ``evaluate(Structure) -> Result`` (a ``Potential``).
    atomic_numbers: (N,) of the atoms in i-PI's order (that of its initial structure).
    pbc: periodicity along each lattice vector (i-PI always sends a cell).
    timeout: seconds to wait for any message from the server before the connection is
        given up as lost (None: wait forever; i-PI asks for STATUS every few
        milliseconds while it waits for this client).
    """

    def __init__(
        self,
        potential: _Evaluator,
        atomic_numbers: npt.ArrayLike,
        pbc: bool | Sequence[bool] = True,
        *,
        timeout: float | None = None,
    ) -> None:
        self.potential = potential
        self.atomic_numbers = np.array(atomic_numbers, dtype=np.int64)
        if self.atomic_numbers.ndim != 1 or not len(self.atomic_numbers):
            raise ValueError("atomic_numbers must be a non-empty (N,) sequence")
        self.pbc = np.array(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
        self.timeout = timeout
        self.evaluations = 0
        """Configurations evaluated so far, over all connections."""

    def serve(self, address: Address | str, *, wait: float = 60.0, reconnect: float = 0.0) -> int:
        """Connect to the server at ``address`` and serve it until it sends EXIT.

        wait: seconds to keep trying to connect while the server is not up yet.
        reconnect: after a lost connection (closed without EXIT, or silent for
            ``timeout``), seconds to keep trying to connect again, e.g. to an i-PI
            restarted from its checkpoint; 0 raises ``ConnectionError`` instead.
        Returns the number of configurations evaluated over all connections. Raises
        ``TimeoutError`` when no server can be (re)connected to in time.
        """
        address = Address.parse(address) if isinstance(address, str) else address
        sock = connect(address, wait=wait)
        while True:
            _log.info("connected to i-PI at %s", address)
            with sock:
                try:
                    self.serve_connection(sock)
                    _log.info("i-PI sent EXIT after %d evaluations", self.evaluations)
                    return self.evaluations
                except (ConnectionError, TimeoutError) as error:
                    lost = error
            if reconnect <= 0:
                raise ConnectionError(f"lost the i-PI server at {address}: {lost}") from lost
            _log.warning("lost i-PI at %s (%s); reconnecting for %g s", address, lost, reconnect)
            sock = connect(address, wait=reconnect)

    def serve_connection(self, sock: socket.socket) -> None:
        """Answer the server on the connected ``sock`` until it sends EXIT.

        Applies the client's ``timeout`` to ``sock``. Raises ``ConnectionError`` when the
        server closes the connection without EXIT, ``TimeoutError`` when it stays silent
        for ``timeout`` seconds, and :class:`IPIProtocolError` on an unexpected message.
        """
        sock.settimeout(self.timeout)
        result: Result | None = None
        while True:
            message = _receive(sock, HEADER_BYTES).decode("ascii", "replace").strip()
            if message == "STATUS":
                sock.sendall(_header("HAVEDATA" if result is not None else "READY"))
            elif message == "INIT":
                bead, length = struct.unpack("<ii", _receive(sock, 8))
                _receive(sock, length)
                _log.debug("INIT for bead %d", bead)
            elif message == "POSDATA":
                result = self._evaluate(sock)
            elif message == "GETFORCE":
                if result is None:
                    raise IPIProtocolError("i-PI asked for forces before sending positions")
                sock.sendall(_force_message(result))
                result = None
            elif message == "EXIT":
                return
            else:
                raise IPIProtocolError(f"unexpected i-PI message {message!r}")

    def _evaluate(self, sock: socket.socket) -> Result:
        """Read the rest of a POSDATA message and evaluate the potential on it."""
        h = np.frombuffer(_receive(sock, 72), "<f8").reshape(3, 3)
        _receive(sock, 72)  # inverse cell
        (n_atoms,) = struct.unpack("<i", _receive(sock, 4))
        if n_atoms != len(self.atomic_numbers):  # checked before reading 24 bytes per atom
            raise IPIProtocolError(
                f"i-PI sent {n_atoms} atoms, but the client was given "
                f"{len(self.atomic_numbers)} atomic numbers; start the client with the "
                "structure i-PI was initialized from"
            )
        positions = np.frombuffer(_receive(sock, 24 * n_atoms), "<f8").reshape(n_atoms, 3)
        structure = Structure(positions * Bohr, self.atomic_numbers, h.T * Bohr, self.pbc)
        result = self.potential.evaluate(structure)
        self.evaluations += 1
        return result


def _header(message: str) -> bytes:
    return message.encode("ascii").ljust(HEADER_BYTES)


def _force_message(result: Result) -> bytes:
    """FORCEREADY and its payload for ``result`` (eV, eV/Å, eV -> atomic units)."""
    forces = np.ascontiguousarray(result.forces * (Bohr / Hartree), dtype="<f8")
    virial = np.ascontiguousarray(np.asarray(result.virial).T / Hartree, dtype="<f8")
    return b"".join(
        (
            _header("FORCEREADY"),
            struct.pack("<di", result.energy / Hartree, len(forces)),
            forces.tobytes(),
            virial.tobytes(),
            struct.pack("<i", 0),
        )
    )


def _receive(sock: socket.socket, n_bytes: int) -> bytes:
    """Exactly ``n_bytes`` from ``sock``; ``ConnectionError`` if it closes first."""
    buffer = bytearray(n_bytes)
    view = memoryview(buffer)
    received = 0
    while received < n_bytes:
        try:
            count = sock.recv_into(view[received:], n_bytes - received)
        except TimeoutError:
            raise TimeoutError(f"no message from i-PI within {sock.gettimeout()} s") from None
        if count == 0:
            raise ConnectionError("i-PI closed the connection")
        received += count
    return bytes(buffer)
