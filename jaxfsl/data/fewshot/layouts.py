"""The CoOp data layout of the 11 few-shot datasets, read without TFDS.

Each dataset is one folder (CoOp's ``DATASETS.md`` names, or the names
CLIP-LoRA's code uses, ``Caltech101``, ``OxfordPets``, ...) holding its images
and a split file:

  * nine datasets: ``split_zhou_<Name>.json`` = {"train"|"val"|"test":
    [[relpath, label, classname], ...]}, relpath relative to the image folder
    (CoOp ``datasets/oxford_pets.py`` ``read_split``; CLIP-LoRA the same);
  * FGVCAircraft: ``variants.txt`` (class names, label = line index) and
    ``images_variant_{train,val,test}.txt`` lines ``<id> <variant words>``,
    image ``images/<id>.jpg`` (CLIP-LoRA ``datasets/fgvc.py``);
  * ImageNet: ``train/<wnid>/*`` and ``val/<wnid>/*`` (CLIP-LoRA) or
    ``images/train``, ``images/val`` (CoOp), labels in sorted-wnid order as
    torchvision's ``ImageFolder``, names from CLIP's 1,000-name list
    (``imagenet_classes.txt``, shipped with jaxfsl).

``list_splits`` returns the splits exactly as these files say (order kept:
the K-shot sampling depends on it) and every problem it finds.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from jaxfsl.data.errors import CorruptInputError, ManualDataError
from jaxfsl.data.sources import IMAGE_EXTENSIONS

SPLITS = ("train", "val", "test")
_COOP_DATASETS_MD = (
    "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md (also "
    "https://github.com/MaxZanella/CLIP-LoRA/blob/main/DATASETS.md)")


@dataclasses.dataclass(frozen=True)
class LayoutSpec:
  """Where one dataset's files are.

  Attributes:
    name: jaxfsl's name (``--dataset``).
    title: human name.
    folders: accepted names of the dataset folder (CoOp's DATASETS.md first,
      then CLIP-LoRA's code).
    image_dir: image folder inside the dataset folder ('' = itself).
    split_file: the split json ('' for FGVCAircraft and ImageNet).
    kind: "json", "fgvc" or "imagenet".
    source: where the images come from.
    split_url: where the split json comes from.
  """

  name: str
  title: str
  folders: tuple[str, ...]
  image_dir: str
  split_file: str
  kind: str = "json"
  source: str = ""
  split_url: str = ""

  def instructions(self) -> str:
    lines = [f"{self.title}: images from {self.source}."]
    if self.split_file:
      lines.append(
          f"Split file {self.split_file} (CoOp's split): download it from "
          f"{self.split_url} (the link is in {_COOP_DATASETS_MD}) and put it "
          "in the dataset folder.")
    lines.append(
        "Layout: MANUAL_DIR = the dataset folder (" +
        " or ".join(self.folders) + ") or its parent, with " +
        (f"{self.image_dir}/ and " if self.image_dir else "") +
        (self.split_file or {"fgvc": "variants.txt, "
                             "images_variant_{train,val,test}.txt",
                             "imagenet": "train/<wnid>/ and val/<wnid>/ "
                             "(or images/train, images/val)"}[self.kind]) +
        " inside.")
    return "\n".join(lines) + "\n"


_GD = "https://drive.google.com/file/d/{}/view?usp=sharing"

SPECS: dict[str, LayoutSpec] = {s.name: s for s in (
    LayoutSpec("imagenet", "ImageNet (ILSVRC2012)", ("imagenet",), "", "",
               "imagenet", "https://image-net.org (train and val, val "
               "sorted into class folders)"),
    LayoutSpec("caltech101", "Caltech101", ("caltech-101", "Caltech101"),
               "101_ObjectCategories", "split_zhou_Caltech101.json",
               source="https://data.caltech.edu/records/mzrjq-6wc02 "
               "(101_ObjectCategories.tar.gz)",
               split_url=_GD.format("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN")),
    LayoutSpec("oxford_pets", "OxfordPets", ("oxford_pets", "OxfordPets"),
               "images", "split_zhou_OxfordPets.json",
               source="https://www.robots.ox.ac.uk/~vgg/data/pets/ "
               "(images.tar.gz)",
               split_url=_GD.format("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs")),
    LayoutSpec("stanford_cars", "StanfordCars",
               ("stanford_cars", "StanfordCars"), "",
               "split_zhou_StanfordCars.json",
               source="cars_train/ and cars_test/ of the Stanford Cars "
               "dataset (e.g. the Kaggle mirror; the original URLs are gone)",
               split_url=_GD.format("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT")),
    LayoutSpec("oxford_flowers", "Flowers102",
               ("oxford_flowers", "Flower102", "Flowers102"), "jpg",
               "split_zhou_OxfordFlowers.json",
               source="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ "
               "(102flowers.tgz)",
               split_url=_GD.format("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT")),
    LayoutSpec("food101", "Food101", ("food-101", "Food101"), "images",
               "split_zhou_Food101.json",
               source="https://data.vision.ee.ethz.ch/cvl/datasets_extra/"
               "food-101/ (food-101.tar.gz)",
               split_url=_GD.format("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl")),
    LayoutSpec("fgvc_aircraft", "FGVCAircraft", ("fgvc_aircraft",),
               "images", "", "fgvc",
               "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ "
               "(fgvc-aircraft-2013b.tar.gz; keep data/ renamed "
               "fgvc_aircraft/)"),
    LayoutSpec("sun397", "SUN397", ("sun397", "SUN397"), "SUN397",
               "split_zhou_SUN397.json",
               source="http://vision.princeton.edu/projects/2010/SUN/ "
               "(SUN397.tar.gz)",
               split_url=_GD.format("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq")),
    LayoutSpec("dtd", "DTD", ("dtd", "DTD"), "images",
               "split_zhou_DescribableTextures.json",
               source="https://www.robots.ox.ac.uk/~vgg/data/dtd/ "
               "(dtd-r1.0.1.tar.gz)",
               split_url=_GD.format("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x")),
    LayoutSpec("eurosat", "EuroSAT", ("eurosat", "EuroSAT"), "2750",
               "split_zhou_EuroSAT.json",
               source="https://zenodo.org/records/7711810 (EuroSAT_RGB.zip;"
               " the class folders must sit in 2750/)",
               split_url=_GD.format("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o")),
    LayoutSpec("ucf101", "UCF101", ("ucf101", "UCF101"),
               "UCF-101-midframes", "split_zhou_UCF101.json",
               source="UCF-101-midframes.zip, " +
               _GD.format("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"),
               split_url=_GD.format("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y")),
)}
"""jaxfsl name -> layout, for the 11 datasets of the few-shot benchmark."""

NAMES = tuple(SPECS)

# A split item: (path relative to the image folder, label, class name).
Item = tuple[str, int, str]


@dataclasses.dataclass
class SplitListing:
  """The splits of one dataset, as its split files say.

  Attributes:
    root: the dataset folder found.
    image_root: the folder relpaths are relative to.
    class_names: label -> class name (as in the split file).
    splits: "train"/"val"/"test" -> items in file order.
    problems: one line per bad row (file, split, row, what is wrong).
  """

  root: Path
  image_root: Path
  class_names: list[str]
  splits: dict[str, list[Item]]
  problems: list[str] = dataclasses.field(default_factory=list)


def imagenet_class_names() -> dict[str, str]:
  """wnid -> CLIP's class name for the 1,000 ImageNet classes.

  Names from openai/CLIP ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``
  (CLIP-LoRA ``datasets/imagenet.py:13-177``), in label order = sorted wnids
  (the wnids as TFDS's ``imagenet2012/labels.txt``). Two names repeat
  (``crane``, ``maillot``), as in the source.
  """
  path = Path(__file__).with_name("imagenet_classes.txt")
  pairs = [line.split("\t") for line in path.read_text().splitlines()]
  return {wnid: name for wnid, name in pairs}


def _marker(spec: LayoutSpec) -> str:
  return {"json": spec.split_file, "fgvc": "variants.txt",
          "imagenet": "train"}[spec.kind]


def find_root(manual_dir: os.PathLike[str] | str, spec: LayoutSpec) -> Path:
  """The dataset folder: ``manual_dir`` itself or ``manual_dir/<folder>``.

  Raises:
    ManualDataError: neither holds the dataset; names what is missing and
      where to get it.
  """
  manual = Path(manual_dir).expanduser()
  if not manual.is_dir():
    raise ManualDataError(f"{spec.title}: manual folder {manual} does not "
                          f"exist.\n{spec.instructions()}")
  candidates = [manual] + [manual / f for f in spec.folders]
  if spec.kind == "imagenet":
    candidates += [c / "images" for c in list(candidates)]
  for c in candidates:
    if (c / _marker(spec)).exists():
      return c
  looked = ", ".join(str(c / _marker(spec)) for c in candidates)
  what = (f"the split file {spec.split_file}" if spec.split_file
          else _marker(spec))
  raise ManualDataError(
      f"{spec.title}: {what} not found (looked for {looked}).\n"
      f"{spec.instructions()}")


def _check_exists(image_root: Path, rel: str, where: str,
                  problems: list[str]) -> bool:
  if (image_root / rel).is_file():
    return True
  problems.append(f"{where}: {rel!r} -> no file {image_root / rel}")
  return False


def _list_json(root: Path, spec: LayoutSpec) -> SplitListing:
  path = root / spec.split_file
  try:
    data = json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise CorruptInputError(f"{path}: not a readable JSON file ({e}); "
                            f"re-download it from {spec.split_url}.",
                            file=spec.split_file, reason=str(e)) from e
  image_root = root / spec.image_dir if spec.image_dir else root
  problems: list[str] = []
  missing = [s for s in SPLITS if not isinstance(data, dict) or s not in data]
  if missing:
    raise CorruptInputError(
        f"{path}: no {missing} list(s); expected a JSON object with keys "
        f"{list(SPLITS)}.", file=spec.split_file, reason="missing splits")
  names: dict[int, str] = {}
  splits: dict[str, list[Item]] = {}
  for split in SPLITS:
    items: list[Item] = []
    for row, entry in enumerate(data[split]):
      where = f"{path.name} {split}[{row}]"
      if (not isinstance(entry, (list, tuple)) or len(entry) != 3
          or not isinstance(entry[0], str) or not isinstance(entry[2], str)):
        problems.append(f"{where}: {entry!r}; expected [relpath, label, "
                        "classname]")
        continue
      rel, label, cname = entry
      try:
        label = int(label)
      except (TypeError, ValueError):
        problems.append(f"{where}: label {label!r} is not an integer")
        continue
      if names.setdefault(label, cname) != cname:
        problems.append(f"{where}: label {label} named {cname!r}, earlier "
                        f"rows name it {names[label]!r}")
        continue
      if _check_exists(image_root, rel, where, problems):
        items.append((rel, label, cname))
    splits[split] = items
  n = max(names, default=-1) + 1
  gaps = [i for i in range(n) if i not in names]
  if gaps or min(names, default=0) < 0:
    problems.append(f"{path.name}: labels are not 0..{n - 1} (missing "
                    f"{gaps[:10]})")
  class_names = [names.get(i, "") for i in range(n)]
  return SplitListing(root, image_root, class_names, splits, problems)


def _list_fgvc(root: Path, spec: LayoutSpec) -> SplitListing:
  class_names = [line.strip() for line in
                 (root / "variants.txt").read_text().splitlines()]
  while class_names and not class_names[-1]:
    class_names.pop()
  label_of = {c: i for i, c in enumerate(class_names)}
  image_root = root / spec.image_dir
  problems: list[str] = []
  splits: dict[str, list[Item]] = {}
  for split in SPLITS:
    fname = f"images_variant_{split}.txt"
    path = root / fname
    if not path.is_file():
      raise ManualDataError(f"{spec.title}: {path} not found.\n"
                            f"{spec.instructions()}")
    items: list[Item] = []
    for row, line in enumerate(path.read_text().splitlines(), start=1):
      parts = line.strip().split(" ")
      if not line.strip():
        continue
      rel, cname = parts[0] + ".jpg", " ".join(parts[1:])
      where = f"{fname} line {row}"
      if cname not in label_of:
        problems.append(f"{where}: variant {cname!r} is not in variants.txt")
        continue
      if _check_exists(image_root, rel, where, problems):
        items.append((rel, label_of[cname], cname))
    splits[split] = items
  return SplitListing(root, image_root, class_names, splits, problems)


def _image_folder(folder: Path) -> list[tuple[str, str]]:
  """torchvision ImageFolder order: sorted class folders, then files sorted
  within each (recursively, os.walk sorted). Returns (relpath, wnid)."""
  out = []
  for wnid in sorted(d.name for d in folder.iterdir() if d.is_dir()):
    for dirpath, _, files in sorted(os.walk(folder / wnid,
                                            followlinks=True)):
      for f in sorted(files):
        if f.lower().endswith(IMAGE_EXTENSIONS):
          rel = os.path.relpath(os.path.join(dirpath, f), folder.parent)
          out.append((rel, wnid))
  return out


def _list_imagenet(root: Path, spec: LayoutSpec) -> SplitListing:
  del spec
  names = imagenet_class_names()
  problems: list[str] = []
  if not (root / "val").is_dir():
    raise ManualDataError(f"ImageNet: {root / 'val'} not found; the test "
                          "split is the official val set sorted into class "
                          f"folders.\n{SPECS['imagenet'].instructions()}")
  # Labels are indices among the class folders present, as torchvision's
  # ImageFolder gives them (CLIP-LoRA's labels when all 1,000 are there).
  wnids = sorted(d.name for d in (root / "train").iterdir() if d.is_dir())
  val_wnids = sorted(d.name for d in (root / "val").iterdir() if d.is_dir())
  problems += [f"{root / 'train' / w}: {w!r} is not an ImageNet-1k wnid"
               for w in wnids if w not in names]
  if val_wnids != wnids:
    problems.append(f"{root / 'val'}: class folders differ from train/: "
                    f"{sorted(set(val_wnids) ^ set(wnids))[:10]}")
  label_of = {w: i for i, w in enumerate(wnids)}
  class_names = [names.get(w, w) for w in wnids]
  splits: dict[str, list[Item]] = {"val": []}
  for split, folder in (("train", "train"), ("test", "val")):
    splits[split] = [(rel, label_of[w], class_names[label_of[w]])
                     for rel, w in _image_folder(root / folder)
                     if w in label_of]
  return SplitListing(root, root, class_names, splits, problems)


def list_splits(manual_dir: os.PathLike[str] | str,
                name: str) -> SplitListing:
  """Reads a dataset's splits from its CoOp-layout folder.

  Args:
    manual_dir: the dataset folder or its parent.
    name: one of ``NAMES``.

  Returns:
    The listing; ``problems`` lists every bad row (it is the caller's choice
    to raise or skip). ImageNet's ``val`` is empty: its K-shot val set is
    drawn from train (``jaxfsl.data.fewshot.split``).

  Raises:
    ValueError: unknown name.
    ManualDataError: the folder or split file is missing (with where to get
      it).
    CorruptInputError: the split json is unreadable or lacks a split.
  """
  if name not in SPECS:
    raise ValueError(f"unknown few-shot dataset {name!r}; expected one of "
                     f"{list(NAMES)}")
  spec = SPECS[name]
  root = find_root(manual_dir, spec)
  return {"json": _list_json, "fgvc": _list_fgvc,
          "imagenet": _list_imagenet}[spec.kind](root, spec)


def prompt_names(class_names: Sequence[str]) -> list[str]:
  """Prompt names: ``_`` -> space, as CLIP-LoRA's ``classname.replace``."""
  return [c.replace("_", " ") for c in class_names]
