"""``pixelfeed._contract`` equals the Rust contract crate's export, ``schema/fixtures/contract.json``.

The file is the contract crate's own list of the wire constants (column names,
metadata keys, presets, ticket limits, row-error kinds) and of
``GetFlightInfo`` commands with the arguments that build them. The Python
client keeps its own copy in ``_contract``; these tests fail when the two
differ, and when ``_contract`` gains a constant this file does not check.
No server needed.
"""

from __future__ import annotations

import json
from typing import Any, Dict

import pytest

from pfhelpers import REPO
from pixelfeed import _contract

CONTRACT_JSON = REPO / "schema" / "fixtures" / "contract.json"


@pytest.fixture(scope="module")
def contract() -> Dict[str, Any]:
    """The parsed ``schema/fixtures/contract.json``."""
    return json.loads(CONTRACT_JSON.read_text())


def expected_constants(contract: Dict[str, Any]) -> Dict[str, Any]:
    """Each ``_contract`` constant name with the value the JSON file gives it."""
    columns, keys = contract["columns"], contract["metadata_keys"]
    return {
        "WIRE_VERSION": contract["wire_version"],
        "IMAGE_COLUMN": columns["image"],
        "TENSOR_COLUMN": columns["tensor"],
        "ERROR_COLUMN": columns["error"],
        "HEIGHT_COLUMN": columns["height"],
        "WIDTH_COLUMN": columns["width"],
        "WARNING_COLUMN": columns["warning"],
        "GEOMETRY_COLUMN": columns["geometry"],
        "SEED_COLUMN": columns["seed"],
        "OUTPUT_COLUMNS": tuple(contract["output_columns"]),
        "GEOMETRY_FIELDS": tuple(contract["geometry_fields"]),
        "SPEC_METADATA_KEY": keys["spec"],
        "VERSION_METADATA_KEY": keys["version"],
        "DTYPE_METADATA_KEY": keys["dtype"],
        "EXTENSION_NAME_KEY": keys["extension_name"],
        "EXTENSION_METADATA_KEY": keys["extension_metadata"],
        "TENSOR_EXTENSION": contract["tensor_extension"],
        "DEFAULT_PRESET": contract["default_preset"],
        "PRESET_NAMES": tuple(contract["preset_names"]),
        "TICKET_VERSION": contract["ticket_version"],
        "MAX_SHARDS": contract["max_shards"],
        "ERROR_KINDS": tuple(contract["row_error_kinds"]),
    }


def test_every_constant_equals_the_rust_export(contract):
    expected = expected_constants(contract)
    got = {name: getattr(_contract, name) for name in expected}
    assert got == expected


def test_every_constant_is_checked(contract):
    """A constant added to ``_contract`` must be added to the JSON file and to this test."""
    constants = {n for n in vars(_contract) if n.isupper() and not n.startswith("_")}
    assert constants == set(expected_constants(contract))


def test_every_json_entry_is_checked(contract):
    """An entry added to the JSON file must be given a ``_contract`` counterpart."""
    checked = {"wire_version", "columns", "output_columns", "geometry_fields", "metadata_keys",
               "tensor_extension", "default_preset", "preset_names", "ticket_version", "max_shards",
               "row_error_kinds", "info_command_examples"}
    assert set(contract) == checked
    assert set(contract["columns"]) == {"image", "tensor", "error", "height", "width", "warning", "geometry", "seed"}
    assert set(contract["metadata_keys"]) == {"spec", "version", "dtype", "extension_name", "extension_metadata"}


def test_info_command_builds_each_example(contract):
    examples = contract["info_command_examples"]
    assert examples
    for example in examples:
        command = _contract.info_command(**example["args"])
        assert isinstance(command, bytes)
        assert json.loads(command) == example["command"], example["args"]


def test_the_package_builds_commands_with_the_contract():
    """The public command builders are the contract's (re-exported, not copies)."""
    import pixelfeed
    from pixelfeed import client, datasets

    assert pixelfeed.encode_spec is _contract.encode_spec
    assert client.encode_spec is _contract.encode_spec
    for example in json.loads(CONTRACT_JSON.read_text())["info_command_examples"]:
        args = example["args"]
        assert datasets.info_command(args["dataset"], args["spec"], args["shards"]) == _contract.info_command(**args)
