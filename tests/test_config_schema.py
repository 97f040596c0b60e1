"""The config schema is generated from the stages' Params (wsss.config_schema): the
committed file is the generated one, and the generation maps a field's type, choices,
bounds, help and default into JSON Schema as written here by hand."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from wsss import config_schema
from wsss.core.settings import CRFParams
from wsss.core.stage import Stage, arg

REPO = Path(__file__).resolve().parent.parent


def test_the_committed_schema_is_the_generated_one() -> None:
    committed = (REPO / "workflow/schemas/config.schema.yaml").read_text()
    assert committed == config_schema.render(config_schema.build()), (
        "run `make schema` (python -m wsss.config_schema) and commit the result"
    )


@dataclass(frozen=True, kw_only=True)
class Toy(CRFParams):
    rate: float = arg(0.5, "a rate", above=0, maximum=1)
    size: int = arg(64, "a size", minimum=32, multiple_of=8)
    scales: tuple[float, ...] = arg(
        (1.0, 0.5), "scales", items={"exclusiveMinimum": 0}, min_items=1
    )
    pair: tuple[int, int] = arg((1, 2), "a pair")
    mode: str = arg("a", "a mode", choices=("a", "b"))
    path: str | None = arg(None, "a file or none")
    set_by_rule: bool = arg(False, "", configurable=False)


def toy_schema() -> dict:
    stage = Stage("toy", "", object, Toy, lambda io, params: None, section="tools.toy")
    base = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "properties": {},
    }
    return config_schema.build(base, {"toy": stage})


def test_fields_become_json_schema_as_written_by_hand() -> None:
    schema = toy_schema()
    toy = schema["properties"]["tools"]["properties"]["toy"]
    assert toy["type"] == "object" and toy["additionalProperties"] is False
    props = toy["properties"]
    assert props["rate"] == {
        "type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "a rate",
        "default": 0.5,
    }  # fmt: skip
    assert props["size"] == {
        "type": "integer",
        "minimum": 32,
        "multipleOf": 8,
        "description": "a size",
        "default": 64,
    }
    assert props["scales"] == {
        "type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1,
        "description": "scales", "default": [1.0, 0.5],
    }  # fmt: skip
    assert props["pair"]["minItems"] == props["pair"]["maxItems"] == 2
    assert props["mode"]["enum"] == ["a", "b"]
    assert props["path"]["type"] == ["string", "null"] and props["path"]["default"] is None
    assert "set_by_rule" not in props
    # a field of a shared settings class: described once in $defs, its default here
    assert props["crf_iterations"] == {"$ref": "#/$defs/CRFParams.crf_iterations", "default": 10}
    assert schema["$defs"]["CRFParams.crf_iterations"]["minimum"] == 0


@pytest.mark.parametrize(
    "settings, ok",
    [
        ({}, True),
        ({"rate": 1.0, "size": 40, "scales": [2.0], "mode": "b", "path": "x.pt"}, True),
        ({"rate": 0}, False),
        ({"size": 36}, False),
        ({"scales": []}, False),
        ({"scales": [0.0]}, False),
        ({"pair": [1, 2, 3]}, False),
        ({"mode": "c"}, False),
        ({"crf_iterations": -1}, False),
        ({"unknown": 1}, False),
        ({"set_by_rule": True}, False),
    ],
)
def test_the_generated_section_validates_and_fills_defaults(
    settings: dict, ok: bool, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text(config_schema.render(toy_schema()))
    config = {"tools": {"toy": dict(settings)}}
    if not ok:
        with pytest.raises(WorkflowError, match="validating config"):
            validate(config, str(schema))
        return
    validate(config, str(schema), set_default=True)
    filled = config["tools"]["toy"]
    assert filled["crf_iterations"] == 10 and filled["pair"] == [1, 2]
    assert filled["rate"] == settings.get("rate", 0.5)


def test_a_section_key_in_both_the_base_and_the_params_is_refused() -> None:
    stage = Stage("toy", "", object, Toy, lambda io, params: None, section="toy")
    base = {"properties": {"toy": {"type": "object", "properties": {"rate": {"type": "number"}}}}}
    with pytest.raises(ValueError, match="rate in both the base and toy"):
        config_schema.build(base, {"toy": stage})
