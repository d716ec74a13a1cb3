"""tg.save / tg.load: round trips (model + optimizer + metadata), no pickle, atomic writes that
survive a crash mid-write, and clear errors for corrupt, truncated and mismatched files."""

import math
import os
import zipfile

import numpy as np
import pytest

import tinygrad_rnn as tg
from tinygrad_rnn import nn, optim, serialization
from tinygrad_rnn.serialization import CheckpointError


def small_model():
    tg.manual_seed(0)
    return tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)])


def test_round_trip_of_model_optimizer_and_metadata(tmp_path):
    model = small_model()
    opt = optim.Adam(model.parameters(), lr=0.01)
    for p in model.parameters():
        p.grad = np.ones_like(p.data)
    opt.step()
    obj = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "meta": {"step": 7, "lr": 0.1, "name": "char-lm ✓ \"quoted\"\n", "done": False, "none": None,
                 "big": 2 ** 100, "nan": float("nan"), "inf": -math.inf,
                 "history": [1.5, 2, [3, "x"]], "pair": (1, (2.0, "three")),
                 "np_scalar": np.float32(0.25), "empty": {}},
        "arrays": [np.arange(6, dtype=np.int32).reshape(2, 3), np.array("text"), np.zeros((0, 4)),
                   np.array([True, False]), np.float16([1.5])],
    }
    path = tmp_path / "ckpt.npz"
    tg.save(obj, path)
    back = tg.load(path)

    fresh = tg.Stack([tg.LSTMCell(3, 4), tg.GRUCell(4, 4)])
    fresh.load_state_dict(back["model"])
    for (n1, p1), (n2, p2) in zip(model.named_parameters(), fresh.named_parameters()):
        assert n1 == n2
        np.testing.assert_array_equal(p1.data, p2.data)
    assert list(back["model"]) == list(model.state_dict())           # order kept
    opt2 = optim.Adam(fresh.parameters(), lr=0.5)
    opt2.load_state_dict(back["optimizer"])
    assert opt2.lr == 0.01 and opt2.step_count == 1
    meta = back["meta"]
    assert meta["step"] == 7 and type(meta["step"]) is int
    assert meta["lr"] == 0.1 and meta["name"] == "char-lm ✓ \"quoted\"\n"
    assert meta["done"] is False and meta["none"] is None and meta["big"] == 2 ** 100
    assert math.isnan(meta["nan"]) and meta["inf"] == -math.inf
    assert meta["history"] == [1.5, 2, [3, "x"]]
    assert meta["pair"] == (1, (2.0, "three")) and isinstance(meta["pair"][1], tuple)
    assert meta["np_scalar"] == np.float32(0.25) and meta["np_scalar"].dtype == np.float32
    assert meta["empty"] == {}
    for a, b in zip(obj["arrays"], back["arrays"]):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def test_files_load_without_pickle(tmp_path):
    """The file is a plain npz whose every member numpy reads with allow_pickle=False."""
    path = tmp_path / "c.npz"
    tg.save({"w": np.ones(3), "meta": {"a": [1, 2]}}, path)
    with np.load(path, allow_pickle=False) as f:
        for k in f.files:
            assert f[k].dtype != object


def test_save_refuses_what_it_cannot_store_without_pickle(tmp_path):
    path = tmp_path / "x.npz"
    with pytest.raises(TypeError, match=r"cannot store set at obj\['meta'\]\['tags'\]"):
        tg.save({"meta": {"tags": {1, 2}}}, path)
    with pytest.raises(TypeError, match=r"dtype object"):
        tg.save({"a": np.array([None, 1], dtype=object)}, path)
    with pytest.raises(TypeError, match="dict keys must be strings"):
        tg.save({"a": {1: 2}}, path)
    with pytest.raises(TypeError, match="is a Tensor"):
        tg.save({"w": tg.Tensor(np.ones(2))}, path)
    with pytest.raises(TypeError, match="expected a dict"):
        tg.save([1, 2], path)
    assert not path.exists()
    assert os.listdir(tmp_path) == []                  # no temporary left behind


def test_a_crash_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    tg.save({"w": np.arange(4.0), "step": 1}, path)
    before = path.read_bytes()

    def crash(f, members):
        f.write(b"PK\x03\x04 half a zip")             # some bytes reach the disk, then...
        raise OSError("disk full")

    monkeypatch.setattr(serialization, "_write_npz", crash)
    with pytest.raises(OSError, match="disk full"):
        tg.save({"w": np.zeros(4), "step": 2}, path)
    assert path.read_bytes() == before
    assert tg.load(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]   # the temporary was removed


def test_ctrl_c_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    tg.save({"step": 1}, path)

    def interrupted(f, members):
        np.savez(f, **members)
        raise KeyboardInterrupt

    monkeypatch.setattr(serialization, "_write_npz", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tg.save({"step": 2}, path)
    monkeypatch.undo()
    assert tg.load(path)["step"] == 1
    assert os.listdir(tmp_path) == ["ckpt.npz"]


def test_truncated_file_gives_a_clear_error_naming_it(tmp_path):
    path = tmp_path / "ckpt.npz"
    tg.save({"w": np.random.default_rng(0).standard_normal(2000), "meta": {"a": 1}}, path)
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"'{bad}' is not a readable checkpoint"):
            tg.load(bad)


def test_corrupt_bytes_are_detected(tmp_path):
    """A flipped byte inside an array fails the zip CRC check rather than loading wrong
    weights."""
    path = tmp_path / "ckpt.npz"
    tg.save({"w": np.zeros(5000)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        tg.load(path)


def test_foreign_and_missing_files(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.txt"):
        tg.load(text)
    single = tmp_path / "one.npy"
    np.save(single, np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        tg.load(single)
    with pytest.raises(FileNotFoundError, match="no such file '.*missing.npz'"):
        tg.load(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tg.save({"a": 1}, tmp_path / "no" / "dir" / "x.npz")


def test_damaged_manifest(tmp_path):
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as z:
        with z.open(serialization.MANIFEST_KEY + ".npy", "w") as f:
            np.lib.format.write_array(f, np.frombuffer(b"{not json", dtype=np.uint8))
    with pytest.raises(CheckpointError, match="damaged manifest"):
        tg.load(path)


def test_plain_npz_loads_as_a_flat_dict(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(2), b=np.arange(3))
    back = tg.load(path)
    assert set(back) == {"a", "b"}
    np.testing.assert_array_equal(back["b"], np.arange(3))


def test_mismatched_model_checkpoint_errors_name_the_parameter(tmp_path):
    path = tmp_path / "m.npz"
    tg.save({"model": nn.Linear(3, 4).state_dict()}, path)
    state = tg.load(path)["model"]
    with pytest.raises(ValueError, match=r"'weight' has shape \(5, 3\) but the state holds \(4, 3\)"):
        nn.Linear(3, 5).load_state_dict(state)
    with pytest.raises(KeyError, match=r"unexpected parameters \['bias'\]"):
        nn.Linear(3, 4, bias=False).load_state_dict(state)


def test_save_accepts_a_path_without_npz_suffix(tmp_path):
    path = tmp_path / "checkpoint.bin"
    tg.save({"a": np.ones(1)}, path)
    assert path.exists() and not (tmp_path / "checkpoint.bin.npz").exists()
    assert tg.load(path)["a"][0] == 1.0
