"""Prototype files: the safe format, its checks, pixel-weighted merging, and building one from a support."""

import copy
import io
import itertools
import pickle
import zipfile

import geopandas
import numpy as np
import pytest
import torch
from torch import nn

from geoproto.classes import ClassInfo
from geoproto.errors import GeoprotoError
from geoproto.fewshot import PrototypeAccumulator
from geoproto.heads import DEFAULT_ALPHA
from geoproto.models import build_shipped
from geoproto.prototype_file import (PrototypeFile, encoder_fingerprint, encoder_label, load_prototypes, merge,
                                     scoring_record)
from geoproto.prototypes import build_prototype_file
from geoproto.segment import SegmentOptions

FINGERPRINT = "ab" * 32
_SUPPORTS = itertools.count()


def make_file(names=("building", "ground", "tree"), ids=None, channels=4, seed=0, numbered=False,
              fingerprint=FINGERPRINT, encoder_name="dubai", head=None, scoring="prototypes",
              alpha=20.0) -> PrototypeFile:
    rng = np.random.default_rng(seed)
    ids = list(ids or range(1, len(names) + 1))
    pixels = rng.integers(1, 1000, len(names)).astype(np.int64)
    support = f"/data/{next(_SUPPORTS)}.gpkg"  # each file its own support: merging one twice is refused
    source = {"image": "/data/a.tif", "support": support, "support_sha256": None, "bands": [1, 2, 3],
              "dtype": "uint8", "scaling": [[0.0, 255.0]] * 3, "pixel_size_m": 0.5, "crs": "EPSG:32616",
              "pixels": dict(zip(names, pixels.tolist()))}
    encoder = {"name": encoder_name, "fingerprint": fingerprint, "channels": channels,
               "description": {"name": encoder_name}}
    return PrototypeFile(ClassInfo(ids, list(names), [(255, 0, 0)] + [None] * (len(names) - 1)),
                         rng.normal(size=(len(names), channels)) * pixels[:, None], pixels, encoder, [source],
                         numbered, head or {}, scoring=scoring_record(scoring, "asked for"), alpha=alpha)


def test_round_trip_keeps_every_array_bit_for_bit(tmp_path):
    original = make_file(head={"weight": np.arange(12, dtype=np.float32).reshape(3, 4)}, scoring="linear")
    original.save(tmp_path / "a.gpp")
    loaded = load_prototypes(str(tmp_path / "a.gpp"))
    assert loaded.classes == original.classes
    assert loaded.feature_sum.tobytes() == original.feature_sum.tobytes()
    assert loaded.pixels.tolist() == original.pixels.tolist()
    assert loaded.encoder == original.encoder and loaded.sources == original.sources
    assert loaded.scoring == {"name": "linear", "scales": [1], "head": "linear", "reason": "asked for"}
    assert loaded.alpha == original.alpha == 20.0
    np.testing.assert_array_equal(loaded.head["weight"], original.head["weight"])
    # the prototypes are the accumulator's, to the bit
    accumulator = PrototypeAccumulator(3, 4)
    accumulator.feature_sum = torch.from_numpy(original.feature_sum.copy())
    accumulator.pixels = torch.from_numpy(original.pixels.copy())
    assert torch.equal(loaded.prototypes(), accumulator.prototypes())


def test_encoder_fingerprint_follows_the_weights_not_the_object():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    twin = copy.deepcopy(module).to(memory_format=torch.channels_last)
    assert encoder_fingerprint(module) == encoder_fingerprint(twin)
    with torch.no_grad():
        twin[0].weight[0, 0, 0, 0] += 1e-6
    assert encoder_fingerprint(module) != encoder_fingerprint(twin)
    assert len(encoder_fingerprint(module)) == 64


def test_a_file_from_another_encoder_is_refused_naming_both(tmp_path):
    imagenet, info = build_shipped("imagenet")
    made = make_file(channels=imagenet.out_channels)
    made.path = "dubai.gpp"
    with pytest.raises(GeoprotoError, match=r"dubai.gpp: made with dubai .*this run uses imagenet"):
        made.check_encoder(encoder_fingerprint(imagenet), info)
    made.check_encoder(FINGERPRINT, {"name": "dubai"})  # the same weights: accepted


