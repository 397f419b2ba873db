"""The rules of the header's "Conventions", checked for every struct, enum and function it declares:
the ctypes mirror equals the C compiler's view of the header; versioned structs are accepted from
their first version, written only up to the caller's struct_size, and a newer caller's unknown
non-zero bytes are refused; every output buffer follows (buf, capacity, needed); every enum has one
name table; a successful call leaves moe_last_error() alone."""
from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from abi import Layer, Model, Runtime, check, expect, ids_array, last_error, params, result, upcycle
from moeupcycle import _capi as C
from test_model import VOCAB, write_tiny

ROOT = Path(__file__).resolve().parents[2]
HEADER = (ROOT / "include" / "moeupcycle.h").read_text()
SENTINEL = 0xA5


# --------------------------------------------------------------------------- the header, read as text


def _uncomment(text: str) -> str:
    return re.sub(r"/\*.*?\*/", " ", text, flags=re.S)


def _doc_before(pos: int) -> str:
    """The /** ... */ comment right before `pos`, as plain text."""
    start = HEADER.rfind("/**", 0, pos)
    body = HEADER[start + 3:HEADER.index("*/", start)]
    return " ".join(line.strip().lstrip("*").strip() for line in body.splitlines())


def _header_structs() -> dict:
    """name -> (field names in order, the last field of the first version or None for all, field -> type)."""
    out = {}
    for m in re.finditer(r"typedef struct (moe_\w+) \{(.*?)\} \1;", HEADER, re.S):
        decls = re.findall(r"([\w ]+?)\s*\**\s*(\w+)\s*(?:\[\d+\])?\s*;", _uncomment(m.group(2)))
        version = re.search(r"First version: [\d.]+ \((all fields below|fields up to (\w+))\)",
                            _doc_before(m.start()))
        assert version, f"{m.group(1)} names no first version"
        out[m.group(1)] = ([f for _, f in decls], version.group(2), {f: t.strip() for t, f in decls})
    return out


def _header_enums() -> dict:
    """name -> ([(constant, value)], names listed in the doc comment, name of the DEFAULT value or None)."""
    out = {}
    for m in re.finditer(r"typedef enum (moe_\w+) \{(.*?)\} \1;", HEADER, re.S):
        members = [(c, int(v)) for c, v in re.findall(r"(MOE_\w+)\s*=\s*(-?\d+)", _uncomment(m.group(2)))]
        doc = _doc_before(m.start())
        names, default = [], None
        if "Names:" in doc:
            sentence = doc.split("Names:", 1)[1].split(".")[0]
            values, _, rest = sentence.partition(";")
            names = re.findall(r'"([^"]+)"', values)
            default = (re.findall(r'"([^"]+)"', rest) or [None])[0]
        out[m.group(1)] = (members, names, default)
    return out


def _header_functions() -> dict:
    """name -> (return type, parameter declarations)."""
    out = {}
    text = _uncomment(HEADER)
    for m in re.finditer(r"^(moe_status|const char \*|void|uint32_t)\s*(moe_\w+)\(([^;]*?)\);", text, re.M | re.S):
        args = " ".join(m.group(3).split())
        out[m.group(2)] = (m.group(1).replace(" ", ""), [] if args == "void" else args.split(", "))
    return out


STRUCTS = _header_structs()
ENUMS = _header_enums()
FUNCTIONS = _header_functions()
MACROS = re.findall(r"^#define (MOE_\w+)", HEADER, re.M)


def _cls(name):
    return getattr(C, name)


def first_version_size(name: str) -> int:
    """Bytes of a struct's first version: its sizeof when every field is in it, else the end of the last field
    in it rounded up to the struct's alignment (where the first appended field starts)."""
    cls = _cls(name)
    last = STRUCTS[name][1]
    if last is None:
        return ctypes.sizeof(cls)
    field = getattr(cls, last)
    align = ctypes.alignment(cls)
    return (field.offset + field.size + align - 1) // align * align


def test_header_is_read_completely():
    """The parsing above found what the header holds (so the tests below cover all of it)."""
    text = _uncomment(HEADER)
    assert 0 < len(STRUCTS) == len(re.findall(r"typedef struct moe_\w+ \{", text))
    assert 0 < len(ENUMS) == text.count("typedef enum")
    assert 0 < len(FUNCTIONS) == len(re.findall(r"^\w[\w ]*\*?\s*moe_\w+\(", text, re.M))
    assert all(len(fields) == len(types) > 1 for fields, _, types in STRUCTS.values())
    assert "moe_trainer_params" in STRUCTS and STRUCTS["moe_trainer_params"][1] == "eval_windows"
    assert ENUMS["moe_dtype"][2] == "default" and ENUMS["moe_routing"][1][0] == "softmax-topk-renorm"
    assert FUNCTIONS["moe_model_generate"][0] == "moe_status" and len(FUNCTIONS["moe_model_generate"][1]) == 7


