"""Encoders (shapes, per-stage normalisation, torchvision-compatible weights) and the checkpoint format."""

import math
import os
import random
import shlex
from collections import OrderedDict

import numpy as np
import pytest
import torch

from geoproto.errors import GeoprotoError
from geoproto.models import BACKBONES, DEFAULT_BACKBONE, Encoder, build_encoder, load_checkpoint, save_checkpoint
from geoproto.models.checkpoint import FORMAT, VERSION
from geoproto.models.efficientnet import shipped_weights_path
from geoproto.models.resnet import ResNet50
from geoproto.models.vgg import VGG16

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(min(previous, 2))
    yield
    torch.set_num_threads(previous)


def assert_unit_norm_per_stage(features, stage_channels):
    start = 0
    for channels in stage_channels:
        norms = features[:, start:start + channels].norm(dim=1)
        torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-4, rtol=0)
        start += channels
    assert start == features.shape[1]


# --------------------------------------------------------------------------------------------------
# (a) EfficientNet-Lite0 from the shipped ImageNet weights
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lite0():
    encoder, info = build_encoder()
    return encoder, info


def test_default_backbone_is_lite0_with_shipped_weights(lite0):
    encoder, info = lite0
    assert DEFAULT_BACKBONE == "efficientnet-lite0"
    assert encoder.backbone == "efficientnet-lite0"
    assert encoder.head is None
    assert encoder.out_channels == 152
    assert not encoder.training
    assert info == {"backbone": "efficientnet-lite0", "weights": os.path.basename(shipped_weights_path()),
                    "trained": False}
    shipped = torch.load(shipped_weights_path(), map_location="cpu", weights_only=True)
    trunk = encoder.trunk.state_dict()
    # Everything up to the stride-16 stage (blocks 0-10) is loaded unchanged; later blocks and the
    # classifier head (_conv_head, _bn1, _fc) are not built.
    later = tuple(f"_blocks.{i}." for i in range(11, 16))
    assert set(trunk) == {k for k in shipped if not k.startswith(("_conv_head", "_bn1", "_fc", *later))}
    for key, value in trunk.items():
        assert torch.equal(value, shipped[key]), key


@pytest.mark.parametrize("height, width", [(417, 417), (100, 120)])
def test_lite0_features_152_channels_at_ceil_h_over_8_and_unit_norm_per_stage(lite0, height, width):
    encoder, _ = lite0
    torch.manual_seed(0)
    with torch.no_grad():
        features = encoder(torch.rand(1, 3, height, width))
    assert features.shape == (1, 152, math.ceil(height / 8), math.ceil(width / 8))
    assert torch.isfinite(features).all()
    assert_unit_norm_per_stage(features, (40, 112))


# --------------------------------------------------------------------------------------------------
# (b) ResNet-50 and VGG-16 in torchvision's layout
# --------------------------------------------------------------------------------------------------

def torchvision_resnet50_trunk_keys():
    """torchvision ``resnet50().state_dict()`` keys up to layer3 (Bottleneck blocks 3, 4, 6)."""
    keys = ["conv1.weight"] + [f"bn1.{s}" for s in BN]
    for layer, blocks in (("layer1", 3), ("layer2", 4), ("layer3", 6)):
        for block in range(blocks):
            prefix = f"{layer}.{block}"
            for i in (1, 2, 3):
                keys.append(f"{prefix}.conv{i}.weight")
                keys += [f"{prefix}.bn{i}.{s}" for s in BN]
            if block == 0:
                keys.append(f"{prefix}.downsample.0.weight")
                keys += [f"{prefix}.downsample.1.{s}" for s in BN]
    return keys


