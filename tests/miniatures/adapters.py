"""Miniatures of Office-Home and DomainNet, the full datasets of ``vklib.adapters`` (notebook 06 reads Office-Home with
``dataset="office_home"``; DomainNet is registered for the same layout), in the layouts of their releases.

Office-Home (Venkateswara et al., CVPR 2017; hemanthdv.org), ``OfficeHomeDataset_10072016.zip`` unpacked under
``<root>/``: ``OfficeHomeDataset_10072016/{Art,Clipart,Product,Real World}/<class>/<nnnnn>.jpg``, the same 65
class folders (``Alarm_Clock`` ... ``Webcam``) in every domain, JPEGs of any size (the release's smallest clip art is
18 x 18 pixels) and the domain folder ``Real World`` with a space. The miniature holds two small images per
(domain, class), all 65 classes, so that a test can check the class list and its order (sorted folder names, the
release's own order: ``TV`` before ``Table``) and notebook 06 can run on it (``dataset="office_home"``: one test
image per cell).

DomainNet (Peng et al., ICCV 2019; ai.bu.edu/M3SDA), the six domain archives (``clipart.zip`` ...) unpacked under
``<root>/domainnet/``: ``<domain>/<class>/<domain>_<class number>_<image number>.jpg`` (e.g.
``clipart/aircraft_carrier/clipart_001_000018.jpg``; quickdraw's drawings are PNG files named by their drawing id,
``quickdraw/aircraft_carrier/4509494895706112.png``, in the copies checked). The release's split lists
(``<domain>_train.txt``, ``<domain>_test.txt``: ``<domain>/<class>/<file> <class index>`` per line) are not read
(the reader's one split is ``all``) and not written. The miniature holds two of the 345 classes, one image per
(domain, class): the reader takes the union of the class folders it finds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import pixels, save_image

#: What each miniature holds, for the reader tests: name -> {split: number of images}.
SIZES = {"office_home": {"all": 4 * 65 * 2}, "domainnet": {"all": 6 * 2}}

OFFICE_HOME_CLASSES = [
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar", "Candles",
    "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser", "Exit_Sign", "Fan",
    "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer", "Helmet", "Kettle", "Keyboard",
    "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse", "Mug", "Notebook", "Oven", "Pan",
    "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin", "Radio", "Refrigerator", "Ruler",
    "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda", "Speaker", "Spoon", "TV", "Table", "Telephone",
    "ToothBrush", "Toys", "Trash_Can", "Webcam"]
OFFICE_HOME_DOMAINS = ["Art", "Clipart", "Product", "Real World"]
#: (class number as in the file names, class folder) of the two DomainNet classes written
DOMAINNET_CLASSES = [(1, "aircraft_carrier"), (2, "airplane")]
DOMAINNET_DOMAINS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
#: (height, width) of the images, in turn
SHAPES = [(18, 18), (20, 26), (24, 16)]


def domainnet_file(domain: str, number: int, k: int) -> str:
    """The file name of image ``k`` of class ``number`` in ``domain``, in the release's naming."""
    return f"{4509494895706112 + 1000 * number + k}.png" if domain == "quickdraw" else \
        f"{domain}_{number:03d}_{18 + k:06d}.jpg"


def write(root: Path) -> None:
    rng = np.random.default_rng(6)
    root = Path(root)
    office = root / "OfficeHomeDataset_10072016"
    for d, domain in enumerate(OFFICE_HOME_DOMAINS):
        for c, cls in enumerate(OFFICE_HOME_CLASSES):
            for k in range(2):
                h, w = SHAPES[(d + c + k) % len(SHAPES)]
                save_image(office / domain / cls / f"{k + 1:05d}.jpg", pixels(rng, h, w, 3))
    net = root / "domainnet"
    for domain in DOMAINNET_DOMAINS:
        for index, (number, cls) in enumerate(DOMAINNET_CLASSES):
            h, w = SHAPES[index % len(SHAPES)]
            save_image(net / domain / cls / domainnet_file(domain, number, 0), pixels(rng, h, w, 3))
