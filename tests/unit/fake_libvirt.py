"""libvirt's error type for unit tests that replace a module's ``libvirt`` with a namespace
(libvirt-python need not be installed to run them)."""

from __future__ import annotations

# libvirt's virErrorNumber values the code under test compares
NO_DOMAIN, NO_STORAGE_POOL, NO_STORAGE_VOL, NO_INTERFACE = 42, 49, 50, 57


class LibvirtError(Exception):
    """Stands for libvirt.libvirtError: a message, and the code get_error_code() returns
    (1, VIR_ERR_INTERNAL_ERROR, unless a test names one)."""

    def __init__(self, msg: str = "", code: int = 1) -> None:
        super().__init__(msg or f"libvirt error {code}")
        self.code = code

    def get_error_code(self) -> int:
        return self.code