# --------------------------------------------------------------------------- the mirror equals the compiler


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """What the C compiler says about the header: sizeof of every struct, offset and size of each of its fields, and
    the value of every enum constant and macro."""
    cc = shutil.which(os.environ.get("CC", "cc"))
    assert cc, "a C compiler is needed to compare the ctypes mirror with the header"
    lines = ["#include <stdio.h>", "#include <stddef.h>", '#include "moeupcycle.h"',
             "#define KIND(x) _Generic((x), float: \"float\", double: \"float\", int: \"signed\", \\",
             "  long: \"signed\", long long: \"signed\", unsigned: \"unsigned\", unsigned long: \"unsigned\", \\",
             "  unsigned long long: \"unsigned\", default: \"other\")",
             "int main(void) {"]
    for name, (fields, _, _) in STRUCTS.items():
        lines.append(f'  printf("sizeof {name} %zu\\n", sizeof({name}));')
        for f in fields:
            lines.append(f'  printf("offsetof {name}.{f} %zu\\n", offsetof({name}, {f}));')
            lines.append(f'  printf("sizeof {name}.{f} %zu\\n", sizeof((({name} *)0)->{f}));')
            lines.append(f'  printf("kind {name}.{f} %s\\n", KIND((({name} *)0)->{f}));')
    for members, _, _ in ENUMS.values():
        for c, _ in members:
            lines.append(f'  printf("value {c} %lld\\n", (long long){c});')
    for macro in MACROS:
        if macro == "MOE_VERSION_STRING":
            lines.append(f'  printf("value {macro} %s\\n", {macro});')
        else:
            lines.append(f'  printf("value {macro} %lld\\n", (long long)({macro}));')
    lines.append("  return 0;\n}")
    d = tmp_path_factory.mktemp("layout")
    (d / "layout.c").write_text("\n".join(lines))
    subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", str(ROOT / "include"), str(d / "layout.c"), "-o",
                    str(d / "layout")], check=True)
    out = subprocess.run([str(d / "layout")], capture_output=True, text=True, check=True).stdout
    return {" ".join(line.split()[:2]): line.split()[2] for line in out.splitlines()}


def _kind(ctype):
    if ctype in (ctypes.c_float, ctypes.c_double):
        return "float"
    if ctype in (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64):
        return "signed"
    if ctype in (ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_size_t):
        return "unsigned"
    return "other"


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_struct_layout_matches_the_compiler(compiled, name):
    cls = _cls(name)
    fields = STRUCTS[name][0]
    assert [f for f, _ in cls._fields_] == fields, f"{name}: ctypes fields differ from the header's"
    assert ctypes.sizeof(cls) == int(compiled[f"sizeof {name}"]), name
    for f in fields:
        assert getattr(cls, f).offset == int(compiled[f"offsetof {name}.{f}"]), f"{name}.{f}"
        assert getattr(cls, f).size == int(compiled[f"sizeof {name}.{f}"]), f"{name}.{f}"
        if STRUCTS[name][2][f] not in ENUMS:  # an enum's compatible integer type is the compiler's choice
            assert _kind(dict(cls._fields_)[f]) == compiled[f"kind {name}.{f}"], f"{name}.{f}"


def test_every_ctypes_struct_is_in_the_header():
    mirrored = {n for n, v in vars(C).items()
                if n.startswith("moe_") and isinstance(v, type) and issubclass(v, ctypes.Structure)}
    assert mirrored == set(STRUCTS)


def test_constants_match_the_compiler(compiled):
    names = [c for members, _, _ in ENUMS.values() for c, _ in members] + MACROS
    for name in names:
        want = compiled[f"value {name}"]
        got = getattr(C, name)
        assert str(got) == want, f"{name} is {got!r} in _capi, {want} in the header"


def test_first_versions_end_where_appended_fields_start():
    for name, (fields, last, _) in STRUCTS.items():
        if last is None:
            continue
        cls = _cls(name)
        first = first_version_size(name)
        appended = fields[fields.index(last) + 1:]
        assert appended and first < ctypes.sizeof(cls), name
        appended = [f for f in appended if not f.startswith("reserved")]
        assert min(getattr(cls, f).offset for f in appended) >= first, name


_CTYPE_OF = {"moe_status": ctypes.c_int, "constchar*": ctypes.c_char_p, "void": None, "uint32_t": ctypes.c_uint32}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_is_declared(name):
    """Each function of the header has argtypes (as many as the prototype's parameters) and its restype."""
    ret, args = FUNCTIONS[name]
    fn = getattr(C.lib, name)
    assert fn.argtypes is not None, f"{name} has no argtypes"
    assert len(fn.argtypes) == len(args), (name, fn.argtypes, args)
    assert fn.restype is _CTYPE_OF[ret], (name, fn.restype, ret)
    for ctype, decl in zip(fn.argtypes, args):
        if decl.startswith("size_t *"):
            assert ctype is ctypes.POINTER(ctypes.c_size_t), (name, decl)
        elif re.match(r"(const )?(struct )?moe_\w+ \*\w+$", decl) and decl.split()[-2] in STRUCTS:
            assert ctype is ctypes.POINTER(_cls(decl.split()[-2])), (name, decl)


