"""A suite's `code:` folder: the user's own modules, which `<module>:<function>` names in specs come from.

The folder is checked when the suite is loaded (`gridrun validate`): it exists and is a folder, no
symbolic link in it leads out of it, it holds no special file, and it is small enough to hash for every
plan and to send with every remote job. `files()` lists what it holds, in a fixed order, for its hash
(runner.plan.identity), its copy on a cluster (runner.schedule.remote) and these checks.
"""

import os
import stat
from pathlib import Path

from runner.errors import UserError

# Code and the small files it reads: far below Ray's working_dir limit, and read whole for each plan's hash.
MAX_FILES = 5_000  # files and folders
MAX_BYTES = 100 << 20  # 100 MiB
IGNORED_FOLDERS = frozenset({"__pycache__"})  # Python's bytecode caches change with every import, not the code
IGNORED_SUFFIXES = (".pyc",)
GRIDRUN_PACKAGES = ("runner", "schemas")  # what the worker itself imports by these names
# What a module may be in the folder: a file or a package.
_MODULE_FORMS = ("{}.py", "{}/__init__.py")


def _cut(text: str, limit: int = 100) -> str:
    """A path as it is, quotes and all (`code:` holds no control character), cut short when long."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve(suite_file: Path, code: str) -> Path:
    """The folder `code:` names, relative to the suite file, checked and resolved; UserError when it is not one."""
    given = Path(code).expanduser()
    folder = given if given.is_absolute() else suite_file.parent / given
    where = f"{suite_file}: code: {_cut(code)}"
    fix = "Fix: name the folder that holds your modules, relative to the suite file (e.g. code: nets)"
    if not folder.exists():
        raise UserError(f"{where} does not exist (looked for {folder}). {fix}.")
    if not folder.is_dir():
        raise UserError(
            f"{where} is a file, not a folder: code: names the folder that holds your modules, and "
            f"model.arch / dataset.name name a module of it as <module>:<function>. "
            f"Fix: code: {_cut(str(Path(code).parent))}, with e.g. model.arch: {Path(code).stem}:build."
        )
    resolved = folder.resolve()
    # Top-level names: a package's folder, a module's file without .py.
    tops = {rel.partition("/")[0] if "/" in rel else Path(rel).stem for rel, _ in files(resolved, where)}
    hidden = sorted(tops & set(GRIDRUN_PACKAGES))
    if hidden:
        raise UserError(
            f"{where} holds a module or package named {hidden[0]}, which would hide gridrun's own package "
            f"{hidden[0]} from the worker (the folder comes first on its import path). Fix: rename yours."
        )
    return resolved


def files(folder: Path, where: str = "") -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file of the folder but Python's caches, sorted; UserError for a link
    that leads out of it, a special file, or more than MAX_FILES entries or MAX_BYTES. Stops at the first."""
    where = where or f"code folder {folder}"
    found: list[tuple[str, Path]] = []
    entries = total = 0

    def refuse(problem: str, fix: str) -> UserError:
        return UserError(f"{where}: {problem}. Fix: {fix}.")

    def failed(error: OSError) -> None:
        raise refuse(f"cannot be read ({error.strerror or error}: {error.filename})", "make it readable")

    for root, dirs, names in os.walk(folder, onerror=failed):
        dirs[:] = sorted(d for d in dirs if d not in IGNORED_FOLDERS)
        here = Path(root)
        for name in [*dirs, *names]:
            path = here / name
            entries += 1
            if entries > MAX_FILES:
                raise refuse(
                    f"it holds more than {MAX_FILES:,} files and folders, far more than code needs (the folder "
                    "is hashed for every plan and sent with every remote job)",
                    "keep only your modules in it, and give data through dataset.path",
                )
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(folder):
                    raise refuse(
                        f"the symbolic link {path.relative_to(folder)} leads out of it, to {target}, which a "
                        "container or a cluster would not see",
                        "copy what it points to into the folder, or remove the link",
                    )
            if name in dirs or name.endswith(IGNORED_SUFFIXES):
                continue
            try:
                info = path.stat()
            except OSError as e:
                failed(e)
            if not stat.S_ISREG(info.st_mode):
                raise refuse(
                    f"{path.relative_to(folder)} is not a regular file (a pipe, socket or device)", "remove it"
                )
            total += info.st_size
            if total > MAX_BYTES:
                raise refuse(
                    f"its files hold more than {MAX_BYTES >> 20} MiB, far more than code needs (the folder is "
                    "hashed for every plan and sent with every remote job)",
                    "keep only your modules in it, and give data through dataset.path",
                )
            found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def module_file(folder: Path, module: str) -> Path | None:
    """The file of `module` (a.b: a/b.py or a/b/__init__.py) in the folder, None when it has none."""
    base = "/".join(module.split("."))
    for form in _MODULE_FORMS:
        path = folder / form.format(base)
        if path.is_file():
            return path
    return None


def module_problem(folder: Path | None, field: str, ref: str) -> str:
    """'' when `ref`'s module is in the code folder; else what is wrong and the fix, in words."""
    module = ref.partition(":")[0]
    if folder is None:
        return (
            f"{field} {ref} names a module of your own, but the suite has no code: folder. Fix: add "
            f"`code: <folder>` at the top of the suite file, the folder (relative to it) that holds "
            f"{module.replace('.', '/')}.py"
        )
    if module_file(folder, module) is None:
        base = module.replace(".", "/")
        return (
            f"{field} {ref}: module {module} is not in the code folder {folder} (no {base}.py, no "
            f"{base}/__init__.py). Fix: put it there, or correct the module's name before ':'"
        )
    return ""
