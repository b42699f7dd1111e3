"""The real TensorRT Python API, read from NVIDIA's bindings wheels on a machine without a GPU.

`make setup` fetches the `tensorrt-cuXX-bindings` wheels of VERSIONS into WHEELS (pip download
--no-deps; about 1.3 MB each). `tensorrt.so` in them needs a handful of C symbols from
libnvinfer, libnvonnxparser and libnvinfer_plugin; `stub_libraries` compiles stand-ins that
export them (every function returns NULL or 0), so the module imports and every enum, class,
method and pybind signature can be read, though no object can be made. `dump` does that in a
subprocess (one TensorRT per process: pybind registers its types once) and returns a JSON
record; the records are checked in under tensorrt_api/ and the fake TensorRT is generated from
them. Regenerate with `python -m tests.targets.trt_api` after changing VERSIONS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / ".venv" / "tensorrt-bindings"
DUMPS = Path(__file__).with_name("tensorrt_api")
# version -> the bindings distribution: the oldest 10.x at all (system installs, JetPack),
# the oldest the `gpu` extra admits (the first CUDA 13 build), the latest 10.x, the latest 11.x.
VERSIONS = {
    "10.0.1": "tensorrt-cu12-bindings",
    "10.13.3.9": "tensorrt-cu13-bindings",
    "10.16.1.11": "tensorrt-cu13-bindings",
    "11.4.0.106": "tensorrt-cu13-bindings",
}
STUBS = {
    "nvinfer": (
        "createInferBuilder_INTERNAL",
        "createInferRefitter_INTERNAL",
        "createInferRuntime_INTERNAL",
        "getBuilderPluginRegistry",
        "getPluginRegistry",
    ),
    "nvonnxparser": ("createNvOnnxParser_INTERNAL", "createNvOnnxParserRefitter_INTERNAL"),
    "nvinfer_plugin": ("initLibNvInferPlugins",),
}
PREFIX = "tensorrt_bindings.tensorrt."


def wheel_path(version: str) -> Path | None:
    dist = VERSIONS[version].replace("-", "_")
    found = sorted(WHEELS.glob(f"{dist}-{version}-*.whl"))
    return found[0] if found else None


def stub_libraries(directory: Path, major: int) -> Path:
    """lib{nvinfer,nvonnxparser,nvinfer_plugin}.so.MAJOR exporting what tensorrt.so links."""
    directory = Path(directory) / str(major)
    directory.mkdir(parents=True, exist_ok=True)
    for lib, symbols in STUBS.items():
        src = directory / f"{lib}.c"
        body = [f"void *{s}(void) {{ return 0; }}" for s in symbols]
        version = f"int getInferLibVersion(void) {{ return {major * 10000}; }}"
        body += [version] if lib == "nvinfer" else []
        body += ["int getNvOnnxParserVersion(void) { return 0; }"] if lib == "nvonnxparser" else []
        src.write_text("\n".join(body) + "\n")
        soname = f"lib{lib}.so.{major}"
        subprocess.run(
            ["gcc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", str(directory / soname),
             str(src)],
            check=True, capture_output=True,
        )  # fmt: skip
    return directory


def dump(version: str, work: Path) -> dict:
    """The API record of one bindings wheel (unpacked into `work`, stubs built there)."""
    wheel = wheel_path(version)
    if wheel is None:
        raise FileNotFoundError(f"no {VERSIONS[version]} {version} wheel in {WHEELS}")
    unpacked = Path(work) / f"wheel-{version}"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(unpacked)
    stubs = stub_libraries(Path(work) / "stubs", int(version.split(".")[0]))
    env = {**os.environ, "LD_LIBRARY_PATH": str(stubs), "PYTHONPATH": str(unpacked)}
    out = subprocess.run(
        [sys.executable, __file__, "--introspect"], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"tensorrt_bindings {version} did not import: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def load_dumps() -> dict[str, dict]:
    return {v: json.loads((DUMPS / f"{v}.json").read_text()) for v in VERSIONS}


# ---------------------------------------------------------------- the introspection (subprocess)


def _signatures(name: str, doc: str | None) -> list[str]:
    """pybind's signature lines for `name` (one per overload), module prefixes dropped."""
    pattern = re.compile(rf"^(?:\d+\. )?{re.escape(name)}(\(.*\) -> .*)$")
    lines = (doc or "").splitlines()
    return [m.group(1).replace(PREFIX, "") for line in lines if (m := pattern.match(line.strip()))]