# --------------------------------------------------------------------------- name tables


def test_every_enum_but_status_has_a_name_table():
    tables = {n[len("moe_"):-len("_name")] for n in FUNCTIONS if n.endswith("_name") and not n.endswith("_from_name")}
    assert tables == set(C.NAMED_ENUMS) == {e[len("moe_"):] for e in ENUMS if e != "moe_status"}
    for enum in C.NAMED_ENUMS:
        assert f"moe_{enum}_from_name" in FUNCTIONS


def _name(enum, value):
    return getattr(C.lib, f"moe_{enum}_name")(value)


def _from_name(enum, name):
    out = ctypes.c_int(-99)
    st = getattr(C.lib, f"moe_{enum}_from_name")(ctypes.byref(out), name)
    return st, out.value


@pytest.mark.parametrize("enum", C.NAMED_ENUMS)
def test_name_table_lists_the_header_constants_in_order(enum):
    members, names, default = ENUMS[f"moe_{enum}"]
    values = sorted(v for _, v in members if v >= 0)
    assert values == list(range(len(values))), "values run from 0 without gaps"
    got = []
    while (n := _name(enum, len(got))) is not None:
        got.append(n.decode())
        assert len(got) <= 64, "no end to the table"
    assert got == names, f"moe_{enum}_name: {got} but the header lists {names}"
    assert len(got) == len(values)
    by_value = {v: c for c, v in members}
    for value, name in enumerate(got):
        assert getattr(C, by_value[value]) == value
        # Round trips: canonical, upper case, '_' for '-', mixed case.
        for spelling in (name, name.upper(), name.replace("-", "_"), name.replace("-", "_").title()):
            st, out = _from_name(enum, spelling.encode())
            assert (st, out) == (C.MOE_OK, value), (enum, spelling, st, last_error())
    assert _name(enum, len(got)) is None and _name(enum, 1000) is None and _name(enum, -2) is None
    has_default = any(v == -1 for _, v in members)
    assert (default is not None) == has_default
    if has_default:
        assert _name(enum, -1) == b"default" and default == "default"
        for spelling in (b"default", b"DEFAULT", b"Default"):
            assert _from_name(enum, spelling) == (C.MOE_OK, -1)
    else:
        assert _name(enum, -1) is None


@pytest.mark.parametrize("enum", C.NAMED_ENUMS)
def test_unknown_names_are_refused_with_the_valid_ones(enum):
    names = ENUMS[f"moe_{enum}"][1]
    bad = [b"no-such-name", b"", b" " + names[0].encode(), names[0].encode() + b"x", names[0].encode() + b"-"]
    if ENUMS[f"moe_{enum}"][2] is None:
        bad.append(b"default")
    for spelling in bad:
        msg = expect(_from_name(enum, spelling)[0], C.MOE_ERR_INVALID_ARGUMENT, *names)
        assert repr(spelling.decode())[1:-1] in msg, msg
    out = ctypes.c_int()
    expect(getattr(C.lib, f"moe_{enum}_from_name")(None, names[0].encode()), C.MOE_ERR_NULL_POINTER, "out")
    expect(getattr(C.lib, f"moe_{enum}_from_name")(ctypes.byref(out), None), C.MOE_ERR_NULL_POINTER, "name")


def test_dtype_keep_and_auto_mean_default():
    for spelling in (b"keep", b"KEEP", b"auto", b"Auto"):
        assert _from_name("dtype", spelling) == (C.MOE_OK, C.MOE_DTYPE_DEFAULT)
    # Only dtypes take these words.
    for enum in ("placement", "method"):
        for spelling in (b"keep", b"auto"):
            expect(_from_name(enum, spelling)[0], C.MOE_ERR_INVALID_ARGUMENT)


