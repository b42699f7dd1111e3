"""The TensorRT API the GPU targets and the fake use, checked against NVIDIA's real bindings.

Every `trt.X`, enum member, method, property and keyword in targets/tensorrt_*.py and
targets/ort_gpu.py (read from their source: receivers typed by the dump's return types) and
every name the fake defines is looked up in the dump of each version in trt_api.VERSIONS:
present, present but deprecated (and since when), or removed. The dumps are checked against
the wheels `make setup` fetched (.venv/tensorrt-bindings/), imported with stub libraries.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgesmith.targets.tensorrt_config import NUMPY_FROM_TRT
from edgesmith.targets.tensorrt_options import HARDWARE_COMPATIBILITY, version_tuple
from tests.targets import fake_tensorrt, trt_api

REPO = Path(__file__).resolve().parents[2]
CODE = [REPO / "targets" / f for f in ("tensorrt_gpu.py", "tensorrt_runner.py",
        "tensorrt_config.py", "tensorrt_options.py", "ort_gpu.py")]  # fmt: skip
MODULE_NAMES = {"trt", "tensorrt"}  # what the code calls the tensorrt module
# Receivers by name where no assignment in the function says (parameters, tuple unpacking,
# self.<name>); assignments from a TensorRT call are typed by the dump's return type.
NAME_TYPES = {
    "builder": "Builder", "network": "INetworkDefinition", "parser": "OnnxParser",
    "config": "IBuilderConfig", "runtime": "Runtime", "engine": "ICudaEngine",
    "context": "IExecutionContext", "ctx": "IExecutionContext", "cache": "ITimingCache",
    "merged": "ITimingCache", "profile": "IOptimizationProfile",
}  # fmt: skip
UNTYPED_NAMES = {"ort_gpu.py", "tensorrt_options.py"}  # no TensorRT objects, only the module
SCOPED_TYPES = {("describe_parser_errors", "e"): "ParserError"}
HELPERS = {"last_error", "take"}  # methods of our TensorRT subclasses that TensorRT never calls
# Names the code reaches only on some versions: (first version that has it, first major that
# goes without it). Read from the code's own tables where it has one.
GUARDS = {
    **{("HardwareCompatibilityLevel", m): (since, None)
       for m, _, since in HARDWARE_COMPATIBILITY.values() if since},
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"): (None, 11),  # tensorrt_gpu.network_flags
}  # fmt: skip


@dataclass(frozen=True)
class Use:
    owner: str  # "tensorrt" (module), an enum or a class, as the dump names it
    name: str
    kind: str  # module | member | attr | override | keyword
    where: str
    keyword: str = ""

    def key(self) -> str:
        return f"{self.owner}.{self.name}" + (f"({self.keyword}=)" if self.keyword else "")


# ---------------------------------------------------------------- reading the code


def _returns(dump: dict, cls: str, method: str) -> str | None:
    sigs = dump["classes"].get(cls, {}).get("methods", {}).get(method, {}).get("signatures", [])
    for sig in sigs:
        ret = sig.rsplit("-> ", 1)[-1].strip()
        ret = re.sub(r"^(Optional\[|typing\.Optional\[)(.*)\]$", r"\2", ret).split(".")[-1]
        if ret in dump["classes"]:
            return ret
    return None


class _Reader(ast.NodeVisitor):
    """Collects the TensorRT uses of one module, typing receivers as it goes."""

    def __init__(self, path: Path, dump: dict) -> None:
        self.path, self.dump, self.uses = path, dump, []
        self.func = ""
        self.env: dict[str, tuple[str, str]] = {}  # name -> ("class", C) | ("chain", "A.B")
        self.names = {} if path.name in UNTYPED_NAMES else NAME_TYPES

    def _at(self, node) -> str:
        return f"{self.path.name}:{node.lineno}"

    def chain(self, node) -> list[str] | None:
        """trt.A.B -> ["A", "B"] (aliases of such chains followed)."""
        if isinstance(node, ast.Name):
            if node.id in MODULE_NAMES:
                return []
            kind, value = self.env.get(node.id, ("", ""))
            return value.split(".") if kind == "chain" else None
        if isinstance(node, ast.Attribute):
            head = self.chain(node.value)
            return None if head is None else [*head, node.attr]
        return None

    def type_of(self, node) -> str | None:
        if isinstance(node, ast.Name):
            kind, value = self.env.get(node.id, ("", ""))
            if kind == "class":
                return value
            if kind == "other":
                return None
            return SCOPED_TYPES.get((self.func, node.id)) or self.names.get(node.id)
        if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "self":
            return self.names.get(node.attr)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            chain = self.chain(node.func)
            if chain and len(chain) == 1 and chain[0] in self.dump["classes"]:
                return chain[0]  # trt.Builder(logger)
            recv = self.type_of(node.func.value)
            return _returns(self.dump, recv, node.func.attr) if recv else None
        return None

    def visit_FunctionDef(self, node) -> None:
        outer, saved = self.func, dict(self.env)
        self.func = node.name
        for arg in node.args.args + node.args.kwonlyargs:
            if arg.annotation is not None:  # annotated: not a TensorRT object
                self.env[arg.arg] = ("other", "")
        self.generic_visit(node)
        self.func, self.env = outer, saved

    def visit_ClassDef(self, node) -> None:
        for base in node.bases:
            chain = self.chain(base)
            if chain and len(chain) == 1:
                self.uses.append(Use("tensorrt", chain[0], "module", self._at(base)))
                for item in node.body:
                    name = getattr(item, "name", "_")
                    own = name.startswith("_") or name in HELPERS
                    if isinstance(item, ast.FunctionDef) and not own:
                        self.uses.append(Use(chain[0], item.name, "override", self._at(item)))
        self.generic_visit(node)

    def visit_Assign(self, node) -> None:
        self.generic_visit(node)
        if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            chain = self.chain(value)
            if chain:
                self.env[name] = ("chain", ".".join(chain))
            elif (t := self.type_of(value)) is not None:
                self.env[name] = ("class", t)

    def visit_Attribute(self, node) -> None:
        chain = self.chain(node)
        if chain is not None and chain:
            if not chain[-1].startswith("__"):
                self._chain_use(chain, node)
            return
        recv = self.type_of(node.value)
        if recv is not None:
            self.uses.append(Use(recv, node.attr, "attr", self._at(node)))
        self.generic_visit(node)

    def _chain_use(self, chain: list[str], node) -> None:
        self.uses.append(Use("tensorrt", chain[0], "module", self._at(node)))
        enums = self.dump["enums"]
        for i in range(1, len(chain)):
            owner = ".".join(chain[:i])
            if owner in enums or owner in self.dump["classes"]:
                kind = "member" if owner in enums else "attr"
                self.uses.append(Use(owner, chain[i], kind, self._at(node)))

    def visit_Call(self, node) -> None:
        self.generic_visit(node)
        if not isinstance(node.func, ast.Attribute) or not node.keywords:
            return
        recv = self.type_of(node.func.value)
        if recv is None and (chain := self.chain(node.func)) is not None:
            recv = "tensorrt" if len(chain) == 1 else None
        for kw in node.keywords:
            if recv and kw.arg:
                self.uses.append(Use(recv, node.func.attr, "keyword", self._at(node), kw.arg))


def code_uses(dump: dict) -> list[Use]:
    uses = []
    for path in CODE:
        reader = _Reader(path, dump)
        reader.visit(ast.parse(path.read_text()))
        uses += reader.uses
    # names the code reaches through getattr or compares as strings
    uses += [Use("HardwareCompatibilityLevel", m, "member", "tensorrt_options.py")
             for m, _, _ in HARDWARE_COMPATIBILITY.values()]  # fmt: skip
    uses += [Use("DataType", m, "member", "tensorrt_config.py") for m in NUMPY_FROM_TRT]
    return uses


def fake_uses() -> list[Use]:
    """Every enum, class, method and property the fake defines, as TensorRT's names."""
    uses = [Use("tensorrt", "init_libnvinfer_plugins", "module", "fake_tensorrt.py")]
    for cls in fake_tensorrt.CLASSES:
        uses.append(Use("tensorrt", cls.__name__, "module", "fake_tensorrt.py"))
        for name, value in vars(cls).items():
            if name.startswith("_") or isinstance(value, type) or name.isupper():
                continue
            if callable(value) or isinstance(value, property):
                uses.append(Use(cls.__name__, name, "attr", "fake_tensorrt.py"))
    for name, value in vars(fake_tensorrt).items():
        if isinstance(value, type) and hasattr(value, "__members__"):
            uses += [Use(name, m, "member", "fake_tensorrt.py") for m in value.__members__]
    return uses


