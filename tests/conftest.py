import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def saliency_mini(tmp_path_factory):
    """Notebook 07's miniatures (VOC07, COCO14 instances, ImageNet) in their official layouts, written once:
    ``(root, the miniatures.saliency module)``."""
    from miniatures import saliency as miniature
    root = tmp_path_factory.mktemp("saliency_miniatures")
    miniature.write(root)
    return root, miniature
