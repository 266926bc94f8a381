"""scripts/setup decides what to install from what the build needs, not from look-alike files."""

import os
import subprocess
from pathlib import Path

from conftest import ROOT


def plan(tmp_path: Path, files: list[str], python: str = "python3") -> list[str]:
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    for name in files:
        (lib / name).write_bytes(b"")
    env = dict(os.environ, BERTH_SETUP_LIBCLANG_DIRS=str(lib), BERTH_SETUP_PYTHON=python)
    out = subprocess.run([str(ROOT / "scripts" / "setup"), "--plan"], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    return [line.split(":")[0].removeprefix("install ") for line in out.stdout.splitlines()
            if line.startswith("install ")]


def test_libclang_cpp_alone_is_not_libclang(tmp_path):
    # What the machine image has: LLVM's C++ library, which bindgen cannot load.
    assert "libclang-dev" in plan(tmp_path, ["libclang-cpp.so.14"])


def test_versioned_libclang_beside_libclang_cpp_is_enough(tmp_path):
    assert "libclang-dev" not in plan(tmp_path, ["libclang-cpp.so.14", "libclang-14.so.1"])
    assert "libclang-dev" not in plan(tmp_path, ["libclang-cpp.so.14", "libclang.so"])
    assert "libclang-dev" not in plan(tmp_path, ["libclang.so.14"])


def test_python_without_venv_support_is_planned(tmp_path):
    fake = tmp_path / "bin" / "python-no-venv"
    fake.parent.mkdir()
    # A python whose `-c 'import ensurepip'` fails, as Debian's python3 without python3-venv.
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = pip ] && exit 0; done\nexit 1\n")
    fake.chmod(0o755)
    assert "python3-venv" in plan(tmp_path, ["libclang.so"], python=str(fake))


def test_this_machine_needs_nothing_after_setup(tmp_path):
    # scripts/test ran scripts/setup before these tests: a second run must install nothing.
    out = subprocess.run([str(ROOT / "scripts" / "setup"), "--plan"], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "nothing to install", out.stdout


def test_console_browser_and_node_are_planned_when_missing(tmp_path):
    fake_node = tmp_path / "bin" / "node16"
    fake_node.parent.mkdir(exist_ok=True)
    fake_node.write_text("#!/bin/sh\necho 16\n")
    fake_node.chmod(0o755)
    env_extra = {"BERTH_SETUP_CHROMIUM": str(tmp_path / "no-chromium"), "BERTH_SETUP_NODE": str(fake_node)}
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    (lib / "libclang.so").write_bytes(b"")
    env = dict(os.environ, BERTH_SETUP_LIBCLANG_DIRS=str(lib), **env_extra)
    out = subprocess.run([str(ROOT / "scripts" / "setup"), "--plan"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "install chromium:" in out and "install nodejs: the console's browser test needs Node.js 18" in out, out
    # Without the test tools, neither is needed.
    out = subprocess.run([str(ROOT / "scripts" / "setup"), "--plan", "--no-python"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "chromium" not in out and "nodejs" not in out, out


def test_postgresql_is_planned_when_its_server_is_missing(tmp_path):
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "libclang.so").write_bytes(b"")
    # A version directory without its server binary is not a server.
    (tmp_path / "pg" / "15" / "bin").mkdir(parents=True)
    env = dict(os.environ, BERTH_SETUP_LIBCLANG_DIRS=str(lib), BERTH_SETUP_PG_LIB=str(tmp_path / "pg"))
    out = subprocess.run([str(ROOT / "scripts" / "setup"), "--plan"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "install postgresql: the store's tests run on a PostgreSQL server" in out, out
    out = subprocess.run([str(ROOT / "scripts" / "setup"), "--plan", "--no-python"], env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "postgresql" not in out.lower(), out