# ---------------------------------------------------------------- looking names up


def _keywords(signatures: list[str]) -> set[str]:
    names = set()
    for sig in signatures:
        names |= set(re.findall(r"[(,]\s*\*?(\w+)\s*:", sig))
    return names


def status(use: Use, dump: dict) -> str | None:
    """None: present; 'deprecated X': present, deprecated since X; 'removed': absent."""
    if f"{use.owner}.{use.name}" in dump["enums"]:  # a nested enum: ILogger.Severity
        return None
    if use.owner == "tensorrt":
        ok = use.name in dump["classes"] or use.name in dump["enums"]
        return None if ok or use.name in dump["functions"] else "removed"
    if use.owner in dump["enums"]:
        member = dump["enums"][use.owner].get(use.name)
        if member is None:
            return "removed"
        return f"deprecated {member['deprecated']}" if member["deprecated"] else None
    cls = dump["classes"].get(use.owner)
    if cls is None:
        return "removed"
    chain = [cls] + [dump["classes"].get(b, {}) for b in cls["bases"]]
    for c in chain:
        entry = c.get("methods", {}).get(use.name) or c.get("properties", {}).get(use.name)
        if entry is None and use.name in c.get("overridable", {}):
            entry = {"deprecated": None, "signatures": []}
        if entry is None:
            continue
        if use.keyword and use.keyword not in _keywords(entry.get("signatures", [])):
            return "removed"
        return f"deprecated {entry['deprecated']}" if entry["deprecated"] else None
    return "removed"


