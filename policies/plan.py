"""The compiled plan: one immutable description of a sandbox.

The policy compiler (`policies.compiler`) turns a YAML profile plus command-line
overrides into a `Plan`. The launcher (`sandbox.launcher`) carries a `Plan` out.
Nothing in this module touches the kernel; everything is a frozen dataclass so a
plan can be cached (pickled), compared, hashed and shown (`pysandbox explain`).

Units: sizes are bytes, times are seconds, CPU is in cores (0.5 = half a core).
"""
from __future__ import annotations

# No `typing` import: annotations are strings (postponed), and `typing` costs ~10 ms on the
# launch path. `Optional[X]` below is documentation only.

import sys


class _LazyModule(type(sys)):
    """A standard module loaded at the first use of one of its attributes: it stands in
    sys.modules until then (an `import` of it binds this object and touches nothing), then takes
    the real module's attributes (whoever holds this object sees them) and hands the name back."""

    def __getattr__(self, name):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = __import__(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def _lazy_inspect() -> None:
    """`dataclasses` imports `inspect` (with `ast`, `dis`, `tokenize`, `linecache`: ~5 ms of CPU, a
    cached `pysandbox run` pays it) and uses it only to write a docstring for a class that has none
    (every class on the launch path has one). When nothing imported `inspect` yet, it stands in
    sys.modules as a _LazyModule. (importlib.util.LazyLoader does not do: the import statement
    reads the module's __spec__, which loads it.) docs/performance.md, "Where ~75 ms go"."""
    if "inspect" not in sys.modules and "dataclasses" not in sys.modules:
        sys.modules["inspect"] = _LazyModule("inspect")


_lazy_inspect()

from dataclasses import MISSING, FrozenInstanceError, dataclass as _dataclass, field, fields, asdict  # noqa: E402

# Every class has a docstring: without one, dataclass() computes one with inspect.signature,
# which costs milliseconds per class on the launch path.


def dataclass(*, frozen: bool):
    """dataclass(frozen=True) with the same behaviour — fields, defaults and default factories,
    keyword and positional __init__, repr, eq and hash over the compare fields, immutability
    (FrozenInstanceError), dataclasses.fields/replace/asdict, pickling — but its six methods are
    shared generic functions instead of source compiled by `exec` per class: that compiling was
    15.7 ms of every import of this module (120 functions), which a cached `pysandbox run` pays
    only to unpickle its plan (docs/performance.md). Checked against dataclasses' own in
    tests/unit/test_plan_dataclass.py. frozen=False (sandbox/wire.py's LaunchContext): the
    standard mutable dataclass — __init__, __repr__, __eq__ alike, and __hash__ None."""

    def wrap(cls):
        cls = _dataclass(init=False, repr=False, eq=False)(cls)   # metadata only: nothing exec'd
        fs = fields(cls)
        cls._pl_init = tuple((f.name, f.default, f.default_factory) for f in fs if f.init)
        cls._pl_names = frozenset(f.name for f in fs)
        cls._pl_repr = tuple(f.name for f in fs if f.repr)
        cls._pl_cmp = tuple(f.name for f in fs if f.compare)
        cls._pl_hash = tuple(f.name for f in fs if (f.compare if f.hash is None else f.hash))
        cls._pl_cls = cls
        for name in ("__init__", "__repr__", "__eq__") + (("__hash__", "__setattr__", "__delattr__")
                                                         if frozen else ()):
            setattr(cls, name, _METHODS[name])
        if not frozen:
            cls.__hash__ = None                                  # as the standard eq=True, frozen=False
        cls.__dataclass_params__.eq = True
        cls.__dataclass_params__.frozen = frozen
        return cls
    return wrap


def _init(self, *args, **kw):
    spec = self._pl_init
    if len(args) > len(spec):
        raise TypeError(f"{type(self).__name__}.__init__() takes {len(spec) + 1} positional arguments "
                        f"but {len(args) + 1} were given")
    put = object.__setattr__
    for i, (name, default, factory) in enumerate(spec):
        if i < len(args):
            if name in kw:
                raise TypeError(f"{type(self).__name__}.__init__() got multiple values for argument {name!r}")
            value = args[i]
        elif name in kw:
            value = kw.pop(name)
        elif default is not MISSING:
            value = default
        elif factory is not MISSING:
            value = factory()
        else:
            raise TypeError(f"{type(self).__name__}.__init__() missing 1 required argument: {name!r}")
        put(self, name, value)
    if kw:
        raise TypeError(f"{type(self).__name__}.__init__() got an unexpected keyword argument {next(iter(kw))!r}")


def _repr(self):
    return f"{type(self).__qualname__}(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self._pl_repr) + ")"


