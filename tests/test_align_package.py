"""The featalign.align package as a whole: one statement of the defaults, import-free
``__init__``, absolute imports, and the names of the grid symmetries."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch
import yaml

from featalign import geometry as g
from featalign.align.affine import fit_affine
from featalign.align.dense import fit_dense
from featalign.align.layer import ALIGNMENT_DEFAULTS, align_layer
from featalign.align.starts import SYMMETRY_NAMES, grid_symmetries
from featalign.provenance import code_modules

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "featalign" / "align"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def keyword_defaults(fn) -> dict:
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


class TestAlignmentDefaults:
    def test_schema_states_the_library_defaults(self) -> None:
        section = yaml.safe_load(SCHEMA.read_text())["properties"]["alignment"]["properties"]
        schema = {key: spec["default"] for key, spec in section.items()}
        assert schema == ALIGNMENT_DEFAULTS

    def test_align_layer_takes_its_defaults_from_them(self) -> None:
        defaults = keyword_defaults(align_layer)
        assert {k: defaults[k] for k in ALIGNMENT_DEFAULTS} == ALIGNMENT_DEFAULTS

    def test_optimisers_default_to_the_same(self) -> None:
        affine, dense = keyword_defaults(fit_affine), keyword_defaults(fit_dense)
        d = ALIGNMENT_DEFAULTS
        assert affine["method"] == d["method"]
        assert (
            affine["max_batch_elements"] == dense["max_batch_elements"] == d["max_batch_elements"]
        )
        assert (dense["grid_size"], dense["smoothness"], dense["steps"]) == (
            d["dense_grid"],
            d["dense_smoothness"],
            d["dense_steps"],
        )


class TestPackageImports:
    def test_init_imports_nothing(self) -> None:
        tree = ast.parse((PACKAGE / "__init__.py").read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]

    @pytest.mark.parametrize("module", sorted(p.name for p in PACKAGE.glob("*.py")))
    def test_absolute_imports_only(self, module: str) -> None:
        """provenance.featalign_imports ignores relative imports: a relative one would
        leave a module out of the code digests."""
        tree = ast.parse((PACKAGE / module).read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level]

    def test_digest_of_one_module_covers_only_what_it_imports(self, tmp_path: Path) -> None:
        script = tmp_path / "s.py"
        script.write_text("from featalign.align.measures import relative_error\n")
        mods = set(code_modules(script))
        assert {"featalign.align", "featalign.align.measures", "featalign.geometry"} <= mods
        assert not mods & {"featalign.align.affine", "featalign.align.layer"}

    def test_align_script_runs_the_optimiser(self) -> None:
        mods = set(code_modules(ROOT / "workflow" / "scripts" / "align.py"))
        want = {"files", "layer", "measures", "affine", "dense", "mixing", "starts", "pyramid"}
        assert {f"featalign.align.{m}" for m in want} <= mods


class TestSymmetryNames:
    @pytest.mark.parametrize(
        "name,op",
        [
            ("flip_y", lambda x: torch.flip(x, (-2,))),
            ("flip_x", lambda x: torch.flip(x, (-1,))),
            ("rot180", lambda x: torch.rot90(x, 2, (-2, -1))),
            ("transpose", lambda x: x.transpose(-1, -2)),
        ],
    )
    def test_names_say_what_the_matrices_do(self, name: str, op) -> None:
        x = torch.randn(1, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        m = grid_symmetries()[SYMMETRY_NAMES.index(name)]
        torch.testing.assert_close(g.warp(x, m), op(x), rtol=0, atol=1e-12)