def reached(use: Use, version: str) -> bool:
    since, without = GUARDS.get((use.owner, use.name), (None, None))
    v = version_tuple(version)
    return not (since and v < version_tuple(since)) and not (without and v[0] >= without)


def check(uses: list[Use], version: str, dump: dict) -> dict[str, dict[str, str]]:
    """{"removed": {use: where}, "deprecated": {use: "deprecated X"}} for one version."""
    out: dict[str, dict[str, str]] = {"removed": {}, "deprecated": {}}
    for use in uses:
        if not reached(use, version):
            continue
        s = status(use, dump)
        if s == "removed":
            out["removed"].setdefault(use.key(), use.where)
        elif s:
            out["deprecated"][use.key()] = s
    return out


DUMPS = trt_api.load_dumps()
# What the code and the fake use that a version deprecates (the fake mirrors 10.x's weak
# typing API, which is deprecated there and absent from 11's dump and fake).
EXPECTED_DEPRECATED = {
    "10.0.1": {},
    "10.13.3.9": {},
    "10.16.1.11": {},
    "11.4.0.106": {},
}


@pytest.mark.parametrize("version", list(trt_api.VERSIONS))
def test_the_targets_use_only_what_each_tensorrt_has(version):
    dump = DUMPS[version]
    uses = code_uses(dump)
    assert len({u.key() for u in uses}) > 50, "the reader found too little: is it broken?"
    found = check(uses, version, dump)
    assert found["removed"] == {}, f"TensorRT {version} lacks {found['removed']}"
    assert found["deprecated"] == EXPECTED_DEPRECATED[version]


@pytest.mark.parametrize("version", list(trt_api.VERSIONS))
def test_the_fake_is_the_api_of_the_version_it_plays(version, fake_trt):
    mod = fake_trt(version=version)
    assert mod.API["version"] == version
    dump = DUMPS[version]
    for name in ("DataType", "BuilderFlag", "HardwareCompatibilityLevel", "TensorIOMode"):
        members = {m: int(v) for m, v in getattr(mod, name).__members__.items()}
        assert members == {m: d["value"] for m, d in dump["enums"][name].items()}
    cls_uses = [Use(c.__name__, n, "attr", "fake") for c in mod.CLASSES for n, v in vars(c).items()
                if not n.startswith("_") and (callable(v) or isinstance(v, property))
                and not isinstance(v, type) and not n.isupper()]  # fmt: skip
    assert check(cls_uses, version, dump)["removed"] == {}


def test_the_fakes_names_exist_in_some_tensorrt():
    missing = {u.key() for u in fake_uses()
               if all(status(u, d) == "removed" for d in DUMPS.values())}  # fmt: skip
    assert missing == set()


def test_a_name_removed_from_a_dump_fails_the_check():
    """The negative control: remove a name the code uses from a copy of a dump."""
    dump = json.loads(json.dumps(DUMPS["10.16.1.11"]))
    del dump["classes"]["IBuilderConfig"]["methods"]["set_timing_cache"]
    del dump["enums"]["BuilderFlag"]["TF32"]
    sigs = dump["classes"]["ITimingCache"]["methods"]["combine"]["signatures"]
    sigs[:] = [s.replace("input_cache", "other") for s in sigs]
    dump["enums"]["TensorIOMode"]["INPUT"]["deprecated"] = "10.99"
    found = check(code_uses(dump), "10.16.1.11", dump)
    assert set(found["removed"]) == {
        "IBuilderConfig.set_timing_cache",
        "IBuilderConfig.set_timing_cache(ignore_mismatch=)",
        "BuilderFlag.TF32",
    }  # combine's renamed parameter does not matter: the code passes it by position
    assert found["deprecated"] == {"TensorIOMode.INPUT": "deprecated 10.99"}
    del dump["classes"]["IExecutionContext"]["methods"]["set_input_shape"]
    assert "IExecutionContext.set_input_shape" in check(code_uses(dump), "10.16.1.11", dump)[
        "removed"]  # fmt: skip


