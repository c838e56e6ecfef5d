"""The product version, reported by both CLIs and sent in the SSH version banner."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("onprem-relay")
except PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+src"
