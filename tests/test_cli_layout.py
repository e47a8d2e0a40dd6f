"""The CLI's layout (imshift/clibase.py): a command module (imshift/*cli.py)
imports the shared plumbing, never another command module; only
imshift/cli.py, which registers them, imports them all."""

import ast
from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "imshift"
COMMANDS = sorted(p.stem for p in FOLDER.glob("*cli.py") if p.stem not in ("cli", "clibase"))


def imported(module: str) -> set[str]:
    """The imshift modules `module` imports, anywhere in it (in a function too)."""
    return imports((FOLDER / f"{module}.py").read_text())


def imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if (node.level == 1 and not base) or base == "imshift":  # from . import x, from imshift import x
                names |= {alias.name for alias in node.names}
            if node.level == 1 and base:  # from .x import y
                names.add(base)
            if base.startswith("imshift."):  # from imshift.x import y
                names.add(base.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {alias.name.split(".")[1] for alias in node.names
                      if alias.name.startswith("imshift.")}
    return names


def test_the_command_modules_are_the_ones_cli_registers() -> None:
    assert COMMANDS == ["bridgecli", "checkcli", "jobcli", "reportcli", "runcli", "schedulecli"]
    assert imported("cli") >= {*COMMANDS, "clibase"}


def test_no_command_module_imports_another() -> None:
    crossing = {module: sorted(imported(module) & set(COMMANDS)) for module in COMMANDS}
    assert {m: names for m, names in crossing.items() if names} == {}
    assert all("clibase" in imported(module) for module in COMMANDS)
    assert not imported("clibase") & set(COMMANDS)


def test_the_check_sees_each_way_of_importing() -> None:
    """The parse above would pass any module if it missed a form of import."""
    source = ("from . import jobcli\nfrom .runcli import x\nfrom imshift import reportcli\n"
              "from imshift.schedulecli import y\nimport imshift.bridgecli\n"
              "def f():\n    from .checkcli import z\n")
    assert imports(source) & set(COMMANDS) == set(COMMANDS)
    assert imports("from .clibase import fail\nimport json\n") == {"clibase"}