# Shapes as torchvision has them (v1.5 Bottleneck: the stride sits on conv2).
RESNET_SHAPES = {
    "conv1.weight": (64, 3, 7, 7),
    "bn1.running_var": (64,),
    "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer1.2.conv3.weight": (256, 64, 1, 1),
    "layer2.0.conv1.weight": (128, 256, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3),
    "layer2.0.downsample.0.weight": (512, 256, 1, 1),
    "layer2.0.downsample.1.weight": (512,),
    "layer2.3.bn3.running_mean": (512,),
    "layer3.0.conv1.weight": (256, 512, 1, 1),
    "layer3.0.downsample.0.weight": (1024, 512, 1, 1),
    "layer3.5.conv3.weight": (1024, 256, 1, 1),
    "layer3.5.bn3.running_var": (1024,),
}

VGG16_CONVS = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG_SHAPES = {
    "features.0.weight": (64, 3, 3, 3),
    "features.0.bias": (64,),
    "features.5.weight": (128, 64, 3, 3),
    "features.10.weight": (256, 128, 3, 3),
    "features.17.weight": (512, 256, 3, 3),
    "features.24.weight": (512, 512, 3, 3),
    "features.28.weight": (512, 512, 3, 3),
    "features.28.bias": (512,),
}


def test_resnet50_keys_and_shapes_are_torchvisions():
    state = ResNet50().state_dict()
    expected = torchvision_resnet50_trunk_keys()
    assert len(expected) == 1 + 5 + (3 + 4 + 6) * 18 + 3 * 6
    assert sorted(state) == sorted(expected)
    for key in ("conv1.weight", "bn1.num_batches_tracked", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight",
                "layer2.0.downsample.1.running_mean", "layer3.5.bn3.running_var"):
        assert key in state
    for key, shape in RESNET_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def test_vgg16_keys_and_shapes_are_torchvisions():
    state = VGG16().state_dict()
    assert sorted(state) == sorted(f"features.{i}.{p}" for i in VGG16_CONVS for p in ("weight", "bias"))
    for key, shape in VGG_SHAPES.items():
        assert tuple(state[key].shape) == shape, key


def fake_torchvision_state(module, seed):
    """A torchvision-style state dict (an OrderedDict with ``_metadata``, as torch.save writes it) with
    ``module``'s keys and shapes, conv weights freshly initialised and BN statistics randomised."""
    torch.manual_seed(seed)
    state = type(module)().state_dict()
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            value.fill_(random.Random(key).randint(1, 10_000))
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif key.endswith("running_mean") or key.endswith(".bias"):
            value.normal_(0, 0.1)
        elif value.dim() == 1:
            value.uniform_(0.8, 1.2)
    return state


@pytest.fixture(scope="module")
def resnet_from_torchvision_file(tmp_path_factory):
    state = fake_torchvision_state(ResNet50(), seed=11)
    full = OrderedDict(state)
    full._metadata = state._metadata
    # What torchvision's file also holds and the trunk drops.
    full["layer4.0.conv1.weight"] = torch.randn(512, 1024, 1, 1)
    full["layer4.0.downsample.0.weight"] = torch.randn(2048, 1024, 1, 1)
    for s in BN:
        full[f"layer4.2.bn3.{s}"] = torch.ones(2048) if s != "num_batches_tracked" else torch.tensor(1)
    full["fc.weight"] = torch.randn(1000, 2048)
    full["fc.bias"] = torch.randn(1000)
    path = tmp_path_factory.mktemp("resnet") / "resnet50-imagenet.pth"
    torch.save(full, path)
    encoder, info = build_encoder("resnet50", init_weights=str(path))
    return encoder, info, state, path


def test_resnet50_loads_torchvision_style_file(resnet_from_torchvision_file):
    encoder, info, state, path = resnet_from_torchvision_file
    assert info == {"backbone": "resnet50", "weights": path.name, "trained": False}
    assert encoder.head is None and not encoder.training
    loaded = encoder.trunk.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    assert not any(k.startswith(("layer4", "fc")) for k in encoder.state_dict())


