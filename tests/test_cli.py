"""Tests of the `featalign` console script (featalign.cli)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from featalign.cli import build_parser, main, parse_option

TESTS_PLUGINS = str(Path(__file__).parent / "plugins")


pytestmark = pytest.mark.usefixtures("isolated_registry")


class TestParser:
    @pytest.mark.parametrize(
        "argv",
        [
            ["--help"],
            ["plugins", "--help"],
            ["plugins", "list", "--help"],
            ["plugins", "check", "--help"],
            ["plugins", "nodes", "--help"],
        ],
    )
    def test_help(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
        assert main(argv) == 0
        assert "usage: featalign" in capsys.readouterr().out

    def test_usage_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plugins"]) == 2
        assert main(["plugins", "check"]) == 2
        assert "Traceback" not in capsys.readouterr().err

    def test_parse_option(self) -> None:
        assert parse_option("width=8") == ("width", 8)
        assert parse_option("pool=max") == ("pool", "max")
        assert parse_option("flag=true") == ("flag", True)
        assert parse_option("sizes=[1, 2]") == ("sizes", [1, 2])

    def test_subcommands(self) -> None:
        args = build_parser().parse_args(["plugins", "check", "x", "--option", "a=1"])
        assert args.name == "x" and args.option == ["a=1"] and callable(args.func)


class TestPluginsList:
    def test_smoke(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plugins", "list", "--plugin-dir", TESTS_PLUGINS]) == 0
        out = capsys.readouterr().out
        assert out.startswith("NAME")
        for name in ("tiny", "d4_pooled", "vgg_random", "pointwise"):
            assert f"\n{name} " in out

    def test_long(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plugins", "list", "-l"]) == 0
        assert "exactly invariant to 90 deg rotations" in capsys.readouterr().out

    def test_bad_dir(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plugins", "list", "--plugin-dir", str(tmp_path / "nope")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("featalign: error: plugin directory") and err.count("\n") == 1

    def test_broken_plugin(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        (tmp_path / "oops.py").write_text("def (:\n")
        assert main(["plugins", "list", "--plugin-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "oops.py: failed to import (SyntaxError" in err and "Traceback" not in err


class TestPluginsCheck:
    def test_pass(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert (
            main(["plugins", "check", "tiny", "--plugin-dir", TESTS_PLUGINS, "--option", "width=3"])
            == 0
        )
        out = capsys.readouterr().out
        assert "result: PASS" in out and '"width": 3' in out

    def test_fail_exit_1(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        src = (Path(TESTS_PLUGINS) / "tiny.py").read_text()
        src = src.replace('name="tiny",', 'name="tiny_claims",', 1)
        src = src.replace('name="tiny_nodes",', 'name="tiny_nodes_claims",', 1)
        src = src.replace("invariant_to=[],", 'invariant_to=["flip"],', 1)
        (tmp_path / "claims.py").write_text(src)
        assert main(["plugins", "check", "tiny_claims", "--plugin-dir", str(tmp_path)]) == 1
        out = capsys.readouterr().out
        assert "result: FAIL" in out and "declared invariant to flip" in out

    def test_unknown(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plugins", "check", "nope"]) == 2
        err = capsys.readouterr().err
        assert "no network is called 'nope'; available networks are:" in err
        assert err.count("\n") == 1

    def test_bad_option(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert (
            main(["plugins", "check", "tiny", "--plugin-dir", TESTS_PLUGINS, "--option", "width"])
            == 2
        )
        assert "is not KEY=VALUE" in capsys.readouterr().err

    def test_unknown_option_is_a_failure(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert (
            main(
                ["plugins", "check", "tiny", "--plugin-dir", TESTS_PLUGINS, "--option", "colour=1"]
            )
            == 1
        )
        assert "unexpected keyword argument 'colour'" in capsys.readouterr().out


class TestPluginsNodes:
    def test_smoke(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert main(["plugins", "nodes", "tiny_nodes", "--plugin-dir", TESTS_PLUGINS]) == 0
        assert capsys.readouterr().out.split() == ["input", "0", "1", "2"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "featalign.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


class TestSubprocess:
    def test_check_exit_codes(self) -> None:
        ok = _run("plugins", "check", "tiny", "--plugin-dir", TESTS_PLUGINS)
        assert ok.returncode == 0, ok.stderr
        assert "result: PASS" in ok.stdout
        bad = _run("plugins", "check", "no_such_net")
        assert bad.returncode == 2
        assert bad.stderr.startswith("featalign: error: no network is called")
        assert "Traceback" not in bad.stderr
