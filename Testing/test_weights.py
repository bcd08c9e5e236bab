"""Model files: safetensors weights + JSON card, integrity checks, bundled-model lookup."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from VolumetricSRLib.models import model_cards
from VolumetricSRLib.models.thin_slice_network import count_parameters
from VolumetricSRLib.models.tvsrn import TVSRN, TVSRNConfig
from VolumetricSRLib.models.weights import (
    CARD_FORMAT,
    ModelCard,
    ModelFileError,
    NoModelError,
    bundled_models,
    bundled_models_dir,
    default_model_path,
    load_model,
    read_card,
    save_model,
)

TINY = TVSRNConfig.tiny()
REPO = Path(__file__).resolve().parents[1]


def tiny_model(seed: int = 0) -> TVSRN:
    torch.manual_seed(seed)
    model = TVSRN(TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))  # every tensor away from its initial value
    return model.eval()


def save_tiny(directory: Path, model_id: str = "tiny", trained: bool = True, seed: int = 0) -> Path:
    return save_model(
        tiny_model(seed),
        directory,
        id=model_id,
        name="Tiny test model",
        description="two channels, one layer each",
        trained=trained,
        training={"data": "none", "steps": 0},
        metrics={"psnr": 12.5},
    )


def edit_card(card_path: Path, **changes: object) -> None:
    data = json.loads(card_path.read_text())
    data.update(changes)
    card_path.write_text(json.dumps(data))


@pytest.fixture
def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Resources/Models folder standing in for the bundled one."""
    directory = tmp_path / "Models"
    directory.mkdir()
    monkeypatch.setattr(model_cards, "bundled_models_dir", lambda: directory)
    return directory


def test_save_then_load_gives_the_same_network_and_a_complete_card(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]
    weights_path = tmp_path / "tiny.safetensors"

    data = json.loads(card_path.read_text())
    assert data["format"] == CARD_FORMAT
    assert data["sha256"] == hashlib.sha256(weights_path.read_bytes()).hexdigest()
    assert data["parameters"] == count_parameters(TVSRN(TINY))
    assert data["architecture"] == TINY.to_dict()
    assert data["ratio"] == 5 and data["thick_spacing_mm"] == 5.0 and data["thin_spacing_mm"] == 1.0
    assert data["intensity_window"] == [-1024.0, 2048.0]
    assert data["weights_file"] == "tiny.safetensors" and data["trained"] is True
    assert data["training"] == {"data": "none", "steps": 0} and data["metrics"] == {"psnr": 12.5}

    original = tiny_model()
    x = torch.rand(1, 4, 12, 12, generator=torch.Generator().manual_seed(1))
    for reference in (card_path, weights_path, str(card_path)):
        model, card = load_model(reference)
        assert isinstance(card, ModelCard) and card.id == "tiny" and card.window == (-1024.0, 2048.0)
        assert model.cfg == TINY and not model.training
        with torch.no_grad():
            assert torch.equal(model(x), original(x))


def test_weights_file_is_plain_safetensors_not_a_pickle(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    header_length = int.from_bytes((tmp_path / "tiny.safetensors").read_bytes()[:8], "little")
    header = json.loads((tmp_path / "tiny.safetensors").read_bytes()[8 : 8 + header_length])
    assert header["__metadata__"] == {"format": CARD_FORMAT, "id": "tiny"}
    assert "head.weight" in header


def test_a_bundled_model_loads_by_id(bundled: Path) -> None:
    save_tiny(bundled, "chest-x5")
    model, card = load_model("chest-x5")
    assert card.id == "chest-x5" and model.cfg == TINY
    with pytest.raises(ModelFileError, match=r"neither a model file nor the id.*bundled models: chest-x5"):
        load_model("lungs-x5")


def test_tampered_weights_are_refused(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path)
    weights_path = tmp_path / "tiny.safetensors"
    blob = bytearray(weights_path.read_bytes())
    blob[-3] ^= 0x40  # one bit of the last tensor
    weights_path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match=r"checksum mismatch.*re-download or re-export"):
        load_model(card_path)


def test_tampered_card_architecture_is_refused_with_the_mismatches(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path)
    edit_card(card_path, architecture={**TINY.to_dict(), "channels": 4})
    with pytest.raises(
        ModelFileError, match=r"do not match the architecture.*embed.weight has shape \(2, 1\)"
    ):
        load_model(card_path)

    edit_card(card_path, architecture={**TINY.to_dict(), "colour": "blue"})
    with pytest.raises(ModelFileError, match="unknown TVSRN config keys"):
        load_model(card_path)


def test_weights_with_missing_and_extra_tensors_are_refused(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path)
    weights_path = tmp_path / "tiny.safetensors"
    tensors = {k: v.contiguous() for k, v in tiny_model().state_dict().items() if k != "head.bias"}
    tensors["extra.weight"] = torch.zeros(3)
    save_file(tensors, weights_path)
    edit_card(card_path, sha256=hashlib.sha256(weights_path.read_bytes()).hexdigest())
    with pytest.raises(ModelFileError, match=r"missing head.bias; unexpected extra.weight"):
        load_model(card_path)


def test_untrained_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path, trained=False)
    with pytest.raises(ModelFileError, match="holds untrained weights, it is not a model"):
        load_model(card_path)
    _, card = load_model(card_path, allow_untrained=True)
    assert card.trained is False