def _deprecation(text: str) -> str | None:
    """'10.12' for '[DEPRECATED] Deprecated in TensorRT 10.12...', '?' if no version is said.
    A marker in parentheses is about something the text mentions, not the name itself
    (WORKSPACE: "... the IAlgorithmSelector interface ([DEPRECATED] Deprecated in 10.8 ...)")."""
    m = re.search(r"(?<!\()\[DEPRECATED\]([^\[]*)", text)
    if m is None:
        return None
    v = re.search(r"[Dd]eprecated in TensorRT (\d+\.\d+)", m.group(1))
    return v.group(1) if v else "?"


def _member_docs(doc: str) -> dict[str, str]:
    """An enum's docstring: 'Members:' then '  NAME : text' blocks."""
    out: dict[str, str] = {}
    current = None
    for line in (doc or "").split("Members:", 1)[-1].splitlines():
        m = re.match(r"^  ([A-Z0-9_]+) : ?(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2)
        elif current:
            out[current] += " " + line.strip()
    return out


def _ivar_docs(doc: str) -> dict[str, str]:
    out: dict[str, str] = {}
    current = None
    for line in (doc or "").splitlines():
        m = re.match(r"^\s*:ivar (\w+):(.*)$", line)
        if m:
            current = m.group(1)
            out[current] = m.group(2)
        elif current and line.strip() and not line.strip().startswith(":"):
            out[current] += " " + line.strip()
        else:
            current = None
    return out


def _enum(cls) -> dict:
    docs = _member_docs(cls.__doc__ or "")
    return {
        name: {"value": int(m), "deprecated": _deprecation(docs.get(name, ""))}
        for name, m in cls.__members__.items()
    }


def _class(cls) -> dict:
    ivars = _ivar_docs(cls.__doc__ or "")
    methods, properties = {}, {}
    for name, value in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(value, property):
            text = ivars.get(name, "") + " " + (value.__doc__ or "")
            properties[name] = {"settable": value.fset is not None,
                                "deprecated": _deprecation(text)}  # fmt: skip
        elif callable(value) and not isinstance(value, type):
            doc = getattr(value, "__doc__", "") or ""
            methods[name] = {"signatures": _signatures(name, doc), "deprecated": _deprecation(doc)}
    # interfaces implemented in Python (IOutputAllocator): the methods their docstring shows
    overridable = re.findall(r"def (\w+)\(self(?:, )?([^)]*)\)", cls.__doc__ or "")
    return {
        "bases": [b.__name__ for b in cls.__bases__ if b.__name__ != "pybind11_object"],
        "methods": methods,
        "properties": properties,
        "overridable": {n: [p.strip() for p in a.split(",") if p.strip()] for n, a in overridable},
    }


def introspect() -> dict:
    import tensorrt_bindings as trt

    enums, classes, functions = {}, {}, {}

    def visit(prefix: str, owner) -> None:
        for name, value in sorted(vars(owner).items()):
            if name.startswith("_") or not isinstance(value, type):
                continue
            if not getattr(value, "__module__", "").startswith("tensorrt_bindings"):
                continue
            if hasattr(value, "__members__"):
                enums[prefix + name] = _enum(value)
            else:
                classes[prefix + name] = _class(value)
                visit(prefix + name + ".", value)

    visit("", trt)
    for name, value in sorted(vars(trt).items()):
        if not name.startswith("_") and callable(value) and not isinstance(value, type):
            functions[name] = {"signatures": _signatures(name, value.__doc__)}
    aliases = {n: repr(v).split(".")[-1].split(":")[0] for n, v in vars(trt).items()
               if type(v).__name__ == "DataType"}  # fmt: skip
    return {
        "version": trt.__version__,
        "enums": enums,
        "classes": classes,
        "functions": functions,
        "datatype_aliases": dict(sorted(aliases.items())),
    }


def _write_dumps() -> None:
    import tempfile

    DUMPS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for version in VERSIONS:
            record = dump(version, Path(work))
            (DUMPS / f"{version}.json").write_text(json.dumps(record, indent=1, sort_keys=True))
            print(f"{version}: {len(record['enums'])} enums, {len(record['classes'])} classes")


if __name__ == "__main__":
    if sys.argv[1:] == ["--introspect"]:
        json.dump(introspect(), sys.stdout)
    else:
        _write_dumps()