def _eq(self, other):
    if other.__class__ is self.__class__:
        return tuple(getattr(self, n) for n in self._pl_cmp) == tuple(getattr(other, n) for n in self._pl_cmp)
    return NotImplemented


def _hash(self):
    return hash(tuple(getattr(self, n) for n in self._pl_hash))


def _setattr(self, name, value):
    if type(self) is self._pl_cls or name in self._pl_names:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")
    super(self._pl_cls, self).__setattr__(name, value)


def _delattr(self, name):
    if type(self) is self._pl_cls or name in self._pl_names:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
    super(self._pl_cls, self).__delattr__(name)


_METHODS = {"__init__": _init, "__repr__": _repr, "__eq__": _eq, "__hash__": _hash,
            "__setattr__": _setattr, "__delattr__": _delattr}

PLAN_VERSION = 1


# Capability names in kernel order (index = the capability number). Here, not in compiler.py: the
# launch path (sandbox/capabilities.py) needs them without importing the compiler.
CAPABILITIES = (
    "CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID",
    "SETPCAP", "LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW",
    "IPC_LOCK", "IPC_OWNER", "SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT",
    "SYS_ADMIN", "SYS_BOOT", "SYS_NICE", "SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD",
    "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP", "MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG",
    "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF", "CHECKPOINT_RESTORE",
)
CAP_INDEX = {name: i for i, name in enumerate(CAPABILITIES)}

@dataclass(frozen=True)
class IdMapEntry:
    """IdMapEntry (see docs/profile-format.md)."""
    inside: int
    outside: int
    count: int


@dataclass(frozen=True)
class Namespaces:
    """Namespaces (see docs/profile-format.md)."""
    user: bool = True
    pid: bool = True
    mount: bool = True
    uts: bool = True
    ipc: bool = True
    net: bool = True
    cgroup: bool = True
    time: bool = False


@dataclass(frozen=True)
class User:
    """User (see docs/profile-format.md)."""
    uid: int = 0                       # uid of the program inside the sandbox
    gid: int = 0
    uid_map: tuple[IdMapEntry, ...] = ()   # resolved: no "auto" left
    gid_map: tuple[IdMapEntry, ...] = ()
    groups: tuple[int, ...] = ()       # supplementary groups inside (needs setgroups allowed)
    map_note: str = field(default="", compare=False)   # which map a rootless `auto` chose, and why (explain)


@dataclass(frozen=True)
class ArgCond:
    """A seccomp argument comparison: `args[index] <op> value` (masked_eq: `args[index] & mask == value`)."""
    index: int
    op: str            # eq ne lt le gt ge masked_eq
    value: int
    mask: int = 0


@dataclass(frozen=True)
class SyscallRule:
    """SyscallRule (see docs/profile-format.md)."""
    name: str
    action: str                        # allow | errno | kill | log | trap | notify
    errno: Optional[int] = None        # with action errno (and notify: the errno answered)
    args: tuple[ArgCond, ...] = ()


@dataclass(frozen=True)
class Seccomp:
    """Seccomp (see docs/profile-format.md)."""
    enabled: bool = True
    default_action: str = "errno"      # allow | errno | kill | log | trap
    default_errno: Optional[int] = 38  # ENOSYS
    # per syscall tried in order, the first match decides (policies/seccomp_verdict.py)
    rules: tuple[SyscallRule, ...] = ()
    # Names asked for by the profile that this machine's libseccomp does not know
    # (skipped and reported, never silently dropped from the report).
    skipped: tuple[str, ...] = ()
    # Deliver denials (errno rules) through seccomp user notification so the
    # supervisor can record them (audit); the answer is still the rule's errno.
    notify_denials: bool = False
    # The supervisor's per-sandbox audit rate limit (docs/audit.md "Rate limit"): full records
    # per second and in a burst; None: the defaults of audit/throttle.py. Bounded by the schema.
    audit_rate: Optional[float] = None
    audit_burst: Optional[int] = None


@dataclass(frozen=True)
class Mount:
    """Mount (see docs/profile-format.md)."""
    type: str                          # bind | tmpfs | volume
    target: str                        # path inside the sandbox
    source: Optional[str] = None       # host path (bind) or volume name (volume)
    read_only: bool = False
    size: Optional[int] = None         # tmpfs size in bytes
    mode: Optional[int] = None         # tmpfs mode
    optional: bool = False             # bind: skip silently when the source is missing (system dirs only)
    noexec: bool = False               # bind, tmpfs: mounted noexec (an OCI bundle's `noexec` option)


