import hashlib
from pathlib import Path

import pytest


@pytest.fixture
def file_hashes():
    """Every file under a folder with its SHA-256: equal before and after means nothing there changed."""

    def hashes(folder: Path) -> dict[str, str]:
        files = (p for p in folder.rglob("*") if p.is_file())
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

    return hashes
