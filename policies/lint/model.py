"""Findings, severities and the rule registry of `pysandbox lint` (pure data)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

SEVERITIES = ("info", "warning", "error")
RANK = {s: i for i, s in enumerate(SEVERITIES)}
SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}


@dataclass(frozen=True)
class Rule:
    code: str          # PSB101
    name: str          # dangerous-capability (kebab-case, stable)
    severity: str      # default severity; a finding may be lower/higher (documented on the rule page)
    summary: str       # one sentence for the rule table / SARIF shortDescription


@dataclass(frozen=True)
class Finding:
    code: str
    severity: str
    message: str                     # one line
    hint: str                        # how to fix it, one line
    file: str
    line: int
    col: int
    profile: str = ""                # the profile file being linted when it was found
    suppressed: Optional[str] = None  # the suppression's reason when suppressed inline

    @property
    def key(self) -> tuple:
        """Identity across profiles: a parent's finding seen through two children is one finding."""
        return (self.code, self.file, self.line, self.col, self.message)

    def at_least(self, level: str) -> bool:
        return RANK[self.severity] >= RANK[level]

    def to_dict(self) -> dict:
        d = {"code": self.code, "severity": self.severity, "message": self.message, "hint": self.hint,
             "file": self.file, "line": self.line, "column": self.col, "profile": self.profile}
        if self.suppressed is not None:
            d["suppressed"] = self.suppressed
        return d


RULES: dict[str, Rule] = {}


def rule(code: str, name: str, severity: str, summary: str) -> Rule:
    assert code not in RULES, code
    assert severity in SEVERITIES
    r = Rule(code, name, severity, summary)
    RULES[code] = r
    return r


# --- the catalogue (each has docs/rules/<code>.md) ----------------------------------
# 0xx: the profile itself and the lint machinery
PSB001 = rule("PSB001", "invalid-profile", "error",
              "The profile is not valid YAML, fails the profile schema, or does not compile.")
PSB002 = rule("PSB002", "extends-missing", "error",
              "`extends:` names a profile or file that does not exist.")
PSB003 = rule("PSB003", "suppression-without-reason", "error",
              "An inline `# pysandbox: ignore[...]` suppression gives no reason (it is not honoured).")
PSB004 = rule("PSB004", "suppression-unknown-rule", "warning",
              "An inline suppression names a rule code that does not exist.")
PSB005 = rule("PSB005", "suppression-unused", "info",
              "An inline suppression matches no finding (stale).")
# 1xx: privileges
PSB101 = rule("PSB101", "dangerous-capability", "error",
              "A capability that allows escaping or attacking the kernel is granted.")
PSB102 = rule("PSB102", "no-new-privs-off", "error",
              "`no_new_privs: false` lets setuid/setcap binaries raise privileges inside the sandbox.")
PSB103 = rule("PSB103", "real-root", "error",
              "The program runs as uid 0 without a user namespace: real root when root launches it.")
PSB104 = rule("PSB104", "maps-host-root", "warning",
              "The user namespace maps host uid/gid 0 into the sandbox.")
PSB105 = rule("PSB105", "map-needs-root", "warning",
              "An id map names a host id other than the caller's (`outside: caller`): only root may use it.")
# 2xx: seccomp
PSB201 = rule("PSB201", "seccomp-disabled", "error",
              "seccomp is disabled: every system call of the kernel is reachable.")
PSB202 = rule("PSB202", "seccomp-default-allow", "error",
              "The seccomp default action allows (or only logs) system calls no rule names.")
PSB203 = rule("PSB203", "escape-syscall-allowed", "error",
              "An escape-class system call (mount, unshare, bpf, keyctl, ...) is allowed.")
PSB204 = rule("PSB204", "default-errno-eperm", "warning",
              "Unknown system calls fail with EPERM; ENOSYS lets libc fall back (clone3, openat2, ...).")
PSB205 = rule("PSB205", "allow-deny-conflict", "warning",
              "The same system call is both allowed and denied; the deny wins and the allow is dead.")
PSB206 = rule("PSB206", "rule-never-matches", "warning",
              "A seccomp rule's argument conditions can never all hold, so it never matches.")
PSB207 = rule("PSB207", "syscall-not-on-arch", "warning",
              "A named system call does not exist on the target architecture and is skipped.")
PSB208 = rule("PSB208", "rule-no-effect", "info",
              "A seccomp rule restates the default action or repeats another rule.")
# 3xx: filesystem
PSB301 = rule("PSB301", "writable-root", "warning",
              "The root filesystem is writable.")
PSB302 = rule("PSB302", "sensitive-bind", "error",
              "A host-sensitive path (/, /proc, /sys, /dev, /etc, a container-runtime socket) is bound in.")
PSB303 = rule("PSB303", "masked-path-removed", "warning",
              "An OCI default masked path (/proc/kcore, /proc/keys, /sys/firmware, ...) is not masked.")
PSB304 = rule("PSB304", "readonly-path-removed", "warning",
              "An OCI default read-only path (/proc/sys, /proc/sysrq-trigger, ...) is not read-only.")
# 4xx: resources
PSB401 = rule("PSB401", "no-memory-limit", "warning",
              "No memory limit: the program can exhaust the host's memory.")
PSB402 = rule("PSB402", "no-pids-limit", "warning",
              "No pids limit: a fork bomb can exhaust the host's process table.")
# 5xx: network and namespaces
PSB501 = rule("PSB501", "network-host", "error",
              "`network: host` shares the host's network stack (its interfaces, ports and abstract sockets).")
PSB502 = rule("PSB502", "namespace-shared", "warning",
              "A namespace (pid, ipc, uts, cgroup) is shared with the host.")
PSB503 = rule("PSB503", "egress-dns-name", "error",
              "An egress `to:` is a DNS name: taken as a peer name it never matches (domain rules do "
              "not exist yet).")


@dataclass
class ProfileReport:
    """Everything lint learned about one profile file."""
    file: str
    name: str = ""
    files: list = field(default_factory=list)       # the extends chain, most derived first
    findings: list = field(default_factory=list)    # Finding, suppressed ones included
    score: Optional[object] = None                  # score.Exposure, None when it did not compile
    plan: Optional[object] = None                   # the compiled plan.Plan lint judged (None: did not compile)
