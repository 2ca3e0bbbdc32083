"""Reading labelled structures, precomputed graphs, batches and splits."""

from __future__ import annotations

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig
from allegro_deploy.models.data import LabelledDataset, collate, split_indices
from allegro_deploy.models.labels import DataError, read_structures
from allegro_deploy.runtime.validation import UnknownSpeciesError

R_MAX = 3.0


def emt_frames(n: int, seed: int = 0, stress: bool = True) -> list[ase.Atoms]:
    """``n`` rattled, strained 4-8 atom Cu cells labelled by EMT."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((1 + i % 2, 1, 1))
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        if stress:
            labels["stress"] = atoms.get_stress()
        frame = atoms.copy()
        frame.calc = SinglePointCalculator(frame, **labels)
        frames.append(frame)
    return frames


def test_read_structures_keeps_labels(tmp_path):
    frames = emt_frames(5)
    path = tmp_path / "cu.extxyz"
    ase.io.write(path, frames)
    read = read_structures(path)
    assert len(read) == 5
    for original, copy in zip(frames, read, strict=True):
        assert copy.get_potential_energy() == pytest.approx(original.get_potential_energy())
        np.testing.assert_allclose(copy.get_forces(), original.get_forces(), atol=1e-7)
    assert len(read_structures(path, index="1:3")) == 2


@pytest.mark.parametrize("missing", ["energy", "forces"])
def test_unlabelled_frame_is_named(tmp_path, missing):
    frames = emt_frames(4)
    kept = {"energy": frames[2].get_potential_energy(), "forces": frames[2].get_forces()}
    del kept[missing]
    frames[2].calc = SinglePointCalculator(frames[2], **kept)
    path = tmp_path / "partial.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=rf"partial\.extxyz, frame 2 .*has no {missing}"):
        read_structures(path)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.extxyz"):
        read_structures(tmp_path / "nothere.extxyz")
    garbage = tmp_path / "garbage.extxyz"
    garbage.write_text("this is not\nan extxyz file\n")
    with pytest.raises(DataError, match="cannot read .*garbage.extxyz"):
        read_structures(garbage)


def test_dataset_graphs_and_batches_match_direct_graph():
    frames = emt_frames(6)
    frames[1].calc = SinglePointCalculator(
        frames[1], energy=frames[1].get_potential_energy(), forces=frames[1].get_forces()
    )  # no stress label
    dataset = LabelledDataset.from_atoms(frames, ["Cu"], R_MAX, "in memory")
    assert len(dataset) == 6 and dataset.has_stress
    batch = collate([dataset.structures[i] for i in (4, 1, 2)])
    subset = [frames[i] for i in (4, 1, 2)]
    direct = AtomicGraph.from_atoms(subset, [29], R_MAX)
    for name in ("positions", "species", "edge_index", "edge_shifts", "structure_index", "cell"):
        assert torch.equal(getattr(batch.graph, name), getattr(direct, name)), name
    assert batch.n_atoms.tolist() == [len(a) for a in subset]
    assert batch.energy.tolist() == [a.get_potential_energy() for a in subset]
    np.testing.assert_array_equal(batch.forces, np.concatenate([a.get_forces() for a in subset]))
    assert batch.stress[1].isnan().all() and not batch.stress[[0, 2]].isnan().any()
    np.testing.assert_allclose(batch.stress[0], subset[0].get_stress(voigt=False))

    torch.manual_seed(0)
    config = ModelConfig(("Cu",), R_MAX, num_layers=1, num_scalar_features=8,
                         num_tensor_features=4, model_dtype="float64")  # fmt: skip
    model = AllegroModel(config)
    assert torch.equal(model(batch.graph)["energy"], model(direct)["energy"])


def test_batches_cover_dataset_and_shuffle_reproducibly():
    dataset = LabelledDataset.from_atoms(emt_frames(7, stress=False), ["Cu"], R_MAX, "x")
    assert not dataset.has_stress
    in_order = list(dataset.batches(3))
    assert [len(b.energy) for b in in_order] == [3, 3, 1] == [3] * 2 + [1]
    assert dataset.n_batches(3) == 3

    def energies(generator):
        return torch.cat([b.energy for b in dataset.batches(3, generator)]).tolist()

    first = energies(torch.Generator().manual_seed(5))
    assert first == energies(torch.Generator().manual_seed(5))
    assert sorted(first) == sorted(torch.cat([b.energy for b in in_order]).tolist())
    assert first != energies(torch.Generator().manual_seed(6))


def test_unknown_element_names_element_species_and_source():
    frames = emt_frames(3)
    frames[2].numbers[0] = 79
    with pytest.raises(UnknownSpeciesError, match=r"my\.extxyz: structure 2 .*Au.*knows Cu"):
        LabelledDataset.from_atoms(frames, ["Cu"], R_MAX, "my.extxyz")


def test_split_indices_is_seeded_and_disjoint():
    train, val = split_indices(20, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert sorted(train + val) == list(range(20))
    assert split_indices(20, 0.25, seed=3) == (train, val)
    assert split_indices(20, 0.25, seed=4) != (train, val)
    assert split_indices(3, 0.01, seed=0)[1] != []
    with pytest.raises(DataError, match="cannot split 1 structure"):
        split_indices(1, 0.5, seed=0)
    with pytest.raises(DataError, match="val_fraction"):
        split_indices(10, 1.5, seed=0)
