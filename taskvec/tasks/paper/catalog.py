"""What the paper's datasets are: their names, CLIP's prompt templates and class names, and how
to obtain each one. Plain tables, kept apart from the code that reads the data so that the
loaders, the error messages and `taskvec list` share one copy."""

from __future__ import annotations

PAPER_TASKS = ("Cars", "DTD", "EuroSAT", "GTSRB", "MNIST", "RESISC45", "SUN397", "SVHN")
CONTROL_TASK = "ImageNet"

# ------------------------------------------------------------------------ prompt templates
# CLIP's prompt templates per dataset, as used by the task-vector benchmark ("{}" = class name).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "Cars": tuple(
        f"{p} {{}}{e}"
        for p, e in [
            ("a photo of a", "."),
            ("a photo of the", "."),
            ("a photo of my", "."),
            ("i love my", "!"),
            ("a photo of my dirty", "."),
            ("a photo of my clean", "."),
            ("a photo of my new", "."),
            ("a photo of my old", "."),
        ]
    ),
    "DTD": tuple(f"a photo of {a} {{}} {k}." for a in ("a", "the") for k in ("texture", "pattern", "thing", "object")),
    "EuroSAT": ("a centered satellite photo of {}.", "a centered satellite photo of a {}.", "a centered satellite photo of the {}."),
    "GTSRB": (
        'a zoomed in photo of a "{}" traffic sign.',
        'a centered photo of a "{}" traffic sign.',
        'a close up photo of a "{}" traffic sign.',
    ),
    "MNIST": ('a photo of the number: "{}".',),
    "RESISC45": tuple(
        f"{s} {v} of {a}{{}}."
        for a in ("", "a ", "the ")
        for s, v in [
            ("satellite", "imagery"),
            ("aerial", "imagery"),
            ("satellite", "photo"),
            ("aerial", "photo"),
            ("satellite", "view"),
            ("aerial", "view"),
        ]
    ),
    "SUN397": ("a photo of a {}.", "a photo of the {}."),
    "SVHN": ('a photo of the number: "{}".',),
}

# ------------------------------------------------------------------------------ class names
DIGITS = tuple(str(d) for d in range(10))

# From CLIP's prompt-engineering notes (data/prompts.md), as in the task-vector benchmark.
GTSRB_CLASSES = (
    "red and white circle 20 kph speed limit",
    "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit",
    "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit",
    "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)

RESISC45_FOLDERS = (
    "airplane",
    "airport",
    "baseball_diamond",
    "basketball_court",
    "beach",
    "bridge",
    "chaparral",
    "church",
    "circular_farmland",
    "cloud",
    "commercial_area",
    "dense_residential",
    "desert",
    "forest",
    "freeway",
    "golf_course",
    "ground_track_field",
    "harbor",
    "industrial_area",
    "intersection",
    "island",
    "lake",
    "meadow",
    "medium_residential",
    "mobile_home_park",
    "mountain",
    "overpass",
    "palace",
    "parking_lot",
    "railway",
    "railway_station",
    "rectangular_farmland",
    "river",
    "roundabout",
    "runway",
    "sea_ice",
    "ship",
    "snowberg",
    "sparse_residential",
    "stadium",
    "storage_tank",
    "tennis_court",
    "terrace",
    "thermal_power_station",
    "wetland",
)

# EuroSAT folder -> the class name CLIP's prompts use.
EUROSAT_CLASSES = {
    "AnnualCrop": "annual crop land",
    "Forest": "forest",
    "HerbaceousVegetation": "brushland or shrubland",
    "Highway": "highway or road",
    "Industrial": "industrial buildings or commercial buildings",
    "Pasture": "pasture land",
    "PermanentCrop": "permanent crop land",
    "Residential": "residential buildings or homes or apartments",
    "River": "river",
    "SeaLake": "lake or sea",
}

# ------------------------------------------------------------------------- how to get them
HOW = {
    "Cars": "Stanford Cars in torchvision's StanfordCars layout (devkit/, cars_train/, cars_test/, "
    "cars_test_annos_withlabels.mat); the original Stanford URLs are offline, use a mirror of the same files",
    "DTD": "https://www.robots.ox.ac.uk/~vgg/data/dtd/ (dtd-r1.0.1.tar.gz): put train1+val1 images in dtd/train/<class>/ "
    "and test1 in dtd/val/<class>/, or keep torchvision's layout dtd/dtd/{images,labels} "
    "(`taskvec download DTD` fetches that)",
    "EuroSAT": "the task-vector benchmark's EuroSAT_splits/{train,val,test}/<class>/ (21,600/2,700/2,700 images), or "
    "torchvision's eurosat/2750/<class>/ (`taskvec download EuroSAT`; split here with seed 0 into 80/10/10)",
    "GTSRB": "torchvision's GTSRB layout gtsrb/GTSRB/Training, gtsrb/GTSRB/Final_Test/Images, gtsrb/GT-final_test.csv "
    "(`taskvec download GTSRB`, or torchvision.datasets.GTSRB(root, download=True))",
    "MNIST": "torchvision's MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] "
    "(`taskvec download MNIST`, or torchvision.datasets.MNIST(root, download=True))",
    "RESISC45": "NWPU-RESISC45 images in resisc45/NWPU-RESISC45/<class>/ plus the split files "
    "resisc45/resisc45-{train,val,test}.txt of 'In-domain representation learning for remote sensing' "
    "(the same files torchgeo's RESISC45 uses)",
    "SUN397": "the benchmark's sun397/{train,val}/<letter>_<class>/ (Training_01 / Testing_01 of partition 1), or "
    "SUN397/ with ClassName.txt, Training_01.txt and Testing_01.txt from "
    "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz + Partitions.zip; `taskvec download SUN397`)",
    "SVHN": "torchvision's svhn/{train_32x32.mat,test_32x32.mat} "
    "(`taskvec download SVHN`, or torchvision.datasets.SVHN(root/'svhn', split=..., download=True))",
    "ImageNet": "ILSVRC-2012 from https://image-net.org (needs an account) arranged as imagenet/train/<wnid>/ and "
    "imagenet/val/<wnid>/ (torchvision.datasets.ImageNet(root, split=...) builds that from the official tarballs)",
}
