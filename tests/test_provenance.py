"""The code digest that reruns a rule's jobs when the featalign code it runs changes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from featalign.provenance import code_digest, code_modules

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class TestCodeModules:
    def test_align_runs_the_optimiser_not_the_figures(self) -> None:
        mods = code_modules(SCRIPTS / "align.py")
        assert {"featalign.align.files", "featalign.align.affine", "featalign.geometry"} <= set(mods)
        assert not any(m.startswith("featalign.figures") for m in mods)
        assert "featalign.datasets" not in mods

    def test_imports_inside_functions_count(self, tmp_path: Path) -> None:
        script = write(
            tmp_path / "s.py", "def f():\n    from featalign.align.affine import fit_affine\n"
        )
        assert "featalign.align.affine" in code_modules(script)
        # and what featalign.align.affine imports in turn, with the packages themselves
        assert {"featalign", "featalign.geometry"} <= set(code_modules(script))

    def test_plugin_imports_join_the_script(self) -> None:
        plain = code_modules(SCRIPTS / "features.py")
        with_plugin = code_modules(SCRIPTS / "features.py", ROOT / "plugins" / "mobilenet_v2.py")
        assert "featalign.pretrained" in set(with_plugin) - set(plain)

    def test_other_packages_are_not_followed(self, tmp_path: Path) -> None:
        script = write(tmp_path / "s.py", "import torch\nfrom featalign import geometry\n")
        assert code_modules(script) == ["featalign", "featalign.geometry", "featalign.names"]


class TestCodeDigest:
    BODY = '"""Doc."""\nfrom featalign import geometry\n\n\ndef f(x):\n    return x + 1\n'

    def test_format(self, tmp_path: Path) -> None:
        assert re.fullmatch(r"[0-9a-f]{16}", code_digest(write(tmp_path / "a.py", self.BODY)))

    @pytest.mark.parametrize(
        "edit",
        [
            lambda s: s.replace('"""Doc."""', '"""Another docstring."""'),
            lambda s: s.replace("return x + 1", "return x + 1  # a comment"),
            lambda s: s.replace("def f(x):", "def f(\n    x,\n):"),
        ],
        ids=["docstring", "comment", "formatting"],
    )
    def test_documentation_and_formatting_do_not_count(self, tmp_path: Path, edit) -> None:
        a = code_digest(write(tmp_path / "a.py", self.BODY))
        assert code_digest(write(tmp_path / "b.py", edit(self.BODY))) == a

    @pytest.mark.parametrize(
        "edit",
        [
            lambda s: s.replace("x + 1", "x + 2"),
            lambda s: s.replace("from featalign import geometry", "from featalign import align"),
        ],
        ids=["code", "imports"],
    )
    def test_code_changes_count(self, tmp_path: Path, edit) -> None:
        a = code_digest(write(tmp_path / "a.py", self.BODY))
        assert code_digest(write(tmp_path / "b.py", edit(self.BODY))) != a

    def test_every_script_has_a_distinct_digest(self) -> None:
        digests = {p.name: code_digest(p) for p in SCRIPTS.glob("*.py")}
        assert len(set(digests.values())) == len(digests) >= 6

    def test_missing_script(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError):
            code_digest(tmp_path / "nope.py")

    def test_every_rule_with_a_script_passes_its_digest(self) -> None:
        """A rule without the code param would keep stale results after a library fix."""
        for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
            for rule in re.split(r"(?m)^rule ", smk.read_text())[1:]:
                if "script:" in rule:
                    assert re.search(r"code=(network_)?code\(", rule), (smk.name, rule[:40])
