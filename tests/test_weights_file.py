"""read_weights: every way a weights file can fail is an InputError naming the file and the reason."""
import os
import pickle

import pytest
import torch

from fpn.errors import InputError
from fpn.io.weights_file import read_weights


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def _files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(3)}, good)
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.pt").write_text("model weights, honestly")
    torch.save({"w": _RunsCode()}, tmp_path / "evil.pt")
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump([1, 2], handle, protocol=4)
    (tmp_path / "folder.pt").mkdir()
    return good


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # torch's note on plain.pkl
@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("name, reason", [
    ("missing.pt", "no such file"),
    ("folder.pt", "not a file"),
    ("empty.pt", "the file is empty"),
    ("cut.pt", "unreadable or truncated torch file"),
    ("text.pt", "not a torch weights file"),
    ("plain.pkl", "not a torch weights file"),
    ("evil.pt", "refused, the file holds Python objects"),
])
def test_each_failure_is_named(tmp_path, capfd, name, reason, mmap):
    _files(tmp_path)
    with pytest.raises(InputError) as info:
        read_weights(tmp_path / name, "checkpoint", mmap=mmap)
    message = str(info.value)
    assert message.startswith(f"checkpoint {tmp_path / name}: {reason}") and "\n" not in message
    assert "this must never run" not in capfd.readouterr().out


@pytest.mark.parametrize("mmap", [False, True])
def test_a_good_file_loads(tmp_path, mmap):
    good = _files(tmp_path)
    assert torch.equal(read_weights(good, mmap=mmap)["w"], torch.ones(3))