# --------------------------------------------------------------------------- objects the rules are tried on


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A dense and a Mixtral tiny checkpoint, a runtime, models of both, a layer after a forward, a trainer."""
    base = tmp_path_factory.mktemp("abi")
    dense = base / "dense"
    write_tiny(dense, seed=2)
    mixtral = base / "mixtral"
    upcycle(dense, mixtral, num_experts=4, top_k=2, method="drop", seed=1)
    rt = Runtime(threads=2)
    w = SimpleNamespace(base=base, dense=dense, mixtral=mixtral, rt=rt)
    w.model = Model(rt, dense)
    w.moe = Model(rt, mixtral)
    w.T, w.H, w.F, w.E = 5, 8, 12, 4
    w.layer = Layer(rt, hidden_size=w.H, moe_intermediate_size=w.F, num_experts=w.E, top_k=2)
    check(C.lib.moe_layer_init_random(w.layer.h, 3, 0.5))
    w.layer.forward(np.random.default_rng(0).standard_normal((w.T, w.H)).astype(np.float32), C.MOE_FORWARD_SAVE)
    w.tokens = [int(t) for t in np.random.default_rng(1).integers(0, VOCAB, 400)]
    w.trainer = ctypes.c_void_p()
    check(C.lib.moe_trainer_create(ctypes.byref(w.trainer), w.model.h, ids_array(w.tokens), len(w.tokens),
                                   params(C.moe_trainer_params, seq_len=8, batch=1, eval_fraction=0)))
    w.counter = 0
    yield w
    C.lib.moe_trainer_free(w.trainer)
    w.layer.close()
    rt.close()


def _fresh_dir(w):
    w.counter += 1
    return w.base / f"out{w.counter}"


# --------------------------------------------------------------------------- versioned structs: parameters


def _runtime_create(w, p):
    h = ctypes.c_void_p()
    st = C.lib.moe_runtime_create(ctypes.byref(h), p)
    C.lib.moe_runtime_free(h)
    return st


def _layer_create(w, p):
    h = ctypes.c_void_p()
    st = C.lib.moe_layer_create(ctypes.byref(h), w.rt.h, p)
    C.lib.moe_layer_free(h)
    return st


def _model_load(w, p):
    h = ctypes.c_void_p()
    st = C.lib.moe_model_load(ctypes.byref(h), w.rt.h, str(w.dense).encode(), p)
    C.lib.moe_model_free(h)
    return st


def _trainer_create(w, p):
    h = ctypes.c_void_p()
    st = C.lib.moe_trainer_create(ctypes.byref(h), w.model.h, ids_array(w.tokens), len(w.tokens), p)
    C.lib.moe_trainer_free(h)
    return st


def _upcycle(w, p):
    out = _fresh_dir(w)
    st = C.lib.moe_upcycle(None, str(w.dense).encode(), str(out).encode(), p)
    assert out.exists() == (st == C.MOE_OK), "a refused upcycle left output behind"
    return st


def _fit(w, p):
    tokens = (ctypes.c_double * 6)(1e3, 2e3, 4e3, 8e3, 1.6e4, 3.2e4)
    losses = (ctypes.c_double * 6)(*[1.0 + 30 * t ** -0.3 for t in tokens])
    return C.lib.moe_scaling_fit(result(C.moe_scaling_law), None, None, tokens, None, None, losses, 6, p)


def _plan(w, p):
    return C.lib.moe_scaling_plan(result(C.moe_plan_result), p)


def _study(w, p):
    recipe = w.base / "study.json"
    if not recipe.exists():
        (w.base / "study.txt").write_text("the cat sat on the mat and the dog ran to the door " * 80)
        recipe.write_text(json.dumps({
            "tokenizer": str(w.dense), "data": str(w.base / "study.txt"), "eval_fraction": 0.2, "eval_windows": 2,
            "dense": {"hidden": 16, "layers": 1, "heads": 2, "ffn": 32}, "moe": {"experts": 2, "top_k": 1},
            "train": {"batch": 1, "seq_len": 8, "warmup": 0}, "dense_steps": [2], "upcycled_steps": [1, 2],
            "eval_every": 1, "bootstrap": 0, "methods": [{"name": "copy", "method": "copy"}],
            "baselines": {"dense_continued": False, "scratch": False}}))
    return C.lib.moe_study_run(str(recipe).encode(), str(w.base / "study").encode(), p)


def _init_model(w, p):
    out = _fresh_dir(w)
    st = C.lib.moe_init_model(None, str(w.dense).encode(), str(out).encode(), p)
    assert out.exists() == (st == C.MOE_OK), "a refused init left output behind"
    return st


# struct -> (its _init function, fields a usable value needs, a call that takes it and returns the status)
PARAMETER_STRUCTS = {
    "moe_upcycle_params": (C.lib.moe_upcycle_params_init, dict(num_experts=2, top_k=1), _upcycle),
    "moe_fit_params": (C.lib.moe_fit_params_init, dict(max_iterations=50), _fit),
    "moe_study_params": (C.lib.moe_study_params_init, dict(threads=1), _study),
    "moe_plan_params": (C.lib.moe_plan_params_init, dict(dense_tokens=1e11, budget_tokens=1e10, dense_parameters=1e9),
                        _plan),
    "moe_init_params": (C.lib.moe_init_params_init, dict(hidden_size=16, num_layers=1, num_heads=2), _init_model),
    "moe_export_params": (C.lib.moe_export_params_init, dict(dtype=C.MOE_DTYPE_F16),
                          lambda w, p: C.lib.moe_export(None, str(w.dense).encode(),
                                                        str(_fresh_dir(w)).encode() + b".gguf", p)),
    "moe_runtime_params": (C.lib.moe_runtime_params_init, dict(threads=1), _runtime_create),
    "moe_layer_config": (C.lib.moe_layer_config_init,
                         dict(hidden_size=8, moe_intermediate_size=8, num_experts=2, top_k=1), _layer_create),
    "moe_model_params": (C.lib.moe_model_params_init, dict(max_context=32), _model_load),
    "moe_eval_params": (C.lib.moe_eval_params_init, dict(seq_len=8, max_tokens=16),
                        lambda w, p: C.lib.moe_model_eval_tokens(None, w.model.h, ids_array(w.tokens[:20]), 20, p)),
    "moe_generate_params": (C.lib.moe_generate_params_init, dict(max_new_tokens=2),
                            lambda w, p: C.lib.moe_model_generate(None, w.model.h, b"The", p, None, 0, None)),
    "moe_trainer_params": (C.lib.moe_trainer_params_init, dict(seq_len=8, batch=1, steps=2), _trainer_create),
}


def test_every_parameter_struct_is_covered():
    inits = {n[:-len("_init")] for n in FUNCTIONS if n.endswith("_init")}
    assert inits == set(PARAMETER_STRUCTS)


class Buffer:
    """`size` bytes of sentinel-filled memory viewed as struct `cls` (which may be larger or smaller)."""

    def __init__(self, cls, size):
        self.cls, self.size = cls, size
        self.raw = ctypes.create_string_buffer(bytes([SENTINEL]) * size, size)

    @property
    def ptr(self):
        return ctypes.cast(self.raw, ctypes.POINTER(self.cls))

    @property
    def view(self):
        assert self.size >= ctypes.sizeof(self.cls)
        return self.cls.from_buffer(self.raw)

    def struct_size(self):
        return int.from_bytes(self.raw.raw[:8], "little")

    def untouched_from(self, start):
        return self.raw.raw[start:] == bytes([SENTINEL]) * (self.size - start)


def _fields_equal(a, b, cls):
    for f, t in cls._fields_:
        if f == "struct_size":
            continue
        x, y = getattr(a, f), getattr(b, f)
        if t in (C.moe_progress_fn, C.moe_token_fn):
            assert bool(x) == bool(y), f
        elif isinstance(x, ctypes._Pointer):
            assert ctypes.cast(x, ctypes.c_void_p).value == ctypes.cast(y, ctypes.c_void_p).value, f
        elif isinstance(x, float) and np.isnan(x):
            assert np.isnan(y), f
        else:
            assert x == y, (f, x, y)


@pytest.mark.parametrize("name", sorted(PARAMETER_STRUCTS))
def test_init_below_the_first_version_is_refused(name):
    cls, (init, _, _) = _cls(name), PARAMETER_STRUCTS[name]
    first = first_version_size(name)
    for size in sorted({0, 7, 8, first // 2, first - 1}):
        buf = Buffer(cls, ctypes.sizeof(cls) + 32)
        expect(init(buf.ptr, size), C.MOE_ERR_INVALID_ARGUMENT, "struct_size", str(size))
        assert buf.untouched_from(size), f"{name}_init wrote beyond the {size} bytes it was given"
    expect(init(None, ctypes.sizeof(cls)), C.MOE_ERR_NULL_POINTER, "params")


@pytest.mark.parametrize("name", sorted(PARAMETER_STRUCTS))
def test_init_writes_exactly_struct_size_bytes(name):
    cls, (init, _, _) = _cls(name), PARAMETER_STRUCTS[name]
    own = ctypes.sizeof(cls)
    defaults = params(cls)
    for size in sorted({first_version_size(name), own}):
        buf = Buffer(cls, own + 32)
        check(init(buf.ptr, size))
        assert buf.struct_size() == size
        assert buf.untouched_from(size), f"{name}_init wrote beyond struct_size {size}"
        if size == own:
            _fields_equal(buf.view, defaults, cls)
        else:  # the first version's fields are the defaults' bytes
            assert buf.raw.raw[8:size] == bytes(defaults)[8:size]


@pytest.mark.parametrize("name", sorted(PARAMETER_STRUCTS))
def test_newer_callers_struct_accepted_when_the_unknown_bytes_are_zero(world, name):
    cls, (init, fields, consume) = _cls(name), PARAMETER_STRUCTS[name]
    own = ctypes.sizeof(cls)
    size = own + 24
    buf = Buffer(cls, size + 16)
    check(init(buf.ptr, size))
    assert buf.struct_size() == size
    assert buf.raw.raw[own:size] == bytes(size - own), "init did not zero the bytes it does not know"
    assert buf.untouched_from(size)
    for k, v in fields.items():
        setattr(buf.view, k, v)
    buf.view.struct_size = size
    check(consume(world, buf.ptr))
    # A non-zero byte the library does not know asks for an option it lacks: refused, naming the byte.
    for at in (own, own + 7, size - 1):
        buf.raw[at] = b"\x01"
        expect(consume(world, buf.ptr), C.MOE_ERR_UNSUPPORTED, name, f"byte {at}")
        buf.raw[at] = b"\x00"
    check(consume(world, buf.ptr))


@pytest.mark.parametrize("name", sorted(PARAMETER_STRUCTS))
def test_parameters_below_the_first_version_are_refused_by_their_user(world, name):
    cls, (_, fields, consume) = _cls(name), PARAMETER_STRUCTS[name]
    p = params(cls, **fields)
    check(consume(world, p))
    p.struct_size = first_version_size(name) - 1
    expect(consume(world, p), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")


# --------------------------------------------------------------------------- versioned structs: results


def _generate_into(w, out):
    return C.lib.moe_model_generate(out, w.model.h, b"The", params(C.moe_generate_params, max_new_tokens=2), None,
                                    0, None)


# struct -> a call that fills it and returns the status
RESULT_STRUCTS = {
    "moe_checkpoint_info": lambda w, out: C.lib.moe_checkpoint_inspect(out, str(w.dense).encode()),
    "moe_upcycle_result": lambda w, out: C.lib.moe_upcycle(out, str(w.dense).encode(), str(_fresh_dir(w)).encode(),
                                                           params(C.moe_upcycle_params, num_experts=2, top_k=1)),
    "moe_init_result": lambda w, out: C.lib.moe_init_model(out, str(w.dense).encode(), str(_fresh_dir(w)).encode(),
                                                           params(C.moe_init_params, hidden_size=16, num_layers=1,
                                                                  num_heads=2)),
    "moe_export_result": lambda w, out: C.lib.moe_export(out, str(w.dense).encode(),
                                                         str(_fresh_dir(w)).encode() + b".gguf", None),
    "moe_scaling_law": lambda w, out: C.lib.moe_scaling_law_preset(out, b"liew2025-dense"),
    "moe_plan_result": lambda w, out: C.lib.moe_scaling_plan(out, params(C.moe_plan_params, dense_tokens=1e11,
                                                                         budget_tokens=1e10, dense_parameters=1e9)),
    "moe_runtime_info": lambda w, out: C.lib.moe_runtime_get_info(out, w.rt.h),
    "moe_layer_config": lambda w, out: C.lib.moe_layer_get_config(out, w.layer.h),
    "moe_layer_stats": lambda w, out: C.lib.moe_layer_get_stats(out, w.layer.h, None, 0, None),
    "moe_model_info": lambda w, out: C.lib.moe_model_get_info(out, w.model.h),
    "moe_eval_result": lambda w, out: C.lib.moe_model_eval_tokens(out, w.model.h, ids_array(w.tokens[:20]), 20,
                                                                  params(C.moe_eval_params, seq_len=8)),
    "moe_generate_result": _generate_into,
    "moe_train_stats": lambda w, out: C.lib.moe_trainer_step(out, w.trainer),
}


def test_every_struct_is_a_parameter_or_a_result():
    assert set(PARAMETER_STRUCTS) | set(RESULT_STRUCTS) == set(STRUCTS)


@pytest.mark.parametrize("name", sorted(RESULT_STRUCTS))
def test_results_are_written_up_to_the_callers_struct_size(world, name):
    cls, fill = _cls(name), RESULT_STRUCTS[name]
    own, first = ctypes.sizeof(cls), first_version_size(name)
    # A newer caller: the bytes this library does not know are set to zero, nothing beyond struct_size.
    buf = Buffer(cls, own + 40)
    buf.view.struct_size = own + 24
    check(fill(world, buf.ptr))
    assert buf.struct_size() == own + 24
    assert buf.raw.raw[own:own + 24] == bytes(24), "unknown result bytes not zeroed"
    assert buf.untouched_from(own + 24)
    full = buf.view
    assert any(bytes(full)[8:own]), "nothing was filled"
    # The first version: only its bytes.
    if first < own:
        small = Buffer(cls, own + 8)
        small.view.struct_size = first
        check(fill(world, small.ptr))
        assert small.struct_size() == first and small.untouched_from(first), f"{name} written beyond {first}"
    # Below the first version: refused, nothing written beyond.
    small = Buffer(cls, own + 8)
    small.view.struct_size = first - 1
    expect(fill(world, small.ptr), C.MOE_ERR_INVALID_ARGUMENT, "struct_size")
    assert small.untouched_from(first - 1)


# --------------------------------------------------------------------------- output buffers


def _layer_floats(fn, weight, expert):
    return lambda w, b, c, n: fn(w.layer.h, weight, expert, b, c, n)


def _generate_text(w, b, c, n):
    p = params(C.moe_generate_params, max_new_tokens=6, ignore_eos=1)
    return C.lib.moe_model_generate(None, w.model.h, b"The sea", p, b, c, n)


def _describe(layer_config):
    def call(w, b, c, n):
        cfg = None if layer_config is None else params(C.moe_layer_config, **layer_config)
        return C.lib.moe_runtime_describe(w.rt.h, cfg, C.MOE_TEXT_JSON, b, c, n)
    return call


TEXT = "The theater: in the heat, a seer sat."

# case -> (function, element type, call(world, buffer, capacity, needed), the answer's size or None when only the
# answer itself says it)
OUTPUT_BUFFERS = {
    "describe": ("moe_runtime_describe", ctypes.c_char, _describe(None), None),
    "describe-layer": ("moe_runtime_describe", ctypes.c_char,
                       _describe(dict(hidden_size=8, moe_intermediate_size=8, num_experts=2, top_k=1)), None),
    "get_weight-gate": ("moe_layer_get_weight", ctypes.c_float,
                        _layer_floats(C.lib.moe_layer_get_weight, C.MOE_WEIGHT_GATE, C.MOE_ALL_EXPERTS),
                        lambda w: w.E * w.F * w.H),
    "get_weight-down-expert": ("moe_layer_get_weight", ctypes.c_float,
                               _layer_floats(C.lib.moe_layer_get_weight, C.MOE_WEIGHT_DOWN, 2), lambda w: w.H * w.F),
    "get_grad-router": ("moe_layer_get_grad", ctypes.c_float,
                        _layer_floats(C.lib.moe_layer_get_grad, C.MOE_WEIGHT_ROUTER, C.MOE_ALL_EXPERTS),
                        lambda w: w.E * w.H),
    "get_stats": ("moe_layer_get_stats", ctypes.c_uint64,
                  lambda w, b, c, n: C.lib.moe_layer_get_stats(result(C.moe_layer_stats), w.layer.h, b, c, n),
                  lambda w: w.E),
    "get_routing": ("moe_layer_get_routing", ctypes.c_float,
                    lambda w, b, c, n: C.lib.moe_layer_get_routing(w.layer.h, b, c, n), lambda w: w.T * w.E),
    "tokenize": ("moe_model_tokenize", ctypes.c_int32,
                 lambda w, b, c, n: C.lib.moe_model_tokenize(w.model.h, TEXT.encode(), len(TEXT), 1, b, c, n), None),
    "detokenize": ("moe_model_detokenize", ctypes.c_char,
                   lambda w, b, c, n: C.lib.moe_model_detokenize(w.model.h, ids_array([72, 105, 33]), 3, 0, b, c, n),
                   lambda w: len("Hi!") + 1),
    "logits": ("moe_model_logits", ctypes.c_float,
               lambda w, b, c, n: C.lib.moe_model_logits(w.model.h, ids_array([5, 6, 7]), 3, b, c, n),
               lambda w: 3 * VOCAB),
    "router_stats": ("moe_model_router_stats", ctypes.c_uint64,
                     lambda w, b, c, n: C.lib.moe_model_router_stats(w.moe.h, 1, b, c, n), lambda w: 4),
    "generate": ("moe_model_generate", ctypes.c_char, _generate_text, None),
}


def test_every_output_buffer_function_is_covered():
    with_needed = {n for n, (_, args) in FUNCTIONS.items() if any(a.endswith("*needed") for a in args)}
    assert with_needed == {f for f, _, _, _ in OUTPUT_BUFFERS.values()}


def _raw(ctype, count):
    size = ctypes.sizeof(ctype) * count
    raw = ctypes.create_string_buffer(bytes([SENTINEL]) * max(size, 1), max(size, 1))
    return raw, ctypes.cast(raw, ctypes.POINTER(ctype)) if ctype is not ctypes.c_char else raw


@pytest.mark.parametrize("case", list(OUTPUT_BUFFERS))
def test_output_buffer_rule(world, case):
    fn, ctype, call, size = OUTPUT_BUFFERS[case]
    w = world
    if case == "router_stats":
        w.moe.eval_tokens(w.tokens[:24], seq_len=8)
    # Ask: NULL and 0 return MOE_OK with *needed.
    needed = ctypes.c_size_t(123456)
    st = call(w, None, 0, ctypes.byref(needed))
    assert st == C.MOE_OK, (fn, st, last_error())
    n = needed.value
    if size is not None:
        assert n == size(w), (fn, n, size(w))
    assert n > 1
    elem = ctypes.sizeof(ctype)
    # One element short: MOE_ERR_BUFFER_TOO_SMALL, *needed set, nothing written.
    raw, ptr = _raw(ctype, n + 8)
    needed.value = 0
    expect(call(w, ptr, n - 1, ctypes.byref(needed)), C.MOE_ERR_BUFFER_TOO_SMALL, str(n))
    assert needed.value == n
    assert raw.raw == bytes([SENTINEL]) * len(raw.raw), f"{fn} wrote into a buffer too small"
    # Exactly enough: MOE_OK, the answer in the first n elements and nothing after them.
    needed.value = 0
    check(call(w, ptr, n, ctypes.byref(needed)))
    assert needed.value == n
    assert raw.raw[n * elem:] == bytes([SENTINEL]) * (8 * elem), f"{fn} wrote past the answer"
    answer = raw.raw[:n * elem]
    if ctype is ctypes.c_char:
        assert answer[-1] == 0, "text is NUL-terminated, of needed bytes"
        # Generated text may hold the byte 0 itself (a byte-level token of a random model).
        assert case == "generate" or 0 not in answer[:-1], "no NUL inside the text"
        if case.startswith("describe"):
            json.loads(answer[:-1])
        if case == "detokenize":
            assert answer == b"Hi!\0"
    # More than enough, needed NULL: the same answer.
    raw2, ptr2 = _raw(ctype, n + 8)
    check(call(w, ptr2, n + 8, None))
    assert raw2.raw[:n * elem] == answer
    assert raw2.raw[n * elem:] == bytes([SENTINEL]) * (8 * elem)
    # A NULL buffer with a capacity is a NULL pointer.
    expect(call(w, None, n, ctypes.byref(needed)), C.MOE_ERR_NULL_POINTER, "NULL")


def test_generate_text_too_small_still_generates(world):
    """moe_model_generate: the one output buffer filled after the work; too small, the work is still done."""
    p = params(C.moe_generate_params, max_new_tokens=6, ignore_eos=1)
    out = result(C.moe_generate_result)
    needed = ctypes.c_size_t(0)
    check(C.lib.moe_model_generate(out, world.model.h, b"The sea", p, None, 0, ctypes.byref(needed)))
    assert out.generated_tokens == 6 and out.stop_reason == C.MOE_STOP_LENGTH
    small = result(C.moe_generate_result)
    raw = ctypes.create_string_buffer(bytes([SENTINEL]) * 2, 2)
    n2 = ctypes.c_size_t(0)
    expect(C.lib.moe_model_generate(small, world.model.h, b"The sea", p, raw, 1, ctypes.byref(n2)),
           C.MOE_ERR_BUFFER_TOO_SMALL)
    assert n2.value == needed.value and small.generated_tokens == 6 and small.prompt_tokens == out.prompt_tokens
    assert raw.raw == bytes([SENTINEL]) * 2


# --------------------------------------------------------------------------- moe_last_error


def test_last_error_is_kept_by_successful_calls(world):
    """After a failed call, successful calls of every kind leave the message as it was (on this thread, which starts
    with an empty message)."""
    seen = {}

    def work():
        try:
            seen["fresh"] = C.lib.moe_last_error()
            st, _ = _from_name("method", b"dropout")
            assert st == C.MOE_ERR_INVALID_ARGUMENT
            msg = C.lib.moe_last_error()
            assert b"dropout" in msg
            w = world
            calls = [
                lambda: C.lib.moe_version_number() and C.MOE_OK,
                lambda: C.lib.moe_status_string(C.MOE_ERR_IO) and C.MOE_OK,
                lambda: _from_name("routing", b"softmax-topk")[0],
                lambda: _from_name("dtype", b"keep")[0],
                lambda: C.MOE_OK if _name("weight", 0) else -1,
                lambda: C.lib.moe_upcycle_params_init(C.moe_upcycle_params(), ctypes.sizeof(C.moe_upcycle_params)),
                lambda: C.lib.moe_checkpoint_inspect(result(C.moe_checkpoint_info), str(w.dense).encode()),
                lambda: C.lib.moe_runtime_get_info(result(C.moe_runtime_info), w.rt.h),
                lambda: C.lib.moe_runtime_describe(w.rt.h, None, C.MOE_TEXT_PLAIN, None, 0, None),
                lambda: C.lib.moe_layer_get_stats(result(C.moe_layer_stats), w.layer.h, None, 0, None),
                lambda: C.lib.moe_layer_get_weight(w.layer.h, C.MOE_WEIGHT_ROUTER, -1, None, 0, None),
                lambda: C.lib.moe_model_get_info(result(C.moe_model_info), w.model.h),
                lambda: C.lib.moe_model_tokenize(w.model.h, b"The", 3, 0, None, 0, None),
                lambda: C.lib.moe_model_eval_tokens(None, w.model.h, ids_array(w.tokens[:10]), 10, None),
                lambda: C.lib.moe_model_generate(None, w.model.h, b"The", params(C.moe_generate_params,
                                                                                  max_new_tokens=1), None, 0, None),
                lambda: C.lib.moe_upcycle(None, str(w.dense).encode(), str(_fresh_dir(w)).encode(), None),
            ]
            for i, c in enumerate(calls):
                assert c() == C.MOE_OK, (i, C.lib.moe_last_error())
                assert C.lib.moe_last_error() == msg, f"call {i} changed the message"
            seen["ok"] = True
        except AssertionError as e:
            seen["error"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "error" not in seen, seen.get("error")
    assert seen["fresh"] == b"" and seen.get("ok")
