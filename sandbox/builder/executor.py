"""The build executor: a parsed Dockerfile (policies.dockerfile) run stage by stage into the store.

A stage's *state* is (layers, config, history); its id is the sha256 of (layers, config). The cache
key of a RUN/COPY/ADD is sha256 of (the parent state id, the instruction as written, its resolved
arguments, the build environment, user, workdir, shell and, for COPY/ADD, the content digest of
every file it reads, .dockerignore honoured); the store's build cache maps it to the state after
the step (store.images.read_build_cache). A hit imports nothing of the launcher. Metadata
instructions (ENV, LABEL, ...) change the config, hence the id every later key is made from.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import dataclass, field
from typing import Optional

from policies import dockerfile as D
from ..store.images import (BUILD_REF, ImageError, Store, normalize_name, read_build_cache,
                            write_build_cache)

MAX_DOCKERFILE = D.MAX_BYTES
DEFAULT_SHELL = ["/bin/sh", "-c"]
MAX_CACHED_STEPS = 10_000          # entries of the store's build cache
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(Exception):
    def __init__(self, msg: str, code: int = 2):
        super().__init__(msg)
        self.code = code


@dataclass
class Options:
    tag: str
    context: str
    dockerfile: Optional[str] = None
    build_args: dict = field(default_factory=dict)
    no_cache: bool = False
    network: Optional[str] = None
    progress: str = "auto"
    store: Optional[Store] = None
    pull: dict = field(default_factory=dict)     # FROM a registry: tls_verify, ca_file, authfile


@dataclass
class State:
    layers: list
    config: dict
    history: list

    @property
    def id(self) -> str:
        return "sha256:" + hashlib.sha256(json.dumps({"layers": self.layers, "config": self.config},
                                                     sort_keys=True).encode()).hexdigest()

    def copy(self) -> "State":
        return State(list(self.layers), json.loads(json.dumps(self.config)), list(self.history))


def resolve_base(ref: str, store: Store, pull: Optional[dict] = None) -> State:
    """The state of a FROM image that is not a stage: a local image, else — when the reference
    names a registry host explicitly (`HOST[:PORT]/PATH…`, `localhost/…`) — pulled from it with
    `pull`'s options (tls_verify, ca_file, authfile) through sandbox.registry (every digest
    verified, the store's import checks). A bare name (`busybox`) that is not local is refused
    rather than fetched from Docker Hub behind the user's back: `image pull` it first."""
    try:
        _, rec = store.resolve(ref)
    except ImageError:
        if not _names_registry(ref):
            raise BuildError(f"image {ref} is not local; `pysandbox image pull {ref}` first") from None
        from ..registry import RegistryError, pull as _pull
        try:
            _, rec = _pull(ref, store=store, **(pull or {}))
        except RegistryError as e:
            raise BuildError(f"FROM {ref}: {e}", e.code) from None
    cfg = {k: v for k, v in (rec.get("config") or {}).items() if v not in (None, "", [], {})}
    return State(list(rec["layers"]), cfg, list(rec.get("history") or []))