def test_resnet50_layer3_dilated_and_both_stages_at_stride_8(resnet_from_torchvision_file):
    encoder, *_ = resnet_from_torchvision_file
    trunk = encoder.trunk
    assert trunk.layer2[0].conv2.stride == (2, 2)
    assert trunk.layer2[0].downsample[0].stride == (2, 2)
    # torchvision's replace_stride_with_dilation: layer3's first block keeps dilation 1, the rest use 2.
    assert trunk.layer3[0].conv2.stride == (1, 1) and trunk.layer3[0].conv2.dilation == (1, 1)
    assert trunk.layer3[0].downsample[0].stride == (1, 1)
    for block in list(trunk.layer3)[1:]:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2) and block.conv2.stride == (1, 1)
    assert trunk.layer3[1].conv2.dilation == (2, 2)

    # One forward pass (it is the slow one): hooks record each stage's own output size.
    shapes = {}
    hooks = [getattr(trunk, name).register_forward_hook(
        lambda module, args, output, name=name: shapes.__setitem__(name, tuple(output.shape)))
        for name in ("layer2", "layer3")]
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            features = encoder(torch.rand(1, 3, 417, 417))
    finally:
        for hook in hooks:
            hook.remove()
    assert shapes == {"layer2": (1, 512, 53, 53), "layer3": (1, 1024, 53, 53)}
    assert features.shape == (1, 1536, 53, 53)
    assert torch.isfinite(features).all()
    assert_unit_norm_per_stage(features, (512, 1024))


def test_resnet50_file_without_num_batches_tracked_loads(tmp_path):
    # Older torchvision files (e.g. resnet50-19c8e357.pth) predate num_batches_tracked.
    state = fake_torchvision_state(ResNet50(), seed=3)
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    old["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "old.pth"
    torch.save(old, path)
    encoder, _ = build_encoder("resnet50", init_weights=str(path))
    loaded = encoder.trunk.state_dict()
    for key, value in old.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key


def test_resnet50_file_in_state_dict_wrapper_loads(tmp_path):
    state = fake_torchvision_state(ResNet50(), seed=4)
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": dict(state), "epoch": 90}, path)
    encoder, _ = build_encoder("resnet50", init_weights=str(path))
    assert torch.equal(encoder.trunk.state_dict()["layer3.5.bn3.running_var"], state["layer3.5.bn3.running_var"])


def test_vgg16_loads_torchvision_style_file_and_is_stride_8(tmp_path):
    state = fake_torchvision_state(VGG16(), seed=5)
    full = OrderedDict(state)
    full._metadata = state._metadata
    # torchvision's classifier (shapes shrunk: only the names matter, the trunk drops them).
    for i in (0, 3, 6):
        full[f"classifier.{i}.weight"] = torch.randn(8, 8)
        full[f"classifier.{i}.bias"] = torch.randn(8)
    path = tmp_path / "vgg16-imagenet.pth"
    torch.save(full, path)
    encoder, info = build_encoder("vgg16", init_weights=str(path))
    assert info["backbone"] == "vgg16"
    loaded = encoder.trunk.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key

    features = encoder.trunk.features
    assert isinstance(features[23], torch.nn.Identity)  # pool4 is a no-op
    for index in (24, 26, 28):
        assert features[index].dilation == (2, 2) and features[index].padding == (2, 2)
    for index in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21):
        assert features[index].dilation == (1, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        stages = encoder.trunk(torch.randn(1, 3, 64, 64))
        assert [tuple(s.shape) for s in stages] == [(1, 512, 8, 8), (1, 512, 8, 8)]
        out = encoder(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1024, 8, 8)
    assert_unit_norm_per_stage(out, (512, 512))


def test_weights_that_do_not_fit_are_refused(tmp_path):
    state = dict(fake_torchvision_state(ResNet50(), seed=6))
    del state["layer3.5.bn3.running_var"]
    missing = tmp_path / "missing.pth"
    torch.save(state, missing)
    with pytest.raises(GeoprotoError, match="do not fit"):
        build_encoder("resnet50", init_weights=str(missing))
    # The Lite0 file is no ResNet.
    with pytest.raises(GeoprotoError, match="do not fit"):
        build_encoder("resnet50", init_weights=shipped_weights_path())
    wrong_shape = tmp_path / "shape.pth"
    vgg = dict(fake_torchvision_state(VGG16(), seed=7))
    vgg["features.0.weight"] = torch.zeros(64, 4, 3, 3)
    torch.save(vgg, wrong_shape)
    with pytest.raises(GeoprotoError, match="do not fit"):
        build_encoder("vgg16", init_weights=str(wrong_shape))


def test_init_weights_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(GeoprotoError, match="not a state dict"):
        build_encoder("resnet50", init_weights=str(path))


# --------------------------------------------------------------------------------------------------
# (c) Backbones without shipped weights, unknown backbones
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["resnet50", "vgg16"])
def test_backbone_without_weights_asks_for_init_weights(backbone):
    assert BACKBONES[backbone].shipped_weights is None
    with pytest.raises(GeoprotoError, match="^init_weights: the .* encoder ships without weights") as info:
        build_encoder(backbone)
    assert backbone in str(info.value)


