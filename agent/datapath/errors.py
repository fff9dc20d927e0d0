"""Errors of the data-plane layer. Each message says what to do next."""

from __future__ import annotations

import errno as errno_mod
import os


class DatapathError(Exception):
    """Base class: the program could not be built, loaded, pinned or attached."""


class BpfSyscallError(DatapathError):
    """A bpf(2) call failed; carries the command and errno."""

    def __init__(self, command: str, errno: int, what: str = "") -> None:
        self.command = command
        self.errno = errno
        self.what = what
        detail = f" ({what})" if what else ""
        hint = ""
        if errno in (errno_mod.EPERM, errno_mod.EACCES):
            hint = ": run as root (CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON are needed)"
        super().__init__(f"bpf {command}{detail} failed: {os.strerror(errno)}{hint}")


class BuildError(DatapathError):
    """BCC could not compile the program (headers, syntax)."""


class MissingHeadersError(BuildError):
    def __init__(self, release: str) -> None:
        self.release = release
        super().__init__(
            f"no kernel headers for {release}: install linux-headers-{release} "
            f"(or run `make setup`, which links the distribution's generic headers)"
        )


class VerifierError(DatapathError):
    """The kernel's verifier rejected the program; carries the log's tail."""

    def __init__(self, program: str, err: int, log: str) -> None:
        self.program = program
        self.errno = err
        self.log = log
        tail = "\n".join(log.strip().splitlines()[-25:])
        super().__init__(
            f"the kernel rejected {program} ({os.strerror(err)}): the kernel may be too old (floodguard "
            f"needs Linux 5.11 or newer with BTF) or this is a floodguard bug — report it with this log. "
            f"Last lines of the verifier log:\n{tail}"
        )


class BpffsError(DatapathError):
    def __init__(self, path: str) -> None:
        super().__init__(
            f"{path} is not on a bpf filesystem: mount it with `mount -t bpf bpf /sys/fs/bpf` "
            f"(or run `make setup`)"
        )


class MissingPrivilegeError(DatapathError):
    def __init__(self, action: str) -> None:
        super().__init__(f"cannot {action}: run as root (needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON)")


class InterfaceError(DatapathError):
    """An interface is unknown, vanished, or cannot take the program."""


class UnknownInterfaceError(InterfaceError):
    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no interface named {name!r}: check `interfaces` in the policy (`ip link` lists them)")


class UnsupportedLinkError(InterfaceError):
    """The interface does not carry Ethernet frames, the only framing the program parses."""

    def __init__(self, where: str, kind: str, arphrd: int) -> None:
        self.kind = kind
        self.arphrd = arphrd
        super().__init__(
            f"{where} is not an Ethernet link ({kind}, ARPHRD {arphrd}), and floodguard parses Ethernet "
            "frames only: there every packet would be misread and nothing filtered. Attach floodguard to the Ethernet "
            "interface that carries this link's traffic (for PPPoE the Ethernet device under it; for a "
            "tunnel or VPN the uplink its packets arrive on), or remove it from `interfaces`"
        )


class ForeignProgramError(InterfaceError):
    def __init__(self, ifname: str, prog_name: str, prog_id: int) -> None:
        self.ifname = ifname
        self.prog_name = prog_name
        self.prog_id = prog_id
        super().__init__(
            f"{ifname} already runs another XDP program ({prog_name or 'unnamed'}, id {prog_id}); "
            f"floodguard will not replace it: remove it first (`xdp-loader unload {ifname} --all`) or use --force"
        )


class CapacityError(DatapathError):
    """A table is full: the policy's `capacity` block is too small."""
