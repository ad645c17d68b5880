"""dfxm-online: live analysis of DFXM scans."""

__version__ = "0.1.0"