def test_unknown_backbone():
    with pytest.raises(GeoprotoError, match="unknown backbone"):
        build_encoder("resnet18")


def test_missing_weights_file(tmp_path):
    with pytest.raises(GeoprotoError, match="no such file"):
        build_encoder("resnet50", init_weights=str(tmp_path / "nope.pth"))
    with pytest.raises(GeoprotoError, match="no such file"):
        load_checkpoint(str(tmp_path / "nope.pt"))
    with pytest.raises(GeoprotoError, match=r"^empty path; give a file name$"):
        load_checkpoint("")


def test_an_empty_weights_path_is_refused_not_taken_for_none():
    """``checkpoint=""`` built the shipped encoder as if no checkpoint were given, and ``init_weights=""``
    loaded the backbone's shipped weights."""
    from geoproto.models.shipped import is_explicit

    with pytest.raises(GeoprotoError, match=r"^checkpoint: empty path; give a file name$"):
        build_encoder(checkpoint="")
    with pytest.raises(GeoprotoError, match=r"^init_weights: empty path; give a file name$"):
        build_encoder(DEFAULT_BACKBONE, init_weights="")
    assert is_explicit(DEFAULT_BACKBONE, "", None) and is_explicit(DEFAULT_BACKBONE, None, "")
    assert not is_explicit(DEFAULT_BACKBONE, None, None)


# --------------------------------------------------------------------------------------------------
# (d) The checkpoint format
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def headed_checkpoint(tmp_path_factory):
    torch.manual_seed(42)
    encoder = Encoder("efficientnet-lite0", with_head=True).eval()
    # Non-default input normalisation, to see it travel.
    encoder.mean.copy_(torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1))
    encoder.std.copy_(torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1))
    metadata = {"command": "geoproto train --epochs 3", "seed": 42, "classes": ["roof", "road"], "lr": 1e-3}
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    save_checkpoint(encoder, str(path), metadata)
    return encoder, metadata, path


def test_checkpoint_round_trip_gives_identical_outputs(headed_checkpoint):
    encoder, metadata, path = headed_checkpoint
    assert sorted(os.listdir(path.parent)) == ["model.pt"]  # no temporary file left behind
    loaded, loaded_metadata = load_checkpoint(str(path))
    assert loaded_metadata == metadata
    assert loaded.backbone == "efficientnet-lite0"
    assert loaded.head is not None and loaded.out_channels == 256
    assert not loaded.training
    torch.testing.assert_close(loaded.mean, encoder.mean, rtol=0, atol=0)
    torch.testing.assert_close(loaded.std, encoder.std, rtol=0, atol=0)
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    torch.manual_seed(1)
    images = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        assert torch.equal(loaded(images), encoder(images))
    via_build, build_metadata = build_encoder("vgg16", checkpoint=str(path))  # the checkpoint names the backbone
    assert via_build.backbone == "efficientnet-lite0" and build_metadata == {**metadata, "checkpoint": "model.pt"}

    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == FORMAT and payload["version"] == VERSION
    assert payload["backbone"] == "efficientnet-lite0" and payload["with_head"] is True
    assert payload["feature_layers"] == ["_blocks.4", "_blocks.10"]


