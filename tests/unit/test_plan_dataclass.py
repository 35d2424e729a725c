"""policies.plan's `dataclass(frozen=True)` (shared generic methods, no `exec` per class) behaves
as the standard library's: every plan class is rebuilt with dataclasses.dataclass(frozen=True)
from the same annotations and fields, and both are compared on the same values."""
from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from policies import plan as P

CLASSES = [c for c in vars(P).values() if isinstance(c, type) and dataclasses.is_dataclass(c)
           and c.__module__ == P.__name__]


def _reference(cls):
    """The same class made by the standard library's dataclass(frozen=True)."""
    ns = {"__annotations__": dict(cls.__annotations__), "__qualname__": cls.__qualname__,
          "__module__": P.__name__, "__doc__": cls.__doc__}
    for f in dataclasses.fields(cls):
        ns[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory,
                                       init=f.init, repr=f.repr, hash=f.hash, compare=f.compare)
    return dataclasses.dataclass(frozen=True)(type(cls.__name__, (), ns))


def _sample(cls, variant: int):
    """Keyword arguments for every field: its default, or a value of the field's declared type."""
    kw = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        if f.default is not dataclasses.MISSING:
            v = f.default
        elif f.default_factory is not dataclasses.MISSING:
            v = f.default_factory()
        else:
            v = None
        t = str(f.type)
        if variant and i == 0 or v is None:
            v = {"int": 7 + variant, "str": f"v{variant}", "bool": bool(variant), "float": 1.5 + variant
                 }.get(t, (f"x{variant}",) if t.startswith("tuple") else f"s{variant}")
        kw[f.name] = v
    return kw


def test_every_plan_class_uses_the_shared_methods():
    assert len(CLASSES) >= 20
    for cls in CLASSES:
        assert cls.__init__ is P._init and cls.__hash__ is P._hash, cls
        assert dataclasses.fields(cls) and cls.__dataclass_params__.frozen


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_same_behaviour_as_the_standard_dataclass(cls):
    ref = _reference(cls)
    for variant in (0, 1):
        kw = _sample(cls, variant)
        a, b = cls(**kw), ref(**kw)
        assert repr(a) == repr(b)
        assert hash(a) == hash(b)
        assert a == cls(**kw) and not a != cls(**kw)
        assert cls(*kw.values()) == a                                   # positional, in field order
        assert dataclasses.asdict(a) == dataclasses.asdict(b)
        assert pickle.loads(pickle.dumps(a, protocol=pickle.HIGHEST_PROTOCOL)) == a
        assert copy.deepcopy(a) == a
        assert (a == b) is False                                        # another class: NotImplemented
        name = dataclasses.fields(cls)[0].name
        for obj in (a, b):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(obj, name, kw[name])
            with pytest.raises(dataclasses.FrozenInstanceError):
                delattr(obj, name)
            with pytest.raises(dataclasses.FrozenInstanceError):
                obj.not_a_field = 1
        other = _sample(cls, 1 - variant)
        r = dataclasses.replace(a, **{name: other[name]})
        assert repr(r) == repr(dataclasses.replace(b, **{name: other[name]}))
        assert (r == a) == (dataclasses.replace(b, **{name: other[name]}) == b)
        with pytest.raises(TypeError):
            cls(**kw, not_a_field=1)
        with pytest.raises(TypeError):
            cls(*kw.values(), 1)
        with pytest.raises(TypeError):
            cls(*list(kw.values())[:1], **{name: kw[name]})


def test_compare_false_field_is_left_out_of_eq_and_hash():
    a, b = P.User(map_note="one"), P.User(map_note="two")
    assert a == b and hash(a) == hash(b) and repr(a) != repr(b)


def test_default_factories_and_required_fields():
    p = P.Plan("n", ())
    assert p.namespaces == P.Namespaces() and p.limits == P.Limits()
    with pytest.raises(TypeError, match="missing"):
        P.Plan(name="n")
    with pytest.raises(TypeError, match="multiple values"):
        P.Plan("n", (), name="m")


def test_the_mutable_variant_behaves_as_the_standard_mutable_dataclass():
    """frozen=False (sandbox/wire.py's LaunchContext): same repr, eq, unhashable, assignable,
    replace and pickling as dataclasses.dataclass; its defaults and factories alike."""
    from sandbox import wire
    cls = wire.LaunchContext
    assert cls.__init__ is P._init and cls.__hash__ is None and not cls.__dataclass_params__.frozen
    ns = {"__annotations__": dict(cls.__annotations__), "__qualname__": cls.__qualname__,
          "__module__": cls.__module__, "__doc__": cls.__doc__}
    for f in dataclasses.fields(cls):
        ns[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory)
    ref = dataclasses.dataclass(type(cls.__name__, (), ns))
    kw = dict(plan=None, argv=("a",), env={"A": "1"}, bpf=b"x", rootless=True, go_r=3, go_w=4,
              status_r=5, status_w=6)
    a, b = cls(**kw), ref(**kw)
    assert repr(a) == repr(b) and a.volume_dirs == {} and a.volume_dirs is not cls(**kw).volume_dirs
    assert a == cls(**kw) and a != dataclasses.replace(a, go_r=9)
    with pytest.raises(TypeError):
        hash(a)
    a.go_r = 11
    assert a.go_r == 11 and pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a
    with pytest.raises(TypeError):
        cls(**{k: v for k, v in kw.items() if k != "go_r"})
    assert wire.Pid1Spec.__setattr__ is P._setattr and hash(wire.Pid1Spec(1, 2, (), None, None, (), False, False, ()))
