"""The other three networks of the musicnn wheel (MTT_musicnn, MSD_vgg, MTT_vgg) in PyTorch against outputs of
the package's own TensorFlow graph code (tests/fixtures/musicnn_networks, see its README), and MSD_musicnn
through the same loader against the shared references."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from plugins.embedders.musicnn.checkpoint import CheckpointError
from plugins.embedders.musicnn.convert import convert_checkpoint
from plugins.embedders.musicnn.networks import (
    MSD_TAGS,
    MTT_TAGS,
    NETWORKS,
    MusicnnVGG,
    load_network,
    network_outputs,
    network_state,
    tags_of,
    vgg_tf_to_torch,
)
from tests.conftest import MUSICNN_REFERENCE

FIXTURES = Path(__file__).parent / "fixtures" / "musicnn_networks"
CLIPS = ("mix", "heavy", "soft")
TOL = 1e-4
OUTPUTS = {
    "MTT_musicnn": ("dense_preact", "penultimate", "logits", "taggram"),
    "MSD_vgg": ("pool5", "logits", "taggram"),
    "MTT_vgg": ("pool5", "logits", "taggram"),
}


@pytest.fixture(scope="session")
def models(wheel) -> dict[str, torch.nn.Module]:
    return {net: load_network(wheel, net) for net in NETWORKS}


def patches(clip: str) -> np.ndarray:
    return np.load(MUSICNN_REFERENCE / f"test_{clip}_logmel_patches.npy")


@pytest.mark.parametrize("network", sorted(OUTPUTS))
@pytest.mark.parametrize("clip", CLIPS)
def test_matches_tensorflow(models, network, clip):
    got = network_outputs(models[network], patches(clip))
    assert set(got) == set(OUTPUTS[network])
    for k in OUTPUTS[network]:
        want = np.load(FIXTURES / f"{network}_{clip}_{k}.npy")
        assert got[k].shape == want.shape, k
        err = float(np.abs(got[k] - want).max())
        assert err < TOL, f"{network} {clip} {k}: {err:.2e}"


@pytest.mark.parametrize("clip", CLIPS)
def test_msd_musicnn_through_the_same_loader(models, clip):
    got = network_outputs(models["MSD_musicnn"], patches(clip))
    for k in ("dense_preact", "penultimate", "logits", "taggram"):
        want = np.load(MUSICNN_REFERENCE / f"test_{clip}_tf_{k}.npy")
        assert float(np.abs(got[k] - want).max()) < TOL, k


def test_msd_state_is_the_products(wheel):
    """The generic reader gives MSD_musicnn exactly the state dict that the plugin's converter writes."""
    with zipfile.ZipFile(wheel) as zf:
        index, data = zf.read("musicnn/MSD_musicnn/.index"), zf.read("musicnn/MSD_musicnn/.data-00000-of-00001")
    product = convert_checkpoint(index, data)
    ours = network_state(wheel, "MSD_musicnn")
    assert product.keys() == ours.keys()
    for k in product:
        assert np.array_equal(product[k], ours[k]), k


def test_networks_differ(models):
    """Four distinct sets of weights: the MTT and MSD musicnn share an architecture, not their numbers."""
    x = torch.from_numpy(patches("mix")[:2])
    with torch.inference_mode():
        a, b = models["MSD_musicnn"](x).taggram, models["MTT_musicnn"](x).taggram
        c, d = models["MSD_vgg"](x).taggram, models["MTT_vgg"](x).taggram
    assert not torch.allclose(a, b) and not torch.allclose(c, d) and not torch.allclose(a, c)


def test_tags():
    assert len(MTT_TAGS) == len(set(MTT_TAGS)) == 50 and len(MSD_TAGS) == 50
    assert tags_of("MTT_vgg") is MTT_TAGS and tags_of("MSD_musicnn") is MSD_TAGS
    for t in ("ambient", "classical", "strings", "violin", "choir", "techno", "synth", "quiet", "soft", "slow", "beat", "drums"):
        assert t in MTT_TAGS


def test_vgg_shapes():
    m = MusicnnVGG().eval()
    with torch.inference_mode():
        o = m(torch.zeros(3, 187, 96))
    assert o.pool5.shape == (3, 256) and o.logits.shape == (3, 50) and o.taggram.shape == (3, 50)


def test_unknown_network_and_missing_tensors(wheel):
    with pytest.raises(ValueError, match="unknown network"):
        network_state(wheel, "MSD_musicnn_big")  # not in the wheel
    with pytest.raises(CheckpointError, match="lacks VGG tensors"):
        vgg_tf_to_torch({"1CNN/kernel": np.zeros((3, 3, 1, 128), np.float32)})


@pytest.mark.parametrize("network", ["MTT_musicnn", "MSD_vgg"])  # MTT_vgg: the plugin's own file, test_musicnn_onnx.py
def test_onnx_export_matches(models, tmp_path, network):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from plugins.embedders.musicnn.onnx_backend import INPUT, export_model, make_session, output_names

    path = export_model(models[network], network, tmp_path / f"{network.lower()}.onnx")
    names = output_names(network)
    got = dict(zip(names, make_session(path).run(list(names), {INPUT: patches("heavy")})))
    for k in names:
        assert float(np.abs(got[k] - np.load(FIXTURES / f"{network}_heavy_{k}.npy")).max()) < TOL, k
