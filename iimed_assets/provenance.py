"""Which build of this project wrote an export: the repository URL when one is known, else what identifies the
build (package name, version, git commit of the checkout). Never a placeholder link.

The URL comes from, in order: `$IIMED_REPOSITORY_URL` (config at run time), the installed package's metadata
(`Project-URL: Repository, …` or `Home-page`, set by setup.py when `IIMED_REPOSITORY_URL` is set at build time).
Only an http(s) URL with a host counts.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

from iimed_assets import settings

ENV_REPOSITORY_URL = "IIMED_REPOSITORY_URL"
PACKAGE = "iimed_assets"
REPO = Path(__file__).resolve().parents[1]


def valid_url(url: str | None) -> str | None:
    """`url` when it is an http(s) URL with a host (and no credentials), else None."""
    if not url:
        return None
    url = url.strip()
    try:
        parsed = urlparse(url)
    except ValueError:
        return None
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.username or parsed.password:
        return None
    if " " in url:
        return None
    return url


def url_from_metadata(md: metadata.PackageMetadata | None) -> str | None:
    if md is None:
        return None
    for entry in md.get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() in ("repository", "source", "source code", "homepage", "home") and valid_url(url):
            return valid_url(url)
    return valid_url(md.get("Home-page"))


def git_commit(path: Path = REPO) -> tuple[str | None, bool]:
    """(commit, dirty) of the checkout the code runs from; (None, False) when it is not a git checkout."""
    if not (path / ".git").exists():
        return None, False
    try:
        commit = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return (commit or None), bool(status.strip())


def build_id() -> str:
    """`<version>+<commit[:12]>[-dirty]` (or the version alone outside a git checkout): what a stage record keeps."""
    try:
        version = metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        version = "unknown"
    commit, dirty = git_commit()
    return version + (f"+{commit[:12]}" + ("-dirty" if dirty else "") if commit else "")


@dataclass(frozen=True)
class BuildInfo:
    name: str
    version: str
    repository_url: str | None
    commit: str | None
    dirty: bool

    def markdown(self) -> str:
        """One sentence for the card: a link when the repository is known, the build's identity always."""
        build = f"`{self.name}` {self.version}" + (
            f", commit `{self.commit[:12]}`" + (" with uncommitted changes" if self.dirty else "") if self.commit
            else ", not a git checkout")
        if self.repository_url:
            return f"[{self.name}]({self.repository_url}) ({build})"
        return f"{build} (no public repository URL is configured: set `{ENV_REPOSITORY_URL}`)"


def build_info(env: dict[str, str] | None = None) -> BuildInfo:
    try:
        md: metadata.PackageMetadata | None = metadata.metadata(PACKAGE)
        version = md["Version"]
    except metadata.PackageNotFoundError:
        md, version = None, "unknown"
    url = valid_url(settings.value(ENV_REPOSITORY_URL, env)) or url_from_metadata(md)
    commit, dirty = git_commit()
    return BuildInfo(PACKAGE, version, url, commit, dirty)