def test_the_encoder_to_segment_with_is_the_file_s_own_unless_named():
    shipped = make_file(encoder_name="imagenet")
    assert [shipped.encoder_choice(e) for e in (None, "auto", "dubai")] == ["imagenet", "imagenet", "dubai"]
    trained = make_file(encoder_name="resnet50 best.pt")
    trained.path = "t.gpp"
    with pytest.raises(GeoprotoError, match=r"t.gpp: made with encoder resnet50 best.pt, not a shipped one; give "
                                            r"the checkpoint or init_weights it was made with"):
        trained.encoder_choice(None)
    # a checkpoint or weights given name the encoder themselves: nothing to ask for
    assert trained.encoder_choice(None, explicit=True) is None and trained.encoder_choice("auto", True) == "auto"


def test_encoder_labels_name_shipped_encoders_checkpoints_and_weights():
    assert encoder_label({"name": "dubai", "backbone": "efficientnet-lite0"}) == "dubai"
    assert encoder_label({"backbone": "resnet50", "weights": "r50.pth"}) == "resnet50 r50.pth"
    assert encoder_label({"config": {"backbone": "vgg16"}, "checkpoint": "best.pt"}) == "vgg16 best.pt"
    assert encoder_label({"config": {"backbone": "vgg16"}}) == "vgg16 a checkpoint"
    assert encoder_label({}) == "unnamed encoder"


def test_far_resolution_and_band_count_are_warned(tmp_path):
    made = make_file()
    with pytest.warns(UserWarning, match=r"2 m per pixel, but the prototypes .* were learnt at 0.5 m"):
        assert len(made.check_raster("coarse.tif", 3, 2.0)) == 1
    with pytest.warns(UserWarning, match="single-band imagery, but the prototypes .* come from 3-band imagery"):
        made.check_raster("pan.tif", 1, 0.6)
    assert made.check_raster("same.tif", 3, 0.8) == []


def _rewrite(path, **arrays):
    """Rewrite the npz at ``path`` with some members replaced (None removes one)."""
    with np.load(path, allow_pickle=False) as archive:
        members = {name: archive[name] for name in archive.files}
    members.update(arrays)
    with open(path, "wb") as handle:
        np.savez(handle, **{k: v for k, v in members.items() if v is not None})


def _header(path):
    import json
    with np.load(path, allow_pickle=False) as archive:
        return json.loads(archive["header"].tobytes())


def _encode(header):
    import json
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