def test_checkpoint_round_trip_without_head(lite0, tmp_path):
    encoder, _ = lite0
    path = tmp_path / "lite0.pt"
    save_checkpoint(encoder, str(path))
    loaded, metadata = load_checkpoint(str(path))
    assert metadata == {} and loaded.head is None and loaded.out_channels == 152
    images = torch.rand(1, 3, 40, 56)
    with torch.no_grad():
        assert torch.equal(loaded(images), encoder(images))


def test_save_checkpoint_overwrites_atomically(headed_checkpoint, tmp_path):
    encoder, _, _ = headed_checkpoint
    path = tmp_path / "model.pt"
    path.write_bytes(b"old content")
    save_checkpoint(encoder, str(path), {"run": 2})
    assert load_checkpoint(str(path))[1] == {"run": 2}
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


class WritesMarker:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


@pytest.mark.parametrize("wrapped", [False, True])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, wrapped):
    marker = tmp_path / "PWNED"
    evil = WritesMarker(marker)
    payload = ({"format": FORMAT, "version": VERSION, "backbone": "efficientnet-lite0", "with_head": False,
                "state_dict": {"x": evil}, "mean": [0.5] * 3, "std": [0.5] * 3, "metadata": {}}
               if wrapped else evil)
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    assert not marker.exists()

    with pytest.raises(GeoprotoError, match="refused"):
        load_checkpoint(str(path))
    with pytest.raises(GeoprotoError, match="refused"):
        build_encoder(checkpoint=str(path))
    with pytest.raises(GeoprotoError, match="refused"):
        build_encoder("resnet50", init_weights=str(path))
    assert not marker.exists()

    # The file really is live: an unsafe load runs the command. (Proves the test is not vacuous.)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_random_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(GeoprotoError, match="noise.pt: not a readable PyTorch weights file"):
        load_checkpoint(str(path))
    with pytest.raises(GeoprotoError, match="noise.pt: not a readable PyTorch weights file"):
        build_encoder("resnet50", init_weights=str(path))


@pytest.mark.parametrize("keep", [1, 10, 1000, 0.5, -22, -1])
def test_truncated_checkpoint_is_refused(headed_checkpoint, tmp_path, keep):
    _, _, source = headed_checkpoint
    data = source.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep > 0 else len(data) + keep)
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[:n])
    with pytest.raises(GeoprotoError, match=r"truncated.pt: (not a readable PyTorch weights file|refused)"):
        load_checkpoint(str(path))


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(GeoprotoError, match="empty.pt: not a readable PyTorch weights file"):
        load_checkpoint(str(path))


def test_plain_state_dict_is_not_a_checkpoint(lite0, tmp_path):
    encoder, _ = lite0
    path = tmp_path / "state.pt"
    torch.save(encoder.state_dict(), path)
    with pytest.raises(GeoprotoError, match="not a geoproto checkpoint"):
        load_checkpoint(str(path))
    with pytest.raises(GeoprotoError, match="not a geoproto checkpoint"):
        build_encoder(checkpoint=str(path))