def _names_registry(ref: str) -> bool:
    """Docker's rule: the first component names a registry when it has a '.' or a ':' or is
    localhost (and there is a '/' after it)."""
    first, slash, _ = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise BuildError(f"{what}: {e.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BuildError(f"{what}: not a regular file")
        data = os.read(fd, limit + 1)
        if len(data) > limit:
            raise BuildError(f"{what}: larger than {limit} bytes")
        return data
    finally:
        os.close(fd)


class Builder:
    def __init__(self, opts: Options):
        from .progress import Progress
        self.o = opts
        self.store = opts.store or Store()
        self.progress = Progress(opts.progress)
        self.context = os.path.abspath(opts.context)
        if not os.path.isdir(self.context):
            raise BuildError(f"build context {opts.context}: not a directory")
        self.dfpath = opts.dockerfile or os.path.join(self.context, "Dockerfile")
        self.dfname = opts.dockerfile or "Dockerfile"
        self.cache = read_build_cache(self.store)
        self.stage_states: dict = {}          # index -> final State
        self.hits = self.misses = 0
        self._checked: set = set()

    # ---- entry point
    def build(self) -> tuple[str, dict]:
        try:
            tag = normalize_name(self.o.tag)
        except ImageError as e:
            raise BuildError(f"-t {self.o.tag}: {e}") from None
        from .view import View
        ctx_view = View([self.context], whiteouts=False)     # symlinks resolved inside the context
        if self.o.dockerfile:                                  # -f: the caller's explicit choice
            data = _read_bounded(self.dfpath, MAX_DOCKERFILE, self.dfname)
        else:
            data = ctx_view.read_small("Dockerfile", MAX_DOCKERFILE + 1)
            if data is None:
                raise BuildError(f"{self.o.context}: no Dockerfile in the build context (-f PATH)")
        df = D.parse(data, self.dfname)
        self.df = df
        from .ignore import Ignore, IgnoreError
        try:
            raw = ctx_view.read_small(".dockerignore", (1 << 20) + 1) or b""
            self.ignore = Ignore(raw.decode("utf-8", "replace"))
        except IgnoreError as e:
            raise BuildError(str(e)) from None
        for k in self.o.build_args:
            D.check_env_name(k, ("--build-arg", 0, 0))
        self.meta = {}
        for ins in df.meta_args:
            self._arg(ins, self.meta, self.meta)
        needed = self._needed(df)
        total = sum(1 + len(df.stages[i].instructions) for i in needed)
        self.n, self.total = 0, total
        self.store.ensure()
        from .steps import StepError
        try:
            for i in needed:
                self.stage_states[i] = self._stage(df.stages[i])
        except StepError as e:
            raise BuildError(str(e), e.code) from None
        final = self.stage_states[len(df.stages) - 1]
        return self._record(tag, final)

    def _where(self, ins) -> tuple:
        return (self.dfname, ins.line, ins.col)

    def _needed(self, df) -> list[int]:
        names = {s.name: s.index for s in df.stages if s.name}
        need = {len(df.stages) - 1}
        for s in reversed(df.stages):
            if s.index not in need:
                continue
            base = D.expand(s.base, self.meta, df.escape, (self.dfname, s.line, s.col)).lower()
            if base in names and names[base] < s.index:
                need.add(names[base])
            for ins in s.instructions:
                ref = ins.flags.get("from")
                if ref is not None:
                    if ref.isdigit() and int(ref) < s.index:
                        need.add(int(ref))
                    elif ref.lower() in names:
                        if names[ref.lower()] >= s.index:
                            raise D.DockerfileError(f"COPY --from={ref}: a stage can only copy from an earlier one",
                                                    *self._where(ins))
                        need.add(names[ref.lower()])
        return sorted(need)

    # ---- a stage
    def _stage(self, stage) -> State:
        where = (self.dfname, stage.line, stage.col)
        base = D.expand(stage.base, self.meta, self.df.escape, where)
        self._announce(f"FROM {base}" + (f" AS {stage.name}" if stage.name else ""))
        names = {s.name: s.index for s in self.df.stages if s.name}
        if base.lower() == "scratch":
            state = State([], {}, [])
        elif base.lower() in names and names[base.lower()] < stage.index:
            state = self.stage_states[names[base.lower()]].copy()
        else:
            state = resolve_base(base, self.store, self.o.pull)
        state.config.setdefault("Env", [f"PATH={DEFAULT_PATH}"] if not state.layers else [])
        args: dict = {}
        self._cmd_set = False
        for ins in stage.instructions:
            self._announce(ins.original)
            state = self._instruction(ins, state, args)
        return state

    def _announce(self, text: str) -> None:
        self.n += 1
        self.progress.step(self.n, self.total, text)

    # ---- environment
    @staticmethod
    def env_of(state: State) -> dict:
        out = {}
        for e in state.config.get("Env") or []:
            k, _, v = str(e).partition("=")
            out[k] = v
        return out

    def _arg(self, ins, args: dict, scope_env: dict) -> None:
        where = self._where(ins)
        for w in D.words(ins.args, scope_env, self.df.escape, where=where, expand=False):
            name, eq, default = w.partition("=")
            D.check_env_name(name, where)
            if name in self.o.build_args:
                args[name] = self.o.build_args[name]
            elif eq:
                args[name] = D.expand(default, scope_env, self.df.escape, where) if default else ""
            elif name in self.meta and args is not self.meta:
                args[name] = self.meta[name]

    # ---- one instruction
    def _instruction(self, ins, state: State, args: dict) -> State:
        where = self._where(ins)
        env = self.env_of(state)
        xenv = {**args, **env}
        esc = self.df.escape
        cfg = state.config
        cmd = ins.cmd
        if cmd == "ARG":
            self._arg(ins, args, xenv)
            return self._meta(state, ins, f"ARG {ins.args}")
        if cmd == "ENV":
            new = state.copy()
            pairs = D.key_values(ins, xenv, esc, self.dfname)      # all expanded before any is set
            for k, v in pairs:
                D.check_env_name(k, where)
                env[k] = v
            new.config["Env"] = [f"{k}={v}" for k, v in env.items()]
            return self._meta(new, ins, "ENV " + " ".join(f"{k}={v}" for k, v in pairs))
        if cmd == "LABEL":
            new = state.copy()
            labels = dict(new.config.get("Labels") or {})
            for k, v in D.key_values(ins, xenv, esc, self.dfname):
                labels[k] = v
            new.config["Labels"] = labels
            return self._meta(new, ins, ins.original)
        if cmd == "EXPOSE":
            new = state.copy()
            ports = dict(new.config.get("ExposedPorts") or {})
            for w in D.words(ins.args, xenv, esc, where=where):
                num, _, proto = w.partition("/")
                proto = (proto or "tcp").lower()
                if proto not in ("tcp", "udp", "sctp") or not _port_ok(num):
                    raise D.DockerfileError(f"EXPOSE {w}: not PORT[-PORT][/tcp|udp|sctp]", *where)
                ports[f"{num}/{proto}"] = {}
            new.config["ExposedPorts"] = ports
            return self._meta(new, ins, ins.original)
        if cmd == "USER":
            new = state.copy()
            ws = D.words(ins.args, xenv, esc, where=where)
            if len(ws) != 1:
                raise D.DockerfileError("USER takes one USER[:GROUP]", *where)
            new.config["User"] = ws[0]
            return self._meta(new, ins, f"USER {ws[0]}")
        if cmd in ("CMD", "ENTRYPOINT", "SHELL"):
            new = state.copy()
            key = {"CMD": "Cmd", "ENTRYPOINT": "Entrypoint", "SHELL": "Shell"}[cmd]
            if ins.json is not None:
                val = list(ins.json)
            elif ins.args:
                val = list(cfg.get("Shell") or DEFAULT_SHELL) + [ins.args]
            else:
                val = None
            if val is None:
                new.config.pop(key, None)
            else:
                new.config[key] = val
            if cmd == "ENTRYPOINT" and not self._cmd_set:
                new.config.pop("Cmd", None)        # Docker: ENTRYPOINT resets an inherited CMD
            if cmd == "CMD":
                self._cmd_set = True
            return self._meta(new, ins, f"{cmd} {json.dumps(val)}" if val is not None else cmd)
        if cmd == "WORKDIR":
            ws = D.words(ins.args, xenv, esc, where=where)
            if len(ws) != 1:
                raise D.DockerfileError("WORKDIR takes one path", *where)
            wd = os.path.normpath(os.path.join(cfg.get("WorkingDir") or "/", ws[0]))
            wd = "/" + wd.lstrip("/")
            new = state.copy()
            new.config["WorkingDir"] = wd
            return self._cached(new, ins, f"WORKDIR {wd}", {"workdir": wd}, lambda: self._mkdir(state, wd, where),
                                parent=state)
        if cmd == "RUN":
            return self._run(ins, state, args, env)
        if cmd in ("COPY", "ADD"):
            return self._copy(ins, state, args, xenv)
        raise D.DockerfileError(f"{cmd} is not supported", *where)

    def _meta(self, state: State, ins, created_by: str) -> State:
        # created: the previous entry's (a cached rebuild makes the same image id)
        created = state.history[-1].get("created") if state.history else None
        state.history = state.history + [{"created": created or _now(), "created_by": created_by,
                                          "comment": "pysandbox build", "empty_layer": True}]
        return state

    # ---- cached steps
    def _cached(self, new: State, ins, created_by: str, keydata: dict, make, parent: State) -> State:
        """new: the state's config after the step (without its layer); make() -> layer info or None."""
        key = "sha256:" + hashlib.sha256(json.dumps(
            {"parent": parent.id, "instruction": ins.original, "config": new.config, **keydata},
            sort_keys=True).encode()).hexdigest()
        hit = None if self.o.no_cache else self._lookup(key)
        if hit is not None:
            self.hits += 1
            self.progress.line(f"--> Using cache {hit.id[7:19]}")
            new.layers, new.history = hit.layers, parent.history + hit.history[-1:]
            return new
        self.misses += 1
        t0 = time.monotonic()
        info = make()
        entry = {"created": _now(), "created_by": created_by, "comment": "pysandbox build"}
        if info is None:
            new.history = parent.history + [dict(entry, empty_layer=True)]
        else:
            new.layers = parent.layers + [info["digest"]]
            new.history = parent.history + [dict(entry, empty_layer=False)]
        self._remember(key, new)
        self.progress.line(f"--> {new.id[7:19]} ({time.monotonic() - t0:.1f}s)")
        return new

    def _lookup(self, key: str) -> Optional[State]:
        sid = self.cache["steps"].get(key)
        st = self.cache["states"].get(sid) if isinstance(sid, str) else None
        if not isinstance(st, dict):
            return None
        try:
            if not all(self.store.has_layer(d) for d in st["layers"]):
                return None
            return State(list(st["layers"]), dict(st["config"]), list(st["history"]))
        except (KeyError, TypeError, ImageError):
            return None

    def _remember(self, key: str, state: State) -> None:
        """Record the step in the build cache (under the store lock: the layer just made is
        referenced before any gc can see it unreferenced)."""
        with self.store.locked():
            data = read_build_cache(self.store)
            data["states"][state.id] = {"layers": state.layers, "config": state.config, "history": state.history}
            data["steps"][key] = state.id
            if len(data["steps"]) > MAX_CACHED_STEPS:          # the oldest steps go first
                for k in list(data["steps"])[:len(data["steps"]) - MAX_CACHED_STEPS]:
                    del data["steps"][k]
                live = set(data["steps"].values())
                data["states"] = {k: v for k, v in data["states"].items() if k in live}
            write_build_cache(self.store, data)
            self.cache = data

    def _state_ref(self, state: State) -> str:
        """A reference the launcher's Store.resolve accepts for this state (recorded in the cache)."""
        with self.store.locked():
            data = read_build_cache(self.store)
            if state.id not in data["states"]:
                data["states"][state.id] = {"layers": state.layers, "config": state.config, "history": state.history}
                write_build_cache(self.store, data)
                self.cache = data
        return BUILD_REF + state.id

    # ---- RUN
    def _run(self, ins, state: State, args: dict, env: dict) -> State:
        if ins.json is not None:
            argv = list(ins.json)
            shown = json.dumps(argv)
        else:
            argv = list(state.config.get("Shell") or DEFAULT_SHELL) + [ins.args]
            shown = " ".join(argv)
        if not argv:
            raise D.DockerfileError("RUN needs a command", *self._where(ins))
        if not state.layers:
            raise D.DockerfileError("RUN in a stage with no layers (FROM scratch) has nothing to run", *self._where(ins))
        run_env = {**args, **env}
        new = state.copy()
        where = f"{self.dfname}:{ins.line}:{ins.col}: RUN"
        workdir, user = state.config.get("WorkingDir"), state.config.get("User")

        def make():
            from .steps import exec_dirs, run_step
            from .view import View
            ref = self._state_ref(state)
            paths = exec_dirs(View(self._lowers(state)))
            with self.progress.working(f"RUN {shown[:60]}"):
                return run_step(self.store, ref, argv, run_env, workdir, user, self.o.network, where,
                                quiet=self.progress.quiet, exec_paths=paths)
        return self._cached(new, ins, f"RUN {shown}", {"argv": argv, "env": run_env, "user": user,
                                                       "workdir": workdir, "network": self.o.network}, make, state)

    # ---- WORKDIR
    def _mkdir(self, state: State, wd: str, where) -> Optional[dict]:
        from .steps import mkdir_layer
        from .view import View
        view = View(self._lowers(state))
        parts = view.resolve(wd)
        hit = view.entry(parts)
        if hit is not None and stat.S_ISDIR(hit[1].st_mode):
            return None
        if not parts:
            return None
        with self.store.locked():
            return mkdir_layer(self.store, parts, view, f"{where[0]}:{where[1]}:{where[2]}: WORKDIR")

    def _lowers(self, state: State) -> list[str]:
        for d in state.layers:
            if d not in self._checked:             # each layer's seal once a build (a walk of the layer)
                self.store.check_layer(d)
                self._checked.add(d)
        return [self.store.layer_diff(d) for d in reversed(state.layers)]

    # ---- COPY / ADD
    def _copy(self, ins, state: State, args: dict, xenv: dict) -> State:
        from .steps import StepError, copy_layer, items_digest, plan_copy
        from .view import View, ViewError
        where = self._where(ins)
        wstr = f"{where[0]}:{where[1]}:{where[2]}: {ins.cmd}"
        esc = self.df.escape
        if ins.json is not None:
            ws = [D.expand(w, xenv, esc, where) if "$" in w else w for w in ins.json]
        else:
            ws = D.words(ins.args, xenv, esc, where=where)
        if len(ws) < 2:
            raise D.DockerfileError(f"{ins.cmd} needs a source and a destination", *where)
        sources, dest = ws[:-1], ws[-1]
        if ins.cmd == "ADD":
            for s in sources:
                if "://" in s or s.startswith("git@"):
                    raise D.DockerfileError(f"ADD {s}: only local files are supported (no URLs)", *where)
        ref = ins.flags.get("from")
        if ref is not None:
            ref_x = D.expand(ref, xenv, esc, where)
            names = {s.name: s.index for s in self.df.stages if s.name}
            if ref_x.isdigit() and int(ref_x) in self.stage_states:
                src_state = self.stage_states[int(ref_x)]
            elif ref_x.lower() in names and names[ref_x.lower()] in self.stage_states:
                src_state = self.stage_states[names[ref_x.lower()]]
            else:
                src_state = resolve_base(ref_x, self.store, self.o.pull)
            src_view, from_context = View(self._lowers(src_state)), False
            src_id = src_state.id
        else:
            src_view, from_context, src_id = View([self.context], whiteouts=False), True, "context"
        chown = self._chown(ins.flags.get("chown"), state, xenv, where)
        chmod = None
        if "chmod" in ins.flags:
            try:
                chmod = int(ins.flags["chmod"], 8)
                if not 0 <= chmod <= 0o7777:
                    raise ValueError
            except ValueError:
                raise D.DockerfileError(f"--chmod={ins.flags['chmod']}: not an octal mode", *where) from None
        dest_view = View(self._lowers(state))
        try:
            items = plan_copy(src_view, sources, dest, dest_view, self.ignore, from_context=from_context,
                              workdir=state.config.get("WorkingDir") or "/", where=wstr)
            digest = items_digest(items, src_view)
        except StepError as e:
            raise BuildError(str(e), e.code) from None
        except OSError as e:
            raise BuildError(f"{wstr}: {e.strerror or e}") from None
        archives: list = []
        if ins.cmd == "ADD" and from_context:       # a local archive is extracted into the destination
            from .steps import is_archive
            try:
                droot = dest_view.resolve(dest if dest.startswith("/") else
                                          os.path.join(state.config.get("WorkingDir") or "/", dest))
                archives = [(it, droot) for it in items if is_archive(src_view, it)]
            except (OSError, ViewError) as e:
                raise BuildError(f"{wstr}: {getattr(e, 'strerror', None) or e}") from None
            items = [it for it in items if not any(it is a for a, _ in archives)]
        new = state.copy()

        def make():
            with self.store.locked(), self.progress.working(f"{ins.cmd} {len(items)} entries"):
                return copy_layer(self.store, items, src_view, dest_view, chown=chown, chmod=chmod, what=wstr,
                                  archives=tuple(archives))
        return self._cached(new, ins, f"{ins.cmd} {' '.join(ws)}", {"files": digest, "from": src_id,
                                                                    "chown": chown, "chmod": chmod,
                                                                    "extract": len(archives)}, make, state)

    def _chown(self, spec: Optional[str], state: State, xenv: dict, where) -> Optional[tuple]:
        if spec is None:
            return None
        spec = D.expand(spec, xenv, self.df.escape, where)
        user, _, group = spec.partition(":")
        from .view import View
        view = View(self._lowers(state)) if state.layers else View([])

        def lookup(name: str, db: str, field_gid: bool) -> int:
            if name.isdigit():
                return int(name)
            data = view.read_small(f"/etc/{db}") or b""
            for line in data.decode("utf-8", "replace").splitlines():
                f = line.split(":")
                if len(f) >= 4 and f[0] == name and f[2].isdigit():
                    return int(f[3] if field_gid else f[2]) if (not field_gid or f[3].isdigit()) else int(f[2])
            raise D.DockerfileError(f"--chown={spec}: no {'group' if db == 'group' else 'user'} {name!r} in the image's /etc/{db}", *where)
        uid = lookup(user, "passwd", False)
        if group:
            gid = lookup(group, "group", False)
        elif user.isdigit():
            gid = uid
        else:
            gid = lookup(user, "passwd", True)
        if uid > 0xFFFFFFFE or gid > 0xFFFFFFFE:
            raise D.DockerfileError(f"--chown={spec}: id out of range", *where)
        return (uid, gid)

    # ---- the image record
    def _record(self, tag: str, st: State) -> tuple[str, dict]:
        from ..store.images import add_image_record
        cfg = {k: v for k, v in st.config.items() if v not in (None, [], {}, "")}
        created = st.history[-1]["created"] if st.history else _now()
        oci = {"architecture": "amd64", "os": "linux", "created": created, "config": cfg,
               "rootfs": {"type": "layers", "diff_ids": st.layers}, "history": st.history}
        raw = json.dumps(oci, sort_keys=True, separators=(",", ":")).encode()
        image_id = "sha256:" + hashlib.sha256(raw).hexdigest()
        record = {"id": image_id, "layers": st.layers, "history": st.history, "created": created,
                  "source": f"build {self.context}", "format": "build", "config": cfg,
                  "config_json": raw.decode()}
        with self.store.locked():
            for d in st.layers:
                if not self.store.has_layer(d):
                    raise BuildError(f"layer {d[:19]} vanished from the store during the build (retry)", 125)
            add_image_record(self.store, tag, record)
        return tag, dict(record, name=tag)


def _port_ok(num: str) -> bool:
    lo, _, hi = num.partition("-")
    try:
        return 0 < int(lo) < 65536 and (not hi or int(lo) <= int(hi) < 65536)
    except ValueError:
        return False


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
