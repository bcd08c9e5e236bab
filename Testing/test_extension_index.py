"""The Extensions Index's checks of a new extension (Slicer/ExtensionsIndex
scripts/check_description_files.py), applied offline to our catalog entry and CMake metadata: the
index reads CMakeLists.txt as plain text, so every URL must be literal."""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest

from conftest import REPO

ENTRY = REPO / "Resources" / "ExtensionsIndex" / "VolumetricSR.json"
CMAKE = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
RAW = "https://raw.githubusercontent.com/"
# a part of the index's ACCEPTED_EXTENSION_CATEGORIES (2026): the ones an image-filtering module could use
ACCEPTED_CATEGORIES = {"Analysis", "Converters", "Filtering", "Quantification", "Utilities"}


def cmake_setting(name: str) -> str:
    """The literal value of set(NAME "value"), as the index's regular expressions read it."""
    match = re.search(rf'set\s*\({name}\s*"([^"]+)"\)', CMAKE, re.IGNORECASE)
    assert match, f"{name} is not set as one literal string in CMakeLists.txt"
    return match.group(1)


@pytest.fixture(scope="module")
def entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def test_the_entry_has_the_required_keys_and_names_the_cmake_project(entry: dict) -> None:
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema" in entry["$schema"]
    project = re.search(r"project\s*\(\s*([^\s)]+)", CMAKE, re.IGNORECASE).group(1)
    assert project == ENTRY.stem == "VolumetricSR"


def test_category_is_accepted_and_agrees_with_cmake(entry: dict) -> None:
    assert entry["category"] in ACCEPTED_CATEGORIES
    assert cmake_setting("EXTENSION_CATEGORY") == entry["category"]


def test_repository_url_scheme_and_slicer_prefixed_name(entry: dict) -> None:
    url = urlsplit(entry["scm_url"])
    assert url.scheme in ("git", "https") and url.netloc
    assert "slicer" in PurePosixPath(url.path).stem.lower()
    assert cmake_setting("EXTENSION_HOMEPAGE").startswith(entry["scm_url"])


def test_build_dependencies_are_the_cmake_dependencies(entry: dict) -> None:
    assert entry["build_dependencies"] == cmake_setting("EXTENSION_DEPENDS").split()


@pytest.mark.parametrize("name", ["EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"])
def test_images_are_literal_http_urls_of_png_files_in_this_repository(entry: dict, name: str) -> None:
    repository = urlsplit(entry["scm_url"]).path.strip("/")
    for url in cmake_setting(name).split():
        assert url.startswith("http"), url
        prefix = f"{RAW}{repository}/{entry['scm_revision']}/"
        assert url.startswith(prefix), f"{url} is not a raw file of {repository} at {entry['scm_revision']}"
        path = REPO / url.removeprefix(prefix)
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", url


def test_a_licence_file_is_at_the_repository_root() -> None:
    assert (REPO / "LICENSE").is_file()