# Size limit of an image's writable layer when neither filesystem.storage.size nor --storage-opt
# size= sets one (docs/images.md, "Size of the writable layer"): a tmpfs, so memory -- a default a
# machine can hold; never unlimited.
DEFAULT_STORAGE_SIZE = 2 << 30


@dataclass(frozen=True)
class Filesystem:
    """Filesystem (see docs/profile-format.md)."""
    root: str = "host"                 # "host" (host system directories) or an absolute directory path
    image: Optional[str] = None        # image name (layer store), when root comes from an image
    read_only: bool = True
    system_dirs: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
    etc: tuple[str, ...] = ()          # entries of the host's /etc bound read-only (root: host)
    mounts: tuple[Mount, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    proc: bool = True
    sys: bool = True
    dev: str = "minimal"               # minimal (null zero full random urandom tty pts shm)
    keep: bool = False                 # keep the writable layer after the run (images)
    # size limit in bytes of an image's writable layer (filesystem.storage.size, --storage-opt
    # size=); None: no writable layer (read-only root, or no image)
    storage_size: Optional[int] = None


@dataclass(frozen=True)
class Rlimit:
    """Rlimit (see docs/profile-format.md)."""
    name: str                          # nofile nproc core as cpu fsize stack memlock ...
    soft: int                          # -1 = unlimited
    hard: int


@dataclass(frozen=True)
class Process:
    """Process (see docs/profile-format.md)."""
    argv: tuple[str, ...] = ("/bin/sh",)
    cwd: str = "/"
    env_allow: tuple[str, ...] = ()    # names passed through from the caller's environment
    env_set: tuple[tuple[str, str], ...] = ()
    hostname: str = "sandbox"
    rlimits: tuple[Rlimit, ...] = ()
    timeout: Optional[float] = None
    new_session: bool = True           # setsid(): no controlling terminal (TIOCSTI class)


@dataclass(frozen=True)
class PortMapping:
    """PortMapping (see docs/profile-format.md)."""
    host_port: int
    port: int
    proto: str = "tcp"
    host_ip: str = "0.0.0.0"


@dataclass(frozen=True)
class EgressRule:
    """EgressRule (see docs/profile-format.md)."""
    to: str                            # CIDR or sandbox name
    ports: tuple[int, ...] = ()
    proto: str = "tcp"


@dataclass(frozen=True)
class EgressHostRule:
    """An egress rule by domain name (docs/network.md, "Egress by domain name"): TCP to `host` (IDNA,
    lower case; "*.suffix" matches names below suffix, "*" every name) on `ports`, through the
    host-side egress proxy. `index`: its position in network.egress.allow (audit, explain)."""
    host: str
    ports: tuple[int, ...] = (80, 443)
    allow_private: bool = False
    index: int = 0


@dataclass(frozen=True)
class HostEntry:
    """A name the sandbox's resolver answers with a fixed address (network.hosts, --add-host)."""
    name: str
    address: str


@dataclass(frozen=True)
class HttpRule:
    """HttpRule: network.egress.http (docs/network.md, "Secrets"): what requests to `host` may be,
    enforced by the egress proxy's TLS interception (sandbox/network/egress/intercept.py)."""
    host: str                          # a name, or "*.suffix"
    methods: tuple[str, ...] = ()      # upper case; () any
    paths: tuple[str, ...] = ()        # globs over the request path (fnmatch); () any


@dataclass(frozen=True)
class Secret:
    """Secret: network.secrets (docs/network.md, "Secrets"). A reference only: the value is read by
    the supervisor at launch (sandbox/network/egress/secrets.py) and never enters a plan."""
    name: str                          # the sandbox's environment variable (holds a placeholder)
    source: str                        # "env:VAR" (the caller's environment) or "file:/abs/path"
    hosts: tuple[str, ...]             # where the value is substituted (names, "*.suffix")
    header: str = "Authorization"
    format: str = "{}"                 # "{}" stands for the value, e.g. "Bearer {}"


@dataclass(frozen=True)
class Network:
    """Network (see docs/profile-format.md)."""
    mode: str = "none"                 # none | host | <network name>
    ports: tuple[PortMapping, ...] = ()
    egress_default: str = "allow"      # allow | deny
    egress_allow: tuple[EgressRule, ...] = ()
    egress_hosts: tuple[EgressHostRule, ...] = ()    # egress by domain name (the egress proxy)
    hosts: tuple[HostEntry, ...] = ()                # network.hosts and --add-host
    http: tuple[HttpRule, ...] = ()    # egress.http: rules of intercepted HTTP(S)
    secrets: tuple[Secret, ...] = ()   # secrets substituted by the egress proxy


@dataclass(frozen=True)
class DeviceRate:
    """DeviceRate (see docs/profile-format.md)."""
    path: str
    rate: int


@dataclass(frozen=True)
class Limits:
    """Limits (see docs/profile-format.md)."""
    memory: Optional[int] = None             # bytes
    memory_swap: Optional[int] = None        # bytes, memory+swap (Docker semantics); -1 unlimited
    memory_reservation: Optional[int] = None
    cpus: Optional[float] = None             # cores
    cpu_shares: Optional[int] = None         # v1 shares (v2 weight derived)
    cpuset_cpus: Optional[str] = None
    pids: Optional[int] = None
    blkio_weight: Optional[int] = None
    device_read_bps: tuple[DeviceRate, ...] = ()
    device_write_bps: tuple[DeviceRate, ...] = ()
    device_read_iops: tuple[DeviceRate, ...] = ()
    device_write_iops: tuple[DeviceRate, ...] = ()

    def any(self) -> bool:
        return any(v not in (None, ()) for v in self.__dict__.values())


# Landlock (docs/profile-format.md, "landlock"): the profile's words and the kernel's access rights.
# read = read_file + read_dir; write = read + write_file, truncate, remove_*, make_{reg,dir,sym,sock,
# fifo}, refer (never make_char/make_block: no device is created); execute = execute. ioctl_dev
# goes with write (terminals and /dev/null need it on ABI >= 5). Each right with the first ABI
# that knows it (rights a kernel does not know are not handled there: best effort, as Landlock's
# own documentation recommends; `abi:` makes a profile refuse such a kernel instead).
LANDLOCK_FS_RIGHTS = (("execute", 1), ("write_file", 1), ("read_file", 1), ("read_dir", 1),
                      ("remove_dir", 1), ("remove_file", 1), ("make_char", 1), ("make_dir", 1),
                      ("make_reg", 1), ("make_sock", 1), ("make_fifo", 1), ("make_block", 1),
                      ("make_sym", 1), ("refer", 2), ("truncate", 3), ("ioctl_dev", 5))
LANDLOCK_READ = ("read_file", "read_dir")
LANDLOCK_WRITE = LANDLOCK_READ + ("write_file", "truncate", "remove_dir", "remove_file", "make_dir", "make_reg",
                                  "make_sym", "make_sock", "make_fifo", "refer", "ioctl_dev")
LANDLOCK_EXECUTE = ("execute",)
# rights that apply to a file (the others only to a directory's contents)
LANDLOCK_FILE_RIGHTS = ("execute", "write_file", "read_file", "truncate", "ioctl_dev")
LANDLOCK_NET_ABI = 4
LANDLOCK_SCOPES = (("abstract_unix_socket", 6), ("signal", 6))


@dataclass(frozen=True)
class LandlockPath:
    """One Landlock path rule: the rights granted beneath `path` (inside the sandbox's root)."""
    path: str
    access: tuple[str, ...]            # names of LANDLOCK_FS_RIGHTS
    required: bool = True              # missing at launch: refused (False: skipped, nothing granted)


@dataclass(frozen=True)
class Landlock:
    """Landlock (see docs/profile-format.md): the program's ruleset. None of a section: not handled."""
    abi: int = 1                       # the minimum ABI the profile asks for
    needs_abi: int = 1                 # the minimum ABI the rules need (network 4, scope 6)
    filesystem: bool = False           # file system access handled (everything not listed denied)
    paths: tuple[LandlockPath, ...] = ()
    derived: bool = False              # the paths were derived from the mount plan (filesystem: from_mounts)
    network: bool = False              # TCP bind/connect handled
    bind: tuple[int, ...] = ()
    connect: tuple[int, ...] = ()
    scope: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """Plan (see docs/profile-format.md)."""
    name: str
    sources: tuple[str, ...]                 # profile files, most derived first
    namespaces: Namespaces = field(default_factory=Namespaces)
    user: User = field(default_factory=User)
    capabilities: tuple[str, ...] = ()       # capabilities the program keeps (names without CAP_)
    no_new_privs: bool = True
    seccomp: Seccomp = field(default_factory=Seccomp)
    filesystem: Filesystem = field(default_factory=Filesystem)
    process: Process = field(default_factory=Process)
    network: Network = field(default_factory=Network)
    limits: Limits = field(default_factory=Limits)
    landlock: Optional[Landlock] = None      # None: no Landlock rules (scoping only, see init.confine)
    isolation: str = "namespaces"            # the lightest backend the profile accepts: namespaces | landlock
    backend: Optional[str] = None            # forced by --isolation (None: chosen at launch, sandbox/launch/nsfree.py)
    version: int = PLAN_VERSION

    def to_dict(self) -> dict:
        return asdict(self)
