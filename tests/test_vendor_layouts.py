"""The ctypes bindings of libqpl and libwd_comp agree with the installed headers, as the compiler reads them.

A small C program is compiled against ``qpl/qpl.h`` or ``uadk/wd_comp.h``
(the include folder from the plugin's locate module) and prints ``sizeof``
of every structure the binding declares and ``offsetof`` of every field, plus
the value of every constant the binding uses; each must equal what ctypes
says. The functions the binding types must be exported by the library found.
Skips, saying why, when the header, the library or gcc is absent (CI builds
both libraries first: ci/system/qpl.sh, ci/system/uadk.sh).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
from mfdcomp_qpl import binding as qpl_binding
from mfdcomp_qpl import locate as qpl_locate
from mfdcomp_qpl.jobs import DOES_NOT_FIT
from mfdcomp_uadk import binding as uadk_binding
from mfdcomp_uadk import locate as uadk_locate


@dataclass(frozen=True)
class Vendor:
    name: str
    binding: ModuleType
    locate: ModuleType
    includes: tuple[str, ...]
    constants: Mapping[str, int]  # C expression -> the binding's value


QPL = Vendor(
    "qpl",
    qpl_binding,
    qpl_locate,
    ("qpl/qpl.h",),
    {
        "qpl_path_hardware": qpl_binding.PATH_HARDWARE,
        "qpl_path_software": qpl_binding.PATH_SOFTWARE,
        "qpl_op_compress": qpl_binding.OP_COMPRESS,
        "qpl_op_decompress": qpl_binding.OP_DECOMPRESS,
        "QPL_FLAG_FIRST | QPL_FLAG_LAST | QPL_FLAG_OMIT_VERIFY": qpl_binding.COMPRESS_FLAGS,
        "QPL_FLAG_FIRST | QPL_FLAG_LAST": qpl_binding.DECOMPRESS_FLAGS,
        "qpl_default_level": qpl_binding.DEFAULT_LEVEL,
        "QPL_STS_OK": qpl_binding.STS_OK,
        "QPL_STS_MORE_OUTPUT_NEEDED": qpl_binding.STS_MORE_OUTPUT_NEEDED,
        "QPL_STS_QUEUES_ARE_BUSY_ERR": qpl_binding.STS_QUEUES_ARE_BUSY_ERR,
        "QPL_STS_DST_IS_SHORT_ERR": qpl_binding.STS_DST_IS_SHORT_ERR,
        **{name: code for code, name in qpl_binding.STATUS_NAMES.items()},
    },
)
UADK = Vendor(
    "uadk",
    uadk_binding,
    uadk_locate,
    ("uadk/wd_comp.h", "uadk/wd_sched.h"),
    {
        "WD_ZLIB": uadk_binding.WD_ZLIB,
        "WD_DIR_COMPRESS": uadk_binding.WD_DIR_COMPRESS,
        "WD_DIR_DECOMPRESS": uadk_binding.WD_DIR_DECOMPRESS,
        "SCHED_POLICY_RR": uadk_binding.SCHED_POLICY_RR,
        "TASK_HW": uadk_binding.TASK_HW,
        "WD_EEXIST": 17,  # the binding compares with -errno.EEXIST
    },
)
VENDORS = [pytest.param(QPL, id="qpl"), pytest.param(UADK, id="uadk")]


def header_folder(vendor: Vendor) -> Path:
    folder: Path | None = vendor.locate.header()
    if folder is None:
        pytest.skip(f"no {vendor.includes[0]} installed (run ci/system/{vendor.name}.sh)")
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: the layout check needs a compiler")
    return folder


def c_program(vendor: Vendor) -> tuple[str, dict[str, int]]:
    """The C source, and what each line it prints must say according to ctypes."""
    expected: dict[str, int] = {}
    lines = ["#include <stdio.h>", "#include <stddef.h>", *(f"#include <{h}>" for h in vendor.includes), ""]
    lines.append("int main(void) {")
    structures: Mapping[type[ctypes.Structure], str] = vendor.binding.C_TYPES
    for structure, c_name in structures.items():
        key = f"sizeof({c_name})"
        expected[key] = ctypes.sizeof(structure)
        lines.append(f'    printf("%s %zu\\n", "{key}", sizeof({c_name}));')
        for field, *_ in structure._fields_:
            key = f"offsetof({c_name}, {field})"
            expected[key] = getattr(structure, field).offset
            lines.append(f'    printf("%s %zu\\n", "{key}", offsetof({c_name}, {field}));')
            key = f"sizeof(({c_name} *)0)->{field}"
            expected[key] = getattr(structure, field).size
            lines.append(f'    printf("%s %zu\\n", "{key}", sizeof((({c_name} *)0)->{field}));')
    for expression, value in vendor.constants.items():
        expected[expression] = value
        lines.append(f'    printf("%s %lld\\n", "{expression}", (long long)({expression}));')
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n", expected


def compiled_answers(vendor: Vendor, folder: Path, tmp_path: Path) -> tuple[dict[str, int], dict[str, int]]:
    source, expected = c_program(vendor)
    (tmp_path / "layout.c").write_text(source)
    build = subprocess.run(
        ["gcc", "-std=gnu11", "-Wall", "-Werror", "-I", str(folder), "-o", "layout", "layout.c"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "layout")], capture_output=True, text=True, timeout=60, check=True)
    answers = {}
    for line in run.stdout.splitlines():
        key, _, value = line.rpartition(" ")
        answers[key] = int(value)
    return answers, expected


@pytest.mark.parametrize("vendor", VENDORS)
def test_layouts_and_constants_match_the_header(vendor: Vendor, tmp_path: Path) -> None:
    answers, expected = compiled_answers(vendor, header_folder(vendor), tmp_path)
    wrong = {key: (value, answers.get(key)) for key, value in expected.items() if answers.get(key) != value}
    assert not wrong, "ctypes value, compiler's value: " + "; ".join(
        f"{key}: {ours} vs {theirs}" for key, (ours, theirs) in wrong.items()
    )
    assert len(answers) == len(expected)


def test_the_check_sees_every_field() -> None:
    """The program covers each declared field: an offset mistake in any of them would be seen."""
    _, expected = c_program(QPL)
    assert "offsetof(qpl_job, data_ptr)" in expected and "sizeof(qpl_job)" in expected
    assert len([k for k in expected if k.startswith("offsetof(qpl_job,")]) == len(qpl_binding.QplJob._fields_)
    _, uadk = c_program(UADK)
    assert "offsetof(struct wd_comp_req, status)" in uadk and "sizeof(struct wd_comp_sess_setup)" in uadk
    assert qpl_binding.STS_MORE_OUTPUT_NEEDED in DOES_NOT_FIT


@pytest.mark.parametrize("vendor", VENDORS)
def test_bound_functions_are_exported(vendor: Vendor) -> None:
    found = vendor.locate.candidates()
    if not found:
        pytest.skip(f"no lib{vendor.name} installed (run ci/system/{vendor.name}.sh)")
    path = found[0][0]
    if vendor is UADK:
        # libwd_comp needs libwd's symbols in the global scope before it loads.
        ctypes.CDLL(str(Path(path).parent / uadk_locate.DEPENDENCY), mode=ctypes.RTLD_GLOBAL)
    library = ctypes.CDLL(path)
    names = list(vendor.binding.SIGNATURES) + list(getattr(vendor.binding, "OPTIONAL_SIGNATURES", {}))
    missing = [name for name in names if not hasattr(library, name)]
    assert not missing, f"{path} does not export {', '.join(missing)}"