@pytest.mark.parametrize("change, message", [
    (lambda p: _rewrite(p, feature_sum=np.zeros((2, 4))), r"feature_sum must be 3 x 4 float64 .* found 2 x 4 float64"),
    (lambda p: _rewrite(p, pixels=np.ones(3, np.int32)), r"pixels must be 3 int64 counts; found 3 int32"),
    (lambda p: _rewrite(p, feature_sum=np.full((3, 4), np.nan)), "feature_sum holds NaN"),
    (lambda p: _rewrite(p, pixels=np.array([5, 0, 5])), "class 'ground' has no labelled pixel"),
    (lambda p: _rewrite(p, header=None), r"not a geoproto prototype file \(no header\)"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "version": 99})), "format version 99, newer"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "format": "other"})), "not a geoproto prototype file"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "encoder": {"name": "x"}})), "encoder identity"),
    (lambda p: _rewrite(p, extra=np.zeros(2)), "unexpected member 'extra'"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "head": 3})), "head arrays do not match"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "sources": [{"image": "a.tif", "bands": [1], "pixels": {},
                                                                      "pixel_size_m": "0.5"}]})), "provenance"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "classes": [{"id": 1, "name": "a", "color": 7}] * 3})),
     r"classes are not a list of \{id, name, color\}"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "classes": [{"id": i, "name": "a", "color": None}
                                                                     for i in (1, 2, 3)]})), "listed twice"),
    (lambda p: _rewrite(p, header=np.frombuffer(b"[" * 100000, np.uint8)), "header is not JSON"),
    (lambda p: _rewrite(p, **{"head.w": np.zeros(2, np.float64)}), "head arrays do not match"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "scoring": {"name": "fancy"}})),
     r"its scoring \(name, scales, head, reason\) is missing or malformed"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "scoring": {**_header(p)["scoring"], "scales": [1, 2]}})),
     "its scoring .* malformed"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "scoring": scoring_record("linear", "asked for")})),
     "its linear head needs a 3 x 4 weight; found nothing"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "alpha": 0})), r"its alpha must be > 0 and <= 1000, got 0"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "alpha": "10"})), "its alpha must be a finite number"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "orientations": 3})),
     "its orientations must be one of 1, 2, 4, 8; found 3"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "orientations": 4.0})), "its orientations must be one of"),
    (lambda p: _rewrite(p, header=_encode({**_header(p), "head": ["weight"]}),
                        **{"head.weight": np.zeros((3, 4), np.float32)}),
     "holds head arrays, but its scoring prototypes"),
])
def test_inconsistent_files_are_refused_with_one_line(tmp_path, change, message):
    path = tmp_path / "bad.gpp"
    make_file().save(path)
    change(path)
    with pytest.raises(GeoprotoError, match=message) as caught:
        load_prototypes(str(path))
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_truncated_and_corrupt_files_are_refused(tmp_path):
    path = tmp_path / "a.gpp"
    make_file().save(path)
    data = path.read_bytes()
    (tmp_path / "short.gpp").write_bytes(data[:len(data) // 2])
    with pytest.raises(GeoprotoError, match=r"short.gpp: not a valid prototype file: corrupt or truncated"):
        load_prototypes(str(tmp_path / "short.gpp"))
    # one flipped byte inside the stored feature sums: the zip's CRC catches it
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("feature_sum.npy")
    offset = member.header_offset + 30 + len(member.filename) + member.compress_size // 2 + 40
    flipped = bytearray(data)
    flipped[offset] ^= 0xFF
    (tmp_path / "flipped.gpp").write_bytes(bytes(flipped))
    with pytest.raises(GeoprotoError, match=r"flipped.gpp: not a valid prototype file: corrupt"):
        load_prototypes(str(tmp_path / "flipped.gpp"))
    with zipfile.ZipFile(tmp_path / "a.gpp", "a") as archive:
        archive.writestr("feature_sum", b"not an array")
    with pytest.raises(GeoprotoError, match=r"a.gpp: not a valid prototype file: member 'feature_sum' is not a NumPy"):
        load_prototypes(str(tmp_path / "a.gpp"))
    (tmp_path / "text.gpp").write_text("hello")
    with pytest.raises(GeoprotoError, match=r"text.gpp: not a geoproto prototype file"):
        load_prototypes(str(tmp_path / "text.gpp"))
    with pytest.raises(GeoprotoError, match=r"missing.gpp: no such file"):
        load_prototypes(str(tmp_path / "missing.gpp"))
    with pytest.raises(GeoprotoError, match=r"^prototypes: empty path; give a file name$"):
        load_prototypes("")


class _Payload:
    """Pickled, it would create a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_pickled_objects_are_refused_without_running_them(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "evil.gpp"
    make_file().save(path)
    evil = np.empty(1, object)
    evil[0] = _Payload(str(target))
    _rewrite(path, header=evil)
    with pytest.raises(GeoprotoError, match=r"evil.gpp: not a valid prototype file: holds data that is not plain"):
        load_prototypes(str(path))
    (tmp_path / "raw.gpp").write_bytes(pickle.dumps(_Payload(str(target))))
    with pytest.raises(GeoprotoError, match=r"raw.gpp: not a geoproto prototype file"):
        load_prototypes(str(tmp_path / "raw.gpp"))
    buffer = io.BytesIO()
    torch.save({"x": _Payload(str(target))}, buffer)  # a zip too, holding a pickle
    (tmp_path / "torch.gpp").write_bytes(buffer.getvalue())
    # named for what it is (was "member 'torch.gpp/data.pkl' is not a NumPy array"), and never unpickled
    with pytest.raises(GeoprotoError, match=r"torch.gpp: is PyTorch weights, not a prototype file \(a trained "
                                            r"checkpoint is segment's --checkpoint\)$"):
        load_prototypes(str(tmp_path / "torch.gpp"))
    assert not target.exists()


def test_merge_adds_sums_and_pixels_per_class_name():
    a = make_file(("building", "ground", "tree"), seed=1)
    b = make_file(("building", "ground", "tree", "water"), seed=2)
    pooled = merge([a, b])
    assert pooled.classes.names == ["building", "ground", "tree", "water"]
    assert pooled.classes.colors[0] == (255, 0, 0)
    assert pooled.pixels.tolist() == (np.append(a.pixels, 0) + b.pixels).tolist()
    np.testing.assert_array_equal(pooled.feature_sum[:3], a.feature_sum + b.feature_sum[:3])
    np.testing.assert_array_equal(pooled.feature_sum[3], b.feature_sum[3])
    assert len(pooled.sources) == 2


def test_merge_warns_of_class_names_differing_only_by_case():
    """Two files naming "Building" and "building" pooled into four classes without a word."""
    a = make_file(("building", "tree"), numbered=True, seed=1)
    b = make_file(("Building", "tree"), numbered=True, seed=2)
    with pytest.warns(UserWarning, match="the pooled prototypes: class names 'building' and 'Building' differ only by "
                                         "case and stay separate classes"):
        pooled = merge([a, b])
    assert pooled.classes.names == ["Building", "building", "tree"]


def test_merge_renumbers_classes_numbered_by_name_and_refuses_explicit_conflicts():
    a = make_file(("building", "tree"), numbered=True, seed=1)
    b = make_file(("ground", "tree"), numbered=True, seed=2)
    pooled = merge([a, b])  # tree is 2 in both, but ground and building both claim 1
    assert (pooled.classes.ids, pooled.classes.names) == ([1, 2, 3], ["building", "ground", "tree"])
    np.testing.assert_array_equal(pooled.feature_sum[2], a.feature_sum[1] + b.feature_sum[1])
    a.path, b.path = "a.gpp", "b.gpp"
    a.numbered_by_name = False
    with pytest.raises(GeoprotoError, match=r"class id 1 stands for 'building' and 'ground' in different files"):
        merge([a, b])
    c = make_file(("building", "tree"), ids=[1, 5], seed=3)
    c.path = "c.gpp"
    with pytest.raises(GeoprotoError, match=r"class 'tree' has different ids \(2 in a.gpp, 5 in c.gpp\)"):
        merge([a, c])


def test_a_file_without_scoring_holds_plain_prototypes(tmp_path):
    make_file().save(tmp_path / "old.gpp")
    _rewrite(tmp_path / "old.gpp", header=_encode({k: v for k, v in _header(tmp_path / "old.gpp").items()
                                                   if k != "scoring"}))
    old = load_prototypes(str(tmp_path / "old.gpp"))
    assert old.variant == "prototypes" and old.scales == (1,) and old.scoring["head"] == "prototypes"


def test_the_alpha_a_file_was_made_at_is_kept_and_a_file_without_one_was_made_at_20(tmp_path):
    make_file(alpha=10.0).save(tmp_path / "ten.gpp")
    assert _header(tmp_path / "ten.gpp")["alpha"] == 10.0
    assert load_prototypes(str(tmp_path / "ten.gpp")).alpha == 10.0
    header = _header(tmp_path / "ten.gpp")
    del header["alpha"]  # as files written before alpha was recorded
    _rewrite(tmp_path / "ten.gpp", header=_encode(header))
    assert load_prototypes(str(tmp_path / "ten.gpp")).alpha == DEFAULT_ALPHA == 20.0


class _Extractor:
    """Enough of a FeatureExtractor for ``PrototypeFile.classifier``: an encoder to fingerprint."""

    def __init__(self):
        torch.manual_seed(0)
        self.encoder = nn.Conv2d(3, 4, 1)


@pytest.mark.parametrize("scoring", ["prototypes", "linear"])
def test_another_alpha_is_an_exact_softmax_temperature_change(scoring):
    """Asked for another alpha than the file's, a file scores its logits times alpha / the file's alpha: a
    plain file through alpha itself, a linear head through its weight, fitted at the file's alpha."""
    extract = _Extractor()
    weight = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    made = make_file(fingerprint=encoder_fingerprint(extract.encoder), scoring=scoring, alpha=10.0,
                     head={"weight": weight} if scoring == "linear" else None)
    features = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(2))
    at_file, stats = made.classifier(extract, {}, None)
    at_thirty, stats_thirty = made.classifier(extract, {}, 30.0)
    assert (at_file.alpha, at_thirty.alpha, stats["alpha"], stats_thirty["alpha"]) == (10.0, 30.0, 10.0, 30.0)
    torch.testing.assert_close(at_thirty.score_features(features, (24, 40)),
                               3 * at_file.score_features(features, (24, 40)), rtol=1e-5, atol=1e-5)
    if scoring == "linear":
        assert torch.equal(at_file.head.weight, torch.from_numpy(weight))  # the file's own alpha: untouched


def test_merge_refuses_a_support_pooled_twice_naming_the_files():
    """A file given twice, or a merged file with one of its parts, counted that support's pixels twice
    (outweighing the others) and said "2 support(s)"."""
    a, b = make_file(seed=1), make_file(seed=2)
    a.path, b.path = "a.gpp", "b.gpp"
    support = f"support {a.sources[0]['support']} on /data/a.tif"
    with pytest.raises(GeoprotoError, match=f"^a.gpp: given twice; pooled, the pixels of its {support} would count "
                                            f"twice \\(give each file once\\)$"):
        merge([a, b, a])
    both = merge([a, b])
    both.path = "ab.gpp"
    with pytest.raises(GeoprotoError, match=f"^a.gpp and ab.gpp both hold the prototypes of {support}; pooled, its "
                                            f"pixels would count twice \\(merge each support once\\)$"):
        merge([both, a])
    assert merge([both, make_file(seed=3)]).pixels.sum() > both.pixels.sum()


def test_merge_refuses_files_made_at_different_alphas():
    a, b = make_file(), make_file(alpha=10.0)
    a.path, b.path = "a.gpp", "b.gpp"
    with pytest.raises(GeoprotoError, match=r"^b.gpp: made at alpha 10, but a.gpp at alpha 20; only prototypes of one "
                                            r"softmax scale can be pooled \(rebuild one with `geoproto prototypes "
                                            r"--alpha`\)$"):
        merge([a, b])
    assert merge([b, make_file(alpha=10.0, seed=1)]).alpha == 10.0


def test_merge_pools_only_features_of_the_same_scales_and_drops_heads():
    linear = make_file(head={"weight": np.ones((3, 4), np.float32)}, scoring="linear")
    multiscale, both = make_file(scoring="multiscale"), make_file(scoring="multiscale+linear",
                                                                 head={"weight": np.ones((3, 4), np.float32)})
    linear.path, multiscale.path = "l.gpp", "m.gpp"
    with pytest.raises(GeoprotoError, match=r"m.gpp: made with scoring multiscale \(features at 1x\+2x\), but "
                                            r"l.gpp with linear \(features at 1x\)"):
        merge([linear, multiscale])
    with pytest.warns(UserWarning, match="the merged prototypes have no head"):
        pooled = merge([multiscale, both])
    assert pooled.head == {} and pooled.scoring == scoring_record(
        "multiscale", "merged from 2 prototype files; heads dropped (of multiscale+linear)")
    assert merge([linear]).scoring == linear.scoring and merge([linear]).head is linear.head


def test_merge_refuses_files_of_different_encoders():
    a, b = make_file(), make_file(fingerprint="cd" * 32, encoder_name="imagenet")
    a.path, b.path = "a.gpp", "b.gpp"
    with pytest.raises(GeoprotoError, match=r"b.gpp: made with encoder imagenet .* but a.gpp with dubai"):
        merge([a, b])


@pytest.fixture(scope="module")
def halves(paths, spacenet_crop, tmp_path_factory):
    """The bundled support split in two sets (every class in each, on the crop), and files built from
    each and from both."""
    folder = tmp_path_factory.mktemp("halves")
    support = geopandas.read_file(paths.support)
    support.iloc[::2].to_file(folder / "a.gpkg")
    support.iloc[1::2].to_file(folder / "b.gpkg")
    options = SegmentOptions(scoring="prototypes", tile_size=320, overlap=32, encoder="imagenet", progress=False)
    chip = str(spacenet_crop)
    built = {name: build_prototype_file(pairs, options)[0] for name, pairs in {
        "a": [(chip, str(folder / "a.gpkg"))], "b": [(chip, str(folder / "b.gpkg"))],
        "whole": [(chip, str(paths.support))]}.items()}
    return folder, built


def test_merging_two_supports_equals_building_from_both(halves):
    _, built = halves
    pooled = merge([built["a"], built["b"]])
    whole = built["whole"]
    assert pooled.classes == whole.classes
    assert pooled.pixels.tolist() == whole.pixels.tolist()  # every labelled pixel counted once, exactly
    # the sums themselves add exactly; the whole run sums each window's pixels of both sets in float32 first
    np.testing.assert_array_equal(pooled.feature_sum, built["a"].feature_sum + built["b"].feature_sum)
    np.testing.assert_allclose(pooled.feature_sum, whole.feature_sum, rtol=1e-5)
    np.testing.assert_allclose(pooled.prototypes(), whole.prototypes(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("stretch", ["shared", "per-input"])
def test_pairs_built_in_one_run_share_a_stretch(paths, spacenet_crop, dark_crop, stretch):
    """Two rasters of one run (the crop, and the crop with its right 40 % blanked dark, which moves its
    percentiles) are stretched alike unless ``per-input`` is asked for; the provenance records the
    stretch each was read with."""
    options = SegmentOptions(scoring="prototypes", tile_size=320, overlap=32, encoder="imagenet", progress=False,
                             stretch=stretch)
    built, _ = build_prototype_file([(str(spacenet_crop), str(paths.support)),
                                     (str(dark_crop), str(paths.support))], options)
    first, second = (source["scaling"] for source in built.sources)
    assert (first == second) == (stretch == "shared")


def test_a_file_gives_its_supports_stretch_only_where_it_fits(halves):
    """The supports' stretch for a raster of the same kind of bands; none for another kind, nor for a file
    whose supports were read with different stretches (merged from separate runs)."""
    _, built = halves
    whole = built["whole"]
    (source,) = whole.sources
    assert whole.stretch("uint16", 1) == [tuple(source["scaling"][0])]
    assert whole.stretch("uint8", 1) is None and whole.stretch("uint16", 3) is None
    same, other = copy.deepcopy(whole), copy.deepcopy(whole)
    for item in (same, other):  # another support on the raster
        item.sources[0]["support_sha256"] = "11" * 32
    other.sources[0]["scaling"] = [[source["scaling"][0][0] + 1, source["scaling"][0][1]]]
    assert merge([whole, other]).stretch("uint16", 1) is None
    assert merge([whole, same]).stretch("uint16", 1) == whole.stretch("uint16", 1)


def test_built_file_records_encoder_scaling_resolution_and_provenance(halves, paths, spacenet_crop, tmp_path):
    _, built = halves
    whole = built["whole"]
    imagenet, _ = build_shipped("imagenet")
    assert whole.encoder["name"] == "imagenet" and whole.encoder["fingerprint"] == encoder_fingerprint(imagenet)
    assert whole.encoder["channels"] == imagenet.out_channels == whole.feature_sum.shape[1]
    (source,) = whole.sources
    assert source["image"] == str(spacenet_crop) and source["support"] == str(paths.support)
    assert source["pixel_size_m"] == 0.5 and source["crs"] == "EPSG:32616"
    assert source["dtype"] == "uint16" and source["bands"] == [1]
    low, high = source["scaling"][0]
    assert 0 < low < high  # the chip's 2-98 % stretch
    assert source["pixels"] == whole.pixel_counts and len(source["support_sha256"]) == 64
    whole.save(tmp_path / "whole.gpp")
    assert load_prototypes(str(tmp_path / "whole.gpp")).sources == whole.sources


def test_the_orientations_a_file_was_made_with_are_kept_and_a_file_without_them_was_made_with_one(tmp_path):
    made = make_file()
    made.orientations = 8
    made.save(tmp_path / "turned.gpp")
    assert _header(tmp_path / "turned.gpp")["orientations"] == 8
    assert load_prototypes(str(tmp_path / "turned.gpp")).orientations == 8
    header = _header(tmp_path / "turned.gpp")
    del header["orientations"]  # as files written before orientations were recorded
    _rewrite(tmp_path / "turned.gpp", header=_encode(header))
    assert load_prototypes(str(tmp_path / "turned.gpp")).orientations == 1