def checkpoint_payload(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_unsupported_version_unknown_backbone_and_misfit_weights(headed_checkpoint, tmp_path):
    _, _, source = headed_checkpoint
    path = tmp_path / "edited.pt"

    payload = checkpoint_payload(source)
    payload["version"] = VERSION + 1
    torch.save(payload, path)
    with pytest.raises(GeoprotoError, match="version"):
        load_checkpoint(str(path))

    payload = checkpoint_payload(source)
    payload["backbone"] = "resnet18"
    torch.save(payload, path)
    with pytest.raises(GeoprotoError, match="unknown backbone"):
        load_checkpoint(str(path))

    payload = checkpoint_payload(source)
    payload["with_head"] = False  # the state dict has head.* entries the encoder lacks
    torch.save(payload, path)
    with pytest.raises(GeoprotoError, match="do not fit"):
        load_checkpoint(str(path))

    payload = checkpoint_payload(source)
    payload["backbone"] = "vgg16"
    torch.save(payload, path)
    with pytest.raises(GeoprotoError, match="do not fit"):
        load_checkpoint(str(path))


@pytest.mark.parametrize("damage", ["no state_dict", "no mean", "state_dict not tensors", "short mean"])
def test_incomplete_checkpoint_payload_is_refused(headed_checkpoint, tmp_path, damage):
    _, _, source = headed_checkpoint
    payload = checkpoint_payload(source)
    if damage == "no state_dict":
        del payload["state_dict"]
    elif damage == "no mean":
        del payload["mean"]
    elif damage == "state_dict not tensors":
        payload["state_dict"] = {k: 1 for k in payload["state_dict"]}
    else:
        payload["mean"] = [0.5]
    path = tmp_path / "damaged.pt"
    torch.save(payload, path)
    with pytest.raises(GeoprotoError, match=r"damaged.pt: (checkpoint has no state_dict|weights do not fit)"):
        load_checkpoint(str(path))


def test_zip_bomb_checkpoint_is_refused_from_its_declared_sizes(tmp_path, monkeypatch):
    """A small file declaring 256 MiB of contents is refused before torch.load reads a byte."""
    import zipfile

    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data/0", "w", force_zip64=True) as entry:
            chunk = bytes(1 << 20)
            for _ in range(256):
                entry.write(chunk)
    assert bomb.stat().st_size < 2 << 20

    def never(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", never)
    with pytest.raises(GeoprotoError, match=r"bomb.pt: declares 256 MiB of contents in a 0.\d MiB file; refused"):
        load_checkpoint(str(bomb))
    with pytest.raises(GeoprotoError, match="bomb.pt: declares 256 MiB"):
        build_encoder("resnet50", init_weights=str(bomb))


def test_real_checkpoints_pass_the_size_check(headed_checkpoint):
    from geoproto.models.checkpoint import _check_declared_size

    _check_declared_size(str(headed_checkpoint))
    _check_declared_size(shipped_weights_path())


def test_a_training_state_or_a_prototype_file_given_as_weights_is_named_for_what_it_is(tmp_path):
    """state.pt was 'not a geoproto checkpoint (ImageNet weights are initial weights ...)', a .gpp 'not a
    readable PyTorch weights file ([enforce fail at inline_container.cc:180] ...)', neither naming the option."""
    state = tmp_path / "state.pt"
    torch.save({"encoder": {}, "optimizer": {}, "scheduler": {}, "iteration": 3, "best": {}, "config": {}}, state)
    with pytest.raises(GeoprotoError, match=f"^checkpoint: {state}: is the training state train resumes from, not a "
                                            f"checkpoint; give the run's model.pt or best.pt$"):
        build_encoder(checkpoint=str(state))
    prototypes = tmp_path / "classes.gpp"
    with open(prototypes, "wb") as handle:
        np.savez(handle, header=np.frombuffer(b"{}", np.uint8), feature_sum=np.zeros((2, 4)))
    for param, arguments in (("checkpoint", {"checkpoint": str(prototypes)}),
                             ("init_weights", {"backbone": "resnet50", "init_weights": str(prototypes)})):
        with pytest.raises(GeoprotoError, match=f"^{param}: {prototypes}: is a prototype file, not weights \\(segment "
                                                f"--prototypes reads it\\)$"):
            build_encoder(**arguments)