def test_a_keyword_the_real_method_does_not_take_fails_the_check():
    dump = json.loads(json.dumps(DUMPS["10.16.1.11"]))
    use = Use("IBuilderConfig", "set_timing_cache", "keyword", "x", "ignore_mismatch")
    assert status(use, dump) is None
    sigs = dump["classes"]["IBuilderConfig"]["methods"]["set_timing_cache"]["signatures"]
    sigs[:] = [s.replace("ignore_mismatch", "ignore_mismatches") for s in sigs]
    assert status(use, dump) == "removed"


def test_what_the_dumps_say_about_the_issues_claims():
    d = DUMPS
    scc = "SAME_COMPUTE_CAPABILITY"
    assert scc not in d["10.0.1"]["enums"]["HardwareCompatibilityLevel"]
    assert scc in d["10.13.3.9"]["enums"]["HardwareCompatibilityLevel"]
    for v in ("10.0.1", "10.13.3.9", "10.16.1.11", "11.4.0.106"):
        assert "STRONGLY_TYPED" in d[v]["enums"]["NetworkDefinitionCreationFlag"], v
    flags = d["10.16.1.11"]["enums"]["BuilderFlag"]
    assert flags["FP16"]["deprecated"] == flags["INT8"]["deprecated"] == "10.12"
    assert not {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"} & set(
        d["11.4.0.106"]["enums"]["BuilderFlag"])  # fmt: skip
    assert "DIRECT_IO" in d["11.4.0.106"]["enums"]["BuilderFlag"]
    assert "int8_calibrator" not in d["11.4.0.106"]["classes"]["IBuilderConfig"]["properties"]
    eleven = d["11.4.0.106"]["enums"]["NetworkDefinitionCreationFlag"]["STRONGLY_TYPED"]
    assert eleven["deprecated"] == "11.0"  # hence network_flags() is 0 on 11


# ---------------------------------------------------------------- the dumps are the wheels'


@pytest.mark.skipif(shutil.which("gcc") is None, reason="no C compiler for the stub libraries")
@pytest.mark.parametrize("version", list(trt_api.VERSIONS))
def test_the_checked_in_dump_is_what_the_real_bindings_say(version, tmp_path):
    if trt_api.wheel_path(version) is None:
        pytest.fail(
            f"no {trt_api.VERSIONS[version]} {version} wheel in {trt_api.WHEELS}: run "
            "`make setup` (or pip download --no-deps -d .venv/tensorrt-bindings "
            f"{trt_api.VERSIONS[version]}=={version})"
        )
    fresh = trt_api.dump(version, tmp_path)
    stored = DUMPS[version]
    assert fresh["version"] == version
    assert json.loads(json.dumps(fresh, sort_keys=True)) == stored, (
        "the dump differs from the wheel: regenerate with python -m tests.targets.trt_api"
    )


def test_the_fake_module_loads_for_every_dump():
    for version in trt_api.VERSIONS:
        spec = importlib.util.spec_from_file_location("tensorrt", fake_tensorrt.MODULE_FILE)
        mod = importlib.util.module_from_spec(spec)
        mod.API_VERSION = version
        spec.loader.exec_module(mod)  # _conform raises on a name the version lacks
        assert mod.__version__ == version


WEAK_TYPING = [
    Use("BuilderFlag", "FP16", "member", "fake"),
    Use("BuilderFlag", "INT8", "member", "fake"),
    Use("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS", "member", "fake"),
    Use("IBuilderConfig", "int8_calibrator", "attr", "fake"),
    Use("Builder", "platform_has_fast_fp16", "attr", "fake"),
    Use("BuilderFlag", "DIRECT_IO", "member", "fake"),
]


def test_weak_typing_is_deprecated_in_10x_and_removed_in_11_except_direct_io():
    """What the old fake refused as removed: present in every 10.x (deprecated from 10.12,
    calibrators from 10.1, DIRECT_IO from 10.7), gone in 11 but DIRECT_IO."""
    got = {v: {u.key(): status(u, DUMPS[v]) for u in WEAK_TYPING} for v in DUMPS}
    assert got["10.0.1"] == dict.fromkeys(got["10.0.1"])  # present, not yet deprecated
    for v in ("10.13.3.9", "10.16.1.11"):
        assert got[v] == {
            "BuilderFlag.FP16": "deprecated 10.12",
            "BuilderFlag.INT8": "deprecated 10.12",
            "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": "deprecated 10.12",
            "IBuilderConfig.int8_calibrator": "deprecated 10.1",
            "Builder.platform_has_fast_fp16": None,  # not marked deprecated in the bindings
            "BuilderFlag.DIRECT_IO": "deprecated 10.7",
        }
    assert got["11.4.0.106"] == {**dict.fromkeys(got["11.4.0.106"], "removed"),
                                 "BuilderFlag.DIRECT_IO": "deprecated 10.7"}  # fmt: skip