def test_pickled_checkpoints_are_never_loaded(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    torch.save(tiny_model().state_dict(), checkpoint)
    with pytest.raises(ModelFileError, match="never loads pickles"):
        load_model(checkpoint)

    # a card pointing at a pickle (with its true checksum) is refused by the safetensors reader
    card_path = save_tiny(tmp_path)
    edit_card(card_path, weights_file="model.pt", sha256=hashlib.sha256(checkpoint.read_bytes()).hexdigest())
    with pytest.raises(ModelFileError, match=r"cannot read the weights model\.pt"):
        load_model(card_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": "other/2"}, "expected 'volumetricsr-model/1'"),
        ({"ratio": 2.5}, "ratio 2.5 is not a positive whole number"),
        ({"ratio": 4}, "ratio 4 differs from the architecture's ratio 5"),
        ({"intensity_window": [100, -100]}, "intensity_window"),
        ({"thick_spacing_mm": -5}, "thick_spacing_mm -5 is not a positive number"),
        ({"trained": "yes"}, "trained 'yes' is not true or false"),
        ({"weights_file": "../elsewhere.safetensors"}, "not a file name beside the card"),
        ({"notes": "hello"}, "unknown field 'notes'"),
    ],
)
def test_invalid_cards_are_refused(tmp_path: Path, changes: dict, message: str) -> None:
    card_path = save_tiny(tmp_path)
    edit_card(card_path, **changes)
    with pytest.raises(ModelFileError, match=message):
        load_model(card_path)


def test_card_missing_field_or_broken_json_is_refused(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path)
    data = json.loads(card_path.read_text())
    del data["sha256"]
    card_path.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="missing field 'sha256'"):
        read_card(card_path)
    card_path.write_text("{not json")
    with pytest.raises(ModelFileError, match="cannot read the model card"):
        read_card(card_path)


def test_missing_files_are_named(tmp_path: Path) -> None:
    card_path = save_tiny(tmp_path)
    (tmp_path / "tiny.safetensors").unlink()
    with pytest.raises(ModelFileError, match=r"tiny\.safetensors named by tiny\.json are missing"):
        load_model(card_path)
    with pytest.raises(ModelFileError, match="model file not found"):
        load_model(tmp_path / "absent.json")
    card_path.unlink()
    save_file({"a": torch.zeros(1)}, tmp_path / "lonely.safetensors")
    with pytest.raises(ModelFileError, match=r"no model card lonely\.json beside it"):
        load_model(tmp_path / "lonely.safetensors")


def test_save_refuses_existing_files_and_bad_ids(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    before = (tmp_path / "tiny.safetensors").read_bytes()
    with pytest.raises(ModelFileError, match="already exists"):
        save_tiny(tmp_path, seed=1)
    assert (tmp_path / "tiny.safetensors").read_bytes() == before
    save_model(tiny_model(1), tmp_path, id="tiny", name="again", trained=True, overwrite=True)
    assert (tmp_path / "tiny.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.safetensors"]
    with pytest.raises(ModelFileError, match="plain file name"):
        save_model(tiny_model(), tmp_path, id="../escape", name="x", trained=True)


def test_default_model_selection(bundled: Path) -> None:
    assert default_model_path() is None
    save_tiny(bundled, "scratch", trained=False)
    assert default_model_path() is None  # untrained weights are never a default
    save_tiny(bundled, "chest-x5")
    assert default_model_path() == bundled / "chest-x5.json"
    save_tiny(bundled, "abdomen-x5")
    with pytest.raises(ModelFileError, match="several trained models are bundled"):
        default_model_path()
    (bundled / "default.txt").write_text("abdomen-x5\n")
    assert default_model_path() == bundled / "abdomen-x5.json"
    (bundled / "default.txt").write_text("gone")
    with pytest.raises(ModelFileError, match="names the model 'gone'"):
        default_model_path()


def test_bundled_models_lists_valid_cards_and_warns_about_broken_ones(bundled: Path) -> None:
    save_tiny(bundled, "b-model")
    save_tiny(bundled, "a-model", trained=False)
    (bundled / "broken.json").write_text("[]")
    with pytest.warns(UserWarning, match="skipping bundled model card"):
        cards = bundled_models()
    assert [card.id for card in cards] == ["a-model", "b-model"]


def test_no_model_error_says_how_to_get_one() -> None:
    message = str(NoModelError())
    assert "no trained model is bundled" in message
    assert "volumetricsr-train" in message and "README" in message and "--model" in message


def test_bundled_models_dir_in_the_source_tree() -> None:
    assert bundled_models_dir() == REPO / "Resources" / "Models"


def test_bundled_models_dir_in_a_built_slicer_extension(tmp_path: Path) -> None:
    modules = tmp_path / "lib" / "Slicer-5.8" / "qt-scripted-modules"
    shutil.copytree(REPO / "VolumetricSR" / "VolumetricSRLib", modules / "VolumetricSRLib")
    (modules / "Resources" / "Models").mkdir(parents=True)
    code = "from VolumetricSRLib.models.weights import bundled_models_dir; print(bundled_models_dir())"
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(modules)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(modules / "Resources" / "Models")
